//! Frame-level fixtures through BPF_PROG_TEST_RUN: for each input frame, the exact verdict and
//! output frame of the real dataplane object, and the counters it leaves.
use std::net::Ipv4Addr;

use anycast_common::{Stat, programs::ANYCAST};
use anycast_ctl::report;
use anycast_tests::frames::*;

const ANYCAST_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// Has one member, on the ingress port (so XDP_TX).
const ANYCAST_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 54);
/// Exists with no members.
const ANYCAST_EMPTY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 55);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT_MAC: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x10];
const M1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const M1_MAC: [u8; 6] = [0x02, 0x11, 0, 0, 0, 0x02];
const M2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 6);
const M2_MAC: [u8; 6] = [0x02, 0x22, 0, 0, 0, 0x06];
const M3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const M3_MAC: [u8; 6] = [0x02, 0x33, 0, 0, 0, 0x20];

/// p0 faces the client; A's members M1 and M2 are on p1; B's member M3 is on p0.
fn bed() -> Bed {
    let mut bed = Bed::new().expect("TEST_RUN bed");
    bed.add_member(ANYCAST_A, M1, 1, M1_MAC).unwrap();
    bed.add_member(ANYCAST_A, M2, 1, M2_MAC).unwrap();
    bed.add_member(ANYCAST_B, M3, 0, M3_MAC).unwrap();
    bed.add_member(ANYCAST_EMPTY, M1, 1, M1_MAC).unwrap();
    bed.del_member(ANYCAST_EMPTY, M1).unwrap();
    bed
}

fn to_router(bed: &Bed, ip: &Ipv4) -> Vec<u8> {
    ipv4_frame(bed.ports[0].mac, CLIENT_MAC, ip)
}

/// What the dataplane must emit for `ip` sent to a member: new MACs, TTL - 1, and a header
/// checksum recomputed from scratch.
fn forwarded(dst_mac: [u8; 6], src_mac: [u8; 6], ip: &Ipv4) -> Vec<u8> {
    let mut out = ip.clone();
    out.ttl -= 1;
    ipv4_frame(dst_mac, src_mac, &out)
}

fn member_mac(frame: &[u8]) -> [u8; 6] {
    frame[0..6].try_into().unwrap()
}

fn stats(bed: &Bed) -> report::Stats {
    report::stats(&bed.maps, None).unwrap()
}

fn addr_stats(bed: &Bed, a: impl Into<std::net::IpAddr>) -> report::AddressCounters {
    report::stats(&bed.maps, Some(a.into()))
        .unwrap()
        .addresses
        .remove(0)
}

fn global(bed: &Bed, counter: Stat) -> u64 {
    bed.maps
        .stats
        .get(&counter.index(), 0)
        .unwrap()
        .iter()
        .sum()
}

#[derive(Debug)]
enum Expect {
    Unchanged,
    Frame(Vec<u8>),
}

struct Fixture {
    name: &'static str,
    ingress: usize,
    input: Vec<u8>,
    verdict: u32,
    output: Expect,
}

fn check(bed: &Bed, f: &Fixture) {
    let (verdict, out) = bed.run(ANYCAST, f.ingress, &f.input).unwrap();
    assert_eq!(verdict, f.verdict, "{}: verdict", f.name);
    match &f.output {
        Expect::Unchanged => assert_eq!(out, f.input, "{}: frame must pass untouched", f.name),
        Expect::Frame(want) => assert_eq!(&out, want, "{}: output frame", f.name),
    }
}

