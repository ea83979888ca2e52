//! Direct ARP mode frame by frame (BPF_PROG_TEST_RUN): the exact ARP replies of a direct-mode
//! address, where each client is placed (the same member user space's repoint would pick),
//! what a removal repoints, and the counters.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anycast_common::{
    RequesterKey, ip_key,
    proto::{ARPOP_REPLY, ARPOP_REQUEST, XDP_PASS, XDP_TX},
};
use anycast_ctl::{
    dataplane::Bucket,
    members::mode::{self, Mode},
    repoint, report,
};
use anycast_tests::frames::*;

const ANYCAST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// A direct-mode address whose only member is on the other port.
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 54);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
const CLIENT_MAC: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x64];

fn member(i: u8) -> (Ipv4Addr, [u8; 6]) {
    (Ipv4Addr::new(203, 0, 113, 10 + i), [0x02, 0x10, 0, 0, 0, i])
}

fn client(i: u8) -> (Ipv4Addr, [u8; 6]) {
    (Ipv4Addr::new(198, 18, 1, i), [0x02, 0xc0, 0, 0, 1, i])
}

fn request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    arp_frame([0xff; 6], ARPOP_REQUEST, mac, ip, [0; 6], target)
}

/// The reply the dataplane must send: from the router's port MAC, naming `answer`.
fn reply(router: [u8; 6], answer: [u8; 6], target: Ipv4Addr) -> Vec<u8> {
    let mut f = arp_frame(CLIENT_MAC, ARPOP_REPLY, answer, target, CLIENT_MAC, CLIENT);
    f[6..12].copy_from_slice(&router);
    f
}

/// The MAC the ARP reply to client `(ip, mac)` names.
fn answer(bed: &Bed, (ip, mac): (Ipv4Addr, [u8; 6])) -> [u8; 6] {
    let (verdict, out) = bed.run(PROGRAM, 0, &request(mac, ip, ANYCAST)).unwrap();
    assert_eq!(verdict, XDP_TX);
    out[22..28].try_into().unwrap()
}

const PROGRAM: &str = anycast_common::programs::ANYCAST;

fn counters(bed: &Bed, a: Ipv4Addr) -> report::AddressCounters {
    report::stats(&bed.maps, Some(a.into()))
        .unwrap()
        .addresses
        .remove(0)
}

