//! IPv6 anycast end to end on the DESIGN.md topology with IPv6 on the client's link: the
//! client's own kernel resolves 2001:db8:53::53 by Neighbor Discovery (answered by the router's
//! XDP, its reachability probes too), real UDP and TCP over IPv6 reach three members through
//! the router, the counters add up, `member del` and advertisement-driven failover move traffic
//! to the survivors, and a dual-stack client uses both families at once. Members hold the
//! anycast address on `lo` and never answer a solicitation for it.

use std::net::{IpAddr, Ipv6Addr};
use std::ops::Range;
use std::time::{Duration, Instant};

use anycast_common::proto::{
    IPPROTO_ICMPV6, ND_HOP_LIMIT, ND_NA_OVERRIDE, ND_NA_ROUTER, ND_NA_SOLICITED,
};
use anycast_tests::capture::{Capture, Nd, NdKind};
use anycast_tests::ctl::Stats;
use anycast_tests::daemon::Daemon;
use anycast_tests::frames::{Ipv6, ipv6_frame, ns_message, solicited_node};
use anycast_tests::lab::{AgentLab, HOLD_MS, INTERVAL_MS};
use anycast_tests::netns::format_mac;
use anycast_tests::topology::{CLIENT_IFACE, CLIENT_IP6, ROUTER_CLIENT_IFACE, member_ip6};
use anycast_tests::traffic::{
    TCP_PORT, TcpRun, UDP_PORT, UdpRun, UdpSink, send_udp, tcp_round, udp_round, wait_for_datagrams,
};
use anycast_tests::{ANYCAST, ANYCAST6, ClientStack, Ctl, Topology, TopologyOptions, wait_until};

/// Ethernet + IPv6 + UDP headers + the 8-byte sequence number: what XDP sees per datagram.
const UDP6_FRAME_LEN: u64 = 14 + 40 + 8 + 8;
/// The same over IPv4.
const UDP4_FRAME_LEN: u64 = 14 + 20 + 8 + 8;
/// How long a test waits for anything the kernel, the agent or an announcer does.
const WAIT: Duration = Duration::from_secs(3);

/// A router with the dataplane attached on every interface and the members of `ANYCAST6` (and
/// of `ANYCAST` on a dual-stack client's link) added by address.
struct Session {
    // Dropped first: the pins go before the namespaces.
    ctl: Ctl,
    topo: Topology,
}

impl Session {
    fn start(stack: ClientStack) -> Self {
        let topo = Topology::new(TopologyOptions {
            client_stack: stack,
            ..Default::default()
        })
        .expect("build the test topology");
        let ctl = Ctl::new(&topo.router);
        let ifaces = topo.router_ifaces();
        let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
        ctl.attach(&ifaces, "native").expect("attach the dataplane");
        let s = Session { ctl, topo };
        for m in &s.topo.members {
            s.ctl.member_add(ANYCAST6, member_ip6(m.index)).unwrap();
            if stack.has_ipv4() {
                s.ctl.member_add(ANYCAST, m.ip).unwrap();
            }
        }
        s.assert_members_resolved(&s.member_ips6());
        s
    }

    fn member_ips6(&self) -> Vec<IpAddr> {
        (self.topo.members.iter())
            .map(|m| member_ip6(m.index).into())
            .collect()
    }

    /// `show` lists exactly `members` for `ANYCAST6`, each on its router interface with its
    /// real MAC, resolved through the router's IPv6 neighbour table (waits up to 5 s).
    fn assert_members_resolved(&self, members: &[IpAddr]) {
        wait_until(Duration::from_secs(5), || {
            let show = self.ctl.show();
            let listed = show.members_of(ANYCAST6);
            listed.len() == members.len() && listed.iter().all(|m| m.mac_known)
        });
        let show = self.ctl.show();
        let listed = show.members_of(ANYCAST6);
        let mut shown: Vec<IpAddr> = listed.iter().map(|m| m.address).collect();
        shown.sort();
        assert_eq!(shown, members, "show: {show:?}");
        for m in listed {
            let member = self.topo.member(m.address);
            let mac = format_mac(member.ns.link_mac(&member.iface).unwrap());
            assert_eq!(m.interface, member.router_iface, "{m:?}");
            assert_eq!(m.mac.as_deref(), Some(mac.as_str()), "{m:?}");
        }
    }