#[test]
fn fixture_table() {
    let bed = bed();
    let p0 = bed.ports[0].mac;
    let p1 = bed.ports[1].mac;

    // Which member a flow goes to is the hash's business; the fixture asks the dataplane once
    // and then requires the exact frame for that member.
    let udp = Ipv4::udp(CLIENT, ANYCAST_A, 40000, 53, b"query");
    let (_, probe) = bed.run(ANYCAST, 0, &to_router(&bed, &udp)).unwrap();
    let udp_member = member_mac(&probe);
    assert!(udp_member == M1_MAC || udp_member == M2_MAC);

    let tcp = Ipv4::tcp_syn(CLIENT, ANYCAST_A, 40001, 80);
    let (_, probe) = bed.run(ANYCAST, 0, &to_router(&bed, &tcp)).unwrap();
    let tcp_member = member_mac(&probe);

    let icmp = Ipv4::icmp_echo(CLIENT, ANYCAST_A);
    let (_, probe) = bed.run(ANYCAST, 0, &to_router(&bed, &icmp)).unwrap();
    let icmp_member = member_mac(&probe);

    let mut with_options = Ipv4::udp(CLIENT, ANYCAST_A, 40002, 53, b"opts");
    with_options.options = vec![0x01, 0x01, 0x01, 0x00]; // NOP NOP NOP EOL
    let (_, probe) = bed
        .run(ANYCAST, 0, &to_router(&bed, &with_options))
        .unwrap();
    let options_member = member_mac(&probe);

    let udp_b = Ipv4::udp(CLIENT, ANYCAST_B, 40003, 53, b"b");
    let mut ttl1 = udp.clone();
    ttl1.ttl = 1;
    let mut ttl0 = udp.clone();
    ttl0.ttl = 0;
    let mut ttl255 = udp.clone();
    ttl255.ttl = 255;
    let not_anycast = Ipv4::udp(CLIENT, Ipv4Addr::new(203, 0, 113, 99), 40004, 53, b"x");
    let no_members = Ipv4::udp(CLIENT, ANYCAST_EMPTY, 40005, 53, b"x");
    let mut bad_version = udp.bytes();
    bad_version[0] = 0x65;
    let mut short_ihl = udp.bytes();
    short_ihl[0] = 0x44;
    let mut tot_len_too_big = udp.bytes();
    tot_len_too_big[2..4].copy_from_slice(&500u16.to_be_bytes());
    let udp_no_ports = Ipv4::new(CLIENT, ANYCAST_A, IPPROTO_UDP, vec![0x9c, 0x40]);
    let mut padded = to_router(&bed, &udp);
    padded.extend_from_slice(&[0; 18]); // Ethernet padding after the datagram

    let arp_req = arp_frame(
        [0xff; 6],
        ARPOP_REQUEST,
        CLIENT_MAC,
        CLIENT,
        [0; 6],
        ANYCAST_A,
    );
    let mut arp_reply = arp_frame(CLIENT_MAC, ARPOP_REPLY, p0, ANYCAST_A, CLIENT_MAC, CLIENT);
    arp_reply[6..12].copy_from_slice(&p0);
    let vlan = {
        let mut f = ethernet(
            p0,
            CLIENT_MAC,
            ETH_P_8021Q,
            &[[0, 10], ETH_P_IP.to_be_bytes()].concat(),
        );
        f.extend_from_slice(&udp.bytes());
        f
    };

    let fixtures = vec![
        Fixture {
            name: "UDP to an anycast address is redirected to a member on another port",
            ingress: 0,
            input: to_router(&bed, &udp),
            verdict: XDP_REDIRECT,
            output: Expect::Frame(forwarded(udp_member, p1, &udp)),
        },
        Fixture {
            name: "Ethernet padding after the datagram is kept and forwarded",
            ingress: 0,
            input: padded.clone(),
            verdict: XDP_REDIRECT,
            output: Expect::Frame({
                let mut f = forwarded(udp_member, p1, &udp);
                f.extend_from_slice(&[0; 18]);
                f
            }),
        },
        Fixture {
            name: "TCP to an anycast address is redirected",
            ingress: 0,
            input: to_router(&bed, &tcp),
            verdict: XDP_REDIRECT,
            output: Expect::Frame(forwarded(tcp_member, p1, &tcp)),
        },
        Fixture {
            name: "ICMP (no ports) to an anycast address is redirected",
            ingress: 0,
            input: to_router(&bed, &icmp),
            verdict: XDP_REDIRECT,
            output: Expect::Frame(forwarded(icmp_member, p1, &icmp)),
        },
        Fixture {
            name: "IP options: the checksum covers the whole 24-byte header",
            ingress: 0,
            input: to_router(&bed, &with_options),
            verdict: XDP_REDIRECT,
            output: Expect::Frame(forwarded(options_member, p1, &with_options)),
        },
        Fixture {
            name: "TTL 255 decrements with a correct checksum",
            ingress: 0,
            input: to_router(&bed, &ttl255),
            verdict: XDP_REDIRECT,
            output: Expect::Frame(forwarded(udp_member, p1, &ttl255)),
        },
        Fixture {
            name: "a member on the ingress port gets the frame back with XDP_TX",
            ingress: 0,
            input: to_router(&bed, &udp_b),
            verdict: XDP_TX,
            output: Expect::Frame(forwarded(M3_MAC, p0, &udp_b)),
        },
        Fixture {
            name: "TTL 1 passes to the kernel (ICMP time exceeded)",
            ingress: 0,
            input: to_router(&bed, &ttl1),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "TTL 0 passes to the kernel",
            ingress: 0,
            input: to_router(&bed, &ttl0),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "unicast that is not anycast passes untouched",
            ingress: 0,
            input: to_router(&bed, &not_anycast),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "an anycast address without members passes (normal routing applies)",
            ingress: 0,
            input: to_router(&bed, &no_members),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "IP version 6 in an IPv4 ethertype passes",
            ingress: 0,
            input: ethernet(p0, CLIENT_MAC, ETH_P_IP, &bad_version),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "IHL below 5 passes",
            ingress: 0,
            input: ethernet(p0, CLIENT_MAC, ETH_P_IP, &short_ihl),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "total length beyond the frame passes",
            ingress: 0,
            input: ethernet(p0, CLIENT_MAC, ETH_P_IP, &tot_len_too_big),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "UDP without room for its ports passes",
            ingress: 0,
            input: to_router(&bed, &udp_no_ports),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "ARP request for an anycast address with members is answered",
            ingress: 0,
            input: arp_req.clone(),
            verdict: XDP_TX,
            output: Expect::Frame(arp_reply),
        },
        Fixture {
            name: "ARP request for another address passes",
            ingress: 0,
            input: arp_frame(
                [0xff; 6],
                ARPOP_REQUEST,
                CLIENT_MAC,
                CLIENT,
                [0; 6],
                Ipv4Addr::new(192, 0, 2, 1),
            ),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "ARP request for an anycast address without members passes",
            ingress: 0,
            input: arp_frame(
                [0xff; 6],
                ARPOP_REQUEST,
                CLIENT_MAC,
                CLIENT,
                [0; 6],
                ANYCAST_EMPTY,
            ),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "gratuitous ARP for an anycast address passes",
            ingress: 0,
            input: arp_frame(
                [0xff; 6],
                ARPOP_REQUEST,
                CLIENT_MAC,
                ANYCAST_A,
                [0; 6],
                ANYCAST_A,
            ),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "ARP reply passes",
            ingress: 0,
            input: arp_frame(p0, ARPOP_REPLY, CLIENT_MAC, CLIENT, p0, ANYCAST_A),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "ARP for a non-IPv4 protocol passes",
            ingress: 0,
            input: {
                let mut f = arp_req.clone();
                f[16] = 0x86;
                f[17] = 0xdd;
                f
            },
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "VLAN-tagged frames pass untouched",
            ingress: 0,
            input: vlan,
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
        Fixture {
            name: "an IPv6 header whose payload length runs past the frame passes untouched",
            ingress: 0,
            input: ethernet(p0, CLIENT_MAC, ETH_P_IPV6, &[0x60; 60]),
            verdict: XDP_PASS,
            output: Expect::Unchanged,
        },
    ];
    for f in &fixtures {
        check(&bed, f);
    }

    // Counters: exactly what the frames above (and the four probes) did.
    let a = addr_stats(&bed, ANYCAST_A);
    let forwarded_a = 4 /* probes */ + 6;
    assert_eq!(a.forwarded_packets, forwarded_a);
    assert_eq!(a.passed["ttl_exceeded"], 2);
    assert_eq!(a.passed["no_member"], 0);
    assert_eq!(a.passed["mac_unknown"], 0);
    assert_eq!(a.rx_packets, forwarded_a + 2);
    assert_eq!(a.arp_replies, 1);
    let member_packets: u64 = a.members.iter().map(|m| m.packets).sum();
    let member_bytes: u64 = a.members.iter().map(|m| m.bytes).sum();
    assert_eq!(member_packets, a.forwarded_packets);
    assert_eq!(member_bytes, a.forwarded_bytes);
    let b = addr_stats(&bed, ANYCAST_B);
    assert_eq!((b.rx_packets, b.forwarded_packets), (1, 1));
    assert_eq!(b.members[0].bytes, to_router(&bed, &udp_b).len() as u64);
    let empty = addr_stats(&bed, ANYCAST_EMPTY);
    assert_eq!((empty.rx_packets, empty.passed["no_member"]), (1, 1));
    let all = stats(&bed);
    let g = &all.global;
    // Every frame ends in exactly one outcome counter.
    let outcomes: u64 = all
        .addresses
        .iter()
        .map(|a| a.forwarded_packets + a.arp_replies + a.passed.values().sum::<u64>())
        .sum::<u64>()
        + [
            "not_anycast",
            "other_ethertype",
            "malformed",
            "arp_passed",
            "arp_refused",
            "iface_unknown",
        ]
        .iter()
        .map(|k| g[*k])
        .sum::<u64>();
    assert_eq!(outcomes, fixtures.len() as u64 + 4);
    // version, IHL, total length, no ports, ARP ptype, IPv6 payload length
    assert_eq!(g["malformed"], 6);
    assert_eq!(g["not_anycast"], 1);
    assert_eq!(g["other_ethertype"], 1);
    assert_eq!(g["arp_passed"], 4);
}

#[test]
fn truncation_at_every_length_passes_and_counts_malformed() {
    let bed = bed();
    let udp = to_router(&bed, &Ipv4::udp(CLIENT, ANYCAST_A, 40000, 53, b"payload"));
    let mut opts = Ipv4::udp(CLIENT, ANYCAST_A, 40000, 53, b"payload");
    opts.options = vec![1, 1, 1, 0];
    let with_options = to_router(&bed, &opts);
    let tcp = to_router(&bed, &Ipv4::tcp_syn(CLIENT, ANYCAST_A, 40000, 80));
    let arp = arp_frame(
        [0xff; 6],
        ARPOP_REQUEST,
        CLIENT_MAC,
        CLIENT,
        [0; 6],
        ANYCAST_A,
    );
    let mut cuts = 0;
    for full in [&udp, &with_options, &tcp, &arp] {
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header; from there on,
        // every cut is fed to the program.
        for len in 14..full.len() {
            let before = global(&bed, Stat::Malformed);
            let frame = &full[..len];
            let (verdict, out) = bed.run(ANYCAST, 0, frame).unwrap();
            assert_eq!(verdict, XDP_PASS, "cut at {len} of {}", full.len());
            assert_eq!(out, frame, "cut at {len}: frame must be untouched");
            assert_eq!(
                global(&bed, Stat::Malformed),
                before + 1,
                "cut at {len}: counted as malformed"
            );
            cuts += 1;
        }
    }
    let a = addr_stats(&bed, ANYCAST_A);
    assert_eq!(
        (a.rx_packets, a.forwarded_packets, a.arp_replies),
        (0, 0, 0)
    );
    assert_eq!(global(&bed, Stat::Malformed), cuts);
}

#[test]
fn fragments_follow_their_first_fragment() {
    let bed = bed();
    let p1 = bed.ports[1].mac;
    // Several datagrams, so that both members are seen as targets of a first fragment.
    let mut targets = std::collections::HashSet::new();
    for sport in 41000..41016u16 {
        let mut first = Ipv4::udp(CLIENT, ANYCAST_A, sport, 53, &[7; 32]);
        first.id = sport;
        first.frag = 0x2000; // MF, offset 0
        let (verdict, out) = bed.run(ANYCAST, 0, &to_router(&bed, &first)).unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        let member = member_mac(&out);
        targets.insert(member);

        let mut second = Ipv4::new(CLIENT, ANYCAST_A, IPPROTO_UDP, vec![9; 16]);
        second.id = sport;
        second.frag = 5; // offset 40 bytes, last fragment
        let (verdict, out) = bed.run(ANYCAST, 0, &to_router(&bed, &second)).unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            out,
            forwarded(member, p1, &second),
            "fragment of datagram {sport}"
        );
    }
    assert_eq!(targets.len(), 2, "16 datagrams should reach both members");
    assert_eq!(global(&bed, Stat::FragOrphan), 0);

    // A later fragment whose first fragment was never seen still reaches a member, and is counted.
    let mut orphan = Ipv4::new(CLIENT, ANYCAST_A, IPPROTO_UDP, vec![9; 16]);
    orphan.id = 7;
    orphan.frag = 5;
    let (verdict, _) = bed.run(ANYCAST, 0, &to_router(&bed, &orphan)).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(global(&bed, Stat::FragOrphan), 1);
}

