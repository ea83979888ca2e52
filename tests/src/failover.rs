//! One failover of one member, end to end, under a steady UDP stream and long-lived TCP
//! connections: what every datagram met, and which connections broke. For the failover tests
//! (`tests/tests/membership.rs`) and the `failover` bench (datagrams lost per kind).
//!
//! The scene: the test topology with three members, the dataplane attached natively, the
//! agent on r1..r3. The members are learned from `anycast-ctl announce` (hold 3 s; the victim
//! of a kill -9 announces with 10 ms / 30 ms), or added statically for [`Kind::Del`]. A UDP
//! sink and a TCP echo server run on every member's anycast address (kept on `lo`, so a
//! datagram sent to a member that left would still be received and seen). The client sends a
//! [`SpreadStream`] over 64 source ports and keeps [`CONNS`] connections talking while member
//! 2 fails; a watcher reads the pinned maps every 100 µs for the moment the member is out of
//! service (its `SLOT_STATE` down bit, or gone from the live set).
//!
//! Every datagram is dated by its send (taken before the send, so the dataplane saw it
//! later): one sent after that moment that reached the victim, or reached nobody, is a
//! failure of the failover; one sent between the failure and that moment that reached the
//! victim or nobody went to the dead member. Everything is bounded; the
//! topology, pins and daemons are guards.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anycast_ctl::{dataplane::Maps, pin::PinDir};
use anyhow::{Context, Result, bail, ensure};

use crate::{
    ANYCAST, Ctl, Topology, TopologyOptions,
    bench::membership::{KEY_ID, SECRET, in_set},
    daemon::{Daemon, KeyFile},
    traffic::{SpreadStream, TCP_PORT, TcpConns, TcpEcho, UDP_PORT, UdpSink, rounds_while},
};

/// Long-lived TCP connections kept talking through the failover.
pub const CONNS: usize = 40;
/// The member that fails (index into the topology's members).
pub const VICTIM: usize = 1;
/// Gap between datagrams of the stream (about 5,000 per second with the sleep's slack).
const GAP: Duration = Duration::from_micros(100);
/// Stream before the failure, and after the member is out of service.
const BEFORE: Duration = Duration::from_millis(300);
const AFTER: Duration = Duration::from_millis(300);
/// Bound on the wait for the member to be out of service.
const REMOVAL_LIMIT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_micros(100);

/// A kind of failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `announce` stopped with SIGTERM: it sends a leave.
    Leave,
    /// `announce` (10 ms / 30 ms) killed with SIGKILL: the agent's expiry.
    Kill,
    /// The router's interface to the member set down.
    LinkDown,
    /// `anycast-ctl member del` of a static member.
    Del,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Leave, Kind::Kill, Kind::LinkDown, Kind::Del];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Leave => "leave",
            Kind::Kill => "kill_9_10_30ms",
            Kind::LinkDown => "link_down",
            Kind::Del => "member_del",
        }
    }
}

/// What one failover did to the traffic.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub kind: Kind,
    pub sent: usize,
    /// Sent between the failure and the removal, and received by the victim or by nobody
    /// (dropped on the way to it, as with a link down): what went to the dead member.
    pub to_dead_member: usize,
    /// Sent after the removal and received by the victim: must be 0.
    pub to_victim_after_removal: usize,
    /// Sent after the removal and received by nobody: must be 0.
    pub lost_after_removal: usize,
    /// Received by nobody, sent before the failure: must be 0 (the stream itself is sound).
    pub lost_before_failure: usize,
    /// From the failure to the removal seen in the maps.
    pub removal_ms: f64,
    /// Connections served by survivors, and those of them that broke: must be none.
    pub survivor_conns: usize,
    pub broken_survivor_conns: usize,
    pub victim_conns: usize,
}