    fn udp(&self, src_ports: Range<u16>, per_port: usize) -> UdpRun {
        let members = self.topo.member_namespaces();
        udp_round(
            &self.topo.client,
            &members,
            ANYCAST6,
            UDP_PORT,
            src_ports,
            per_port,
        )
        .expect("UDP round")
    }

    fn stats(&self) -> Stats {
        self.ctl.stats()
    }

    fn r0_mac(&self) -> String {
        format_mac(self.topo.router.link_mac(ROUTER_CLIENT_IFACE).unwrap())
    }

    /// The client's neighbour entry for `ANYCAST6`, its MAC and NUD state.
    fn client_neighbour(&self) -> Option<(Option<String>, Vec<String>)> {
        let n = (self.topo.client)
            .neighbour(ANYCAST6.into(), CLIENT_IFACE)
            .unwrap()?;
        Some((n.lladdr, n.state))
    }
}

/// Every datagram once, flows sticky, every member at least 15% of `total`.
fn assert_spread(run: &UdpRun, total: usize) {
    run.assert_each_sent_once();
    run.assert_flows_stick();
    assert!(
        run.counts().iter().all(|&n| n * 100 >= total * 15),
        "{total} datagrams spread badly: {:?}",
        run.counts()
    );
}

/// The client resolves the anycast address by NDP and the router's XDP answers both its
/// multicast solicitation and the unicast reachability probe its kernel sends once the entry,
/// used but unconfirmed, leaves REACHABLE: a short reachable time (0.4..1.2 s) against a
/// two-second delay makes the client go REACHABLE -> DELAY -> PROBE -> REACHABLE by itself. A
/// capture on the client's link shows each solicitation and its one answer, from the router's
/// MAC; the router's `nd_replies` counts exactly the solicitations the client sent.
#[test]
fn ipv6_only_client_resolves_by_ndp_and_its_reachability_probes_are_answered_by_xdp() {
    let s = Session::start(ClientStack::Ipv6);
    let client = &s.topo.client;
    let c0 = format!("net.ipv6.neigh.{CLIENT_IFACE}");
    client
        .sysctl(&format!("{c0}.base_reachable_time_ms"), "800")
        .unwrap();
    client
        .sysctl(&format!("{c0}.delay_first_probe_time"), "2")
        .unwrap();
    let c0_addrs = client.ip(&["-4", "addr", "show", "dev", "c0"]).unwrap();
    assert!(!c0_addrs.contains("inet "), "c0 has IPv4: {c0_addrs}");
    assert_eq!(s.client_neighbour(), None);
    let capture = Capture::start(client, CLIENT_IFACE).unwrap();
    let nd_before = s.stats().address(ANYCAST6).nd_replies;
    let r0 = s.r0_mac();

    // First use: INCOMPLETE, a multicast solicitation, the router's answer: REACHABLE. Then
    // the kernel's own reachability confirmation, observed every 10 ms (bounded).
    let sinks: Vec<UdpSink> = (s.topo.member_namespaces().into_iter())
        .map(|ns| UdpSink::start(ns, ANYCAST6, UDP_PORT).unwrap())
        .collect();
    send_udp(client, ANYCAST6, UDP_PORT, 20000..20001, 1).unwrap();
    let mut states: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let (mac, state) = s
            .client_neighbour()
            .expect("an entry for the anycast address");
        let state = state.join(",");
        // Until the first answer: INCOMPLETE, without a MAC.
        if state != "INCOMPLETE" {
            assert_eq!(mac.as_deref(), Some(r0.as_str()), "{state}");
        }
        if state != "INCOMPLETE" && states.last() != Some(&state) {
            states.push(state);
        }
        if states.len() >= 3 && states.ends_with(&["DELAY".into(), "REACHABLE".into()]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        states.first().map(String::as_str) == Some("REACHABLE")
            && states.ends_with(&["DELAY".into(), "REACHABLE".into()]),
        "NUD states: {states:?}"
    );
    // The confirmed entry carries traffic; then it goes, so no further probe runs.
    send_udp(client, ANYCAST6, UDP_PORT, 20001..20002, 1).unwrap();
    assert_eq!(wait_for_datagrams(&sinks, 2, WAIT), 2);
    let anycast = ANYCAST6.to_string();
    client
        .ip(&["-6", "neigh", "del", &anycast, "dev", CLIENT_IFACE])
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let nd_after = s.stats().address(ANYCAST6).nd_replies;

    let frames = capture.stop();
    let nd = Nd::about(&frames, ANYCAST6);
    let solicitations: Vec<&Nd> = (nd.iter())
        .filter(|n| n.kind == NdKind::Solicitation)
        .collect();
    let (group, group_mac) = solicited_node(ANYCAST6);
    let r0_mac = s.topo.router.link_mac(ROUTER_CLIENT_IFACE).unwrap();
    let c0_mac = client.link_mac(CLIENT_IFACE).unwrap();
    assert!(
        solicitations
            .iter()
            .all(|n| n.outgoing && n.eth_src == c0_mac),
        "{nd:#?}"
    );
    assert!(
        solicitations[0].eth_dst == group_mac && solicitations[0].ip_dst == group,
        "the first solicitation is not to the solicited-node group: {nd:#?}"
    );
    let probes = (solicitations.iter())
        .filter(|n| n.eth_dst == r0_mac && n.ip_dst == ANYCAST6)
        .count();
    assert!(probes >= 1, "no unicast probe to the router's MAC: {nd:#?}");
    // Each solicitation got one answer, before the next, from the router's MAC to the
    // solicitation's source (the probes come from the client's link-local address), hop limit
    // 255, with the flags of a router's solicited, overriding advertisement.
    let adverts: Vec<&Nd> = (nd.iter())
        .filter(|n| n.kind == NdKind::Advertisement)
        .collect();
    assert_eq!(adverts.len(), solicitations.len(), "{nd:#?}");
    let kinds: Vec<NdKind> = nd.iter().map(|n| n.kind).collect();
    let alternating = (kinds.chunks(2)).all(|p| p == [NdKind::Solicitation, NdKind::Advertisement]);
    assert!(alternating, "{nd:#?}");
    for (ns, na) in solicitations.iter().zip(&adverts) {
        assert!(
            !na.outgoing && na.eth_src == r0_mac && na.eth_dst == c0_mac,
            "{na:?}"
        );
        assert_eq!((na.ip_src, na.ip_dst), (ANYCAST6, ns.ip_src), "{na:?}");
        assert_eq!(na.hop_limit, ND_HOP_LIMIT, "{na:?}");
        let flags = ND_NA_ROUTER | ND_NA_SOLICITED | ND_NA_OVERRIDE;
        assert_eq!(na.flags, flags, "{na:?}");
    }
    assert_eq!(
        nd_after - nd_before,
        solicitations.len() as u64,
        "nd_replies against the solicitations captured: {nd:#?}"
    );
}

