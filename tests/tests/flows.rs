//! Flows that survive membership change, checked frame by frame through BPF_PROG_TEST_RUN:
//! the Maglev tables, the connection table, drain, removal and preference.
use std::{collections::HashMap, net::Ipv4Addr};

use anycast_common::programs::ANYCAST;
use anycast_tests::frames::*;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT_MAC: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x10];
const FLOWS: u16 = 400;

fn member(i: u8) -> (Ipv4Addr, [u8; 6]) {
    (
        Ipv4Addr::new(203, 0, 113, 4 * i + 2),
        [0x02, 0x10, 0, 0, 0, i],
    )
}

fn bed(n: u8) -> Bed {
    let mut bed = Bed::new().expect("TEST_RUN bed");
    for i in 0..n {
        let (ip, mac) = member(i);
        bed.add_member(VIP, ip, 1, mac).unwrap();
    }
    bed
}

fn udp(bed: &Bed, sport: u16) -> Vec<u8> {
    ipv4_frame(
        bed.ports[0].mac,
        CLIENT_MAC,
        &Ipv4::udp(CLIENT, VIP, sport, 53, b"x"),
    )
}

fn tcp(bed: &Bed, sport: u16, flags: u8) -> Vec<u8> {
    let mut ip = Ipv4::tcp_syn(CLIENT, VIP, sport, 443);
    ip.payload[13] = flags;
    ipv4_frame(bed.ports[0].mac, CLIENT_MAC, &ip)
}

/// Member MAC each flow is sent to (`None` if the frame was not forwarded).
fn placement(bed: &Bed, frames: &[(u16, Vec<u8>)]) -> HashMap<u16, Option<[u8; 6]>> {
    frames
        .iter()
        .map(|(port, f)| {
            let (verdict, out) = bed.run(ANYCAST, 0, f).unwrap();
            let mac = (verdict == XDP_REDIRECT).then(|| out[0..6].try_into().unwrap());
            (*port, mac)
        })
        .collect()
}

fn udp_flows(bed: &Bed) -> Vec<(u16, Vec<u8>)> {
    (20000..20000 + FLOWS).map(|p| (p, udp(bed, p))).collect()
}

fn count(p: &HashMap<u16, Option<[u8; 6]>>, mac: [u8; 6]) -> usize {
    p.values().filter(|m| **m == Some(mac)).count()
}

#[test]
fn adding_a_member_moves_no_established_flow() {
    let mut bed = bed(3);
    let flows = udp_flows(&bed);
    let before = placement(&bed, &flows);
    let (m4, m4_mac) = member(3);
    bed.add_member(VIP, m4, 1, m4_mac).unwrap();
    let after = placement(&bed, &flows);
    assert_eq!(before, after, "established flows moved");
    // New flows do reach the new member, at about a quarter.
    let new: Vec<(u16, Vec<u8>)> = (30000..30000 + FLOWS).map(|p| (p, udp(&bed, p))).collect();
    let fresh = placement(&bed, &new);
    let share = count(&fresh, m4_mac) as f64 / FLOWS as f64;
    assert!(
        (0.15..0.35).contains(&share),
        "new member got {share:.2} of new flows"
    );
}

#[test]
fn removing_a_member_moves_only_its_flows() {
    let mut bed = bed(4);
    let flows = udp_flows(&bed);
    let before = placement(&bed, &flows);
    let (m2, m2_mac) = member(1);
    bed.del_member(VIP, m2).unwrap();
    let after = placement(&bed, &flows);
    let mut moved = 0;
    for (port, was) in &before {
        let now = after[port];
        assert!(now.is_some(), "flow {port} not forwarded after the removal");
        if *was == Some(m2_mac) {
            assert_ne!(now, Some(m2_mac));
            moved += 1;
        } else {
            assert_eq!(now, *was, "flow {port} of a surviving member moved");
        }
    }
    assert!(moved > 0);
    // Re-adding it takes its old position: no flow of the others moves.
    bed.add_member(VIP, m2, 1, m2_mac).unwrap();
    let again = placement(&bed, &flows);
    for (port, now) in &after {
        assert_eq!(
            again[port], *now,
            "flow {port} moved when a member came back"
        );
    }
}

