//! Flow stability on a real topology: long-lived TCP connections through the router while
//! members are added, drained and removed, and preference-based standby.
use std::{collections::HashMap, time::Duration};

use anycast_common::proto::{ARPOP_REPLY, ARPOP_REQUEST};
use anycast_tests::{
    ANYCAST, Ctl, Topology, TopologyOptions,
    frames::arp_frame,
    traffic::{TcpConns, TcpEcho, UDP_PORT, tcp_round, udp_round},
};

const PORT: u16 = 7300;

/// The topology with `members` hosts, the dataplane attached, members `add`ed with `prefs`.
fn lab(members: usize, added: &[(usize, u16)]) -> (Topology, Ctl) {
    let topo = Topology::new(TopologyOptions {
        members,
        ..Default::default()
    })
    .expect("topology");
    let ctl = Ctl::new(&topo.router);
    let ifaces = topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    ctl.run(&[&["attach"], &ifaces[..]].concat()).unwrap();
    for &(i, preference) in added {
        add(&ctl, &topo, i, preference);
    }
    (topo, ctl)
}

fn add(ctl: &Ctl, topo: &Topology, i: usize, preference: u16) {
    let ip = topo.members[i].ip.to_string();
    let pref = preference.to_string();
    ctl.run(&[
        "member",
        "add",
        &ANYCAST.to_string(),
        &ip,
        "--preference",
        &pref,
    ])
    .unwrap();
}

/// Which member served each client port.
fn served_by(echoes: Vec<TcpEcho>) -> HashMap<u16, Vec<usize>> {
    let mut by: HashMap<u16, Vec<usize>> = HashMap::new();
    for (member, echo) in echoes.into_iter().enumerate() {
        for s in echo.stop() {
            by.entry(s.peer.port()).or_default().push(member);
        }
    }
    by
}

#[test]
fn long_lived_connections_survive_an_added_member_and_a_drain() {
    let (topo, ctl) = lab(4, &[(0, 100), (1, 100), (2, 100)]);
    let echoes: Vec<TcpEcho> = topo
        .members
        .iter()
        .map(|m| TcpEcho::start(&m.ns, ANYCAST, PORT).unwrap())
        .collect();
    let mut conns = TcpConns::open(&topo.client, ANYCAST, PORT, 40);
    assert!(conns.round(0).iter().all(|ok| *ok));

    // A fourth member joins, then the first is drained, while the connections talk.
    add(&ctl, &topo, 3, 100);
    assert!(
        conns.round(1).iter().all(|ok| *ok),
        "a connection broke when a member joined"
    );
    let m1 = topo.members[0].ip.to_string();
    ctl.run(&["member", "set", &ANYCAST.to_string(), &m1, "--weight", "0"])
        .unwrap();
    for round in 2..5 {
        let ok = conns.round(round);
        assert!(
            ok.iter().all(|ok| *ok),
            "round {round}: {} connections broke",
            ok.iter().filter(|o| !**o).count()
        );
    }

    // New connections avoid the drained member (and some reach the new one).
    let fresh = TcpConns::open(&topo.client, ANYCAST, PORT, 40);
    let fresh_ports = fresh.local_ports();
    let old_ports = conns.local_ports();
    drop(fresh);
    drop(conns);
    std::thread::sleep(Duration::from_millis(200));
    let by = served_by(echoes);
    for port in &old_ports {
        assert_eq!(
            by[port].len(),
            1,
            "connection {port} was served by {:?}",
            by[port]
        );
    }
    let drained_before = old_ports.iter().filter(|p| by[p] == [0]).count();
    assert!(
        drained_before > 0,
        "the drained member had connections before"
    );
    for port in &fresh_ports {
        assert_ne!(by[port], [0], "a new connection went to the drained member");
    }
    assert!(
        fresh_ports.iter().any(|p| by[p] == [3]),
        "the new member got no new connection"
    );
}

#[test]
fn removing_a_member_affects_only_its_connections() {
    let (topo, ctl) = lab(3, &[(0, 100), (1, 100), (2, 100)]);
    let echoes: Vec<TcpEcho> = topo
        .members
        .iter()
        .map(|m| TcpEcho::start(&m.ns, ANYCAST, PORT).unwrap())
        .collect();
    let mut conns = TcpConns::open(&topo.client, ANYCAST, PORT, 30);
    assert!(conns.round(0).iter().all(|ok| *ok));
    let ports = conns.local_ports();

    let m2 = topo.members[1].ip.to_string();
    ctl.run(&["member", "del", &ANYCAST.to_string(), &m2])
        .unwrap();
    let after = conns.round(1);

    // New connections succeed at once, none on the removed member.
    let members = topo.member_namespaces();
    let tcp = tcp_round(
        &topo.client,
        &[members[0], members[2]],
        ANYCAST,
        PORT + 1,
        20,
        2,
    )
    .unwrap();
    tcp.assert_all_ok();

    drop(conns);
    std::thread::sleep(Duration::from_millis(200));
    let by = served_by(echoes);
    let mut on_removed = 0;
    for (port, ok) in ports.iter().zip(&after) {
        if by[port] == [1] {
            on_removed += 1;
        } else {
            assert!(ok, "connection {port} on a surviving member broke");
        }
    }
    assert!(
        on_removed > 0,
        "the removed member served none of the 30 connections"
    );
}