#[test]
fn direct_mode_arp_reply_bytes() {
    let mut bed = Bed::new().expect("TEST_RUN bed");
    let (m1, m1_mac) = member(1);
    bed.add_member(ANYCAST, m1, 0, m1_mac).unwrap();
    bed.add_member(ELSEWHERE, member(2).0, 1, member(2).1)
        .unwrap();
    let p0 = bed.ports[0].mac;
    let req = request(CLIENT_MAC, CLIENT, ANYCAST);

    // Proxy mode (the default): the router's own MAC.
    assert_eq!(mode::get(&bed.maps, ANYCAST.into()).unwrap(), Mode::Proxy);
    assert_eq!(
        bed.run(PROGRAM, 0, &req).unwrap(),
        (XDP_TX, reply(p0, p0, ANYCAST))
    );

    // Direct mode: the member's MAC in the ARP payload, the router's as Ethernet source.
    for a in [ANYCAST, ELSEWHERE] {
        mode::set(&mut bed.maps, a.into(), Mode::Direct).unwrap();
    }
    let want = reply(p0, m1_mac, ANYCAST);
    assert_eq!(bed.run(PROGRAM, 0, &req).unwrap(), (XDP_TX, want.clone()));
    // The one encoding user space repoints with is the same frame.
    let encoded = anycast_common::direct::arp_reply(
        p0,
        (CLIENT_MAC, CLIENT.octets()),
        (m1_mac, ANYCAST.octets()),
        false,
    );
    assert_eq!(&encoded[..], &want[..]);

    // A member on another link cannot be reached directly: proxy answer.
    let req_elsewhere = request(CLIENT_MAC, CLIENT, ELSEWHERE);
    assert_eq!(
        bed.run(PROGRAM, 0, &req_elsewhere).unwrap(),
        (XDP_TX, reply(p0, p0, ELSEWHERE))
    );

    // The mode survives other changes of the address.
    bed.add_member(ANYCAST, member(3).0, 0, member(3).1)
        .unwrap();
    bed.del_member(ANYCAST, member(3).0).unwrap();
    assert_eq!(mode::get(&bed.maps, ANYCAST.into()).unwrap(), Mode::Direct);

    // Probes, replies and gratuitous ARP are still never answered.
    let probe = request(CLIENT_MAC, Ipv4Addr::UNSPECIFIED, ANYCAST);
    let garp = request(CLIENT_MAC, ANYCAST, ANYCAST);
    let unsolicited = arp_frame(p0, ARPOP_REPLY, CLIENT_MAC, CLIENT, p0, ANYCAST);
    for f in [probe, garp, unsolicited] {
        let (verdict, out) = bed.run(PROGRAM, 0, &f).unwrap();
        assert_eq!((verdict, &out), (XDP_PASS, &f));
    }

    // Recorded and counted: the client, given m1 on p0.
    let key = RequesterKey {
        slot: slot(&bed, ANYCAST),
        ip: ip_key(CLIENT.octets()),
    };
    let rec = bed.maps.requesters.get(&key, 0).expect("client recorded");
    assert_eq!((rec.ifindex, rec.mac), (bed.ports[0].ifindex, CLIENT_MAC));
    let c = counters(&bed, ANYCAST);
    assert_eq!((c.arp_replies, c.direct_arp_replies), (2, 1));
    assert_eq!(c.members[0].direct_arp_replies, 1);
    assert_eq!(counters(&bed, ELSEWHERE).direct_arp_replies, 0);
    let shown = report::show(&bed.maps, &|i| i.to_string()).unwrap();
    assert!(shown.addresses.iter().all(|a| a.mode == Mode::Direct));

    // Direct mode is ARP's: an IPv6 address refuses it, and nothing changes.
    let v6: std::net::IpAddr = "2001:db8::53".parse().unwrap();
    assert!(mode::check(v6, Mode::Direct).is_err());
}

fn slot(bed: &Bed, a: Ipv4Addr) -> u32 {
    match bed.maps.bucket(a.into()).unwrap() {
        Bucket::Found { entry, .. } => entry.slot,
        other => panic!("{a}: {other:?}"),
    }
}

/// The member (MAC) each of `n` clients is given, as the dataplane answers.
fn placements(bed: &Bed, n: u8) -> BTreeMap<u8, [u8; 6]> {
    (0..n).map(|i| (i, answer(bed, client(i)))).collect()
}

#[test]
fn clients_spread_by_weight_and_only_the_leavers_clients_are_repointed() {
    let mut bed = Bed::new().expect("TEST_RUN bed");
    for i in 1..=3 {
        bed.add_member(ANYCAST, member(i).0, 0, member(i).1)
            .unwrap();
    }
    mode::set(&mut bed.maps, ANYCAST.into(), Mode::Direct).unwrap();
    // The clients' subnet on p0 (repoint tells only clients that can be on the link).
    bed.add_address(0, "198.18.0.1/23").unwrap();
    let before = placements(&bed, 200);
    let count =
        |p: &BTreeMap<u8, [u8; 6]>, i: u8| p.values().filter(|m| **m == member(i).1).count();
    let spread: Vec<usize> = (1..=3).map(|i| count(&before, i)).collect();
    println!("200 clients over 3 members: {spread:?}");
    assert!(spread.iter().all(|&n| n >= 40), "{spread:?}");

    // Weighted like the Maglev table: member 3 at weight 300 gets about 3/5.
    bed.set_weight(ANYCAST, member(3).0, 100, 300).unwrap();
    let weighted = placements(&bed, 200);
    let w: Vec<usize> = (1..=3).map(|i| count(&weighted, i)).collect();
    println!("weights 100/100/300: {w:?}");
    assert!(w[2] > w[0] + w[1] - 40 && w[2] >= 90, "{w:?}");
    bed.set_weight(ANYCAST, member(3).0, 100, 100).unwrap();
    assert_eq!(
        placements(&bed, 200),
        before,
        "placement is a function of the set"
    );

    // Member 2 goes: exactly its clients are repointed, each to the member the dataplane now
    // gives it, and recorded there.
    let leaving = repoint::leaving(&bed.maps, ANYCAST.into(), member(2).0.into());
    assert!(leaving.is_some());
    let leaving = leaving.unwrap();
    bed.del_member(ANYCAST, member(2).0).unwrap();
    // `del` repointed (sending its replies out of p0) and recorded each client's new member.
    let record = |bed: &Bed, i: u8| {
        let key = RequesterKey {
            slot: slot(bed, ANYCAST),
            ip: ip_key(client(i).0.octets()),
        };
        let rec = bed.maps.requesters.get(&key, 0).unwrap();
        let host: anycast_common::Host = bed.maps.hosts.get(&rec.member.host, 0).unwrap();
        host.mac
    };
    let recorded: BTreeMap<u8, [u8; 6]> = (0..200).map(|i| (i, record(&bed, i))).collect();
    let after = placements(&bed, 200);
    assert_eq!(recorded, after, "repoint and dataplane disagree");
    let c = counters(&bed, ANYCAST);
    let theirs = count(&before, 2);
    println!("member 2 had {theirs} clients; repoints {}", c.repoints);
    assert_eq!(c.repoints, theirs as u64);
    assert_eq!(
        c.members.iter().map(|m| m.repoints).sum::<u64>(),
        theirs as u64
    );
    for i in 0..200u8 {
        if before[&i] != member(2).1 {
            assert_eq!(
                after[&i], before[&i],
                "client {i} of a surviving member moved"
            );
        } else {
            assert_ne!(after[&i], member(2).1);
        }
    }
    // Nobody is left on the member that went, so planning again finds no client.
    assert!(repoint::plan(&mut bed.maps, &leaving).unwrap().is_empty());
}

