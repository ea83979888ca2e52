//! A router with the agent and member hosts that announce themselves: the topology with the
//! dataplane attached to r0..r3, `anycast-ctl agent` on r1..r3 with a key file, and
//! `announce` started per member by the test. For the tests that need learned members beside
//! their own subject (upgrade, identity probes, IPv6 failover). With IPv6 on the client's link
//! ([`AgentLab::with_stack`]) the agent also takes `2001:db8:53::/48` and the members start
//! without either anycast address on `lo`.
//!
//! The key file lives in the temp directory and is removed with the lab; the agent and the
//! announcers are [`Daemon`] guards.
use std::{
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::topology::ANYCAST6_PREFIX;
use crate::{
    ANYCAST, ANYCAST6, ClientStack, Ctl, Topology, TopologyOptions, daemon::Daemon, wait_until,
};

pub const SECRET_HEX: &str = "5f1c2b3a4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
pub const INTERVAL_MS: u64 = 200;
pub const HOLD_MS: u64 = 600;

pub struct AgentLab {
    pub topo: Topology,
    pub ctl: Ctl,
    pub agent: Option<Daemon>,
    pub key_file: PathBuf,
}

impl AgentLab {
    /// The lab with the agent running and no member yet (members start without the anycast
    /// address: `announce` adds it, and removes it on exit).
    pub fn new() -> Self {
        Self::with_stack(ClientStack::Ipv4)
    }

    /// The same with `stack` on the client's link (and IPv6 towards the members if it has it).
    pub fn with_stack(stack: ClientStack) -> Self {
        Self::build(stack, None)
    }

    /// The IPv4 lab with the dataplane attached in native mode (on veth peers made ready).
    pub fn native() -> Self {
        Self::build(ClientStack::Ipv4, Some("native"))
    }

    fn build(stack: ClientStack, mode: Option<&str>) -> Self {
        let topo = Topology::new(TopologyOptions {
            client_stack: stack,
            ..Default::default()
        })
        .expect("topology");
        for m in &topo.members {
            m.ns.ip(&["addr", "del", "198.51.100.53/32", "dev", "lo"])
                .expect("clearing lo");
            if stack.has_ipv6() {
                let anycast = format!("{ANYCAST6}/128");
                m.ns.ip(&["addr", "del", &anycast, "dev", "lo"])
                    .expect("clearing lo");
            }
        }
        let ctl = Ctl::new(&topo.router);
        let ifaces = topo.router_ifaces();
        let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
        match mode {
            Some(mode) => {
                ctl.attach(&ifaces, mode).expect("attach");
            }
            None => {
                ctl.run(&[&["attach"], &ifaces[..]].concat())
                    .expect("attach");
            }
        }
        let key_file = std::env::temp_dir().join(format!(
            "anycast-lab-key-{}-{}",
            std::process::id(),
            topo.router.name()
        ));
        std::fs::write(
            &key_file,
            format!("[[key]]\nid = 1\nsecret = \"{SECRET_HEX}\"\n"),
        )
        .expect("key file");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .expect("key file mode");
        let mut lab = AgentLab {
            topo,
            ctl,
            agent: None,
            key_file,
        };
        lab.start_agent();
        lab
    }

    /// Starts the agent on r1..r3 (after a previous one was killed, too).
    pub fn start_agent(&mut self) {
        self.start_agent_with(&[]);
    }

    /// Stops the agent and starts it again with `extra` arguments (a `--config`, say).
    pub fn restart_agent_with(&mut self, extra: &[&str]) {
        drop(self.agent.take());
        self.start_agent_with(extra);
    }

    fn start_agent_with(&mut self, extra: &[&str]) {
        let pin = self.ctl.pin_dir().display().to_string();
        let key = self.key_file.display().to_string();
        let mut args = crate::daemon::agent_args(
            &pin,
            &["r1", "r2", "r3"],
            &["198.51.100.0/24"],
            &["--key-file", &key],
        );
        if self.topo.options.client_stack.has_ipv6() {
            args.extend(["--anycast-prefix", ANYCAST6_PREFIX]);
        }
        args.extend(extra.iter().copied());
        let agent = Daemon::spawn_agent(&self.topo.router, "agent", &args).expect("agent");
        self.agent = Some(agent);
    }

    /// Starts `announce 198.51.100.53` on member `member` (0-based) with the lab's interval
    /// and hold and `extra` arguments.
    pub fn announce(&self, member: usize, extra: &[&str]) -> Daemon {
        self.announce_addresses(member, &["198.51.100.53"], extra)
    }

    /// Starts `announce ADDRESSES...` on member `member` (0-based), as [`AgentLab::announce`].
    pub fn announce_addresses(&self, member: usize, addresses: &[&str], extra: &[&str]) -> Daemon {
        self.announce_held(member, addresses, HOLD_MS, extra)
    }

    /// The same with a hold time of `hold_ms`.
    pub fn announce_held(
        &self,
        member: usize,
        addresses: &[&str],
        hold_ms: u64,
        extra: &[&str],
    ) -> Daemon {
        self.announce_timed(member, addresses, (INTERVAL_MS, hold_ms), extra)
    }

    /// The same with these timers (ms).
    pub fn announce_timed(
        &self,
        member: usize,
        addresses: &[&str],
        (interval_ms, hold_ms): (u64, u64),
        extra: &[&str],
    ) -> Daemon {
        let m = &self.topo.members[member];
        let key = self.key_file.display().to_string();
        let interval = format!("{interval_ms}ms");
        let hold = format!("{hold_ms}ms");
        let mut args = vec!["announce"];
        args.extend_from_slice(addresses);
        args.extend([
            "--dev",
            &m.iface,
            "--interval",
            &interval,
            "--hold",
            &hold,
            "--key-file",
            &key,
        ]);
        args.extend_from_slice(extra);
        Daemon::spawn(&m.ns, &format!("announce m{}", member + 1), &args).expect("announce")
    }

    /// The learned members of the anycast address, sorted.
    pub fn learned(&self) -> Vec<Ipv4Addr> {
        (self.learned_of(ANYCAST).into_iter())
            .filter_map(|m| match m {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// The learned members of `anycast` (either family), sorted.
    pub fn learned_of(&self, anycast: impl Into<IpAddr>) -> Vec<IpAddr> {
        let show = self.ctl.show();
        let mut v: Vec<IpAddr> = (show.members_of(anycast).iter())
            .filter(|m| m.source == "learned")
            .map(|m| m.address)
            .collect();
        v.sort();
        v
    }

    /// Waits until exactly `want` are learned; panics with the agent's log otherwise.
    pub fn wait_learned(&self, want: &[Ipv4Addr], timeout: Duration) -> Duration {
        let want: Vec<IpAddr> = want.iter().map(|&a| a.into()).collect();
        self.wait_learned_of(ANYCAST, &want, timeout)
    }

    /// Waits until exactly `want` are learned members of `anycast`; how long that took. Panics
    /// with the agent's log otherwise.
    pub fn wait_learned_of(
        &self,
        anycast: impl Into<IpAddr>,
        want: &[IpAddr],
        timeout: Duration,
    ) -> Duration {
        let anycast = anycast.into();
        let start = Instant::now();
        let mut want = want.to_vec();
        want.sort();
        assert!(
            wait_until(timeout, || self.learned_of(anycast) == want),
            "learned {:?} of {anycast}, wanted {want:?}; agent log:\n{}",
            self.learned_of(anycast),
            self.agent.as_ref().map(Daemon::log).unwrap_or_default()
        );
        start.elapsed()
    }
}

impl Default for AgentLab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AgentLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.key_file);
        let _ = std::fs::remove_file(self.key_file.with_extension("agent.toml"));
    }
}
