//! Route export to BIRD: the router holds `198.51.100.53/32` (and `2001:db8:53::53/128`) in
//! table 201 (protocol 201) while the address has members, BIRD on the router learns it from
//! the kernel and tells an upstream router U by BGP (IPv6 as a second address family of the
//! same session), and U's BIRD puts it into U's kernel.
//!
//! ```text
//!  U: d0 198.18.0.2/30 ---- u0 198.18.0.1/30 :router (DESIGN.md topology, members on r1..r3)
//!     2001:db8:18::2/64      2001:db8:18::1/64  (IPv6 tests only, with IPv6 on the member links)
//! ```
use std::{net::Ipv6Addr, os::unix::fs::PermissionsExt, time::Duration};

use anycast_tests::{
    ANYCAST, Ctl, Netns, Topology, TopologyOptions,
    bird::{self, Bird},
    daemon::Daemon,
    topology::{member_ip, member_ip6},
    wait_until,
};

const SECRET_HEX: &str = "5f1c2b3a4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
/// A foreign route in the export table (another protocol): anycast must never touch it.
const FOREIGN: &str = "198.51.100.99";
/// The IPv6 anycast address, and a foreign IPv6 route of the export table.
const ANYCAST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x53);
const FOREIGN6: &str = "2001:db8:53::99";
/// The router's and U's IPv6 addresses on their link.
const ROUTER6: &str = "2001:db8:18::1";
const UPSTREAM6: &str = "2001:db8:18::2";

struct Lab {
    topo: Topology,
    upstream: Netns,
    ctl: Ctl,
    _birds: [Bird; 2],
}

impl Lab {
    fn new() -> Self {
        let topo = Topology::new(TopologyOptions::default()).expect("topology");
        let upstream = Netns::new("u").expect("upstream namespace");
        link_upstream(&topo.router, &upstream);
        let foreign = format!("{FOREIGN}/32");
        let route = [
            "route", "add", &foreign, "dev", "lo", "proto", "202", "table", "201",
        ];
        topo.router.ip(&route).expect("foreign route");
        let ctl = Ctl::new(&topo.router);
        let ifaces = topo.router_ifaces();
        let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
        ctl.attach(&ifaces, "native").expect("attach");
        ctl.run(&["export", "on"]).expect("export on");
        let birds = [
            Bird::start(&topo.router, &bird::site_bgp("198.18.0.1", "198.18.0.2")).expect("bird"),
            Bird::start(
                &upstream,
                &bird::upstream_bgp("198.18.0.2", "198.18.0.1", "198.18.0.5"),
            )
            .expect("bird"),
        ];
        Lab {
            topo,
            upstream,
            ctl,
            _birds: birds,
        }
    }

    /// U's route to the anycast address, if any.
    fn upstream_route(&self) -> String {
        self.upstream
            .ip(&["route", "show", "198.51.100.53/32"])
            .unwrap_or_default()
    }

    /// The router's export table entries of protocol 201.
    fn exported(&self) -> String {
        self.topo
            .router
            .ip(&["route", "show", "table", "201", "proto", "201"])
            .unwrap_or_default()
    }

    /// Turns IPv6 on where the IPv6 tests need it: the member links (with the members'
    /// addresses), `lo` on the router (the exported routes point at it), the router–U link
    /// (addressed), and puts a foreign IPv6 route into the export table.
    fn enable_ipv6(&self) {
        self.topo
            .enable_member_ipv6()
            .expect("IPv6 on the member links");
        for (ns, dev, cidr) in [
            (&self.topo.router, "u0", format!("{ROUTER6}/64")),
            (&self.upstream, "d0", format!("{UPSTREAM6}/64")),
        ] {
            for iface in ["lo", dev] {
                ns.sysctl(&format!("net.ipv6.conf.{iface}.accept_dad"), "0")
                    .expect("sysctl");
                ns.sysctl(&format!("net.ipv6.conf.{iface}.disable_ipv6"), "0")
                    .expect("sysctl");
            }
            ns.ip(&["addr", "add", &cidr, "dev", dev, "nodad"])
                .expect("IPv6 address");
        }
        let foreign = format!("{FOREIGN6}/128");
        let route = [
            "-6", "route", "add", &foreign, "dev", "lo", "proto", "202", "table", "201",
        ];
        self.router_ip(&route);
    }

