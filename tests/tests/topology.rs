//! End-to-end tests of the product on the DESIGN.md topology: `anycast-ctl` attaches the XDP
//! dataplane to the router's interfaces, members are added by address, and real UDP/TCP traffic
//! from the client must reach exactly one member per flow, with counters that add up.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use anycast_tests::ctl::{Show, Stats};
use anycast_tests::frames::{IPPROTO_TCP, IPPROTO_UDP};
use anycast_tests::netns::format_mac;
use anycast_tests::topology::{CLIENT_IFACE, ROUTER_CLIENT_IFACE, member_ip};
use anycast_tests::traffic::{TCP_PORT, TcpRun, UDP_PORT, UdpRun, send_udp, tcp_round, udp_round};
use anycast_tests::{ANYCAST, ClientMode, Ctl, Topology, TopologyOptions, wait_until};
use serde_json::Value;

/// Ethernet + IPv4 + UDP headers + the 8-byte sequence number: what XDP sees per datagram.
const UDP_FRAME_LEN: u64 = 14 + 20 + 8 + 8;
/// A port nothing listens on, for traffic that must not reach a sink.
const WARM_UP_PORT: u16 = 9;

/// A router with the dataplane attached on every interface and all members configured.
struct Session {
    // Dropped first: the pins go before the namespaces.
    ctl: Ctl,
    topo: Topology,
}

impl Session {
    /// What an operator does: build the network, `attach r0 r1 r2 r3 --mode native`, then
    /// `member add 198.51.100.53 <member>` for each member, and wait until `show` reports
    /// every member resolved to the right interface and MAC.
    fn start(client_mode: ClientMode) -> Self {
        let topo = Topology::new(TopologyOptions {
            members: 3,
            client_mode,
            ..Default::default()
        })
        .expect("build the test topology");
        let ctl = Ctl::new(&topo.router);
        let ifaces = topo.router_ifaces();
        let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
        ctl.attach(&ifaces, "native").expect("attach the dataplane");
        let session = Session { ctl, topo };
        session.assert_attached(&ifaces);
        for member in session.topo.member_ips() {
            session
                .ctl
                .member_add(ANYCAST, member)
                .expect("add a member");
        }
        session.assert_members_resolved(&session.topo.member_ips());
        session
    }

    /// `status` lists exactly `ifaces`, natively attached, with the program the kernel reports.
    fn assert_attached(&self, ifaces: &[&str]) {
        let status = self.ctl.status();
        let names: Vec<&str> = status.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(sorted(names), sorted(ifaces.to_vec()), "status: {status:?}");
        for iface in &status.interfaces {
            assert_eq!(iface.mode, "native", "{iface:?}");
            assert_eq!(
                iface.ifindex,
                self.topo.router.ifindex(&iface.name).unwrap(),
                "{iface:?}"
            );
            assert_eq!(
                self.topo.router.xdp_prog_ids(&iface.name).unwrap(),
                vec![u64::from(iface.program_id)],
                "status and the kernel disagree on {}'s XDP program",
                iface.name
            );
        }
    }

    /// `show` lists exactly `members` for the anycast address, each with its router interface
    /// and its real MAC (waits up to 5 s for the tool to resolve them).
    fn assert_members_resolved(&self, members: &[Ipv4Addr]) {
        let resolved = |show: &Show| {
            let listed = show.members_of(ANYCAST);
            listed.len() == members.len() && listed.iter().all(|m| m.mac_known)
        };
        wait_until(Duration::from_secs(5), || resolved(&self.ctl.show()));
        let show = self.ctl.show();
        let listed = show.members_of(ANYCAST);
        assert_eq!(
            sorted(listed.iter().map(|m| m.address).collect()),
            sorted(members.iter().map(|&m| std::net::IpAddr::V4(m)).collect()),
            "show: {show:?}"
        );
        for shown in listed {
            let member = self.topo.member(shown.address);
            let mac = format_mac(member.ns.link_mac(&member.iface).unwrap());
            assert!(
                shown.mac_known,
                "MAC of {} not resolved: {show:?}",
                shown.address
            );
            assert_eq!(shown.interface, member.router_iface, "{shown:?}");
            assert_eq!(shown.mac.as_deref(), Some(mac.as_str()), "{shown:?}");
        }
    }

