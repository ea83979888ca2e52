//! Checks the harness itself, without the product: namespaces, veths, addresses, kernel
//! forwarding through the router, and the UDP/TCP helpers. If these fail, the topology tests'
//! failures say nothing about anycast.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use anycast_tests::netns::format_mac;
use anycast_tests::topology::{CLIENT_IFACE, ROUTER_CLIENT_IP};
use anycast_tests::traffic::{
    Datagram, Sent, Served, TCP_PORT, TcpRun, TcpSession, UDP_PORT, UdpRun, UdpSink, send_udp,
    tcp_round, tcp_sessions, udp_round, wait_for_datagrams,
};
use anycast_tests::{ANYCAST, ClientMode, Netns, Topology, TopologyOptions};

fn netns_names() -> String {
    anycast_tests::cmd::run("ip", &["netns", "list"]).unwrap()
}

#[test]
fn topology_is_built_as_designed_and_removed_on_drop() {
    let topo = Topology::new(TopologyOptions::default()).unwrap();
    let names: Vec<String> = [&topo.client, &topo.router]
        .into_iter()
        .chain(topo.members.iter().map(|m| &m.ns))
        .map(|ns| ns.name().to_string())
        .collect();
    assert_eq!(topo.router_ifaces(), ["r0", "r1", "r2", "r3"]);
    for iface in topo.router_ifaces() {
        assert!(topo.router.ifindex(&iface).unwrap() > 0);
        assert_ne!(topo.router.link_mac(&iface).unwrap(), [0; 6]);
    }
    for member in &topo.members {
        let lo = member.ns.ip(&["-j", "addr", "show", "dev", "lo"]).unwrap();
        assert!(lo.contains("198.51.100.53"), "{}: {lo}", member.ns.name());
        let routes = member.ns.ip(&["route", "show", "default"]).unwrap();
        assert!(routes.contains(&member.gateway.to_string()), "{routes}");
        let gro = member.ns.run(&["ethtool", "-k", &member.iface]).unwrap();
        assert!(gro.contains("generic-receive-offload: on"), "{gro}");
    }
    let routes = topo
        .client
        .ip(&["route", "show", "198.51.100.0/24"])
        .unwrap();
    assert!(
        routes.contains("dev c0") && !routes.contains("via"),
        "{routes}"
    );
    let forward = topo.router.run(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(forward.unwrap().trim(), "1");

    drop(topo);
    let left = netns_names();
    for name in names {
        assert!(!left.contains(&name), "{name} survived the drop: {left}");
    }
}

#[test]
fn namespace_is_removed_when_a_test_panics() {
    let name = std::panic::catch_unwind(|| {
        let ns = Netns::new("p").unwrap();
        std::panic::panic_any(ns.name().to_string());
    })
    .unwrap_err()
    .downcast::<String>()
    .unwrap();
    assert!(!netns_names().contains(name.as_str()));
}

#[test]
fn in_ns_creates_sockets_inside_the_namespace() {
    let ns = Netns::new("s").unwrap();
    let addr = Ipv4Addr::new(198, 18, 0, 1);
    ns.ip(&["addr", "add", "198.18.0.1/32", "dev", "lo"])
        .unwrap();
    let local = ns.in_ns(|| UdpSocket::bind((addr, 0)).map(|s| s.local_addr().unwrap()));
    assert_eq!(local.unwrap().ip().to_string(), "198.18.0.1");
    // The calling thread stayed in its own namespace, which lacks the address.
    assert!(UdpSocket::bind((addr, 0)).is_err());
    let server = ns.spawn_in_ns(move || UdpSocket::bind((addr, 0)).is_ok());
    assert!(server.join().unwrap());
}

#[test]
fn kernel_routing_delivers_udp_and_tcp_to_one_member() {
    let topo = Topology::new(TopologyOptions {
        members: 3,
        client_mode: ClientMode::Routed,
        ..Default::default()
    })
    .unwrap();
    let m1 = topo.members[0].ip;
    topo.router
        .ip(&["route", "add", "198.51.100.53/32", "via", &m1.to_string()])
        .unwrap();

    // The building blocks, used directly.
    let sinks: Vec<UdpSink> = topo
        .members
        .iter()
        .map(|m| UdpSink::start(&m.ns, ANYCAST, UDP_PORT).unwrap())
        .collect();
    let sent = send_udp(&topo.client, ANYCAST, UDP_PORT, 21000..21010, 10).unwrap();
    assert_eq!(sent.len(), 100);
    assert_eq!(
        wait_for_datagrams(&sinks, sent.len(), Duration::from_secs(5)),
        100
    );
    let got: Vec<_> = sinks.into_iter().map(UdpSink::stop).collect();
    let seqs: BTreeSet<u64> = got[0].iter().map(|d| d.seq.unwrap()).collect();
    assert_eq!(seqs, sent.iter().map(|s| s.seq).collect());
    assert!(
        got[0]
            .iter()
            .all(|d| d.peer.ip() == Ipv4Addr::new(192, 0, 2, 10))
    );
    assert!(got[1].is_empty() && got[2].is_empty());

    // The same through the round helpers the topology tests use.
    let members = topo.member_namespaces();
    let run = udp_round(&topo.client, &members, ANYCAST, UDP_PORT, 21100..21400, 10).unwrap();
    run.assert_each_sent_once();
    run.assert_flows_stick();
    assert_eq!(run.counts(), vec![3000, 0, 0]);

    let run = tcp_round(&topo.client, &members, ANYCAST, TCP_PORT, 20, 5).unwrap();
    run.assert_all_ok();
    run.assert_each_connection_on_one_server();
    assert_eq!(run.counts(), vec![20, 0, 0]);
    assert!(run.served[0].iter().all(|s| s.bytes_echoed == 5 * 16));

    // The client reached its gateway through ARP on c0.
    let neigh = topo
        .client
        .ip(&[
            "-j",
            "neigh",
            "show",
            &ROUTER_CLIENT_IP.to_string(),
            "dev",
            CLIENT_IFACE,
        ])
        .unwrap();
    let r0_mac = format_mac(topo.router.link_mac("r0").unwrap());
    assert!(neigh.contains(&r0_mac), "{neigh} lacks {r0_mac}");
    for iface in topo.router_ifaces() {
        assert_eq!(topo.router.xdp_prog_ids(&iface).unwrap(), Vec::<u64>::new());
    }
}

#[test]
fn tcp_to_a_closed_port_is_reported_not_hung() {
    let topo = Topology::new(TopologyOptions {
        members: 1,
        client_mode: ClientMode::Routed,
        ..Default::default()
    })
    .unwrap();
    topo.router
        .ip(&["route", "add", "198.51.100.53/32", "via", "203.0.113.2"])
        .unwrap();
    let sessions = tcp_sessions(&topo.client, ANYCAST, TCP_PORT, 2, 1);
    assert!(sessions.iter().all(|s| !s.ok()), "{sessions:?}");
}

#[test]
fn checkers_catch_loss_duplicates_and_split_flows() {
    let peer = |port| SocketAddr::from((Ipv4Addr::new(192, 0, 2, 10), port));
    let sent = vec![
        Sent {
            src_port: 1,
            seq: 1,
        },
        Sent {
            src_port: 1,
            seq: 2,
        },
    ];
    let datagram = |port, seq| Datagram {
        peer: peer(port),
        seq: Some(seq),
    };
    let fails = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();

    let good = UdpRun {
        sent: sent.clone(),
        received: vec![vec![datagram(1, 1), datagram(1, 2)], vec![]],
    };
    good.assert_each_sent_once();
    good.assert_flows_stick();
    let lost = UdpRun {
        sent: sent.clone(),
        received: vec![vec![datagram(1, 1)], vec![]],
    };
    assert!(fails(&|| lost.assert_each_sent_once()));
    let twice = UdpRun {
        sent: sent.clone(),
        received: vec![vec![datagram(1, 1), datagram(1, 2)], vec![datagram(1, 2)]],
    };
    assert!(fails(&|| twice.assert_each_sent_once()));
    let split = UdpRun {
        sent,
        received: vec![vec![datagram(1, 1)], vec![datagram(1, 2)]],
    };
    split.assert_each_sent_once();
    assert!(fails(&|| split.assert_flows_stick()));

    let session = TcpSession {
        local_port: 5,
        error: None,
    };
    let served = Served {
        peer: peer(5),
        bytes_echoed: 16,
    };
    let both = TcpRun {
        sessions: vec![session.clone()],
        served: vec![vec![served], vec![served]],
    };
    assert!(fails(&|| both.assert_each_connection_on_one_server()));
    let one = TcpRun {
        sessions: vec![session],
        served: vec![vec![served], vec![]],
    };
    one.assert_each_connection_on_one_server();
}

#[test]
fn bpffs_is_mounted_for_pins() {
    anycast_tests::ctl::ensure_bpffs();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf ")),
        "{mounts}"
    );
}