/// 3,000 datagrams from 300 ports over IPv6: each once, flows sticky, spread, and the
/// per-address and per-member counters equal what was sent and received.
#[test]
fn udp6_each_datagram_once_flows_stick_spread_and_counters_are_exact() {
    let s = Session::start(ClientStack::Ipv6);
    // Resolve the address first so the counted round holds only its own datagrams.
    s.udp(29999..30000, 1).assert_each_sent_once();
    let before = s.stats();

    let run = s.udp(30000..30300, 10);
    assert_spread(&run, 3000);

    let after = s.stats();
    let (a, b) = (after.address(ANYCAST6), before.address(ANYCAST6));
    assert_eq!(a.rx_packets - b.rx_packets, 3000, "{a:?}");
    assert_eq!(a.forwarded_packets - b.forwarded_packets, 3000, "{a:?}");
    assert_eq!(a.rx_bytes - b.rx_bytes, 3000 * UDP6_FRAME_LEN, "{a:?}");
    assert_eq!(
        a.forwarded_bytes - b.forwarded_bytes,
        3000 * UDP6_FRAME_LEN,
        "{a:?}"
    );
    for (member, count) in s.member_ips6().into_iter().zip(run.counts()) {
        let packets = a.member_packets(member) - b.member_packets(member);
        let bytes = a.member_bytes(member) - b.member_bytes(member);
        assert_eq!(packets, count as u64, "{member}: {a:?}");
        assert_eq!(bytes, count as u64 * UDP6_FRAME_LEN, "{member}: {a:?}");
    }
    let member_bytes: u64 = a.members.iter().map(|m| m.bytes).sum();
    assert_eq!(a.forwarded_bytes, member_bytes, "{a:?}");
    assert_eq!(
        a.passed.total(),
        0,
        "nothing should go to the kernel: {a:?}"
    );
    assert_eq!(a.arp_replies, 0, "{a:?}");
    // The members saw the client's own IPv6 address, unchanged.
    assert!(
        run.received
            .iter()
            .flatten()
            .all(|d| d.peer.ip() == IpAddr::V6(CLIENT_IP6)),
        "a datagram came from another source"
    );
}

