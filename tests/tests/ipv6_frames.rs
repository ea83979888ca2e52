//! IPv6 frame fixtures through BPF_PROG_TEST_RUN: the neighbour discovery responder and IPv6
//! forwarding of the real dataplane object, each frame with its exact verdict, output frame
//! and the one counter it moves. Every expected frame and checksum is built here, byte by byte
//! (`frames::checksum6`), never by the dataplane's code.
use std::net::{IpAddr, Ipv6Addr};

use anycast_common::programs::ANYCAST;
use anycast_tests::frames::*;

const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x53);
/// Exists with no members.
const EMPTY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x55);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc0, 0, 0, 0, 0, 0x10);
const CLIENT_MAC: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x10];
const M1: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 1, 0, 0, 0, 2);
const M1_MAC: [u8; 6] = [0x02, 0x11, 0, 0, 0, 0x02];
const M2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 2, 0, 0, 0, 2);
const M2_MAC: [u8; 6] = [0x02, 0x22, 0, 0, 0, 0x06];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// p0 faces the client; A6's members M1 and M2 are on p1.
fn bed() -> Bed {
    let mut bed = Bed::new().expect("TEST_RUN bed");
    bed.add_member(A6, M1, 1, M1_MAC).unwrap();
    bed.add_member(A6, M2, 1, M2_MAC).unwrap();
    bed.add_member(EMPTY6, M1, 1, M1_MAC).unwrap();
    bed.del_member(EMPTY6, M1).unwrap();
    bed
}

/// A neighbour solicitation frame: `target` asked from `src`, to `dst` (Ethernet `eth_dst`).
fn ns_frame(
    eth_dst: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    source_ll: Option<[u8; 6]>,
) -> Vec<u8> {
    let mut ip = Ipv6::new(
        src,
        dst,
        IPPROTO_ICMPV6,
        ns_message(src, dst, target, source_ll, &[]),
    );
    ip.hop_limit = 255;
    ethernet(eth_dst, CLIENT_MAC, ETH_P_IPV6, &ip.bytes())
}

/// The multicast solicitation a client sends to resolve `target`.
fn resolve(target: Ipv6Addr, source_ll: Option<[u8; 6]>) -> Vec<u8> {
    let (group, group_mac) = solicited_node(target);
    ns_frame(group_mac, CLIENT6, group, target, source_ll)
}

