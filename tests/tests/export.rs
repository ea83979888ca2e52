//! Route export to BIRD: the router holds `198.51.100.53/32` in table 201 (protocol 201) while
//! the address has members, BIRD on the router learns it from the kernel and tells an upstream
//! router U by BGP, and U's BIRD puts it into U's kernel.
//!
//! ```text
//!  U: d0 198.18.0.2/30 ---- u0 198.18.0.1/30 :router (DESIGN.md topology, members on r1..r3)
//! ```
use std::{os::unix::fs::PermissionsExt, time::Duration};

use anycast_tests::{
    ANYCAST, Ctl, Netns, Topology, TopologyOptions,
    bird::{self, Bird},
    daemon::Daemon,
    topology::member_ip,
    wait_until,
};

const SECRET_HEX: &str = "5f1c2b3a4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
/// A foreign route in the export table (another protocol): anycast must never touch it.
const FOREIGN: &str = "198.51.100.99";

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
        anycast_tests::cmd::run(
            "ip",
            &[
                "link",
                "add",
                "u0",
                "netns",
                topo.router.name(),
                "type",
                "veth",
                "peer",
                "name",
                "d0",
                "netns",
                upstream.name(),
            ],
        )
        .expect("veth");
        for (ns, dev, cidr) in [
            (&topo.router, "u0", "198.18.0.1/30"),
            (&upstream, "d0", "198.18.0.2/30"),
        ] {
            ns.ip(&["addr", "add", cidr, "dev", dev]).expect("address");
            ns.ip(&["link", "set", dev, "up"]).expect("link up");
        }
        topo.router
            .ip(&[
                "route",
                "add",
                &format!("{FOREIGN}/32"),
                "dev",
                "lo",
                "proto",
                "202",
                "table",
                "201",
            ])
            .expect("foreign route");
        let ctl = Ctl::new(&topo.router);
        let ifaces = topo.router_ifaces();
        let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
        ctl.run(&[&["attach"], &ifaces[..]].concat())
            .expect("attach");
        ctl.run(&["export", "on"]).expect("export on");
        let birds = [
            Bird::start(
                &topo.router,
                &bird::router_config("198.18.0.1", "198.18.0.2"),
            )
            .expect("bird"),
            Bird::start(
                &upstream,
                &bird::upstream_config("198.18.0.2", "198.18.0.1"),
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
    let m1 = member_ip(1).to_string();
    lab.ctl
        .run(&["member", "set", "198.51.100.53", &m1, "--preference", "50"])
        .expect("member set");
    lab.wait_metric(50);
    lab.ctl
        .run(&[
            "member",
            "set",
            "198.51.100.53",
            &m1,
            "--preference",
            "50",
            "--weight",
            "0",
        ])
        .expect("member set");
    lab.wait_metric(100);
    let m2 = member_ip(2).to_string();
    lab.ctl
        .run(&["member", "set", "198.51.100.53", &m2, "--weight", "0"])
        .expect("member set");
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
    lab.topo
        .router
        .ip(&[
            "route",
            "add",
            "198.51.100.7/32",
            "dev",
            "lo",
            "proto",
            "201",
            "table",
            "201",
        ])
        .expect("stale route");
    lab.topo
        .router
        .ip(&[
            "route",
            "del",
            "198.51.100.53/32",
            "proto",
            "201",
            "table",
            "201",
        ])
        .expect("route del");
    lab.ctl.run(&["export", "on"]).expect("export on");
    lab.wait_metric(100);
    lab.wait_upstream(true, Duration::from_secs(5));
    lab.ctl.run(&["export", "off"]).expect("export off");
    lab.wait_upstream(false, Duration::from_secs(5));
    assert_eq!(lab.exported().trim(), "");
    let all = lab
        .topo
        .router
        .ip(&["route", "show", "table", "201"])
        .unwrap();
    assert!(all.contains(FOREIGN), "the foreign route went: {all:?}");
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
    let key = key_file.display().to_string();
    let pin = lab.ctl.pin_dir().display().to_string();
    let agent_args = [
        "--pin-dir",
        &pin,
        "agent",
        "--dev",
        "r1",
        "--dev",
        "r2",
        "--dev",
        "r3",
        "--anycast-prefix",
        "198.51.100.0/24",
        "--key-file",
        &key,
    ];
    let mut agent = Daemon::spawn(&lab.topo.router, "agent", &agent_args).expect("agent");
    let m = &lab.topo.members[1];
    m.ns.ip(&["addr", "del", "198.51.100.53/32", "dev", "lo"])
        .expect("clearing lo");
    let announce_args = [
        "announce",
        "198.51.100.53",
        "--dev",
        &m.iface,
        "--interval",
        "200ms",
        "--hold",
        "600ms",
        "--preference",
        "70",
        "--key-file",
        &key,
    ];
    let mut announce = Daemon::spawn(&m.ns, "announce m2", &announce_args).expect("announce");
    lab.wait_metric(70);
    lab.wait_upstream(true, Duration::from_secs(30));
    // The announcer dies: the member expires after its hold time and the route goes.
    announce.kill();
    lab.wait_upstream(false, Duration::from_secs(5));
    assert_eq!(lab.exported().trim(), "", "agent log:\n{}", agent.log());
    // A restarted agent reconciles: a stale route of ours goes.
    agent.kill();
    lab.topo
        .router
        .ip(&[
            "route",
            "add",
            "198.51.100.7/32",
            "dev",
            "lo",
            "proto",
            "201",
            "table",
            "201",
        ])
        .expect("stale route");
    let _agent = Daemon::spawn(&lab.topo.router, "agent", &agent_args).expect("agent");
    assert!(
        wait_until(Duration::from_secs(5), || lab.exported().trim().is_empty()),
        "{:?}",
        lab.exported()
    );
    lab.ctl
        .member_add(ANYCAST, member_ip(1))
        .expect("member add");
    lab.wait_metric(100);
    let ifaces = lab.topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    lab.ctl.detach(&ifaces).expect("detach");
    assert_eq!(lab.exported().trim(), "");
    let all = lab
        .topo
        .router
        .ip(&["route", "show", "table", "201"])
        .unwrap();
    assert!(all.contains(FOREIGN), "the foreign route went: {all:?}");
    let _ = std::fs::remove_file(&key_file);
}