/// 60 TCP connections over IPv6, each served entirely by one member.
#[test]
fn tcp6_connections_stay_on_one_member() {
    let s = Session::start(ClientStack::Ipv6);
    let members = s.topo.member_namespaces();
    let run: TcpRun = tcp_round(&s.topo.client, &members, ANYCAST6, TCP_PORT, 60, 5).unwrap();
    run.assert_all_ok();
    run.assert_each_connection_on_one_server();
    for served in run.served.iter().flatten() {
        assert_eq!(served.bytes_echoed, 5 * 16, "{served:?}");
        assert_eq!(served.peer.ip(), IpAddr::V6(CLIENT_IP6), "{served:?}");
    }
    let used = run.counts().iter().filter(|n| **n > 0).count();
    assert!(
        used >= 2,
        "60 connections on one member: {:?}",
        run.counts()
    );
}

/// `member del` of an IPv6 member: new flows avoid it, none is lost.
#[test]
fn member_del6_moves_new_flows_away() {
    let s = Session::start(ClientStack::Ipv6);
    let run = s.udp(23000..23100, 2);
    run.assert_each_sent_once();
    assert!(run.counts()[1] > 0, "m2 served nothing: {:?}", run.counts());

    s.ctl
        .member_del(ANYCAST6, member_ip6(2))
        .expect("member del");
    s.assert_members_resolved(&[member_ip6(1).into(), member_ip6(3).into()]);
    let forwarded = s.stats().address(ANYCAST6).member_packets(member_ip6(2));
    assert_eq!(forwarded, 0, "the removed member keeps no counter");

    let run = s.udp(24000..24200, 2);
    run.assert_each_sent_once();
    run.assert_flows_stick();
    let counts = run.counts();
    assert_eq!(counts[1], 0, "new flows reached the deleted m2: {counts:?}");
    assert!(counts[0] > 0 && counts[2] > 0, "{counts:?}");
}