/// The advertisement the router must send, built from RFC 4861 4.4 by hand: from `target`
/// with the router's MAC, hop limit 255, the flags byte `flags`, a target link-layer option,
/// and the checksum over the pseudo-header.
fn na_frame(
    router_mac: [u8; 6],
    (eth_dst, dst): ([u8; 6], Ipv6Addr),
    target: Ipv6Addr,
    flags: u8,
) -> Vec<u8> {
    let mut m = vec![136, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[2, 1]);
    m.extend_from_slice(&router_mac);
    let c = checksum6(target, dst, IPPROTO_ICMPV6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = Ipv6::new(target, dst, IPPROTO_ICMPV6, m);
    ip.hop_limit = 255;
    let f = ethernet(eth_dst, router_mac, ETH_P_IPV6, &ip.bytes());
    assert_eq!(f.len(), 86);
    f
}

/// Runs `frame` on p0: the verdict, output and changed counters must be these.
fn expect(bed: &Bed, what: &str, frame: &[u8], verdict: u32, out: &[u8], counter: &str) {
    let (v, got, changed) = bed.run_counted(ANYCAST, 0, frame).unwrap();
    assert_eq!(v, verdict, "{what}: verdict");
    assert_eq!(got, out, "{what}: output frame");
    assert_eq!(changed, [(counter.to_string(), 1)], "{what}: counters");
}

const R_S_O: u8 = 0x80 | 0x40 | 0x20;
const R_O: u8 = 0x80 | 0x20;

#[test]
fn solicitations_for_an_address_with_members_get_exact_advertisements() {
    let bed = bed();
    let p0 = bed.ports[0].mac;
    let to_client = (CLIENT_MAC, CLIENT6);
    let replied = format!("{A6}/nd_replies");
    let want = na_frame(p0, to_client, A6, R_S_O);
    let with_ll = resolve(A6, Some(CLIENT_MAC));
    assert_eq!(with_ll.len(), 86);
    expect(
        &bed,
        "multicast, source LL option",
        &with_ll,
        XDP_TX,
        &want,
        &replied,
    );
    // No source link-layer option: 78 bytes, grown by 8.
    let without = resolve(A6, None);
    assert_eq!(without.len(), 78);
    expect(
        &bed,
        "multicast, no option",
        &without,
        XDP_TX,
        &want,
        &replied,
    );
    // The client's unreachability probe: unicast to the router's MAC and the target.
    let probe = ns_frame(p0, CLIENT6, A6, A6, None);
    expect(&bed, "unicast probe", &probe, XDP_TX, &want, &replied);
    let probe_ll = ns_frame(p0, CLIENT6, A6, A6, Some(CLIENT_MAC));
    expect(
        &bed,
        "unicast probe, option",
        &probe_ll,
        XDP_TX,
        &want,
        &replied,
    );
    // Duplicate address detection: from ::, answered to all-nodes, Solicited clear.
    let (group, group_mac) = solicited_node(A6);
    let dad = ns_frame(group_mac, Ipv6Addr::UNSPECIFIED, group, A6, None);
    let all_nodes = ([0x33, 0x33, 0, 0, 0, 1], ALL_NODES);
    let want_dad = na_frame(p0, all_nodes, A6, R_O);
    expect(&bed, "from ::", &dad, XDP_TX, &want_dad, &replied);
    // A longer solicitation (an unknown 8-byte option after the source LL) is shrunk.
    let mut ip = Ipv6::new(
        CLIENT6,
        group,
        IPPROTO_ICMPV6,
        ns_message(
            CLIENT6,
            group,
            A6,
            Some(CLIENT_MAC),
            &[14, 1, 1, 2, 3, 4, 5, 6],
        ),
    );
    ip.hop_limit = 255;
    let longer = ethernet(group_mac, CLIENT_MAC, ETH_P_IPV6, &ip.bytes());
    expect(&bed, "extra option", &longer, XDP_TX, &want, &replied);
}

#[test]
fn solicitations_that_fail_validation_or_are_not_ours_pass_counted() {
    let bed = bed();
    let p0 = bed.ports[0].mac;
    let (group, group_mac) = solicited_node(A6);
    let good = resolve(A6, Some(CLIENT_MAC));
    let invalid = "global/nd_invalid";

    let mut hop = good.clone();
    hop[21] = 254;
    bed.assert_passed_as("hop limit 254", 0, &hop, invalid);
    let mut bad_sum = good.clone();
    bad_sum[56] ^= 0xff;
    bed.assert_passed_as("bad checksum", 0, &bad_sum, invalid);
    let mut code = good.clone();
    code[55] = 1;
    code[56..58].copy_from_slice(&[0, 0]);
    let c = checksum6(CLIENT6, group, IPPROTO_ICMPV6, &code[54..]);
    code[56..58].copy_from_slice(&c.to_be_bytes());
    bed.assert_passed_as("code 1", 0, &code, invalid);
    let multicast = resolve(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x53), None);
    bed.assert_passed_as("multicast target", 0, &multicast, invalid);
    let dad_ll = ns_frame(
        group_mac,
        Ipv6Addr::UNSPECIFIED,
        group,
        A6,
        Some(CLIENT_MAC),
    );
    bed.assert_passed_as("from :: with a source LL option", 0, &dad_ll, invalid);
    let dad_unicast = ns_frame(p0, Ipv6Addr::UNSPECIFIED, A6, A6, None);
    bed.assert_passed_as("from :: to a unicast address", 0, &dad_unicast, invalid);
    let mut zero_opt = Ipv6::new(
        CLIENT6,
        group,
        IPPROTO_ICMPV6,
        ns_message(CLIENT6, group, A6, None, &[1, 0, 0, 0, 0, 0, 0, 0]),
    );
    zero_opt.hop_limit = 255;
    let zero_opt = ethernet(group_mac, CLIENT_MAC, ETH_P_IPV6, &zero_opt.bytes());
    bed.assert_passed_as("option of length 0", 0, &zero_opt, invalid);

    bed.assert_passed_as("no members", 0, &resolve(EMPTY6, None), "global/nd_passed");
    let other = Ipv6Addr::new(0x2001, 0xdb8, 0xc0, 0, 0, 0, 0, 1);
    bed.assert_passed_as("not anycast", 0, &resolve(other, None), "global/nd_passed");
    let elsewhere = ns_frame([0x02, 0, 0, 0, 0, 0x99], CLIENT6, A6, A6, None);
    bed.assert_passed_as("to another host's MAC", 0, &elsewhere, "global/nd_refused");
    let mut group_src = good.clone();
    group_src[6] = 0x03;
    bed.assert_passed_as("group source MAC", 0, &group_src, "global/nd_refused");
}