    /// The router's IPv6 export table entries of protocol 201.
    fn exported6(&self) -> String {
        let args = ["-6", "route", "show", "table", "201", "proto", "201"];
        self.topo.router.ip(&args).unwrap_or_default()
    }

    /// Waits for the IPv6 export table to hold exactly `ANYCAST6` with `metric` (`None`:
    /// nothing).
    fn wait_metric6(&self, metric: Option<u32>) {
        let want = metric.map_or(String::new(), |m| {
            format!("{ANYCAST6} dev lo metric {m} pref medium")
        });
        let ok = wait_until(Duration::from_secs(5), || self.exported6().trim() == want);
        assert!(
            ok,
            "IPv6 table 201: {:?}, wanted {want:?}",
            self.exported6()
        );
    }

    /// U's BIRD's view of the IPv6 anycast route (`birdc show route all`).
    fn upstream_bird6(&self) -> String {
        let net = format!("{ANYCAST6}/128");
        self._birds[1].birdc(&self.upstream, &["show", "route", "all", &net])
    }

    /// Waits for U to hold the IPv6 anycast route through the router, learned by BGP with MED
    /// `med` (`None`: no route at all, in U's BIRD and in U's kernel).
    fn wait_upstream6(&self, med: Option<u32>, timeout: Duration) {
        let kernel = || {
            let net = format!("{ANYCAST6}/128");
            self.upstream
                .ip(&["-6", "route", "show", &net])
                .unwrap_or_default()
        };
        let ok = wait_until(timeout, || {
            let bird = self.upstream_bird6();
            match med {
                Some(med) => {
                    kernel().contains("dev d0") && bird.contains(&format!("BGP.med: {med}\n"))
                }
                // birdc fails ("Network not found") once U has no route at all.
                None => kernel().trim().is_empty() && !bird.contains("BGP."),
            }
        });
        assert!(
            ok,
            "U's IPv6 route {:?}, U's BIRD:\n{}\n(wanted MED {med:?}); router IPv6 table 201: {:?}",
            kernel(),
            self.upstream_bird6(),
            self.exported6()
        );
    }

    /// `member add|del|set ANYCAST6 MEMBER6 ...` of member `index` (1-based).
    fn member6(&self, verb: &str, index: usize, more: &[&str]) {
        let (a, m) = (ANYCAST6.to_string(), member_ip6(index).to_string());
        let args = [&["member", verb, &a, &m][..], more].concat();
        self.ctl.run(&args).expect("member (IPv6)");
    }

    fn assert_foreign_route6_kept(&self) {
        let args = ["-6", "route", "show", "table", "201"];
        let all = self.topo.router.ip(&args).unwrap();
        assert!(
            all.contains(FOREIGN6),
            "the foreign IPv6 route went: {all:?}"
        );
    }

    /// Waits for U to reach the anycast address through the router (`true`) or not at all.
    fn wait_upstream(&self, present: bool, timeout: Duration) {
        let ok = wait_until(timeout, || {
            self.upstream_route().contains("via 198.18.0.1") == present
        });
        assert!(
            ok,
            "upstream route {:?} (wanted present: {present}); router table 201: {:?}",
            self.upstream_route(),
            self.exported()
        );
    }

    fn wait_metric(&self, metric: u32) {
        let want = format!("198.51.100.53 dev lo metric {metric}");
        let ok = wait_until(Duration::from_secs(5), || self.exported().trim() == want);
        assert!(ok, "table 201: {:?}, wanted {want:?}", self.exported());
    }