/// Every attached interface accepts the solicited-node group MAC of 2001:db8:53::53 (as `ip
/// maddr` lists it) exactly while the address has members, and none does after a detach.
#[test]
fn solicited_node_group_is_joined_on_every_attached_interface_while_members_exist() {
    let s = Session::start(ClientStack::Ipv6);
    let group = format_mac(solicited_node(ANYCAST6).1);
    let joined = || -> Vec<bool> {
        (s.topo.router_ifaces().iter())
            .map(|i| {
                let maddr = s.topo.router.ip(&["maddr", "show", "dev", i]).unwrap();
                maddr.contains(&group)
            })
            .collect()
    };
    assert_eq!(joined(), [true; 4], "{group} with three members");
    for i in 1..=3 {
        s.ctl.member_del(ANYCAST6, member_ip6(i)).unwrap();
        let want = i < 3;
        assert_eq!(
            joined(),
            [want; 4],
            "{group} after deleting member {i} of 3"
        );
    }
    s.ctl.member_add(ANYCAST6, member_ip6(2)).unwrap();
    assert_eq!(joined(), [true; 4], "{group} after a member came back");
    let ifaces = s.topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    s.ctl.detach(&ifaces).unwrap();
    assert_eq!(joined(), [false; 4], "{group} after detach");
}

/// An IPv6-only lab with the agent: three members announce 2001:db8:53::53.
fn announced_lab(hold_ms: u64) -> (AgentLab, Vec<Daemon>) {
    let lab = AgentLab::with_stack(ClientStack::Ipv6);
    let announcers = (0..3)
        .map(|i| lab.announce_held(i, &["2001:db8:53::53"], hold_ms, &[]))
        .collect();
    let all: Vec<IpAddr> = (1..=3).map(|i| member_ip6(i).into()).collect();
    lab.wait_learned_of(ANYCAST6, &all, WAIT);
    (lab, announcers)
}

fn udp6_round(lab: &AgentLab, members: &[usize], ports: Range<u16>, per_port: usize) -> UdpRun {
    let ns = lab.topo.member_namespaces();
    let receivers: Vec<_> = members.iter().map(|&i| ns[i]).collect();
    udp_round(
        &lab.topo.client,
        &receivers,
        ANYCAST6,
        UDP_PORT,
        ports,
        per_port,
    )
    .unwrap()
}

/// Advertisement-driven failover over IPv6: `kill -9` of an announcer expires its member
/// within hold + interval, a SIGTERM's leave removes one at once; traffic moves to the
/// survivors and nothing reaches a removed member, nor is lost.
#[test]
fn announced_ipv6_members_fail_over_on_kill_and_leave() {
    let (lab, mut a) = announced_lab(HOLD_MS);
    let run = udp6_round(&lab, &[0, 1, 2], 42000..42060, 10);
    assert_spread(&run, 600);

    a[1].signal(libc::SIGKILL);
    let killed = Instant::now();
    let left = [member_ip6(1).into(), member_ip6(3).into()];
    let bound = Duration::from_millis(HOLD_MS + INTERVAL_MS);
    lab.wait_learned_of(ANYCAST6, &left, bound + WAIT);
    let took = killed.elapsed();
    assert!(
        took <= bound + Duration::from_millis(500),
        "expired {took:?} after kill -9"
    );
    // kill -9 left the address on m2's lo, so m2 would take anything sent to it.
    let run = udp6_round(&lab, &[0, 1, 2], 43000..43100, 5);
    run.assert_each_sent_once();
    assert_eq!(run.counts()[1], 0, "{:?}", run.counts());
    assert!(
        run.counts()[0] > 0 && run.counts()[2] > 0,
        "{:?}",
        run.counts()
    );

    a[0].signal(libc::SIGTERM);
    let stopped = Instant::now();
    lab.wait_learned_of(ANYCAST6, &[member_ip6(3).into()], WAIT);
    let took = stopped.elapsed();
    // Its last refresh was at most one interval before the stop, so an expiry comes no
    // sooner than hold − interval after it: a removal before that was the leave.
    assert!(
        took < Duration::from_millis(HOLD_MS - INTERVAL_MS),
        "leave took {took:?}"
    );
    let (status, log) = a[0].wait(WAIT).unwrap();
    assert!(status.success(), "announce exited with {status}: {log}");
    let lo = lab.topo.members[0]
        .ns
        .ip(&["-6", "addr", "show", "dev", "lo"])
        .unwrap();
    assert!(!lo.contains("2001:db8:53::53"), "left on lo: {lo}");
    let run = udp6_round(&lab, &[1, 2], 44000..44100, 3);
    run.assert_each_sent_once();
    assert_eq!(run.counts(), [0, 300]);
}