/// The ICMPv6 checksums over varied solicitations: sources across 2001:db8:c0::/48 (words of
/// 0xffff among them, for the carries) and an unknown option of varied bytes, each answered
/// with the advertisement built here (its checksum computed independently over a pseudo-header
/// that varies with it); each again with one bit flipped in the option or the checksum,
/// passed as invalid.
#[test]
fn varied_solicitations_are_answered_or_passed_by_their_checksum() {
    let bed = bed();
    let p0 = bed.ports[0].mac;
    let (group, group_mac) = solicited_node(A6);
    let replied = format!("{A6}/nd_replies");
    for n in 0..100u32 {
        let r = varied("neighbour solicitation", n);
        let mut words = [0u16; 8];
        words[..3].copy_from_slice(&[0x2001, 0xdb8, 0xc0]);
        for (i, w) in words.iter_mut().enumerate().skip(3) {
            *w = if n % 4 == 0 {
                0xffff
            } else {
                u16::from_be_bytes([r[2 * i], r[2 * i + 1]])
            };
        }
        let src = Ipv6Addr::from(words);
        let option = [14, 1, r[0], r[1], r[16], r[17], r[18], r[19]];
        let mut ip = Ipv6::new(
            src,
            group,
            IPPROTO_ICMPV6,
            ns_message(src, group, A6, Some(CLIENT_MAC), &option),
        );
        ip.hop_limit = 255;
        let frame = ethernet(group_mac, CLIENT_MAC, ETH_P_IPV6, &ip.bytes());
        let want = na_frame(p0, (CLIENT_MAC, src), A6, R_S_O);
        expect(
            &bed,
            &format!("case {n} from {src}"),
            &frame,
            XDP_TX,
            &want,
            &replied,
        );

        // The checksum (bytes 56, 57) or the option's six data bytes (the frame's last six).
        let covered = [
            56,
            57,
            frame.len() - 6,
            frame.len() - 5,
            frame.len() - 3,
            frame.len() - 1,
        ];
        let mut bad = frame.clone();
        bad[covered[r[20] as usize % covered.len()]] ^= 1 << (r[21] % 8);
        bed.assert_passed_as(
            &format!("case {n}, one bit flipped"),
            0,
            &bad,
            "global/nd_invalid",
        );
    }
}

/// The member `frame` goes to, asked of the dataplane (which member is the hash's business).
fn member_of(bed: &Bed, frame: &[u8]) -> [u8; 6] {
    let (verdict, out) = bed.run(ANYCAST, 0, frame).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    out[0..6].try_into().unwrap()
}