#[test]
fn draining_member_keeps_its_flows_and_gets_no_new_ones() {
    let mut bed = bed(3);
    let flows = udp_flows(&bed);
    let before = placement(&bed, &flows);
    let (m1, m1_mac) = member(0);
    assert!(count(&before, m1_mac) > 0);
    bed.set_weight(VIP, m1, 100, 0).unwrap();
    assert_eq!(
        placement(&bed, &flows),
        before,
        "drain moved established flows"
    );
    let new: Vec<(u16, Vec<u8>)> = (40000..40000 + FLOWS).map(|p| (p, udp(&bed, p))).collect();
    assert_eq!(
        count(&placement(&bed, &new), m1_mac),
        0,
        "a draining member got new flows"
    );
    // New TCP connections (SYN) avoid it too, even on ports it served before.
    let syns: Vec<(u16, Vec<u8>)> = (20000..20000 + FLOWS)
        .map(|p| (p, tcp(&bed, p, TCP_SYN)))
        .collect();
    assert_eq!(count(&placement(&bed, &syns), m1_mac), 0);
}

#[test]
fn weights_shape_the_share_of_new_flows() {
    let mut bed = bed(2);
    let (m1, m1_mac) = member(0);
    let (_, m2_mac) = member(1);
    bed.set_weight(VIP, m1, 100, 300).unwrap();
    let flows: Vec<(u16, Vec<u8>)> = (10000..12000).map(|p| (p, udp(&bed, p))).collect();
    let p = placement(&bed, &flows);
    let (a, b) = (count(&p, m1_mac) as f64, count(&p, m2_mac) as f64);
    let ratio = a / b;
    assert!((2.4..3.6).contains(&ratio), "weights 300:100 gave {a}:{b}");
    // `show` reports the table shares: 3/4 and 1/4, within 1%.
    let show = anycast_ctl::report::show(&bed.maps, &|i| i.to_string()).unwrap();
    let shares: Vec<f64> = show.addresses[0].members.iter().map(|m| m.share).collect();
    assert!(
        (shares[0] - 0.75).abs() < 0.0075 && (shares[1] - 0.25).abs() < 0.0025,
        "{shares:?}"
    );
}

#[test]
fn only_the_best_preference_takes_new_flows() {
    let mut bed = bed(3);
    let (m1, m1_mac) = member(0);
    let (m2, m2_mac) = member(1);
    let (m3, m3_mac) = member(2);
    bed.set_weight(VIP, m1, 10, 100).unwrap();
    bed.set_weight(VIP, m2, 10, 100).unwrap();
    bed.set_weight(VIP, m3, 20, 100).unwrap();
    let flows = udp_flows(&bed);
    let p = placement(&bed, &flows);
    assert_eq!(count(&p, m3_mac), 0, "the standby member got traffic");
    assert!(count(&p, m1_mac) > 0 && count(&p, m2_mac) > 0);
    bed.del_member(VIP, m1).unwrap();
    bed.del_member(VIP, m2).unwrap();
    let p = placement(&bed, &flows);
    assert_eq!(
        count(&p, m3_mac),
        FLOWS as usize,
        "the standby did not take over"
    );
}

#[test]
fn rst_ends_a_connection() {
    let mut bed = bed(3);
    let ports = 50000..50000 + FLOWS;
    let frames = |bed: &Bed, flags: u8| -> Vec<(u16, Vec<u8>)> {
        ports.clone().map(|p| (p, tcp(bed, p, flags))).collect()
    };
    // Learn where the 4-member table sends each port (a SYN always follows the table), then
    // end those connections (RST) and go back to 3 members.
    let (m4, m4_mac) = member(3);
    bed.add_member(VIP, m4, 1, m4_mac).unwrap();
    let table4 = placement(&bed, &frames(&bed, TCP_SYN));
    placement(&bed, &frames(&bed, TCP_RST | TCP_ACK));
    bed.del_member(VIP, m4).unwrap();
    // Connections established with 3 members; then m4 comes back (same position, same table).
    let established = placement(&bed, &frames(&bed, TCP_SYN));
    bed.add_member(VIP, m4, 1, m4_mac).unwrap();
    let p = ports
        .clone()
        .find(|p| table4[p] != established[p])
        .expect("the fourth member takes some ports in the table");
    let send = |flags| {
        let (_, out) = bed.run(ANYCAST, 0, &tcp(&bed, p, flags)).unwrap();
        Some(out[0..6].try_into().unwrap())
    };
    assert_eq!(
        send(TCP_ACK),
        established[&p],
        "an ACK stays on its connection's member"
    );
    assert_eq!(
        send(TCP_RST | TCP_ACK),
        established[&p],
        "the RST reaches the connection's member"
    );
    assert_eq!(
        send(TCP_ACK),
        table4[&p],
        "after the RST, the flow follows the table"
    );
}

