//! Two anycast sites behind one upstream router (DESIGN.md, "Beyond one router"), built from
//! namespaces and veth pairs:
//!
//! ```text
//!  client c0 192.0.2.10/24 ---- uc 192.0.2.1/24  U (BIRD)
//!                                 ua 198.18.0.2/30 ---- u0 198.18.0.1/30  site A (agent + BIRD)
//!                                                         r1, r2 -> m1 203.0.113.2, m2 .6
//!                                 ub 198.18.0.6/30 ---- u0 198.18.0.5/30  site B (agent + BIRD)
//!                                                         r3, r4 -> m3 203.0.113.10, m4 .14
//! ```
//!
//! Each site router has the dataplane attached natively to `u0` and its member links, runs
//! `anycast-ctl agent` on its member links with export on (table 201, proto 201), and BIRD with
//! `contrib/bird/site-bgp.conf` (or `site-ospf.conf`); U runs `upstream-bgp.conf` (or
//! `upstream-ospf.conf`) and installs what it learns in its main table, ECMP across equal
//! sites (L4 hash). Members announce 198.51.100.53 with `anycast-ctl announce` when a test says
//! so. The members' replies go back through their site router, which routes the client's
//! subnet via U.
//!
//! [`Sites::enable_ipv6`] adds IPv6 for the IPv6 tests: `2001:db8:18:1::/64` on A's link to U
//! (A `::1`, U `::2`), `2001:db8:18:2::/64` on B's (and their link-local addresses, for
//! OSPFv3), the client's link as in [`crate::topology`] (client `2001:db8:192::10`, U `::1`),
//! the member links likewise, each member serving [`ANYCAST6`] on `lo`, IPv6 forwarding on U
//! and the site routers, IPv6 on the site routers' `lo` (the exported `/128` routes point at
//! it); the agents then also learn `2001:db8:53::/48` and the members announce
//! [`ANYCAST6`] beside [`ANYCAST`] (dual-stack). BGP carries IPv6 as a second address family
//! of the IPv4 sessions; OSPF runs OSPFv3 beside OSPFv2.
//!
//! Invariants: as in [`crate::topology`] (veths made inside their namespaces, GRO on and TX
//! checksum offload off on every veth, rp_filter off, IPv6 off unless enabled). Dropping
//! [`Sites`] kills the announcers, agents and BIRDs first, then removes the pin directories,
//! then the namespaces.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    ANYCAST, Ctl, Netns,
    bird::{self, Bird},
    daemon::{Daemon, KeyFile},
    topology::{self, ClientMode, Member},
};

/// U's address towards site A, and site A's towards U.
pub const U_TO_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SITE_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// U's address towards site B, and site B's towards U.
pub const U_TO_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 6);
pub const SITE_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
/// The IPv6 anycast address of the IPv6 tests.
pub const ANYCAST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x53);
const SECRET: [u8; 32] = [0x5a; 32];
const KEY_ID: u32 = 9;

/// The routing protocol between the sites and U.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    Bgp,
    Ospf,
}

/// What the members of a site announce.
#[derive(Debug, Clone, Copy)]
pub struct Announce {
    pub interval_ms: u64,
    pub hold_ms: u64,
    pub preference: u16,
    pub weight: u16,
}

impl Announce {
    /// Fast timers (interval 100 ms, hold 300 ms), preference 100, weight 100.
    pub const FAST: Announce = Announce {
        interval_ms: 100,
        hold_ms: 300,
        preference: 100,
        weight: 100,
    };

    pub fn preference(self, preference: u16) -> Self {
        Announce { preference, ..self }
    }

    pub fn weight(self, weight: u16) -> Self {
        Announce { weight, ..self }
    }
}

/// One site: a router namespace with its members, agent and BIRD.
pub struct Site {
    pub name: &'static str,
    /// The announcer of each member, while it runs.
    pub announcers: Vec<Option<Daemon>>,
    pub agent: Option<Daemon>,
    pub bird: Option<Bird>,
    /// The agent's configuration file, if it has one.
    config: Option<PathBuf>,
    pub ctl: Ctl,
    pub members: Vec<Member>,
    pub router: Netns,
    /// The router's address towards U.
    pub address: Ipv4Addr,
    /// IPv6 is on ([`Sites::enable_ipv6`]): the agent learns IPv6 and the members announce
    /// [`ANYCAST6`] too.
    ipv6: bool,
}

/// The whole network; see the module doc.
pub struct Sites {
    pub upstream_bird: Option<Bird>,
    pub a: Site,
    pub b: Site,
    pub upstream: Netns,
    pub client: Netns,
    pub key: KeyFile,
    pub routing: Routing,
}