/// What the dataplane must emit for `frame` (from the client to p0) sent to `member`: the
/// member's MAC, p1's MAC, hop limit one less, nothing else changed.
fn forwarded(bed: &Bed, frame: &[u8], member: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&member);
    out[6..12].copy_from_slice(&bed.ports[1].mac);
    out[21] -= 1;
    out
}

#[test]
fn datagrams_are_forwarded_with_hop_limit_and_macs_and_passed_when_they_must() {
    let bed = bed();
    let p0 = bed.ports[0].mac;
    let fwd = format!("{A6}/forwarded");
    let udp = ipv6_frame(p0, CLIENT_MAC, &Ipv6::udp(CLIENT6, A6, 40000, 53, b"query"));
    let member = member_of(&bed, &udp);
    assert!(member == M1_MAC || member == M2_MAC);
    expect(
        &bed,
        "udp",
        &udp,
        XDP_REDIRECT,
        &forwarded(&bed, &udp, member),
        &fwd,
    );
    let syn = ipv6_frame(p0, CLIENT_MAC, &Ipv6::tcp_syn(CLIENT6, A6, 40001, 80));
    let m = member_of(&bed, &syn);
    expect(
        &bed,
        "tcp syn",
        &syn,
        XDP_REDIRECT,
        &forwarded(&bed, &syn, m),
        &fwd,
    );
    // ICMPv6 (an echo request) to the anycast address is forwarded too.
    let echo = ipv6_frame(
        p0,
        CLIENT_MAC,
        &Ipv6::new(CLIENT6, A6, IPPROTO_ICMPV6, vec![128, 0, 0, 0, 0, 1, 0, 1]),
    );
    let m = member_of(&bed, &echo);
    expect(
        &bed,
        "echo",
        &echo,
        XDP_REDIRECT,
        &forwarded(&bed, &echo, m),
        &fwd,
    );

    let mut last_hop = Ipv6::udp(CLIENT6, A6, 40000, 53, b"query");
    last_hop.hop_limit = 1;
    let last_hop = ipv6_frame(p0, CLIENT_MAC, &last_hop);
    let passed = |r: &str| format!("{A6}/passed.{r}");
    bed.assert_passed_as("hop limit 1", 0, &last_hop, &passed("ttl_exceeded"));
    let to_other = ipv6_frame(
        [0x02, 0, 0, 0, 0, 0x99],
        CLIENT_MAC,
        &Ipv6::udp(CLIENT6, A6, 1, 53, b"x"),
    );
    bed.assert_passed_as(
        "another host's MAC",
        0,
        &to_other,
        &passed("not_for_router"),
    );
    let link_local: Ipv6Addr = "fe80::10".parse().unwrap();
    let ll = ipv6_frame(p0, CLIENT_MAC, &Ipv6::udp(link_local, A6, 1, 53, b"x"));
    bed.assert_passed_as("link-local source", 0, &ll, &passed("bad_source"));
    let empty = ipv6_frame(p0, CLIENT_MAC, &Ipv6::udp(CLIENT6, EMPTY6, 1, 53, b"x"));
    bed.assert_passed_as(
        "no members",
        0,
        &empty,
        &format!("{EMPTY6}/passed.no_member"),
    );
    let other = Ipv6Addr::new(0x2001, 0xdb8, 0xc0, 0, 0, 0, 0, 1);
    let not_anycast = ipv6_frame(p0, CLIENT_MAC, &Ipv6::udp(CLIENT6, other, 1, 53, b"x"));
    bed.assert_passed_as("not anycast", 0, &not_anycast, "global/not_anycast");
}

/// An extension header of type `next`'s predecessor: `next` then `len` 8-byte units after the
/// first 8, padded with PadN.
fn ext(next: u8, len: u8) -> Vec<u8> {
    let mut h = vec![next, len, 1, 4 + 8 * len];
    h.resize(8 + 8 * len as usize, 0);
    h
}