#[test]
fn established_tcp_stays_when_the_table_changes() {
    let mut bed = bed(3);
    let syns: Vec<(u16, Vec<u8>)> = (60000..60000 + FLOWS)
        .map(|p| (p, tcp(&bed, p, TCP_SYN)))
        .collect();
    let established = placement(&bed, &syns);
    let (m4, m4_mac) = member(3);
    bed.add_member(VIP, m4, 1, m4_mac).unwrap();
    // The table now sends some of these ports to m4 (a new SYN shows it)...
    let acks: Vec<(u16, Vec<u8>)> = (60000..60000 + FLOWS)
        .map(|p| (p, tcp(&bed, p, TCP_ACK)))
        .collect();
    // ...but segments of the established connections stay on their members.
    assert_eq!(placement(&bed, &acks), established);
    let new_syns = placement(&bed, &syns);
    assert!(
        count(&new_syns, m4_mac) > 0,
        "the new member gets new connections"
    );
}

#[test]
fn fragments_follow_the_connection_table_choice() {
    let mut bed = bed(3);
    let (m4, m4_mac) = member(3);
    // Establish flows, change membership, then send fragmented datagrams of the same flows:
    // every fragment goes where its flow already is.
    let flows = udp_flows(&bed);
    let before = placement(&bed, &flows);
    bed.add_member(VIP, m4, 1, m4_mac).unwrap();
    for sport in 20000..20040u16 {
        let mut first = Ipv4::udp(CLIENT, VIP, sport, 53, &[1; 24]);
        first.id = sport;
        first.frag = 0x2000;
        let (_, out) = bed
            .run(
                ANYCAST,
                0,
                &ipv4_frame(bed.ports[0].mac, CLIENT_MAC, &first),
            )
            .unwrap();
        assert_eq!(Some(out[0..6].try_into().unwrap()), before[&sport]);
        let mut second = Ipv4::new(CLIENT, VIP, IPPROTO_UDP, vec![2; 8]);
        second.id = sport;
        second.frag = 4;
        let (_, out) = bed
            .run(
                ANYCAST,
                0,
                &ipv4_frame(bed.ports[0].mac, CLIENT_MAC, &second),
            )
            .unwrap();
        assert_eq!(Some(out[0..6].try_into().unwrap()), before[&sport]);
    }
}

/// A small connection table, so that flows share sets: stale entries of removed members,
/// re-picked flows and recency reordering must never send an established flow elsewhere.
#[test]
fn crowded_sets_keep_flows_where_they_are() {
    const SETS: u32 = 256;
    let mut bed = Bed::with_flows(Some(SETS * anycast_common::FLOW_WAYS)).expect("bed");
    for i in 0..3 {
        let (ip, mac) = member(i);
        bed.add_member(VIP, ip, 1, mac).unwrap();
    }
    let ports: Vec<u16> = (20000..20400).collect();
    // Only flows whose set holds at most 4 of them can be expected to stay (no eviction).
    let set_of = |p: u16| {
        let ports = u32::from_ne_bytes([(p >> 8) as u8, p as u8, 0, 53]);
        let src = anycast_common::ip_key(CLIENT.octets());
        let dst = anycast_common::ip_key(VIP.octets());
        anycast_common::flow_hash(src, dst, ports, IPPROTO_UDP) & (SETS - 1)
    };
    let mut per_set = HashMap::new();
    for &p in &ports {
        *per_set.entry(set_of(p)).or_insert(0) += 1;
    }
    let kept: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| per_set[&set_of(*p)] <= 4)
        .collect();
    assert!(
        kept.len() > 250,
        "only {} flows in uncrowded sets",
        kept.len()
    );
    let frames: Vec<(u16, Vec<u8>)> = kept.iter().map(|&p| (p, udp(&bed, p))).collect();
    placement(&bed, &frames);

    // m2 leaves: its flows are re-picked, and their old entries go stale in the same sets.
    bed.del_member(VIP, member(1).0).unwrap();
    let after_removal = placement(&bed, &frames);
    // Traffic in another order reshuffles recency within the sets.
    let reversed: Vec<(u16, Vec<u8>)> = frames.iter().rev().cloned().collect();
    assert_eq!(placement(&bed, &reversed), after_removal);
    // A new member changes the table; every flow stays where it is.
    let (m4, m4_mac) = member(3);
    bed.add_member(VIP, m4, 1, m4_mac).unwrap();
    assert_eq!(
        placement(&bed, &frames),
        after_removal,
        "established flows moved"
    );
}