/// ARP requests are unauthenticated: requests in the names of addresses no client on the link
/// can have are answered (one reply to the asker, as any) but never buy repoint frames, and
/// their records are dropped at the removal, while the genuine clients are repointed.
#[test]
fn forged_requesters_off_the_link_are_not_repointed() {
    let mut bed = Bed::new().expect("TEST_RUN bed");
    for i in 1..=2 {
        bed.add_member(ANYCAST, member(i).0, 0, member(i).1)
            .unwrap();
    }
    mode::set(&mut bed.maps, ANYCAST.into(), Mode::Direct).unwrap();
    bed.add_address(0, "198.18.0.1/23").unwrap();
    let attacker = [0x02, 0xba, 0, 0, 0, 0x66];
    let mut forged: Vec<Ipv4Addr> = (1..=40).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
    forged.extend([
        Ipv4Addr::new(198, 18, 0, 0),   // the subnet's network address
        Ipv4Addr::new(198, 18, 1, 255), // its broadcast
        Ipv4Addr::new(198, 18, 0, 1),   // the router itself
        Ipv4Addr::BROADCAST,
    ]);
    let genuine: Vec<(Ipv4Addr, [u8; 6])> = (0..40).map(client).collect();
    let mut given = BTreeMap::new();
    for &ip in &forged {
        given.insert(ip, answer(&bed, (ip, attacker)));
    }
    for &c in &genuine {
        given.insert(c.0, answer(&bed, c));
    }
    let on_two =
        |ips: &mut dyn Iterator<Item = Ipv4Addr>| ips.filter(|ip| given[ip] == member(2).1).count();
    let forged_on_two = on_two(&mut forged.iter().copied());
    let genuine_on_two = on_two(&mut genuine.iter().map(|c| c.0));
    assert!(forged_on_two > 0 && genuine_on_two > 0, "{given:?}");

    bed.del_member(ANYCAST, member(2).0).unwrap();
    let c = counters(&bed, ANYCAST);
    assert_eq!(
        c.repoints, genuine_on_two as u64,
        "only genuine clients repointed"
    );
    let slot = slot(&bed, ANYCAST);
    for &ip in &forged {
        let key = RequesterKey {
            slot,
            ip: ip_key(ip.octets()),
        };
        match bed.maps.requesters.get(&key, 0) {
            Ok(rec) => {
                assert_eq!(given[&ip], member(1).1, "{ip} was repointed");
                assert_eq!(rec.mac, attacker);
            }
            Err(_) => assert_eq!(given[&ip], member(2).1, "{ip}'s record lost"),
        }
    }
}