    /// UDP from the client to the anycast address, received by sinks on every member.
    fn udp(&self, src_ports: Range<u16>, per_port: usize) -> UdpRun {
        udp_round(
            &self.topo.client,
            &self.topo.member_namespaces(),
            ANYCAST,
            UDP_PORT,
            src_ports,
            per_port,
        )
        .expect("UDP round")
    }

    /// TCP echo sessions from the client to the anycast address, served on every member.
    fn tcp(&self, conns: usize, msgs: usize) -> TcpRun {
        tcp_round(
            &self.topo.client,
            &self.topo.member_namespaces(),
            ANYCAST,
            TCP_PORT,
            conns,
            msgs,
        )
        .expect("TCP round")
    }

    fn stats(&self) -> Stats {
        self.ctl.stats()
    }

    /// The client's neighbour entry for `addr` on c0, once it has a MAC (waits up to 5 s).
    fn client_neighbour_mac(&self, addr: Ipv4Addr) -> Option<String> {
        let lookup = || {
            let out = self
                .topo
                .client
                .ip(&[
                    "-j",
                    "neigh",
                    "show",
                    &addr.to_string(),
                    "dev",
                    CLIENT_IFACE,
                ])
                .unwrap();
            let entries: Vec<Value> = serde_json::from_str(&out).unwrap();
            entries
                .iter()
                .find_map(|e| e["lladdr"].as_str().map(str::to_string))
        };
        wait_until(Duration::from_secs(5), || lookup().is_some());
        lookup()
    }

    /// Sends one datagram nobody listens for, so the client resolves the anycast address and
    /// later measurements contain only their own traffic; waits until it was forwarded.
    fn warm_up(&self) {
        send_udp(&self.topo.client, ANYCAST, WARM_UP_PORT, 29999..30000, 1).unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || {
                self.stats().address(ANYCAST).forwarded_packets >= 1
            }),
            "the warm-up datagram was never forwarded: {:?}",
            self.stats()
        );
    }
}

#[test]
fn arp_for_anycast_is_answered_by_router() {
    let s = Session::start(ClientMode::OnLink);
    let arp_before = s.stats().address(ANYCAST).arp_replies;

    let run = s.udp(22000..22001, 1);
    run.assert_each_sent_once();

    let r0_mac = format_mac(s.topo.router.link_mac(ROUTER_CLIENT_IFACE).unwrap());
    assert_eq!(
        s.client_neighbour_mac(ANYCAST),
        Some(r0_mac),
        "the client should reach 198.51.100.53 at the router's r0"
    );
    let arp_after = s.stats().address(ANYCAST).arp_replies;
    assert!(
        arp_after > arp_before,
        "arp_replies {arp_before} -> {arp_after}"
    );
}

#[test]
fn udp_each_datagram_once_and_flows_stick() {
    let s = Session::start(ClientMode::OnLink);
    s.warm_up();
    let before = s.stats();

    let run = s.udp(30000..30300, 10);
    run.assert_each_sent_once();
    run.assert_flows_stick();
    for (member, count) in s.topo.member_ips().iter().zip(run.counts()) {
        assert!(
            count * 100 >= 3000 * 15,
            "{member} got {count} of 3000 datagrams: {:?}",
            run.counts()
        );
    }

    let after = s.stats();
    let (a, b) = (after.address(ANYCAST), before.address(ANYCAST));
    assert_eq!(a.rx_packets - b.rx_packets, 3000, "{a:?}");
    assert_eq!(a.forwarded_packets - b.forwarded_packets, 3000, "{a:?}");
    assert_eq!(a.rx_bytes - b.rx_bytes, 3000 * UDP_FRAME_LEN, "{a:?}");
    assert_eq!(
        a.forwarded_bytes - b.forwarded_bytes,
        3000 * UDP_FRAME_LEN,
        "{a:?}"
    );
    for (member, count) in s.topo.member_ips().into_iter().zip(run.counts()) {
        let packets = a.member_packets(member) - b.member_packets(member);
        let bytes = a.member_bytes(member) - b.member_bytes(member);
        assert_eq!(packets, count as u64, "{member}: {a:?}");
        assert_eq!(bytes, count as u64 * UDP_FRAME_LEN, "{member}: {a:?}");
    }
    let member_bytes: u64 = a.members.iter().map(|m| m.bytes).sum();
    assert_eq!(a.forwarded_bytes, member_bytes, "{a:?}");
    assert_eq!(
        a.passed.total(),
        0,
        "nothing should go to the kernel: {a:?}"
    );
}

