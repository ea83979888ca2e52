//! The veth trap: native XDP on a veth silently loses frames unless its peers are set up, and
//! a newcomer's first lab is veth. `attach` in its default mode (auto) must pick skb mode on
//! veths as the kernel makes them, say so, and carry ARP, UDP and TCP; `--mode native` on a veth
//! must warn once, naming what the peers need.

use std::time::Duration;

use anycast_tests::{
    ANYCAST, Ctl, Topology, TopologyOptions,
    netns::format_mac,
    topology::{CLIENT_IFACE, ROUTER_CLIENT_IFACE},
    traffic::{TCP_PORT, UDP_PORT, tcp_round, udp_round},
    wait_until,
};

#[test]
fn auto_mode_on_default_veths_carries_arp_udp_and_tcp() {
    let topo = Topology::with_default_veths(TopologyOptions::default()).expect("topology");
    let ctl = Ctl::new(&topo.router);
    let ifaces = topo.router_ifaces();
    let outcome = ctl.outcome(
        &[
            &["attach"],
            &ifaces.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ]
        .concat(),
    );
    let out = outcome.clone().ok().expect("attach");
    for iface in &ifaces {
        assert!(
            out.contains(&format!(
                "attached to {iface} (skb mode: a veth, see --mode)\n"
            )),
            "{out}"
        );
    }
    assert!(!outcome.stderr.contains("warning"), "{}", outcome.stderr);
    for i in ctl.status().interfaces {
        assert_eq!(i.mode, "skb", "{i:?}");
    }
    for member in topo.member_ips() {
        ctl.member_add(ANYCAST, member).expect("member add");
    }

    let members = topo.member_namespaces();
    let udp = udp_round(&topo.client, &members, ANYCAST, UDP_PORT, 42000..42100, 3).unwrap();
    udp.assert_each_sent_once();
    udp.assert_flows_stick();
    assert!(udp.counts().iter().all(|n| *n > 0), "{:?}", udp.counts());
    // ARP: the client resolved the anycast address (on-link) to the router's MAC.
    let r0 = format_mac(topo.router.link_mac(ROUTER_CLIENT_IFACE).unwrap());
    let neigh = || {
        topo.client
            .ip(&["neigh", "show", &ANYCAST.to_string(), "dev", CLIENT_IFACE])
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(3), || neigh().contains(&r0)),
        "{}",
        neigh()
    );
    let tcp = tcp_round(&topo.client, &members, ANYCAST, TCP_PORT, 20, 5).unwrap();
    tcp.assert_all_ok();
    tcp.assert_each_connection_on_one_server();

    let stats = ctl.stats();
    let a = stats.address(ANYCAST);
    assert!(a.arp_replies >= 1, "{a:?}");
    assert!(a.forwarded_packets >= 300, "{a:?}");
    assert_eq!(a.passed.total(), 0, "{a:?}");
}

#[test]
fn native_mode_on_a_veth_warns_once_naming_what_the_peers_need() {
    let topo = Topology::new(TopologyOptions::default()).expect("topology");
    let ctl = Ctl::new(&topo.router);
    let outcome = ctl.outcome(&["attach", "r0", "r1", "--mode", "native"]);
    let stderr = outcome.stderr.clone();
    let out = outcome.ok().expect("attach");
    assert_eq!(
        out,
        "attached to r0 (native mode)\nattached to r1 (native mode)\n"
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    let warning = warnings[0];
    for needed in [
        "r0, r1 are veths",
        "XDP program on the peer for XDP_TX",
        "GRO on",
        "tx off",
    ] {
        assert!(warning.contains(needed), "{needed:?} missing: {warning}");
    }
    // An interface attached already keeps its mode under auto: no refusal, no new attachment.
    let again = ctl.run(&["attach", "r0"]).unwrap();
    assert_eq!(again, "r0: already attached (native mode)\n");
}