    /// `ip ROUTE-ARGS` on the router, which must succeed.
    fn router_ip(&self, args: &[&str]) {
        self.topo.router.ip(args).expect("ip on the router");
    }

    /// `member set` of member `index` (1-based).
    fn set(&self, index: usize, preference: u16, weight: u16) {
        let (m, p, w) = (
            member_ip(index).to_string(),
            preference.to_string(),
            weight.to_string(),
        );
        let args = [
            "member",
            "set",
            "198.51.100.53",
            &m,
            "--preference",
            &p,
            "--weight",
            &w,
        ];
        self.ctl.run(&args).expect("member set");
    }

    /// Adds a route of ours that no address justifies, and removes the one that is justified.
    fn stale_route(&self, drop_justified: bool) {
        self.router_ip(&[
            "route",
            "add",
            "198.51.100.7/32",
            "dev",
            "lo",
            "proto",
            "201",
            "table",
            "201",
        ]);
        if drop_justified {
            self.router_ip(&[
                "route",
                "del",
                "198.51.100.53/32",
                "proto",
                "201",
                "table",
                "201",
            ]);
        }
    }

    fn assert_foreign_route_kept(&self) {
        let all = self
            .topo
            .router
            .ip(&["route", "show", "table", "201"])
            .unwrap();
        assert!(all.contains(FOREIGN), "the foreign route went: {all:?}");
    }

    /// Starts the agent on r1..r3 with the key in `key_file`.
    fn agent(&self, key_file: &std::path::Path) -> Daemon {
        let (key, pin) = (
            key_file.display().to_string(),
            self.ctl.pin_dir().display().to_string(),
        );
        let args = anycast_tests::daemon::agent_args(
            &pin,
            &["r1", "r2", "r3"],
            &["198.51.100.0/24", "2001:db8:53::/48"],
            &["--key-file", &key],
        );
        Daemon::spawn_agent(&self.topo.router, "agent", &args).expect("agent")
    }

    /// Starts `announce ADDRESSES...` on m2 with preference 70.
    fn announce(&self, key_file: &std::path::Path, addresses: &[&str]) -> Daemon {
        let m = &self.topo.members[1];
        m.ns.ip(&["addr", "del", "198.51.100.53/32", "dev", "lo"])
            .expect("clearing lo");
        let key = key_file.display().to_string();
        let mut args = vec!["announce"];
        args.extend_from_slice(addresses);
        args.extend(["--dev", &m.iface, "--interval", "200ms", "--hold", "600ms"]);
        args.extend(["--preference", "70", "--key-file", &key]);
        Daemon::spawn(&m.ns, "announce m2", &args).expect("announce")
    }
}

/// The veth between the router (u0) and U (d0), addressed and up.
fn link_upstream(router: &Netns, upstream: &Netns) {
    let veth = ["link", "add", "u0", "netns", router.name(), "type", "veth"];
    let peer = ["peer", "name", "d0", "netns", upstream.name()];
    anycast_tests::cmd::run("ip", &[&veth[..], &peer[..]].concat()).expect("veth");
    for (ns, dev, cidr) in [
        (router, "u0", "198.18.0.1/30"),
        (upstream, "d0", "198.18.0.2/30"),
    ] {
        ns.ip(&["addr", "add", cidr, "dev", dev]).expect("address");
        ns.ip(&["link", "set", dev, "up"]).expect("link up");
    }
}