/// A UDP datagram with `chain` extension headers before it: (type, 8-byte units after the
/// first 8) each.
fn with_ext(chain: &[(u8, u8)], sport: u16) -> Ipv6 {
    let udp = udp6(CLIENT6, A6, sport, 53, b"query");
    let mut payload = Vec::new();
    for (i, &(_, len)) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map_or(IPPROTO_UDP, |h| h.0);
        payload.extend(ext(next, len));
    }
    payload.extend(udp);
    Ipv6::new(
        CLIENT6,
        A6,
        chain.first().map_or(IPPROTO_UDP, |h| h.0),
        payload,
    )
}

#[test]
fn extension_headers_are_walked_to_the_ports_up_to_a_bound() {
    let bed = bed();
    let p0 = bed.ports[0].mac;
    let fwd = format!("{A6}/forwarded");
    let chain = [
        (IPPROTO_HOPOPTS, 0),
        (IPPROTO_DSTOPTS, 1),
        (IPPROTO_ROUTING, 0),
    ];
    // The ports are found behind the headers: the flow is the plain datagram's, member too.
    for sport in 40000..40016 {
        let plain = ipv6_frame(p0, CLIENT_MAC, &Ipv6::udp(CLIENT6, A6, sport, 53, b"query"));
        let walked = ipv6_frame(p0, CLIENT_MAC, &with_ext(&chain, sport));
        let m = member_of(&bed, &plain);
        expect(
            &bed,
            "three headers",
            &walked,
            XDP_REDIRECT,
            &forwarded(&bed, &walked, m),
            &fwd,
        );
    }
    let six = [(IPPROTO_DSTOPTS, 0); 6];
    let ok = ipv6_frame(p0, CLIENT_MAC, &with_ext(&six, 1));
    let m = member_of(&bed, &ok);
    expect(
        &bed,
        "six headers",
        &ok,
        XDP_REDIRECT,
        &forwarded(&bed, &ok, m),
        &fwd,
    );
    let seven = ipv6_frame(p0, CLIENT_MAC, &with_ext(&[(IPPROTO_DSTOPTS, 0); 7], 1));
    bed.assert_passed_as(
        "seven headers",
        0,
        &seven,
        &format!("{A6}/passed.ext_headers"),
    );
}

/// A fragment of a UDP datagram: fragment header (offset in 8-byte units, more flag, id),
/// then `data`.
fn fragment(offset: u16, more: bool, id: u32, data: &[u8]) -> Ipv6 {
    let mut payload = vec![IPPROTO_UDP, 0];
    payload.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    payload.extend_from_slice(&id.to_be_bytes());
    payload.extend_from_slice(data);
    Ipv6::new(CLIENT6, A6, IPPROTO_FRAGMENT, payload)
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let bed = bed();
    let p0 = bed.ports[0].mac;
    let fwd = format!("{A6}/forwarded");
    let mut seen = std::collections::BTreeSet::new();
    for (i, sport) in (41000..41012).enumerate() {
        let id = 0x1000 + i as u32;
        let udp = udp6(CLIENT6, A6, sport, 53, &[7; 24]);
        let first = ipv6_frame(p0, CLIENT_MAC, &fragment(0, true, id, &udp[..16]));
        let m = member_of(&bed, &first);
        seen.insert(m);
        let later = ipv6_frame(p0, CLIENT_MAC, &fragment(2, false, id, &udp[16..]));
        expect(
            &bed,
            "later fragment",
            &later,
            XDP_REDIRECT,
            &forwarded(&bed, &later, m),
            &fwd,
        );
    }
    assert_eq!(seen.len(), 2, "first fragments are spread by their ports");
    // A later fragment whose first was never seen is placed by its addresses, counted.
    let orphan = ipv6_frame(p0, CLIENT_MAC, &fragment(2, false, 0xdead, &[0; 8]));
    let (verdict, _, changed) = bed.run_counted(ANYCAST, 0, &orphan).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    let mut want = vec![(fwd, 1), ("global/fragment_orphan".to_string(), 1)];
    want.sort();
    assert_eq!(changed, want);
}

