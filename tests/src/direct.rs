//! Direct ARP mode in namespaces: one router running the agent on a bridged member LAN, members
//! announcing the anycast address, and many clients on the LAN itself that ARP for it (each in a
//! namespace of its own, so each has its own ARP cache and is a requester of its own).
//!
//! Each client sends a UDP datagram to the anycast address every [`GAP`]; a [`Arrivals`]
//! receiver on each member records which client reached it when. All namespaces belong to this
//! process, so one clock dates a member's death and every arrival. Shared by the tests
//! (`tests/direct.rs`) and the bench.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::{
    ANYCAST, Ctl,
    daemon::{Daemon, KeyFile},
    netns::Netns,
    topology::{ROUTER_LAN, ROUTER_UPLINK, SharedLan, lan_client_ip},
};

/// UDP port the members' receivers listen on.
pub const PORT: u16 = 7700;
/// Time between two datagrams of one client.
pub const GAP: Duration = Duration::from_millis(5);
/// Bound on the life of the client senders and member receivers.
const LIFETIME: Duration = Duration::from_secs(90);

/// The lab: [`SharedLan`] with one router, its agent, and `clients` LAN clients.
pub struct DirectLab {
    pub net: SharedLan,
    pub ctl: Ctl,
    pub key: KeyFile,
    pub clients: Vec<Netns>,
    _agent: Daemon,
}

impl DirectLab {
    /// One router with the dataplane on both interfaces and the agent on the LAN, `members`
    /// members (none announcing yet) and `clients` clients on the LAN.
    pub fn new(members: usize, clients: usize) -> Result<Self> {
        let net = SharedLan::new(1, members)?;
        let key = KeyFile::new(net.upstream.name(), 1, &[0x5e; 32])?;
        let r = &net.routers[0];
        let ctl = Ctl::new(&r.ns);
        ctl.attach(&[ROUTER_UPLINK, ROUTER_LAN], "native")?;
        let pin = ctl.pin_dir().display().to_string();
        let args = crate::daemon::agent_args(
            &pin,
            &[ROUTER_LAN],
            &["198.51.100.0/24"],
            &["--key-file", key.arg()],
        );
        let agent = Daemon::spawn_agent(&r.ns, "agent", &args)?;
        let clients = net.lan_clients(clients)?;
        Ok(Self {
            net,
            ctl,
            key,
            clients,
            _agent: agent,
        })
    }

    /// Starts member `i`'s announcer, advertising every `interval` with hold `hold`.
    pub fn announce(&self, i: usize, interval: &str, hold: &str) -> Result<Daemon> {
        let m = &self.net.members[i];
        let args = [
            "announce",
            "198.51.100.53",
            "--dev",
            &m.iface,
            "--interval",
            interval,
            "--hold",
            hold,
            "--key-file",
            self.key.arg(),
        ];
        Daemon::spawn(&m.ns, &format!("announce m{}", i + 1), &args)
    }

    /// The router's members of the anycast address.
    pub fn learned(&self) -> Vec<Ipv4Addr> {
        let mut have: Vec<Ipv4Addr> = (self.ctl.show().members_of(ANYCAST).iter())
            .filter_map(|m| m.ipv4())
            .collect();
        have.sort();
        have
    }

    /// Waits until the router has learned exactly `want`.
    pub fn wait_learned(&self, want: &[Ipv4Addr]) -> Result<()> {
        let mut want = want.to_vec();
        want.sort();
        let ok = crate::wait_until(Duration::from_secs(5), || self.learned() == want);
        ensure!(ok, "router has {:?}, want {want:?}", self.learned());
        Ok(())
    }

    /// The router's counters of the anycast address.
    pub fn counters(&self) -> serde_json::Value {
        let stats = self.ctl.json(&["stats"]);
        (stats["addresses"].as_array().into_iter().flatten())
            .find(|a| a["address"] == ANYCAST.to_string())
            .cloned()
            .unwrap_or_default()
    }

    /// What the agent logged so far.
    pub fn agent_log(&self) -> String {
        self._agent.log()
    }

    /// Makes every client forget the anycast address's MAC (each ARPs again on its next send).
    pub fn flush_clients(&self) -> Result<()> {
        for c in &self.clients {
            c.ip(&["neigh", "flush", "dev", "lc0"])?;
        }
        Ok(())
    }
}

/// Per member, the arrivals of client datagrams: `(client, when)`.
pub struct Arrivals {
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<(Ipv4Addr, Instant)>>>,
    handle: Option<JoinHandle<()>>,
}

impl Arrivals {
    pub fn start(member: &Netns) -> Result<Self> {
        let socket = member
            .in_ns(|| UdpSocket::bind((ANYCAST, PORT)))
            .with_context(|| format!("bind {ANYCAST}:{PORT} in {}", member.name()))?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (flag, sink) = (stop.clone(), got.clone());
        let handle = thread::Builder::new()
            .name("arrivals".into())
            .spawn(move || {
                let deadline = Instant::now() + LIFETIME;
                let mut buf = [0u8; 64];
                while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok((_, SocketAddr::V4(peer))) = socket.recv_from(&mut buf) {
                        let now = Instant::now();
                        sink.lock().expect("arrivals").push((*peer.ip(), now));
                    }
                }
            })?;
        Ok(Self {
            stop,
            got,
            handle: Some(handle),
        })
    }

    /// Everything received so far.
    pub fn snapshot(&self) -> Vec<(Ipv4Addr, Instant)> {
        self.got.lock().expect("arrivals").clone()
    }

    /// Forgets everything received so far.
    pub fn clear(&self) {
        self.got.lock().expect("arrivals").clear();
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Every client sending one datagram every [`GAP`] (one thread for all), until dropped.
pub struct Senders {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Senders {
    pub fn start(clients: &[Netns]) -> Result<Self> {
        let sockets = (clients.iter().enumerate())
            .map(|(i, ns)| {
                ns.in_ns(|| UdpSocket::bind((lan_client_ip(i), 0)))
                    .with_context(|| format!("bind in {}", ns.name()))
            })
            .collect::<Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), sent.clone());
        let handle = thread::Builder::new()
            .name("senders".into())
            .spawn(move || {
                let deadline = Instant::now() + LIFETIME;
                while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for s in &sockets {
                        // An unresolved neighbour drops a datagram or two: as on a wire.
                        if s.send_to(b"direct", (ANYCAST, PORT)).is_ok() {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    thread::sleep(GAP);
                }
            })?;
        Ok(Self {
            stop,
            sent,
            handle: Some(handle),
        })
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Senders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Which member (index) each client reached, in arrivals `since` (the last member it reached).
pub fn homes(arrivals: &[Arrivals], since: Instant) -> BTreeMap<Ipv4Addr, Vec<usize>> {
    let mut homes: BTreeMap<Ipv4Addr, Vec<usize>> = BTreeMap::new();
    for (m, a) in arrivals.iter().enumerate() {
        for (client, at) in a.snapshot() {
            if at >= since {
                let seen = homes.entry(client).or_default();
                if !seen.contains(&m) {
                    seen.push(m);
                }
            }
        }
    }
    homes
}

/// When `client` first reached a member other than `dead` at or after `since`.
pub fn first_elsewhere(
    arrivals: &[Arrivals],
    client: Ipv4Addr,
    dead: usize,
    since: Instant,
) -> Option<Instant> {
    (arrivals.iter().enumerate())
        .filter(|(m, _)| *m != dead)
        .flat_map(|(_, a)| a.snapshot())
        .filter(|(c, at)| *c == client && *at >= since)
        .map(|(_, at)| at)
        .min()
}