/// The router's link towards a member goes down: the agent removes that member at once (the
/// hold is 30 s), and its flows move to the others without a loss.
#[test]
fn router_link_down_removes_an_ipv6_member() {
    let (lab, _a) = announced_lab(30_000);
    let before = lab
        .ctl
        .stats()
        .address(ANYCAST6)
        .member_packets(member_ip6(3));
    lab.topo.router.set_link("r3", false).unwrap();
    let down = Instant::now();
    let left = [member_ip6(1).into(), member_ip6(2).into()];
    lab.wait_learned_of(ANYCAST6, &left, WAIT);
    let took = down.elapsed();
    assert!(
        took <= Duration::from_millis(500),
        "removed {took:?} after link down"
    );

    let run = udp6_round(&lab, &[0, 1], 45000..45100, 3);
    run.assert_each_sent_once();
    run.assert_flows_stick();
    assert!(run.counts().iter().all(|&n| n > 0), "{:?}", run.counts());
    let after = lab
        .ctl
        .stats()
        .address(ANYCAST6)
        .member_packets(member_ip6(3));
    assert_eq!(
        before, after,
        "traffic went to the member behind the down link"
    );
}

/// A dual-stack client: the same three members announce both families with one `announce`
/// each. UDP over IPv4 and IPv6 at the same time: each family's datagrams once, spread, and
/// counted exactly under its own address; then TCP over both at the same time, each
/// connection on one member. `stats` lists both addresses, each with its own family's members.
#[test]
fn dual_stack_client_uses_both_families_at_once() {
    let lab = AgentLab::with_stack(ClientStack::Dual);
    let _a: Vec<Daemon> = (0..3)
        .map(|i| lab.announce_addresses(i, &["198.51.100.53", "2001:db8:53::53"], &[]))
        .collect();
    let all4: Vec<IpAddr> = (lab.topo.member_ips().into_iter())
        .map(IpAddr::from)
        .collect();
    let all6: Vec<IpAddr> = (1..=3).map(|i| member_ip6(i).into()).collect();
    lab.wait_learned_of(ANYCAST, &all4, WAIT);
    lab.wait_learned_of(ANYCAST6, &all6, WAIT);
    let members = lab.topo.member_namespaces();
    let client = &lab.topo.client;
    let joined = "traffic thread";

    // Resolve both addresses first, so the counted rounds hold only their own datagrams.
    udp_round(client, &members, ANYCAST, UDP_PORT, 9000..9001, 1).unwrap();
    udp_round(client, &members, ANYCAST6, UDP_PORT, 9000..9001, 1).unwrap();
    let before = lab.ctl.stats();
    let (v4, v6) = std::thread::scope(|sc| {
        let v4 = sc.spawn(|| udp_round(client, &members, ANYCAST, UDP_PORT, 50000..50150, 4));
        let v6 = sc.spawn(|| udp_round(client, &members, ANYCAST6, UDP_PORT, 50000..50150, 4));
        (v4.join().expect(joined), v6.join().expect(joined))
    });
    let after = lab.ctl.stats();
    for (anycast, run, len, members) in [
        (IpAddr::from(ANYCAST), v4.unwrap(), UDP4_FRAME_LEN, &all4),
        (IpAddr::from(ANYCAST6), v6.unwrap(), UDP6_FRAME_LEN, &all6),
    ] {
        assert_spread(&run, 600);
        let peers_ok =
            (run.received.iter().flatten()).all(|d| d.peer.is_ipv4() == anycast.is_ipv4());
        assert!(peers_ok, "{anycast}: a datagram of the other family");
        let (a, b) = (after.address(anycast), before.address(anycast));
        assert_eq!(a.forwarded_packets - b.forwarded_packets, 600, "{a:?}");
        assert_eq!(a.forwarded_bytes - b.forwarded_bytes, 600 * len, "{a:?}");
        assert_eq!(a.rx_packets - b.rx_packets, 600, "{a:?}");
        for (member, count) in members.iter().zip(run.counts()) {
            let packets = a.member_packets(*member) - b.member_packets(*member);
            assert_eq!(packets, count as u64, "{member}: {a:?}");
        }
        assert_eq!(a.members.len(), 3, "{a:?}");
        assert_eq!(a.passed.total(), 0, "{a:?}");
    }

    let (t4, t6) = std::thread::scope(|sc| {
        let t4 = sc.spawn(|| tcp_round(client, &members, ANYCAST, TCP_PORT, 20, 3));
        let t6 = sc.spawn(|| tcp_round(client, &members, ANYCAST6, TCP_PORT, 20, 3));
        (t4.join().expect(joined), t6.join().expect(joined))
    });
    for run in [t4.unwrap(), t6.unwrap()] {
        run.assert_all_ok();
        run.assert_each_connection_on_one_server();
    }
    let table = lab.ctl.run(&["stats"]).unwrap();
    assert!(
        table.contains("198.51.100.53") && table.contains("2001:db8:53::53"),
        "{table}"
    );
}