impl Outcome {
    /// The failover's promises: nothing to the victim and nothing lost once it is out of
    /// service, no survivor's connection broken, the stream sound before it.
    pub fn check(&self) -> Result<()> {
        ensure!(
            self.to_victim_after_removal == 0
                && self.lost_after_removal == 0
                && self.lost_before_failure == 0
                && self.broken_survivor_conns == 0,
            "{}: {self:?}",
            self.kind.name()
        );
        ensure!(
            self.survivor_conns > 0 && self.victim_conns > 0,
            "{}: the connections did not spread over the members: {self:?}",
            self.kind.name()
        );
        Ok(())
    }
}

/// The topology, the agent and the members' announcers of one failover.
struct Scene {
    topo: Topology,
    ctl: Ctl,
    agent: Daemon,
    _key: KeyFile,
    announcers: Vec<Daemon>,
    maps: Maps,
}

impl Scene {
    fn new(kind: Kind) -> Result<Self> {
        let topo = Topology::new(TopologyOptions::default())?;
        let ctl = Ctl::new(&topo.router);
        let ifaces = topo.router_ifaces();
        let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
        ctl.attach(&ifaces, "native")?;
        let key = KeyFile::new(topo.router.name(), KEY_ID, &SECRET)?;
        let pin = ctl.pin_dir().display().to_string();
        let agent = Daemon::spawn_agent(
            &topo.router,
            "agent",
            &crate::daemon::agent_args(
                &pin,
                &["r1", "r2", "r3"],
                &["198.51.100.0/24"],
                &["--key-file", key.arg()],
            ),
        )?;
        let maps = Maps::open(&PinDir::new(ctl.pin_dir()))?;
        let mut announcers = Vec::new();
        for (i, m) in topo.members.iter().enumerate() {
            if kind == Kind::Del {
                ctl.member_add(ANYCAST, m.ip)?;
                continue;
            }
            let (interval, hold) = match (kind, i) {
                (Kind::Kill, VICTIM) => ("10ms", "30ms"),
                _ => ("100ms", "3s"),
            };
            announcers.push(Daemon::spawn(
                &m.ns,
                &format!("announce m{}", i + 1),
                &[
                    "announce",
                    &ANYCAST.to_string(),
                    "--dev",
                    &m.iface,
                    "--interval",
                    interval,
                    "--hold",
                    hold,
                    "--key-file",
                    key.arg(),
                ],
            )?);
        }
        let scene = Scene {
            topo,
            ctl,
            agent,
            _key: key,
            announcers,
            maps,
        };
        let start = Instant::now();
        for m in &scene.topo.members {
            while !in_set(&scene.maps, m.ip)? {
                if start.elapsed() > Duration::from_secs(5) {
                    bail!(
                        "{} not a member within 5 s; agent log:\n{}",
                        m.ip,
                        scene.agent.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(scene)
    }

    /// What makes the victim fail, as a task another thread can run (the scene itself holds
    /// the maps, which stay on this one).
    fn failure(&self, kind: Kind) -> Failure<'_> {
        let victim = &self.topo.members[VICTIM];
        let pid = self.announcers.get(VICTIM).map_or(0, Daemon::pid);
        match kind {
            Kind::Leave => Failure::Signal(pid, libc::SIGTERM),
            Kind::Kill => Failure::Signal(pid, libc::SIGKILL),
            Kind::LinkDown => Failure::LinkDown(&self.topo.router, &victim.router_iface),
            Kind::Del => Failure::Del(&self.ctl, victim.ip),
        }
    }

    /// Polls the maps until the victim is out of service; when it was seen so.
    fn removed(&self, since: Instant) -> Result<Instant> {
        let ip = self.topo.members[VICTIM].ip;
        loop {
            if !in_set(&self.maps, ip)? {
                return Ok(Instant::now());
            }
            ensure!(
                since.elapsed() < REMOVAL_LIMIT,
                "{ip} still in service {REMOVAL_LIMIT:?} after its failure"
            );
            std::thread::sleep(POLL);
        }
    }
}

/// One way to make the victim fail.
enum Failure<'a> {
    Signal(i32, libc::c_int),
    LinkDown(&'a crate::Netns, &'a str),
    Del(&'a Ctl, std::net::Ipv4Addr),
}

impl Failure<'_> {
    /// Makes it happen; the moment it did.
    fn run(&self) -> Result<Instant> {
        Ok(match *self {
            Failure::Signal(pid, signal) => {
                ensure!(pid > 0, "no announcer to signal");
                let at = Instant::now();
                // SAFETY: kill(2) on the pid of a child this process spawned and still owns.
                unsafe { libc::kill(pid, signal) };
                at
            }
            Failure::LinkDown(router, iface) => router.set_link(iface, false)?,
            Failure::Del(ctl, member) => {
                let at = Instant::now();
                ctl.member_del(ANYCAST, member)?;
                at
            }
        })
    }
}

/// Runs one failover of `kind` under the stream and the connections.
pub fn run(kind: Kind) -> Result<Outcome> {
    let scene = Scene::new(kind)?;
    let topo = &scene.topo;
    let sinks = (topo.members.iter())
        .map(|m| UdpSink::start(&m.ns, ANYCAST, UDP_PORT))
        .collect::<Result<Vec<_>>>()?;
    let echoes = (topo.members.iter())
        .map(|m| TcpEcho::start(&m.ns, ANYCAST, TCP_PORT))
        .collect::<Result<Vec<_>>>()?;
    let mut conns = [TcpConns::open(&topo.client, ANYCAST, TCP_PORT, CONNS)?];
    ensure!(
        conns[0].round(0).iter().all(|&ok| ok),
        "a connection failed before the failover"
    );
    let ports = conns[0].local_ports();
    let stream = SpreadStream::start(&topo.client, ANYCAST, UDP_PORT, 40000..40064, GAP)?;
    std::thread::sleep(BEFORE);
    let mut times: Result<(Instant, Instant)> = Err(anyhow::anyhow!("no failover ran"));
    let (_, broke) = rounds_while(&mut conns, 1, || {
        times = (|| {
            // The failure on a thread of its own (a `member del` is a process that runs to
            // its end), the maps watched from here meanwhile.
            let start = Instant::now();
            let failure = scene.failure(kind);
            let (failed, removed) = std::thread::scope(|s| {
                let failing = s.spawn(|| failure.run());
                let removed = scene.removed(start);
                let failed = failing.join().expect("failure thread panicked");
                (failed, removed)
            });
            let (failed, removed) = (failed?, removed?);
            std::thread::sleep(AFTER);
            Ok((failed, removed))
        })();
    });
    let sent = stream.stop_stamped()?;
    let (failed, removed) = times.with_context(|| format!("agent log:\n{}", scene.agent.log()))?;
    // Let the last datagrams land.
    std::thread::sleep(Duration::from_millis(200));
    let mut home: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, sink) in sinks.into_iter().enumerate() {
        for d in sink.stop() {
            if let Some(seq) = d.seq {
                home.insert(seq, i);
            }
        }
    }
    let served = crate::traffic::served_by(echoes);
    let victim_conn: Vec<bool> = (ports.iter())
        .map(|p| served.get(p).is_some_and(|s| s.contains(&VICTIM)))
        .collect();
    let broken: BTreeSet<usize> = broke.into_iter().map(|(_, i)| i).collect();
    let mut out = Outcome {
        kind,
        sent: sent.len(),
        to_dead_member: 0,
        to_victim_after_removal: 0,
        lost_after_removal: 0,
        lost_before_failure: 0,
        removal_ms: removed.duration_since(failed).as_secs_f64() * 1e3,
        survivor_conns: victim_conn.iter().filter(|&&v| !v).count(),
        broken_survivor_conns: (0..CONNS)
            .filter(|&i| !victim_conn[i] && broken.contains(&i))
            .count(),
        victim_conns: victim_conn.iter().filter(|&&v| v).count(),
    };
    for (s, at) in &sent {
        let to = home.get(&s.seq).copied();
        match (to, *at >= removed, *at >= failed) {
            (Some(VICTIM), true, _) => out.to_victim_after_removal += 1,
            (None, true, _) => out.lost_after_removal += 1,
            (Some(VICTIM) | None, false, true) => out.to_dead_member += 1,
            (None, false, false) => out.lost_before_failure += 1,
            _ => {}
        }
    }
    drop(scene);
    Ok(out)
}