#[test]
fn unknown_member_mac_passes_and_is_counted() {
    let mut bed = bed();
    bed.forget_mac(M3).unwrap();
    let frame = to_router(&bed, &Ipv4::udp(CLIENT, ANYCAST_B, 40000, 53, b"x"));
    let (verdict, out) = bed.run(ANYCAST, 0, &frame).unwrap();
    assert_eq!((verdict, out), (XDP_PASS, frame));
    assert_eq!(addr_stats(&bed, ANYCAST_B).passed["mac_unknown"], 1);
}

/// Forged ARP claiming a member's address, each sent on the member's own port: what once made
/// the dataplane rewrite the member's MAC (anyone on the link could take its traffic).
fn forged_arps(router_mac: [u8; 6], member: Ipv4Addr) -> Vec<(&'static str, Vec<u8>)> {
    let evil = [0x02, 0xee, 0, 0, 0, 0x66];
    let gateway = Ipv4Addr::new(192, 0, 2, 1);
    let mut sha_not_eth_src = arp_frame([0xff; 6], ARPOP_REQUEST, evil, member, [0; 6], gateway);
    sha_not_eth_src[6..12].copy_from_slice(&M3_MAC);
    vec![
        (
            "gratuitous ARP request",
            arp_frame([0xff; 6], ARPOP_REQUEST, evil, member, [0; 6], member),
        ),
        (
            "gratuitous ARP reply",
            arp_frame([0xff; 6], ARPOP_REPLY, evil, member, [0xff; 6], member),
        ),
        (
            "ARP reply to the router",
            arp_frame(router_mac, ARPOP_REPLY, evil, member, router_mac, gateway),
        ),
        (
            "ARP request from the member's address",
            arp_frame([0xff; 6], ARPOP_REQUEST, evil, member, [0; 6], gateway),
        ),
        (
            "bogus opcode",
            arp_frame([0xff; 6], 7, evil, member, [0; 6], gateway),
        ),
        (
            "broadcast sender MAC",
            arp_frame([0xff; 6], ARPOP_REQUEST, [0xff; 6], member, [0; 6], gateway),
        ),
        (
            "zero sender MAC",
            arp_frame([0xff; 6], ARPOP_REQUEST, [0; 6], member, [0; 6], gateway),
        ),
        (
            "multicast sender MAC",
            arp_frame(
                [0xff; 6],
                ARPOP_REQUEST,
                [0x01, 0, 0x5e, 0, 0, 1],
                member,
                [0; 6],
                gateway,
            ),
        ),
        ("sender MAC other than the Ethernet source", sha_not_eth_src),
        (
            "the router's own MAC",
            arp_frame(
                [0xff; 6],
                ARPOP_REQUEST,
                router_mac,
                member,
                [0; 6],
                gateway,
            ),
        ),
    ]
}