#[test]
fn static_members_drive_the_route_and_its_metric() {
    let lab = Lab::new();
    lab.ctl
        .member_add(ANYCAST, member_ip(1))
        .expect("member add");
    lab.wait_metric(100);
    // The first BGP session takes a few seconds to come up.
    lab.wait_upstream(true, Duration::from_secs(30));
    lab.ctl
        .member_add(ANYCAST, member_ip(2))
        .expect("member add");
    lab.set(1, 50, 100);
    lab.wait_metric(50);
    // m1 drained: m2's preference; both drained: the best preference, marked drained.
    lab.set(1, 50, 0);
    lab.wait_metric(100);
    lab.set(2, 100, 0);
    lab.wait_metric(50 + 65_536);
    let show = lab.ctl.json(&["show"]);
    assert_eq!(show["export"]["table"], 201, "{show}");
    assert_eq!(
        show["addresses"][0]["exported_metric"],
        50 + 65_536,
        "{show}"
    );
    lab.ctl
        .member_del(ANYCAST, member_ip(1))
        .expect("member del");
    lab.ctl
        .member_del(ANYCAST, member_ip(2))
        .expect("member del");
    lab.wait_upstream(false, Duration::from_secs(5));
    assert_eq!(lab.exported().trim(), "");
    // Reconciliation: a stale route of ours goes, the missing one comes back.
    lab.ctl
        .member_add(ANYCAST, member_ip(3))
        .expect("member add");
    lab.stale_route(true);
    lab.ctl.run(&["export", "on"]).expect("export on");
    lab.wait_metric(100);
    lab.wait_upstream(true, Duration::from_secs(5));
    lab.ctl.run(&["export", "off"]).expect("export off");
    lab.wait_upstream(false, Duration::from_secs(5));
    assert_eq!(lab.exported().trim(), "");
    lab.assert_foreign_route_kept();
}

#[test]
fn learned_members_drive_the_route_and_the_last_detach_withdraws_it() {
    let lab = Lab::new();
    let key_file = std::env::temp_dir().join(format!("anycast-key-{}", lab.topo.router.name()));
    std::fs::write(
        &key_file,
        format!("[[key]]\nid = 1\nsecret = \"{SECRET_HEX}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut agent = lab.agent(&key_file);
    let mut announce = lab.announce(&key_file, &["198.51.100.53"]);
    lab.wait_metric(70);
    lab.wait_upstream(true, Duration::from_secs(30));
    // The announcer dies: the member expires after its hold time and the route goes.
    announce.kill();
    lab.wait_upstream(false, Duration::from_secs(5));
    assert_eq!(lab.exported().trim(), "", "agent log:\n{}", agent.log());
    // A restarted agent reconciles: a stale route of ours goes.
    agent.kill();
    lab.stale_route(false);
    let agent = lab.agent(&key_file);
    let gone = wait_until(Duration::from_secs(5), || lab.exported().trim().is_empty());
    assert!(gone, "{:?}; agent log:\n{}", lab.exported(), agent.log());
    lab.ctl
        .member_add(ANYCAST, member_ip(1))
        .expect("member add");
    lab.wait_metric(100);
    let ifaces = lab.topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    lab.ctl.detach(&ifaces).expect("detach");
    assert_eq!(lab.exported().trim(), "");
    lab.assert_foreign_route_kept();
    let _ = std::fs::remove_file(&key_file);
}

#[test]
fn ipv6_members_drive_a_128_route_that_u_learns_with_the_metric_as_med() {
    let lab = Lab::new();
    lab.enable_ipv6();
    lab.member6("add", 1, &[]);
    lab.wait_metric6(Some(100));
    // The first BGP session takes a few seconds to come up.
    lab.wait_upstream6(Some(100), Duration::from_secs(30));
    lab.member6("add", 2, &[]);
    lab.member6("set", 1, &["--preference", "50", "--weight", "100"]);
    lab.wait_metric6(Some(50));
    lab.wait_upstream6(Some(50), Duration::from_secs(5));
    // Both drained: the best preference, marked drained, and U's MED follows.
    lab.member6("set", 1, &["--preference", "50", "--weight", "0"]);
    lab.member6("set", 2, &["--preference", "100", "--weight", "0"]);
    lab.wait_metric6(Some(50 + 65_536));
    lab.wait_upstream6(Some(50 + 65_536), Duration::from_secs(5));
    // An IPv4 address beside it: each family has its own route, in the same table.
    lab.ctl
        .member_add(ANYCAST, member_ip(3))
        .expect("member add");
    lab.wait_metric(100);
    let show = lab.ctl.json(&["show"]);
    let addresses = show["addresses"].as_array().expect("addresses");
    let v6 = (addresses.iter())
        .find(|a| a["address"] == ANYCAST6.to_string())
        .expect("the IPv6 address in show");
    assert_eq!(v6["exported_metric"], 50 + 65_536, "{show}");
    let status = lab.ctl.json(&["status"]);
    assert_eq!(status["exported"]["ipv6"], 1, "{status}");
    assert_eq!(status["exported"]["ipv4"], 1, "{status}");
    // Reconciliation: a stale IPv6 route of ours goes, the missing one comes back, the
    // foreign one stays.
    lab.router_ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:53::7/128",
        "dev",
        "lo",
        "proto",
        "201",
        "table",
        "201",
    ]);
    lab.router_ip(&[
        "-6",
        "route",
        "del",
        "2001:db8:53::53/128",
        "proto",
        "201",
        "table",
        "201",
    ]);
    lab.ctl.run(&["export", "on"]).expect("export on");
    lab.wait_metric6(Some(50 + 65_536));
    lab.assert_foreign_route6_kept();
    // The last member goes: the route goes, and U withdraws it; IPv4's stays.
    lab.member6("del", 1, &[]);
    lab.wait_metric6(Some(100 + 65_536));
    lab.member6("del", 2, &[]);
    lab.wait_metric6(None);
    lab.wait_upstream6(None, Duration::from_secs(5));
    lab.wait_metric(100);
    // Export off takes both families' routes and leaves the foreign ones.
    lab.member6("add", 1, &[]);
    lab.wait_metric6(Some(100));
    lab.ctl.run(&["export", "off"]).expect("export off");
    assert_eq!(lab.exported6().trim(), "");
    assert_eq!(lab.exported().trim(), "");
    lab.assert_foreign_route6_kept();
    lab.assert_foreign_route_kept();
}