#[test]
fn an_address_tracking_tcp_only_places_udp_by_the_table_alone() {
    use anycast_ctl::members::mode::{self, Mode, Track, forget_untracked, set_track};
    let mut bed = bed(3);
    // Flows recorded while everything is tracked are forgotten when the address turns to TCP
    // only: kept, they would pull their flows back after a later `track all`.
    let flows = udp_flows(&bed);
    let before = placement(&bed, &flows);
    assert!(before.values().all(Option::is_some), "UDP not forwarded");
    assert_eq!(bed.tracked_flows(IPPROTO_UDP), FLOWS as usize);
    assert_eq!(
        set_track(&mut bed.maps, VIP.into(), Track::Tcp).unwrap(),
        Track::All
    );
    let forgotten = forget_untracked(&bed.maps, bed.pin(), &[VIP.into()]).unwrap();
    assert_eq!(forgotten, u64::from(FLOWS));
    assert_eq!(
        placement(&bed, &flows),
        before,
        "the table moved flows by itself"
    );
    assert_eq!(
        bed.tracked_flows(IPPROTO_UDP),
        0,
        "UDP flows in the connection table"
    );
    let syns: Vec<(u16, Vec<u8>)> = (60000..60000 + FLOWS)
        .map(|p| (p, tcp(&bed, p, TCP_SYN)))
        .collect();
    let established = placement(&bed, &syns);
    assert_eq!(
        bed.tracked_flows(IPPROTO_TCP),
        FLOWS as usize,
        "TCP is still tracked"
    );

    // A fourth member (the address's sets flip): the UDP flows follow the new table (as new
    // flows on a router that has had four members all along), still untracked, while the TCP
    // connections stay.
    let (m4, m4_mac) = member(3);
    bed.add_member(VIP, m4, 1, m4_mac).unwrap();
    let after = placement(&bed, &flows);
    let fresh = bed_of_four_placement();
    assert_eq!(
        after, fresh,
        "untracked UDP does not follow the Maglev table"
    );
    assert_eq!(
        bed.tracked_flows(IPPROTO_UDP),
        0,
        "the flip lost the setting"
    );
    let share = count(&after, m4_mac) as f64 / FLOWS as f64;
    assert!((0.15..0.35).contains(&share), "new member got {share:.2}");
    let acks: Vec<(u16, Vec<u8>)> = (60000..60000 + FLOWS)
        .map(|p| (p, tcp(&bed, p, TCP_ACK)))
        .collect();
    assert_eq!(placement(&bed, &acks), established, "TCP connections moved");

    // Back to tracking everything: the flows stay where the table has them (none goes back
    // to its member of before), and are recorded again.
    set_track(&mut bed.maps, VIP.into(), Track::All).unwrap();
    assert_eq!(
        placement(&bed, &flows),
        fresh,
        "flows went back to old members"
    );
    assert_eq!(bed.tracked_flows(IPPROTO_UDP), FLOWS as usize);

    // The mode and the setting are kept by each other's changes.
    mode::set(&mut bed.maps, VIP.into(), Mode::Direct).unwrap();
    set_track(&mut bed.maps, VIP.into(), Track::Tcp).unwrap();
    assert_eq!(mode::get(&bed.maps, VIP.into()).unwrap(), Mode::Direct);
    mode::set(&mut bed.maps, VIP.into(), Mode::Multicast).unwrap();
    let word = mode::word(&bed.maps, VIP.into()).unwrap();
    assert_eq!(
        Track::from_word(word),
        Track::Tcp,
        "member mode lost the setting"
    );
}

/// Where the UDP flows of `udp_flows` go on a fresh router with members 0..4: the table's choice.
fn bed_of_four_placement() -> HashMap<u16, Option<[u8; 6]>> {
    let bed = bed(4);
    placement(&bed, &udp_flows(&bed))
}