/// Cuts `frame` to `len` bytes; with `fix_length`, the payload length says so too.
fn cut(frame: &[u8], len: usize, fix_length: bool) -> Vec<u8> {
    let mut f = frame[..len].to_vec();
    if fix_length && len >= 54 {
        f[18..20].copy_from_slice(&((len - 54) as u16).to_be_bytes());
    }
    f
}

#[test]
fn frames_cut_at_every_header_boundary_pass_untouched() {
    let bed = bed();
    let p0 = bed.ports[0].mac;
    let chain = [(IPPROTO_HOPOPTS, 0), (IPPROTO_ROUTING, 1)];
    let walked = ipv6_frame(p0, CLIENT_MAC, &with_ext(&chain, 40000));
    // Ethernet (TEST_RUN takes no shorter frame), IPv6, hop-by-hop (8), routing (16), then
    // UDP: every boundary, and the ports cut in half.
    for len in [14, 30, 53, 54, 55, 62, 63, 70, 78, 80] {
        for fix in [false, true] {
            let f = cut(&walked, len, fix);
            let what = format!("datagram cut to {len} (payload length fixed: {fix})");
            bed.assert_passed_as(&what, 0, &f, "global/malformed");
        }
    }
    let fragmented = ipv6_frame(
        p0,
        CLIENT_MAC,
        &fragment(0, true, 7, &udp6(CLIENT6, A6, 1, 53, b"x")),
    );
    for len in [55, 61, 62, 63] {
        let f = cut(&fragmented, len, true);
        bed.assert_passed_as(&format!("fragment cut to {len}"), 0, &f, "global/malformed");
    }
    let ns = resolve(A6, Some(CLIENT_MAC));
    for len in [54, 55, 58, 62, 77] {
        let f = cut(&ns, len, true);
        bed.assert_passed_as(
            &format!("solicitation cut to {len}"),
            0,
            &f,
            "global/malformed",
        );
    }
}

