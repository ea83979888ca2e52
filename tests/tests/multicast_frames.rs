//! Link-level multicast mode frame by frame (BPF_PROG_TEST_RUN): a datagram to an address in
//! this mode leaves once, to the address's group MAC, on its members' LAN; relayed unicast to
//! the elected router when another router forwards onto that LAN.
use std::net::Ipv4Addr;

use anycast_common::{
    McastLan,
    multicast::group_mac,
    proto::{XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use anycast_ctl::members::mode::{self, Mode};
use anycast_tests::frames::*;

const PROGRAM: &str = anycast_common::programs::ANYCAST;
const ANYCAST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT_MAC: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x10];
const OTHER_ROUTER: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 3];

fn member(i: u8) -> (Ipv4Addr, [u8; 6]) {
    (Ipv4Addr::new(203, 0, 113, 10 + i), [0x02, 0x10, 0, 0, 0, i])
}

/// `ip` as the dataplane must send it: to `dst` from `src`, TTL - 1.
fn sent(dst: [u8; 6], src: [u8; 6], ip: &Ipv4) -> Vec<u8> {
    let mut out = ip.clone();
    out.ttl -= 1;
    ipv4_frame(dst, src, &out)
}

#[test]
fn multicast_mode_sends_each_datagram_once_to_the_group_or_the_elected_router() {
    let mut bed = Bed::new().expect("TEST_RUN bed");
    for i in 1..=3 {
        bed.add_member(ANYCAST, member(i).0, 1, member(i).1)
            .unwrap();
    }
    mode::set(&mut bed.maps, ANYCAST.into(), Mode::Multicast).unwrap();
    let (p0, p1) = (bed.ports[0].clone(), bed.ports[1].clone());
    let group = group_mac(ANYCAST.octets());
    assert_eq!(group, [0x03, 0x00, 198, 51, 100, 53]);

    // From the client's side to the members' LAN (p1): the group, from p1's MAC, for every
    // flow alike (no member choice).
    for sport in [40000, 40001, 40002] {
        let udp = Ipv4::udp(CLIENT, ANYCAST, sport, 53, b"query");
        let (verdict, out) = bed
            .run(PROGRAM, 0, &ipv4_frame(p0.mac, CLIENT_MAC, &udp))
            .unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, sent(group, p1.mac, &udp), "port {sport}");
    }
    let tcp = Ipv4::tcp_syn(CLIENT, ANYCAST, 40003, 80);
    let (_, out) = bed
        .run(PROGRAM, 0, &ipv4_frame(p0.mac, CLIENT_MAC, &tcp))
        .unwrap();
    assert_eq!(out, sent(group, p1.mac, &tcp));

    // A datagram relayed to this router on the members' LAN goes back out of it, to the group.
    let udp = Ipv4::udp(CLIENT, ANYCAST, 40004, 53, b"relayed");
    let (verdict, out) = bed
        .run(PROGRAM, 1, &ipv4_frame(p1.mac, OTHER_ROUTER, &udp))
        .unwrap();
    assert_eq!((verdict, out), (XDP_TX, sent(group, p1.mac, &udp)));

    // Another router was elected for p1's LAN: relay to it, unicast.
    let lan = McastLan {
        relay_mac: OTHER_ROUTER,
        _pad: [0; 2],
    };
    bed.maps.mcast_lans.insert(p1.ifindex, lan, 0).unwrap();
    let (verdict, out) = bed
        .run(PROGRAM, 0, &ipv4_frame(p0.mac, CLIENT_MAC, &udp))
        .unwrap();
    assert_eq!(
        (verdict, out),
        (XDP_REDIRECT, sent(OTHER_ROUTER, p1.mac, &udp))
    );
    bed.maps.mcast_lans.remove(&p1.ifindex).unwrap();

    // The group frame on the LAN is not for this router: passed (the kernel never forwards a
    // frame it got on a group MAC), so routers on one LAN never forward each other's copies.
    let seen = sent(group, OTHER_ROUTER, &udp);
    let (verdict, out) = bed.run(PROGRAM, 1, &seen).unwrap();
    assert_eq!((verdict, &out), (XDP_PASS, &seen));

    // Members out of service: the first one left in service names the LAN; none left: passed.
    for i in 1..=3 {
        bed.del_member(ANYCAST, member(i).0).unwrap();
    }
    let (verdict, _) = bed
        .run(PROGRAM, 0, &ipv4_frame(p0.mac, CLIENT_MAC, &udp))
        .unwrap();
    assert_eq!(verdict, XDP_PASS);
    let c = anycast_ctl::report::stats(&bed.maps, Some(ANYCAST.into()))
        .unwrap()
        .addresses
        .remove(0);
    assert_eq!(c.forwarded_packets, 6);
    assert_eq!(c.passed["no_member"], 1);
    assert_eq!(c.passed["not_for_router"], 1);
}