/// Members hold 2001:db8:53::53 on `lo` and answer no solicitation for it, multicast or
/// unicast, on their link: Linux answers only for addresses of the receiving interface. The
/// same solicitations for the member's own address are answered (the control).
#[test]
fn a_member_with_the_anycast_address_on_lo_answers_no_solicitation_for_it() {
    let s = Session::start(ClientStack::Ipv6);
    let m1 = &s.topo.members[0];
    let lo = m1.ns.ip(&["-6", "addr", "show", "dev", "lo"]).unwrap();
    assert!(lo.contains("2001:db8:53::53/128"), "{lo}");
    let r1_mac = s.topo.router.link_mac(&m1.router_iface).unwrap();
    let m1_mac = m1.ns.link_mac(&m1.iface).unwrap();
    let from = anycast_tests::topology::member_gateway6(m1.index);
    let solicit = |target: Ipv6Addr, unicast: bool| {
        let (group, group_mac) = solicited_node(target);
        let (dst, dst_mac) = if unicast {
            (target, m1_mac)
        } else {
            (group, group_mac)
        };
        let mut ip = Ipv6::new(
            from,
            dst,
            IPPROTO_ICMPV6,
            ns_message(from, dst, target, Some(r1_mac), &[]),
        );
        ip.hop_limit = ND_HOP_LIMIT;
        // Out of the router's r1 (egress: its XDP program does not see it), into m1.
        s.topo
            .router
            .send_frame(&m1.router_iface, &ipv6_frame(dst_mac, r1_mac, &ip))
            .unwrap();
    };
    // Listen on the member's link while the router's side sends four solicitations.
    let capture = Capture::start(&m1.ns, &m1.iface).unwrap();
    solicit(ANYCAST6, false);
    solicit(ANYCAST6, true);
    solicit(member_ip6(m1.index), false);
    solicit(member_ip6(m1.index), true);
    let own = member_ip6(m1.index);
    // Time for any answer to leave m1.
    std::thread::sleep(Duration::from_millis(500));
    let frames = capture.stop();
    let answered = |target| {
        (Nd::about(&frames, target).into_iter())
            .filter(|n| n.kind == NdKind::Advertisement && n.outgoing)
            .count()
    };
    let received = |target| {
        (Nd::about(&frames, target).into_iter())
            .filter(|n| n.kind == NdKind::Solicitation && !n.outgoing)
            .count()
    };
    assert_eq!((received(ANYCAST6), received(own)), (2, 2), "{frames:?}");
    assert_eq!(answered(own), 2, "the control got no answers");
    assert_eq!(answered(ANYCAST6), 0, "m1 answered for the anycast address");
}