#[test]
fn members_of_the_other_family_are_refused_with_nothing_written() {
    let mut bed = bed();
    let before = bed.outcomes();
    let v4: IpAddr = "203.0.113.2".parse().unwrap();
    let err = bed.add_member(A6, v4, 1, M1_MAC).unwrap_err().to_string();
    assert!(err.contains("its own family"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    assert_eq!(bed.outcomes(), before);
}

/// Failover reaches IPv6 through `select::choose`: with an IPv6 member's `SlotState::down` bit
/// set it gets no datagram, its flows go to the survivor with the highest `fallback_score` by
/// IPv6 member identity (the fold of its address, as its Maglev identity), and no flow of a
/// survivor moves.
#[test]
fn ipv6_member_taken_down_gets_nothing_and_its_flows_fall_back_by_identity() {
    use anycast_common::{any_key, fallback_score, flow_hash6, fold6, ip6_key, position_bit};
    const M3: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 3, 0, 0, 0, 2);
    const M3_MAC: [u8; 6] = [0x02, 0x33, 0, 0, 0, 0x0a];
    let mut bed = bed();
    bed.add_member(A6, M3, 1, M3_MAC).unwrap();
    let p0 = bed.ports[0].mac;
    let flow = |sport| {
        ethernet(
            p0,
            CLIENT_MAC,
            ETH_P_IPV6,
            &Ipv6::udp(CLIENT6, A6, sport, 53, b"x").bytes(),
        )
    };
    let sports = 31000..31600u16;
    let before: Vec<[u8; 6]> = sports.clone().map(|s| member_of(&bed, &flow(s))).collect();
    assert!(before.contains(&M1_MAC), "no flow on {M1}");

    let Ok(anycast_ctl::dataplane::Bucket::Found { entry, .. }) = bed.maps.bucket(A6.into()) else {
        panic!("{A6} not installed");
    };
    let set = bed.maps.member_set(&entry).unwrap();
    let m1_host = bed.maps.host_ids.get(&any_key(M1.into()), 0).unwrap();
    let position = (set.positions().iter())
        .position(|m| m.host == m1_host)
        .unwrap();
    bed.maps
        .slot_state
        .set_down(entry.slot, position_bit(position as u32));

    let identity = |m: &Ipv6Addr| fold6(ip6_key(m.octets()));
    let macs = [(M2, M2_MAC), (M3, M3_MAC)];
    for (i, sport) in sports.clone().enumerate() {
        let now = member_of(&bed, &flow(sport));
        if before[i] != M1_MAC {
            assert_eq!(now, before[i], "flow {sport} of a survivor moved");
            continue;
        }
        let hash = flow_hash6(
            ip6_key(CLIENT6.octets()),
            ip6_key(A6.octets()),
            u32::from_ne_bytes([(sport >> 8) as u8, sport as u8, 0, 53]),
            17,
        );
        let (_, want) = macs
            .iter()
            .max_by_key(|(m, _)| (fallback_score(hash, identity(m)), identity(m)))
            .unwrap();
        assert_eq!(
            now, *want,
            "flow {sport} of {M1} went elsewhere than its fallback"
        );
    }
}

#[test]
fn an_ipv6_address_tracking_tcp_only_keeps_udp_out_of_the_connection_table() {
    use anycast_ctl::members::mode::{Track, set_track};
    const M3: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 3, 0, 0, 0, 2);
    const M3_MAC: [u8; 6] = [0x02, 0x33, 0, 0, 0, 0x0a];
    let mut bed = bed();
    set_track(&mut bed.maps, A6.into(), Track::Tcp).unwrap();
    let frame =
        |bed: &Bed, ip: Ipv6| ethernet(bed.ports[0].mac, CLIENT_MAC, ETH_P_IPV6, &ip.bytes());
    let sports = 32000..32400u16;
    let udp = |bed: &Bed, s| member_of(bed, &frame(bed, Ipv6::udp(CLIENT6, A6, s, 53, b"x")));
    let before: Vec<[u8; 6]> = sports.clone().map(|s| udp(&bed, s)).collect();
    assert_eq!(
        bed.tracked_flows(IPPROTO_UDP),
        0,
        "UDP flows in the connection table"
    );
    for s in sports.clone() {
        member_of(&bed, &frame(&bed, Ipv6::tcp_syn(CLIENT6, A6, s, 443)));
    }
    assert_eq!(
        bed.tracked_flows(IPPROTO_TCP),
        sports.len(),
        "TCP not tracked"
    );
    // A third member takes about a third of the UDP flows at once: nothing holds them.
    bed.add_member(A6, M3, 1, M3_MAC).unwrap();
    let after: Vec<[u8; 6]> = sports.clone().map(|s| udp(&bed, s)).collect();
    assert_eq!(
        bed.tracked_flows(IPPROTO_UDP),
        0,
        "the flip lost the setting"
    );
    let to_m3 = after.iter().filter(|m| **m == M3_MAC).count() as f64 / sports.len() as f64;
    assert!(
        (0.2..0.46).contains(&to_m3),
        "{to_m3:.2} of the UDP flows moved to {M3}"
    );
    // Where the table sends them: new flows on a router that has had the three all along.
    let mut fresh = self::bed();
    fresh.add_member(A6, M3, 1, M3_MAC).unwrap();
    let table: Vec<[u8; 6]> = sports.clone().map(|s| udp(&fresh, s)).collect();
    assert_eq!(
        after, table,
        "untracked UDP does not follow the Maglev table"
    );
    assert_ne!(before, after);
}