#[test]
fn gratuitous_arp_does_not_hijack_a_member() {
    let bed = bed();
    let p0 = bed.ports[0].mac;
    let p1 = bed.ports[1].mac;
    let hosts = |bed: &Bed| [M1, M2, M3].map(|m| bed.host(m).unwrap());
    let before = hosts(&bed);
    // M3 lives on p0, M1 on p1: each forgery arrives on the member's own port.
    for (member, port, mac) in [(M3, 0, p0), (M1, 1, p1)] {
        for (name, arp) in forged_arps(mac, member) {
            let passed = global(&bed, Stat::ArpPassed);
            let (verdict, out) = bed.run(ANYCAST, port, &arp).unwrap();
            assert_eq!(
                (verdict, &out),
                (XDP_PASS, &arp),
                "{name}: must pass untouched"
            );
            assert_eq!(global(&bed, Stat::ArpPassed), passed + 1, "{name}: counted");
            assert_eq!(hosts(&bed), before, "{name}: HOSTS changed");
        }
    }
    // Traffic still goes to the real members.
    let udp = Ipv4::udp(CLIENT, ANYCAST_B, 40000, 53, b"x");
    let (verdict, out) = bed.run(ANYCAST, 0, &to_router(&bed, &udp)).unwrap();
    assert_eq!((verdict, out), (XDP_TX, forwarded(M3_MAC, p0, &udp)));
    for sport in 40000..40016 {
        let udp = Ipv4::udp(CLIENT, ANYCAST_A, sport, 53, b"x");
        let (verdict, out) = bed.run(ANYCAST, 0, &to_router(&bed, &udp)).unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        assert!([M1_MAC, M2_MAC].contains(&member_mac(&out)), "flow {sport}");
    }
}

#[test]
fn arp_from_a_member_does_not_make_its_unknown_mac_usable() {
    let mut bed = bed();
    bed.forget_mac(M3).unwrap();
    let before = bed.host(M3).unwrap();
    let arp = arp_frame(
        [0xff; 6],
        ARPOP_REQUEST,
        M3_MAC,
        M3,
        [0; 6],
        Ipv4Addr::new(192, 0, 2, 1),
    );
    assert_eq!(bed.run(ANYCAST, 0, &arp).unwrap(), (XDP_PASS, arp.clone()));
    assert_eq!(bed.host(M3).unwrap(), before);
    let frame = to_router(&bed, &Ipv4::udp(CLIENT, ANYCAST_B, 40000, 53, b"x"));
    assert_eq!(bed.run(ANYCAST, 0, &frame).unwrap(), (XDP_PASS, frame));
    assert_eq!(addr_stats(&bed, ANYCAST_B).passed["mac_unknown"], 1);
}

const OTHER_HOST_MAC: [u8; 6] = [0x02, 0x99, 0, 0, 0, 0x01];