#[test]
fn tcp_connections_stay_on_one_member() {
    let s = Session::start(ClientMode::OnLink);

    let run = s.tcp(60, 5);
    run.assert_all_ok();
    run.assert_each_connection_on_one_server();
    for served in run.served.iter().flatten() {
        assert_eq!(served.bytes_echoed, 5 * 16, "{served:?}");
    }
    let used = run.counts().iter().filter(|n| **n > 0).count();
    assert!(
        used >= 2,
        "60 connections all went to one member: {:?}",
        run.counts()
    );
}

#[test]
fn member_del_moves_new_flows_away() {
    let s = Session::start(ClientMode::OnLink);
    let m2 = member_ip(2);

    let run = s.udp(23000..23100, 2);
    run.assert_each_sent_once();
    assert!(
        run.counts()[1] > 0,
        "m2 served nothing before: {:?}",
        run.counts()
    );

    s.ctl.member_del(ANYCAST, m2).expect("member del");
    s.assert_members_resolved(&[member_ip(1), member_ip(3)]);

    let run = s.udp(24000..24200, 2);
    run.assert_each_sent_once();
    run.assert_flows_stick();
    let counts = run.counts();
    assert_eq!(counts[1], 0, "new flows reached the deleted m2: {counts:?}");
    assert!(counts[0] > 0 && counts[2] > 0, "{counts:?}");
}

#[test]
fn detach_restores_plain_linux_forwarding() {
    let s = Session::start(ClientMode::Routed);
    // The router has no route to the anycast address: only XDP can deliver this.
    let run = s.udp(25000..25060, 2);
    run.assert_each_sent_once();
    assert!(
        run.counts().iter().filter(|n| **n > 0).count() >= 2,
        "{:?}",
        run.counts()
    );

    let ifaces = s.topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    s.ctl.detach(&ifaces).expect("detach");
    assert_eq!(s.ctl.status().interfaces, vec![], "status after detach");
    for iface in &ifaces {
        assert_eq!(
            s.topo.router.xdp_prog_ids(iface).unwrap(),
            Vec::<u64>::new(),
            "{iface}"
        );
    }
    let pins_left: Vec<PathBuf> = std::fs::read_dir(s.ctl.pin_dir())
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        pins_left.is_empty(),
        "pins left after detach: {pins_left:?}"
    );

    s.topo
        .router
        .ip(&["route", "add", "198.51.100.53/32", "via", "203.0.113.2"])
        .unwrap();
    let run = s.udp(26000..26060, 2);
    run.assert_each_sent_once();
    assert_eq!(
        run.counts(),
        vec![120, 0, 0],
        "the kernel route leads to m1"
    );
}

#[test]
fn routed_client_through_gateway() {
    let s = Session::start(ClientMode::Routed);

    let run = s.udp(27000..27060, 10);
    run.assert_each_sent_once();
    run.assert_flows_stick();
    assert!(
        run.counts().iter().all(|n| *n > 0),
        "60 flows should reach all 3 members: {:?}",
        run.counts()
    );

    let run = s.tcp(10, 5);
    run.assert_all_ok();
    run.assert_each_connection_on_one_server();
}