#[test]
fn standby_members_take_over_when_the_preferred_ones_are_gone() {
    let (topo, ctl) = lab(3, &[(0, 10), (1, 10), (2, 20)]);
    let members = topo.member_namespaces();
    let udp = udp_round(&topo.client, &members, ANYCAST, UDP_PORT, 41000..41100, 3).unwrap();
    udp.assert_each_sent_once();
    let counts = udp.counts();
    assert_eq!(
        counts[2], 0,
        "the preference-20 member got traffic: {counts:?}"
    );
    assert!(counts[0] > 0 && counts[1] > 0, "{counts:?}");

    for i in [0, 1] {
        let ip = topo.members[i].ip.to_string();
        ctl.run(&["member", "del", &ANYCAST.to_string(), &ip])
            .unwrap();
    }
    let udp = udp_round(&topo.client, &members, ANYCAST, UDP_PORT, 42000..42100, 3).unwrap();
    udp.assert_each_sent_once();
    assert_eq!(
        udp.counts(),
        vec![0, 0, 300],
        "new flows must all go to the standby"
    );
}

#[test]
fn forged_arp_does_not_redirect_member_traffic() {
    let (topo, ctl) = lab(1, &[(0, 100)]);
    let m1 = &topo.members[0];
    let members = topo.member_namespaces();
    let udp = udp_round(&topo.client, &members, ANYCAST, UDP_PORT, 43000..43010, 2).unwrap();
    udp.assert_each_sent_once();
    let real_mac = ctl.show().members_of(ANYCAST)[0].mac.clone();
    assert!(real_mac.is_some(), "{:?}", ctl.show());

    // Anyone on the member's link (here: a raw socket in its namespace) claims the member's
    // address for another MAC, without any key: gratuitous ARP request and reply, and an ARP
    // reply to the router.
    let forged = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01];
    let router_mac = topo.router.link_mac(&m1.router_iface).unwrap();
    let broadcast = [0xff; 6];
    for arp in [
        arp_frame(broadcast, ARPOP_REQUEST, forged, m1.ip, [0; 6], m1.ip),
        arp_frame(broadcast, ARPOP_REPLY, forged, m1.ip, broadcast, m1.ip),
        arp_frame(
            router_mac,
            ARPOP_REPLY,
            forged,
            m1.ip,
            router_mac,
            m1.gateway,
        ),
    ] {
        m1.ns.send_frame(&m1.iface, &arp).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        ctl.show().members_of(ANYCAST)[0].mac,
        real_mac,
        "a forged ARP changed the member's MAC"
    );

    // The dataplane still forwards to the real member, each datagram once.
    let forwarded = ctl.stats().address(ANYCAST).forwarded_packets;
    let udp = udp_round(&topo.client, &members, ANYCAST, UDP_PORT, 44000..44010, 2).unwrap();
    udp.assert_each_sent_once();
    assert_eq!(
        ctl.stats().address(ANYCAST).forwarded_packets,
        forwarded + 20,
        "the datagrams did not all go through the dataplane"
    );
}

#[test]
fn concurrent_invocations_do_not_corrupt_each_other() {
    let (topo, ctl) = lab(3, &[]);
    let anycast = ANYCAST.to_string();
    std::thread::scope(|s| {
        for m in &topo.members {
            let (ctl, anycast) = (&ctl, &anycast);
            s.spawn(move || {
                let ip = m.ip.to_string();
                for _ in 0..8 {
                    ctl.run(&["member", "add", anycast, &ip]).unwrap();
                    ctl.run(&["member", "del", anycast, &ip]).unwrap();
                }
                ctl.run(&["member", "add", anycast, &ip]).unwrap();
            });
        }
        s.spawn(|| {
            for _ in 0..10 {
                ctl.run(&["stats", "--json"]).unwrap();
            }
        });
    });
    let show = ctl.show();
    let mut listed: Vec<_> = show.members_of(ANYCAST).iter().map(|m| m.address).collect();
    listed.sort();
    assert_eq!(listed, topo.member_ips());
    // The result works: every member gets traffic, every datagram once.
    let members = topo.member_namespaces();
    let udp = udp_round(&topo.client, &members, ANYCAST, UDP_PORT, 45000..45090, 2).unwrap();
    udp.assert_each_sent_once();
    assert!(udp.counts().iter().all(|&n| n > 0), "{:?}", udp.counts());
    let stats = ctl.stats();
    let a = stats.address(ANYCAST);
    assert_eq!(a.forwarded_packets, 180);
}