impl Sites {
    /// Builds the network, attaches both dataplanes with export on, starts both agents, and
    /// (with `routing`) BIRD everywhere; no member announces yet.
    pub fn new(routing: Option<Routing>) -> Result<Self> {
        let client = Netns::new("c")?;
        let upstream = Netns::new("u")?;
        for ns in [&client, &upstream] {
            topology::base_sysctls(ns)?;
        }
        upstream.sysctl("net.ipv4.ip_forward", "1")?;
        // ECMP over both sites by the 5-tuple, so that the client's flows spread.
        upstream.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        link(
            &client,
            "c0",
            "192.0.2.10/24",
            &upstream,
            "uc",
            "192.0.2.1/24",
        )?;
        client.ip(&["route", "add", "default", "via", "192.0.2.1"])?;
        let tag = upstream.name().to_string();
        let key = KeyFile::new(&tag, KEY_ID, &SECRET)?;
        let a = Site::new("A", [1, 2], (SITE_A, U_TO_A), (&upstream, "ua"))?;
        let b = Site::new("B", [3, 4], (SITE_B, U_TO_B), (&upstream, "ub"))?;
        let mut sites = Sites {
            upstream_bird: None,
            a,
            b,
            upstream,
            client,
            key,
            routing: routing.unwrap_or(Routing::Bgp),
        };
        for site in [&mut sites.a, &mut sites.b] {
            site.start_agent(sites.key.path(), None)?;
        }
        if routing.is_some() {
            sites.start_birds()?;
        }
        Ok(sites)
    }

    /// Starts BIRD on U and at both sites.
    pub fn start_birds(&mut self) -> Result<()> {
        let (a, u_a, b, u_b) = (
            SITE_A.to_string(),
            U_TO_A.to_string(),
            SITE_B.to_string(),
            U_TO_B.to_string(),
        );
        let routing = self.routing;
        let upstream = match routing {
            Routing::Bgp => bird::upstream_bgp(&u_a, &a, &b),
            Routing::Ospf => bird::upstream_ospf(&u_a),
        };
        self.upstream_bird = Some(Bird::start(&self.upstream, &upstream)?);
        for (s, me, peer) in [(&mut self.a, &a, &u_a), (&mut self.b, &b, &u_b)] {
            let config = match routing {
                Routing::Bgp => bird::site_bgp(me, peer),
                Routing::Ospf => bird::site_ospf(me),
            };
            s.bird = Some(Bird::start(&s.router, &config)?);
        }
        Ok(())
    }

    /// The network dual-stack ([`Sites::enable_ipv6`]) with BIRD (`routing`) started after.
    pub fn dual_stack(routing: Routing) -> Result<Self> {
        let mut sites = Sites::new(None)?;
        sites.enable_ipv6()?;
        sites.routing = routing;
        sites.start_birds()?;
        Ok(sites)
    }

    /// Turns IPv6 on (see the module doc) and restarts both agents to learn IPv6 too. Call it
    /// before BIRD starts ([`Sites::dual_stack`]): BIRD takes a session's IPv6 next hop from
    /// the link's addresses when the session comes up.
    pub fn enable_ipv6(&mut self) -> Result<()> {
        let key = self.key.path().to_path_buf();
        topology::client_link_ipv6(&self.client, &self.upstream, "uc", ClientMode::Routed)?;
        let client_net = format!("{}/64", topology::CLIENT_IP6);
        for (site, u_iface) in [(&mut self.a, "ua"), (&mut self.b, "ub")] {
            let mine = site.address6();
            let u = Ipv6Addr::new(0x2001, 0xdb8, 0x18, mine.segments()[3], 0, 0, 0, 2);
            for (ns, iface, ip) in [(&site.router, "u0", mine), (&self.upstream, u_iface, u)] {
                for dev in ["lo", iface] {
                    ns.sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0")?;
                    ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0")?;
                }
                ns.ip(&["addr", "add", &format!("{ip}/64"), "dev", iface, "nodad"])?;
            }
            site.router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            (site.router).ip(&["-6", "route", "add", &client_net, "via", &u.to_string()])?;
            for m in &site.members {
                topology::member_ipv6(&site.router, m)?;
                topology::member_serves_ipv6(m)?;
            }
            site.ipv6 = true;
            site.start_agent(&key, None)?;
        }
        Ok(())
    }