#[test]
fn bad_input_is_rejected_with_state_unchanged() {
    let s = Session::start(ClientMode::OnLink);
    let show = s.ctl.show();
    let status = s.ctl.status();
    let unchanged = |case: &str| {
        assert_eq!(s.ctl.show(), show, "show changed after {case}");
        assert_eq!(s.ctl.status(), status, "status changed after {case}");
    };

    let cases: [(&[&str], &str); 5] = [
        (&["member", "add", "1.2.3", "203.0.113.2"], "1.2.3"),
        (
            &[
                "member",
                "add",
                "198.51.100.54",
                "203.0.113.2",
                "--mac",
                "zz",
            ],
            "zz",
        ),
        (&["attach", "nosuch0"], "nosuch0"),
        // No route to 198.18.0.7 in the router namespace.
        (
            &["member", "add", "198.51.100.53", "198.18.0.7"],
            "198.18.0.7",
        ),
        (
            &["member", "del", "198.51.100.53", "203.0.113.14"],
            "203.0.113.14",
        ),
    ];
    for (args, names) in cases {
        let stderr = s.ctl.run_fail(args);
        assert_one_line_naming(&stderr, &[names], args);
        unchanged(&args.join(" "));
    }

    let not_bpffs = ScratchDir::new();
    let dir = not_bpffs.0.to_str().unwrap();
    let args = [
        "--pin-dir",
        dir,
        "member",
        "add",
        "198.51.100.54",
        "203.0.113.2",
    ];
    let stderr = s.ctl.run_fail_raw(&args);
    assert_one_line_naming(&stderr, &[dir, "bpf"], &args);
    assert_eq!(
        std::fs::read_dir(&not_bpffs.0).unwrap().count(),
        0,
        "the tool wrote into a directory that is not on bpffs"
    );
    unchanged("--pin-dir on tmpfs");
}

/// The error is one line (clap's "For more information" hint aside) naming one of `names`.
fn assert_one_line_naming(stderr: &str, names: &[&str], args: &[&str]) {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "`{}`: want a one-line error, got:\n{stderr}",
        args.join(" ")
    );
    assert!(
        names.iter().any(|n| lines[0].contains(n)),
        "`{}`: the error should name {names:?}: {stderr}",
        args.join(" ")
    );
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// A directory on a filesystem that is not bpffs, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("anycast-notbpf-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `member track ANYCAST tcp`: UDP gets no connection-table entry (each datagram still
/// reaches one member, flows still stick while the set is unchanged) and TCP connections are
/// still kept; `show` reports the setting, and an unknown address is refused, nothing changed.
#[test]
fn an_address_tracking_tcp_only_still_delivers_each_datagram_once() {
    let s = Session::start(ClientMode::OnLink);
    let out = s.ctl.run(&["member", "track", "198.51.100.53", "tcp"]);
    assert_eq!(out.unwrap(), "198.51.100.53: track tcp\n");
    let shown = s.ctl.json(&["show"]);
    assert_eq!(shown["addresses"][0]["track"], "tcp", "{shown}");
    assert_eq!(shown["addresses"][0]["mode"], "proxy", "{shown}");
    let table = s.ctl.run(&["show"]).unwrap();
    assert!(
        table.lines().next().unwrap().ends_with("MODE   TRACK"),
        "{table}"
    );
    assert!(
        table.lines().nth(1).unwrap().ends_with("proxy  tcp"),
        "{table}"
    );

    s.warm_up();
    let run = s.udp(31000..31300, 10);
    run.assert_each_sent_once();
    run.assert_flows_stick();
    assert!(
        run.counts().iter().all(|&n| n * 100 >= 3000 * 15),
        "{:?}",
        run.counts()
    );
    let tracked = |proto| anycast_tests::frames::tracked_flows(s.ctl.pin_dir(), proto);
    assert_eq!(tracked(IPPROTO_UDP), 0, "UDP flows in the connection table");
    let tcp = s.tcp(20, 3);
    tcp.assert_all_ok();
    tcp.assert_each_connection_on_one_server();
    assert!(tracked(IPPROTO_TCP) > 0, "TCP connections not tracked");

    let err = s.ctl.run_fail(&["member", "track", "198.51.100.99", "tcp"]);
    assert!(
        err.contains("198.51.100.99") && err.lines().count() == 1,
        "{err}"
    );
    let err = s.ctl.run_fail(&["member", "track", "198.51.100.53", "udp"]);
    assert!(err.contains("udp"), "{err}");
    assert_eq!(s.ctl.json(&["show"])["addresses"][0]["track"], "tcp");
    s.ctl
        .run(&["member", "track", "198.51.100.53", "all"])
        .unwrap();
    assert_eq!(s.ctl.json(&["show"])["addresses"][0]["track"], "all");
}