#[test]
fn a_learned_ipv6_member_drives_its_route_and_a_restarted_agent_reconciles_it() {
    let lab = Lab::new();
    lab.enable_ipv6();
    let key_file = std::env::temp_dir().join(format!("anycast-key-{}", lab.topo.router.name()));
    std::fs::write(
        &key_file,
        format!("[[key]]\nid = 1\nsecret = \"{SECRET_HEX}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut agent = lab.agent(&key_file);
    let anycast6 = ANYCAST6.to_string();
    let mut announce = lab.announce(&key_file, &["198.51.100.53", &anycast6]);
    lab.wait_metric(70);
    lab.wait_metric6(Some(70));
    lab.wait_upstream6(Some(70), Duration::from_secs(30));
    // The announcer dies: the member expires and both routes go.
    announce.kill();
    lab.wait_metric6(None);
    lab.wait_upstream6(None, Duration::from_secs(5));
    assert_eq!(lab.exported().trim(), "", "agent log:\n{}", agent.log());
    // A restarted agent reconciles: a stale IPv6 route of ours goes, the foreign one stays.
    agent.kill();
    lab.router_ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:53::7/128",
        "dev",
        "lo",
        "proto",
        "201",
        "table",
        "201",
    ]);
    let agent = lab.agent(&key_file);
    let gone = wait_until(Duration::from_secs(5), || lab.exported6().trim().is_empty());
    assert!(gone, "{:?}; agent log:\n{}", lab.exported6(), agent.log());
    lab.assert_foreign_route6_kept();
    // The last detach withdraws the IPv6 routes too.
    lab.member6("add", 1, &[]);
    lab.wait_metric6(Some(100));
    let ifaces = lab.topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    lab.ctl.detach(&ifaces).expect("detach");
    assert_eq!(lab.exported6().trim(), "");
    lab.assert_foreign_route6_kept();
    let _ = std::fs::remove_file(&key_file);
}