    /// What U's BIRD knows of the IPv6 anycast route (`birdc show route all`; BIRD's error
    /// message when it has none).
    pub fn upstream_bird6(&self) -> String {
        let net = format!("{ANYCAST6}/128");
        (self.upstream_bird.as_ref()).map_or(String::new(), |b| {
            b.birdc(&self.upstream, &["show", "route", "all", &net])
        })
    }

    /// The sites, A first.
    pub fn sites(&mut self) -> [&mut Site; 2] {
        [&mut self.a, &mut self.b]
    }

    /// U's route to the anycast address, as `ip route` prints it (empty if none).
    pub fn upstream_route(&self) -> String {
        self.upstream_route_to(ANYCAST.into())
    }

    /// The sites U's route goes through (A, B, both or none).
    pub fn upstream_via(&self) -> (bool, bool) {
        self.upstream_via_to(ANYCAST.into())
    }

    /// Waits up to `timeout` for U's route to go through exactly the sites `via` names.
    pub fn wait_via(&self, via: (bool, bool), timeout: Duration) -> Result<()> {
        self.wait_via_to(ANYCAST.into(), via, timeout)
    }

    /// U's host route to `anycast` ([`ANYCAST`] or [`ANYCAST6`]), as `ip route` prints it
    /// (empty if none).
    pub fn upstream_route_to(&self, anycast: IpAddr) -> String {
        let (family, net) = match anycast {
            IpAddr::V4(_) => ("-4", format!("{anycast}/32")),
            IpAddr::V6(_) => ("-6", format!("{anycast}/128")),
        };
        (self.upstream.ip(&[family, "route", "show", &net])).unwrap_or_default()
    }

    /// The sites U's route to `anycast` goes through (A, B, both or none), by its next hops'
    /// interfaces (`ua`, `ub`): the same for BGP's next hops and OSPFv3's link-local ones.
    pub fn upstream_via_to(&self, anycast: IpAddr) -> (bool, bool) {
        let route = self.upstream_route_to(anycast);
        let words: Vec<&str> = route.split_whitespace().collect();
        let through = |iface| words.windows(2).any(|w| w == ["dev", iface]);
        (through("ua"), through("ub"))
    }

    /// Waits up to `timeout` for U's route to `anycast` to go through exactly the sites `via`
    /// names.
    pub fn wait_via_to(&self, anycast: IpAddr, via: (bool, bool), timeout: Duration) -> Result<()> {
        if crate::wait_until(timeout, || self.upstream_via_to(anycast) == via) {
            return Ok(());
        }
        anyhow::bail!(
            "U's route {:?} is not via (A, B) = {via:?} after {timeout:?}; A exports {:?}, B \
             exports {:?}; U's BIRD:\n{}",
            self.upstream_route_to(anycast),
            self.a.exported_to(anycast),
            self.b.exported_to(anycast),
            self.upstream_bird.as_ref().map_or(String::new(), |b| b
                .birdc(&self.upstream, &["show", "route", "all"]))
        )
    }
}

impl Site {
    /// A router namespace linked to U (`u0`, `address`/30) with members `indexes` on
    /// `r<i>`, the dataplane attached natively to all of them and export on.
    fn new(
        name: &'static str,
        indexes: [usize; 2],
        (address, gateway): (Ipv4Addr, Ipv4Addr),
        (upstream, u_iface): (&Netns, &str),
    ) -> Result<Self> {
        let router = Netns::new(&format!("s{}", name.to_lowercase()))?;
        topology::base_sysctls(&router)?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        link(
            &router,
            "u0",
            &format!("{address}/30"),
            upstream,
            u_iface,
            &format!("{gateway}/30"),
        )?;
        router.ip(&["route", "add", "192.0.2.0/24", "via", &gateway.to_string()])?;
        let mut members = Vec::new();
        for index in indexes {
            let member = topology::build_member(&router, index)?;
            topology::offloads(&member.ns, &member.iface)?;
            topology::offloads(&router, &member.router_iface)?;
            members.push(member);
        }
        let ctl = Ctl::new(&router);
        let mut ifaces = vec!["u0".to_string()];
        ifaces.extend(members.iter().map(|m| m.router_iface.clone()));
        let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
        ctl.attach(&ifaces, "native")?;
        ctl.run(&["export", "on"])?;
        Ok(Site {
            name,
            announcers: members.iter().map(|_| None).collect(),
            agent: None,
            bird: None,
            config: None,
            ctl,
            members,
            router,
            address,
            ipv6: false,
        })
    }