#[test]
fn frame_for_another_mac_is_not_forwarded() {
    let bed = bed();
    let p1 = bed.ports[1].mac;
    let udp = Ipv4::udp(CLIENT, ANYCAST_A, 40000, 53, b"query");
    for (what, dst) in [
        ("another host's MAC", OTHER_HOST_MAC),
        ("the router's other port", p1),
        ("broadcast", [0xff; 6]),
        ("IPv4 multicast MAC", [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
        ("IPv6 multicast MAC", [0x33, 0x33, 0, 0, 0, 1]),
    ] {
        let frame = ipv4_frame(dst, CLIENT_MAC, &udp);
        let counter = format!("{ANYCAST_A}/passed.not_for_router");
        bed.assert_passed_as(what, 0, &frame, &counter);
    }
    // Addressed to the port, the same datagram is forwarded.
    let (verdict, _) = bed.run(ANYCAST, 0, &to_router(&bed, &udp)).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
}

#[test]
fn bad_ip_checksum_is_not_forwarded() {
    let bed = bed();
    let udp = Ipv4::udp(CLIENT, ANYCAST_A, 40000, 53, b"query");
    let mut flipped = to_router(&bed, &udp);
    flipped[14 + 10] ^= 0x01;
    let mut zeroed = to_router(&bed, &udp);
    zeroed[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let mut ttl_changed = to_router(&bed, &udp);
    ttl_changed[14 + 8] -= 1; // as if a previous hop forgot to update the checksum
    // The checksum covers the options too: one option byte changed after it was computed.
    let mut opts = Ipv4::udp(CLIENT, ANYCAST_A, 40001, 53, b"opts");
    opts.options = vec![0x01, 0x01, 0x01, 0x00, 0x01, 0x01, 0x01, 0x00];
    let mut bad_option = to_router(&bed, &opts);
    bad_option[14 + 26] = 0x00;
    let counter = format!("{ANYCAST_A}/passed.bad_checksum");
    for (what, frame) in [
        ("one checksum bit flipped", flipped),
        ("checksum zero", zeroed),
        ("TTL changed, checksum not", ttl_changed),
        ("option byte changed", bad_option),
    ] {
        bed.assert_passed_as(what, 0, &frame, &counter);
    }
    // With the right checksum, options of every length are forwarded.
    for words in 1..=10 {
        let mut ok = Ipv4::udp(CLIENT, ANYCAST_A, 40002, 53, b"opts");
        ok.options = vec![0x01; 4 * words];
        let (verdict, _) = bed.run(ANYCAST, 0, &to_router(&bed, &ok)).unwrap();
        assert_eq!(verdict, XDP_REDIRECT, "{words} option words");
    }
}

/// The header checksum over varied headers: sources, ids, TTLs and 0 to 10 words of option
/// bytes (words of 0xffff among them, for the carries), each forwarded exactly as built here
/// with the TTL one lower and a checksum computed from scratch; and each again with one bit
/// flipped in a field only the checksum guards (the id, the checksum, an option byte), passed.
#[test]
fn varied_headers_are_forwarded_or_passed_by_their_checksum() {
    let bed = bed();
    let counter = format!("{ANYCAST_A}/passed.bad_checksum");
    for n in 0..110u32 {
        let (r, o) = (varied("ipv4 header", n), varied("ipv4 options", n));
        let src = Ipv4Addr::new(198, 18 | (r[0] & 1), r[1], r[2].max(1));
        let mut ip = Ipv4::udp(
            src,
            ANYCAST_A,
            u16::from_be_bytes([r[3], r[4]]),
            53,
            &r[5..9],
        );
        ip.id = u16::from_be_bytes([r[9], r[10]]);
        ip.ttl = r[11].max(2);
        ip.frag = if r[12] & 1 == 0 { 0x4000 } else { 0 };
        let words = (n % 11) as usize;
        ip.options = [&r[13..29], &o[..24]].concat()[..4 * words].to_vec();
        if n % 4 == 0 {
            ip.options.fill(0xff);
            ip.id = 0xffff;
        }
        let frame = to_router(&bed, &ip);
        let (verdict, out) = bed.run(ANYCAST, 0, &frame).unwrap();
        assert_eq!(verdict, XDP_REDIRECT, "case {n}: {ip:?}");
        let mut want = ip.clone();
        want.ttl -= 1;
        assert_eq!(out[14..], want.bytes(), "case {n}: forwarded datagram");

        let covered = [
            &[4usize, 5, 10, 11][..],
            &(20..20 + 4 * words).collect::<Vec<_>>(),
        ]
        .concat();
        let mut bad = frame.clone();
        bad[14 + covered[r[30] as usize % covered.len()]] ^= 1 << (r[31] % 8);
        bed.assert_passed_as(&format!("case {n}, one bit flipped"), 0, &bad, &counter);
    }
}

#[test]
fn impossible_source_is_not_forwarded() {
    let bed = bed();
    let counter = format!("{ANYCAST_A}/passed.bad_source");
    for (what, src) in [
        ("this network", Ipv4Addr::new(0, 0, 0, 0)),
        ("0.0.0.0/8", Ipv4Addr::new(0, 1, 2, 3)),
        ("loopback", Ipv4Addr::new(127, 0, 0, 1)),
        ("127.0.0.0/8", Ipv4Addr::new(127, 255, 255, 254)),
        ("multicast", Ipv4Addr::new(224, 0, 0, 1)),
        ("multicast", Ipv4Addr::new(239, 255, 255, 250)),
        ("reserved", Ipv4Addr::new(240, 0, 0, 1)),
        ("limited broadcast", Ipv4Addr::BROADCAST),
        (
            "link-local (RFC 3927: never forwarded)",
            Ipv4Addr::new(169, 254, 1, 1),
        ),
        ("the anycast address itself", ANYCAST_A),
    ] {
        let frame = to_router(&bed, &Ipv4::udp(src, ANYCAST_A, 40000, 53, b"x"));
        bed.assert_passed_as(&format!("{what} {src}"), 0, &frame, &counter);
    }
}

#[test]
fn arp_probe_gets_no_reply() {
    let bed = bed();
    // RFC 5227: a host checking that nobody uses the address asks with sender IP 0.0.0.0.
    let probe = arp_frame(
        [0xff; 6],
        ARPOP_REQUEST,
        CLIENT_MAC,
        Ipv4Addr::UNSPECIFIED,
        [0; 6],
        ANYCAST_A,
    );
    bed.assert_passed_as("ARP probe", 0, &probe, "global/arp_refused");
}

#[test]
fn arp_from_broadcast_mac_gets_no_reply() {
    let bed = bed();
    for (what, sha) in [
        ("broadcast sender MAC", [0xff; 6]),
        ("multicast sender MAC", [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
        ("zero sender MAC", [0; 6]),
    ] {
        let arp = arp_frame([0xff; 6], ARPOP_REQUEST, sha, CLIENT, [0; 6], ANYCAST_A);
        bed.assert_passed_as(what, 0, &arp, "global/arp_refused");
    }
}

#[test]
fn unicast_arp_for_another_mac_gets_no_reply() {
    let bed = bed();
    let p0 = bed.ports[0].mac;
    let p1 = bed.ports[1].mac;
    for (what, dst) in [
        ("another host's MAC", OTHER_HOST_MAC),
        ("the router's other port", p1),
        ("a multicast MAC", [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
    ] {
        let arp = arp_frame(dst, ARPOP_REQUEST, CLIENT_MAC, CLIENT, [0; 6], ANYCAST_A);
        bed.assert_passed_as(what, 0, &arp, "global/arp_refused");
    }
    // Unicast to the port (a cache refresh) is answered.
    let arp = arp_frame(p0, ARPOP_REQUEST, CLIENT_MAC, CLIENT, p0, ANYCAST_A);
    assert_eq!(bed.run(ANYCAST, 0, &arp).unwrap().0, XDP_TX);
}

#[test]
fn flows_spread_and_stick() {
    let bed = bed();
    let mut per_member = std::collections::HashMap::new();
    for sport in 30000..30300u16 {
        let frame = to_router(&bed, &Ipv4::udp(CLIENT, ANYCAST_A, sport, 53, b"x"));
        let (_, first) = bed.run(ANYCAST, 0, &frame).unwrap();
        for _ in 0..3 {
            let (_, again) = bed.run(ANYCAST, 0, &frame).unwrap();
            assert_eq!(member_mac(&again), member_mac(&first), "flow {sport} moved");
        }
        *per_member.entry(member_mac(&first)).or_insert(0u32) += 1;
    }
    assert_eq!(per_member.len(), 2);
    for (mac, n) in per_member {
        assert!(n >= 100, "member {mac:02x?} got only {n} of 300 flows");
    }
}

#[test]
fn baseline_program_swaps_macs() {
    let bed = bed();
    let frame = to_router(&bed, &Ipv4::udp(CLIENT, ANYCAST_A, 40000, 53, b"x"));
    let (verdict, out) = bed
        .run(anycast_common::bench::programs::BENCH_BASELINE, 0, &frame)
        .unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out[0..6], frame[6..12]);
    assert_eq!(out[6..12], frame[0..6]);
    assert_eq!(out[12..], frame[12..]);
}

/// TEST_RUN runs each repeat on the frame the previous one left: a forward's second repeat
/// meets the forwarded frame (a member's MAC) and passes it. So the benchmark times every
/// program through `bench_replay`, which restores the frame first: then every repeat forwards
/// the frame as given, and the last one leaves exactly what one run does.
#[test]
fn timed_repeats_each_forward_the_frame_as_given() {
    let mut bed = bed();
    let frame = to_router(&bed, &Ipv4::udp(CLIENT, ANYCAST_A, 40000, 53, b"x"));
    let (verdict, once) = bed.run(ANYCAST, 0, &frame).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);

    let before = bed.outcomes();
    let (verdict, _) = bed.run_repeated(ANYCAST, 0, &frame, 3).unwrap();
    assert_eq!(verdict, XDP_PASS, "plain repeats meet their own output");
    assert_eq!(
        bed.changed_since(&before),
        [
            (format!("{ANYCAST_A}/forwarded"), 1),
            (format!("{ANYCAST_A}/passed.not_for_router"), 2)
        ]
    );

    let before = bed.outcomes();
    let timed = bed.time(ANYCAST, 0, &frame, 1_000).unwrap();
    assert_eq!(timed.verdict, XDP_REDIRECT);
    assert_eq!(
        timed.frame, once,
        "the last repeat forwards the frame as given"
    );
    assert_eq!(
        bed.changed_since(&before),
        [(format!("{ANYCAST_A}/forwarded"), 1_000)]
    );
    assert!(timed.per_run > std::time::Duration::ZERO);
}

#[test]
fn object_names_match_user_space() {
    let objects = [
        (
            "dataplane",
            anycast_ctl::EBPF_OBJECT,
            &anycast_common::names::ALL[..],
            &anycast_common::programs::ALL[..],
        ),
        (
            "bench",
            anycast_ctl::BENCH_OBJECT,
            &anycast_common::bench::names::ALL[..],
            &anycast_common::bench::programs::ALL[..],
        ),
    ];
    for (object_name, bytes, map_names, program_names) in objects {
        let object = aya_obj_names(bytes);
        // Data sections (`.rodata`: the loader-set FLOW_SETS_MASK) are maps to aya, not named
        // maps.
        let maps: Vec<&String> = object.0.iter().filter(|n| !n.starts_with('.')).collect();
        for name in map_names {
            assert!(
                maps.iter().any(|m| m == name),
                "map {name} missing from the {object_name} object"
            );
        }
        assert_eq!(
            maps.len(),
            map_names.len(),
            "{object_name} maps: {:?}",
            object.0
        );
        for name in program_names {
            assert!(
                object.1.contains(&name.to_string()),
                "program {name} missing from the {object_name} object"
            );
        }
        assert_eq!(
            object.1.len(),
            program_names.len(),
            "{object_name} programs: {:?}",
            object.1
        );
    }
}

/// Map and program names of an embedded object, as aya loads it.
fn aya_obj_names(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    let dir = format!("/sys/fs/bpf/anycast-names-{}", std::process::id());
    std::fs::create_dir_all(&dir).unwrap();
    let ebpf = aya::EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .load(bytes);
    let names = ebpf.as_ref().map(|e| {
        (
            e.maps().map(|(n, _)| n.to_string()).collect(),
            e.programs().map(|(n, _)| n.to_string()).collect(),
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    names.expect("loading the object")
}

/// The membership writer reports an address's first member and the loss of its last: the
/// event route export follows.
#[test]
fn writer_reports_first_and_last_member_of_an_address() {
    use anycast_ctl::members::{self, Edge, Placement};
    let mut bed = Bed::new().expect("TEST_RUN bed");
    let port = (bed.ports[1].ifindex, bed.ports[1].mac);
    let place = |member: Ipv4Addr, mac| Placement {
        member: member.into(),
        ifindex: port.0,
        mac,
        smac: port.1,
        static_mac: false,
        signed_mac: false,
    };
    let info = members::static_info(members::now_ms(), 100, 100);
    let a = ANYCAST_A.into();
    let first = members::add(&mut bed.maps, a, &place(M1, M1_MAC), info, None).unwrap();
    assert_eq!(first.edge, Some(Edge::FirstMember));
    let second = members::add(&mut bed.maps, a, &place(M2, M2_MAC), info, None).unwrap();
    assert_eq!(second.edge, None);
    let again = members::add(&mut bed.maps, a, &place(M2, M2_MAC), info, None).unwrap();
    assert_eq!(again.edge, None);
    assert_eq!(members::del(&mut bed.maps, a, M1.into()).unwrap(), None);
    assert_eq!(
        members::del(&mut bed.maps, a, M2.into()).unwrap(),
        Some(Edge::LastMemberGone)
    );
}

/// The one-store removal: with a member's `SlotState::down` bit set, it gets no datagram, its
/// flows go to the survivor with the highest `fallback_score` (by member identity, so the same
/// on every router), no flow of a survivor moves, and the rebuild that follows moves none
/// either.
#[test]
fn member_taken_down_gets_nothing_and_its_flows_fall_back_by_identity() {
    let mut bed = bed();
    bed.add_member(ANYCAST_A, M3, 0, M3_MAC).unwrap();
    let macs = [(M1, M1_MAC), (M2, M2_MAC), (M3, M3_MAC)];
    let port0 = bed.ports[0].mac;
    let flow = |sport| {
        ipv4_frame(
            port0,
            CLIENT_MAC,
            &Ipv4::udp(CLIENT, ANYCAST_A, sport, 53, b"x"),
        )
    };
    let sports = 31000..31600u16;
    let before: Vec<[u8; 6]> = sports
        .clone()
        .map(|s| member_mac(&bed.run(ANYCAST, 0, &flow(s)).unwrap().1))
        .collect();
    assert!(before.contains(&M1_MAC), "no flow on {M1}");

    let Ok(anycast_ctl::dataplane::Bucket::Found { entry, .. }) = bed.maps.bucket(ANYCAST_A.into())
    else {
        panic!("{ANYCAST_A} not installed");
    };
    let set = bed.maps.member_set(&entry).unwrap();
    let m1_host = bed
        .maps
        .host_ids
        .get(&anycast_common::any_key(M1.into()), 0)
        .unwrap();
    let position = set
        .positions()
        .iter()
        .position(|m| m.host == m1_host)
        .unwrap();
    bed.maps
        .slot_state
        .set_down(entry.slot, anycast_common::position_bit(position as u32));

    let survivors = [M2, M3];
    for (i, sport) in sports.clone().enumerate() {
        let frame = flow(sport);
        let (verdict, out) = bed.run(ANYCAST, 0, &frame).unwrap();
        assert_ne!(
            verdict,
            anycast_common::proto::XDP_PASS,
            "flow {sport} dropped"
        );
        let now = member_mac(&out);
        if before[i] != M1_MAC {
            assert_eq!(now, before[i], "flow {sport} of a survivor moved");
            continue;
        }
        let hash = anycast_common::flow_hash(
            anycast_common::ip_key(CLIENT.octets()),
            anycast_common::ip_key(ANYCAST_A.octets()),
            u32::from_ne_bytes([(sport >> 8) as u8, sport as u8, 0, 53]),
            17,
        );
        let key = |m: &Ipv4Addr| anycast_common::ip_key(m.octets());
        let want = survivors
            .iter()
            .max_by_key(|m| (anycast_common::fallback_score(hash, key(m)), key(m)))
            .unwrap();
        let want_mac = macs.iter().find(|(m, _)| m == want).unwrap().1;
        assert_eq!(
            now, want_mac,
            "flow {sport} of {M1} went elsewhere than its fallback"
        );
    }
    for sport in 32000..32100u16 {
        let syn = to_router(&bed, &Ipv4::tcp_syn(CLIENT, ANYCAST_A, sport, 80));
        assert_ne!(member_mac(&bed.run(ANYCAST, 0, &syn).unwrap().1), M1_MAC);
    }

    // The rebuild follows: the position becomes a hole, its bit is cleared, nothing moves.
    let during: Vec<[u8; 6]> = sports
        .clone()
        .map(|s| member_mac(&bed.run(ANYCAST, 0, &flow(s)).unwrap().1))
        .collect();
    bed.del_member(ANYCAST_A, M1).unwrap();
    assert_eq!(bed.maps.slot_state.down(entry.slot), 0);
    for (i, sport) in sports.clone().enumerate() {
        let now = member_mac(&bed.run(ANYCAST, 0, &flow(sport)).unwrap().1);
        assert_eq!(
            now, during[i],
            "flow {sport} moved when the rebuilt table came"
        );
    }
}

/// No change waits for an RCU grace period after its flip: a `member add`, `set` or `del`
/// returns with nothing waited for, and a rewrite of the same address's spare waits only when
/// it comes within `journal::REUSE_AFTER` of the flip that retired it (then before writing
/// anything). Counted through `Maps::waits`; the flip's stamp is in `SlotState::retired_at`.
#[test]
fn changes_wait_for_a_grace_period_only_when_the_spare_was_live_just_before() {
    use anycast_ctl::{dataplane::Bucket, journal::REUSE_AFTER, mapped::monotonic_ns};
    let mut bed = bed();
    let slot = |bed: &Bed| match bed.maps.bucket(ANYCAST_A.into()).unwrap() {
        Bucket::Found { entry, .. } => entry.slot,
        _ => panic!("{ANYCAST_A} not installed"),
    };
    let slot = slot(&bed);
    let age = |bed: &Bed| monotonic_ns() - bed.maps.slot_state.retired_at(slot);
    // As if the last flip were long past: nothing to wait for.
    let long_ago = || monotonic_ns() - 2 * REUSE_AFTER.as_nanos() as u64;
    bed.maps.slot_state.set_retired_at(slot, long_ago());
    let waits = bed.maps.waits;
    bed.add_member(ANYCAST_A, M3, 0, M3_MAC).unwrap();
    assert_eq!(bed.maps.waits, waits, "an add after a quiet second waited");
    assert!(
        age(&bed) < REUSE_AFTER.as_nanos() as u64,
        "the flip is not stamped"
    );

    // The same address again at once: its spare was live a moment ago, so this one waits.
    bed.set_weight(ANYCAST_A, M3, anycast_ctl::members::DEFAULT_PREFERENCE, 50)
        .unwrap();
    assert_eq!(
        bed.maps.waits,
        waits + 1,
        "a rewrite right after a flip did not wait"
    );

    // A removal long after the last flip: the down store, the rebuild and the flip, no wait.
    bed.maps.slot_state.set_retired_at(slot, long_ago());
    bed.del_member(ANYCAST_A, M3).unwrap();
    assert_eq!(
        bed.maps.waits,
        waits + 1,
        "a del after a quiet second waited"
    );
    assert_ne!(bed.maps.slot_state.retired_at(slot), 0);

    // A stamp left by an older writer (1: "not settled") is waited for, never trusted.
    bed.maps.slot_state.set_retired_at(slot, 1);
    bed.add_member(ANYCAST_A, M3, 0, M3_MAC).unwrap();
    assert_eq!(
        bed.maps.waits,
        waits + 2,
        "a legacy retiring flag was not waited for"
    );
}

/// Every member set's head in its slot's `SlotState` line is the one the set gives
/// (`SetHead::of`), for the live set and the spare, through adds, weights, deletes and an
/// address emptied and filled again; and the dataplane takes a single-member address's member
/// from the head alone (a head naming another member steers the flow there, the true head
/// steers it back).
#[test]
fn set_heads_follow_their_sets_and_place_single_member_flows() {
    use anycast_common::{MemberRef, SetHead, member_set_index};
    use anycast_ctl::{dataplane::Bucket, members::DEFAULT_PREFERENCE};
    let mut bed = bed();
    let entry = |bed: &Bed, a: Ipv4Addr| match bed.maps.bucket(a.into()) {
        Ok(Bucket::Found { entry, .. }) => entry,
        _ => panic!("{a} not installed"),
    };
    let live_head = |bed: &Bed, a: Ipv4Addr| {
        let e = entry(bed, a);
        bed.maps.slot_state.head(e.slot, e.version)
    };
    let check = |bed: &Bed, label: &str| {
        for a in [ANYCAST_A, ANYCAST_B, ANYCAST_EMPTY] {
            let e = entry(bed, a);
            for version in 0..2 {
                let index = member_set_index(e.slot, version);
                let set = bed.maps.member_sets.get(&index, 0).unwrap();
                let head = bed.maps.slot_state.head(e.slot, version);
                assert_eq!(head, SetHead::of(&set), "{label}: {a}, version {version}");
                assert_eq!((head.single, head.table_size), (set.single, set.table_size));
                if head.single != 0 {
                    let member = set.members[head.single as usize - 1];
                    assert_eq!(head.single_member, member, "{label}: {a}");
                    assert_ne!(member.host, anycast_common::NO_HOST, "{label}: {a}");
                }
            }
        }
    };
    check(&bed, "the bed");
    assert_ne!(live_head(&bed, ANYCAST_A).table_size, 0, "A has a table");
    assert_eq!(live_head(&bed, ANYCAST_B).single, 1, "B has one member");
    assert_eq!(
        live_head(&bed, ANYCAST_EMPTY),
        SetHead::of(&Default::default())
    );

    bed.set_weight(ANYCAST_A, M2, DEFAULT_PREFERENCE, 0)
        .unwrap();
    check(&bed, "M2 drained");
    // M1 was added first: position 0.
    assert_eq!(
        live_head(&bed, ANYCAST_A).single,
        1,
        "A's new flows go to M1 alone"
    );
    bed.del_member(ANYCAST_A, M1).unwrap();
    check(&bed, "M1 deleted");
    assert_eq!(
        live_head(&bed, ANYCAST_A),
        SetHead::default(),
        "no member takes new flows"
    );
    bed.set_weight(ANYCAST_A, M2, DEFAULT_PREFERENCE, 1)
        .unwrap();
    check(&bed, "M2 weighted");
    // M2 sits at position 1: the single member at another position than the first.
    assert_eq!(
        live_head(&bed, ANYCAST_A).single,
        2,
        "A's new flows go to M2 alone"
    );
    let frame_a = to_router(&bed, &Ipv4::udp(CLIENT, ANYCAST_A, 4001, 53, b"x"));
    assert_eq!(
        member_mac(&bed.run(ANYCAST, 0, &frame_a).unwrap().1),
        M2_MAC
    );
    bed.add_member(ANYCAST_A, M1, 1, M1_MAC).unwrap();
    check(&bed, "M1 back, M2 weighted");
    assert_ne!(
        live_head(&bed, ANYCAST_A).table_size,
        0,
        "A has a table again"
    );
    bed.del_member(ANYCAST_B, M3).unwrap();
    check(&bed, "B emptied");
    bed.add_member(ANYCAST_B, M3, 0, M3_MAC).unwrap();
    check(&bed, "B filled again");

    let b = entry(&bed, ANYCAST_B);
    let true_head = live_head(&bed, ANYCAST_B);
    let frame = to_router(&bed, &Ipv4::udp(CLIENT, ANYCAST_B, 4000, 53, b"x"));
    let to = |bed: &Bed| member_mac(&bed.run(ANYCAST, 0, &frame).unwrap().1);
    assert_eq!(to(&bed), M3_MAC);
    // A head naming M1 (as A's member, on p1) while B's set still names M3.
    let m1 = bed.host(M1).unwrap();
    let m1_host = bed.maps.host_ids.get(&m1.ip, 0).unwrap();
    let a_set = bed.maps.member_set(&entry(&bed, ANYCAST_A)).unwrap();
    let m1_ref: MemberRef = *a_set.members().find(|m| m.host == m1_host).unwrap();
    let forged = SetHead {
        single_member: m1_ref,
        ..true_head
    };
    bed.maps.slot_state.set_head(b.slot, b.version, &forged);
    assert_eq!(to(&bed), M1_MAC, "the flow follows the head");
    bed.maps.slot_state.set_head(b.slot, b.version, &true_head);
    assert_eq!(to(&bed), M3_MAC, "the true head takes the flow back");
}

/// The forward path counts a datagram against its member only; the address's totals are
/// derived. They must be exact (received = forwarded + passed, in packets and bytes) and must
/// not go backwards when a member that carried traffic is removed, nor when its counter slot is
/// handed to a new member.
#[test]
fn address_totals_are_exact_and_keep_a_removed_members_forwards() {
    let mut bed = bed();
    let flow =
        |bed: &Bed, port: u16| to_router(bed, &Ipv4::udp(CLIENT, ANYCAST_A, port, 53, b"payload"));
    let mut sent_bytes = 0;
    for port in 40000..40040 {
        let frame = flow(&bed, port);
        let (verdict, _) = bed.run(ANYCAST, 0, &frame).unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        sent_bytes += frame.len() as u64;
    }
    let mut expired = Ipv4::udp(CLIENT, ANYCAST_A, 40000, 53, b"ttl one");
    expired.ttl = 1;
    let expired = to_router(&bed, &expired);
    assert_eq!(bed.run(ANYCAST, 0, &expired).unwrap().0, XDP_PASS);

    let before = addr_stats(&bed, ANYCAST_A);
    assert_eq!(
        (before.forwarded_packets, before.forwarded_bytes),
        (40, sent_bytes)
    );
    assert_eq!(
        (before.rx_packets, before.rx_bytes),
        (41, sent_bytes + expired.len() as u64)
    );
    assert_eq!(before.passed["ttl_exceeded"], 1);
    let m1 = before.members.iter().find(|m| m.address == M1).unwrap();
    assert!(
        m1.packets > 0 && m1.packets < 40,
        "both members carry flows: {before:?}"
    );

    bed.del_member(ANYCAST_A, M1).unwrap();
    let after = addr_stats(&bed, ANYCAST_A);
    assert_eq!(after.members.len(), 1);
    assert_eq!(
        (
            after.rx_packets,
            after.rx_bytes,
            after.forwarded_packets,
            after.forwarded_bytes
        ),
        (
            before.rx_packets,
            before.rx_bytes,
            before.forwarded_packets,
            before.forwarded_bytes
        ),
        "a removed member's forwards stay in its address's totals"
    );

    // M1 back: its counter slot is the one just freed, zeroed; the totals only grow.
    bed.add_member(ANYCAST_A, M1, 1, M1_MAC).unwrap();
    let frame = flow(&bed, 41000);
    assert_eq!(bed.run(ANYCAST, 0, &frame).unwrap().0, XDP_REDIRECT);
    let again = addr_stats(&bed, ANYCAST_A);
    let m1 = again.members.iter().find(|m| m.address == M1).unwrap();
    assert!(
        m1.packets <= 1,
        "a reused counter starts from zero: {again:?}"
    );
    assert_eq!(again.forwarded_packets, before.forwarded_packets + 1);
    assert_eq!(
        again.forwarded_bytes,
        before.forwarded_bytes + frame.len() as u64
    );
    assert_eq!(again.rx_packets, before.rx_packets + 1);
}