    /// (Re)starts the agent on the member links; `config` is the text of its configuration
    /// file, if any (the previous one is kept when `None` on a restart).
    pub fn start_agent(&mut self, key: &std::path::Path, config: Option<&str>) -> Result<()> {
        self.agent = None;
        if let Some(text) = config {
            let path =
                std::env::temp_dir().join(format!("anycast-agent-{}.toml", self.router.name()));
            std::fs::write(&path, text).context("writing the agent's configuration")?;
            self.config = Some(path);
        }
        let pin = self.ctl.pin_dir().display().to_string();
        let key = key.display().to_string();
        let devs: Vec<&str> = self
            .members
            .iter()
            .map(|m| m.router_iface.as_str())
            .collect();
        let prefixes = if self.ipv6 {
            &["198.51.100.0/24", "2001:db8:53::/48"][..]
        } else {
            &["198.51.100.0/24"][..]
        };
        let mut args = crate::daemon::agent_args(&pin, &devs, prefixes, &["--key-file", &key]);
        let config = self.config.as_ref().map(|p| p.display().to_string());
        if let Some(path) = &config {
            args.extend(["--config", path]);
        }
        // Listening before anyone announces.
        let agent = Daemon::spawn_agent(&self.router, &format!("agent {}", self.name), &args)?;
        self.agent = Some(agent);
        Ok(())
    }

    /// Starts (or restarts) the announcer of member `i` (0-based) with `how`.
    pub fn announce(&mut self, i: usize, key: &std::path::Path, how: Announce) -> Result<()> {
        self.announcers[i] = None;
        let m = &self.members[i];
        let (interval, hold) = (
            format!("{}ms", how.interval_ms),
            format!("{}ms", how.hold_ms),
        );
        let (pref, weight) = (how.preference.to_string(), how.weight.to_string());
        let (key, anycast6) = (key.display().to_string(), ANYCAST6.to_string());
        let mut args = vec!["announce", "198.51.100.53"];
        if self.ipv6 {
            args.push(&anycast6);
        }
        args.extend([
            "--dev",
            &m.iface,
            "--interval",
            &interval,
            "--hold",
            &hold,
            "--preference",
            &pref,
            "--weight",
            &weight,
            "--key-file",
            &key,
        ]);
        let name = format!("announce {}", m.iface);
        self.announcers[i] = Some(Daemon::spawn(&m.ns, &name, &args)?);
        Ok(())
    }

    /// Starts every member's announcer with `how`.
    pub fn announce_all(&mut self, key: &std::path::Path, how: Announce) -> Result<()> {
        (0..self.members.len()).try_for_each(|i| self.announce(i, key, how))
    }

    /// `kill -9` of every announcer: the members die without a leave.
    pub fn kill_announcers(&mut self) {
        for announcer in self.announcers.iter_mut().flatten() {
            announcer.kill();
        }
    }

    /// The routes of protocol 201 in table 201, as `ip route` prints them.
    pub fn exported(&self) -> String {
        self.router
            .ip(&["route", "show", "table", "201", "proto", "201"])
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The IPv6 routes of protocol 201 in table 201, as `ip -6 route` prints them.
    pub fn exported6(&self) -> String {
        let args = ["-6", "route", "show", "table", "201", "proto", "201"];
        self.router.ip(&args).unwrap_or_default().trim().to_string()
    }

    /// The routes of `anycast`'s family in table 201: [`Site::exported`] or
    /// [`Site::exported6`].
    pub fn exported_to(&self, anycast: IpAddr) -> String {
        match anycast {
            IpAddr::V4(_) => self.exported(),
            IpAddr::V6(_) => self.exported6(),
        }
    }

    /// The site's IPv6 address towards U: `2001:db8:18:<1 for A, 2 for B>::1`.
    pub fn address6(&self) -> Ipv6Addr {
        let link = if self.name == "A" { 1 } else { 2 };
        Ipv6Addr::new(0x2001, 0xdb8, 0x18, link, 0, 0, 0, 1)
    }

    /// The agent's log so far (for messages).
    pub fn agent_log(&self) -> String {
        self.agent.as_ref().map_or(String::new(), Daemon::log)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.announcers.clear();
        self.agent = None;
        self.bird = None;
        if let Some(path) = &self.config {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A veth `a_if`@`a` <-> `b_if`@`b`, addressed, up, GRO on and TX checksum offload off.
fn link(a: &Netns, a_if: &str, a_cidr: &str, b: &Netns, b_if: &str, b_cidr: &str) -> Result<()> {
    topology::veth(a, a_if, b, b_if)?;
    for (ns, iface, cidr) in [(a, a_if, a_cidr), (b, b_if, b_cidr)] {
        topology::configure(ns, iface, cidr)?;
        topology::offloads(ns, iface)?;
    }
    Ok(())
}
