//! Direct ARP mode in namespaces ([`DirectLab`]): 20 clients on the member LAN ARP for the
//! anycast address, the router's XDP gives each one of 3 members, and their datagrams go to
//! that member with the router carrying none; when a member's announcer is killed (-9), its
//! clients are repointed to the others within the hold time, and no other client moves.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anycast_tests::{
    daemon::Daemon,
    direct::{Arrivals, DirectLab, Senders, first_elsewhere, homes},
    wait_until,
};

const CLIENTS: usize = 20;
const INTERVAL_MS: u64 = 100;
const HOLD_MS: u64 = 300;

#[test]
fn lan_clients_go_straight_to_members_and_move_only_when_theirs_dies() {
    let lab = DirectLab::new(3, CLIENTS).expect("lab");
    let ips = lab.net.member_ips();
    let (interval, hold) = (format!("{INTERVAL_MS}ms"), format!("{HOLD_MS}ms"));
    let mut announcers: Vec<Daemon> = (0..ips.len())
        .map(|i| lab.announce(i, &interval, &hold).expect("announce"))
        .collect();
    lab.wait_learned(&ips).unwrap();
    let out = lab.ctl.run(&["member", "mode", "198.51.100.53", "direct"]);
    println!("{}", out.expect("member mode"));
    let shown = lab.ctl.json(&["show"]);
    assert_eq!(shown["addresses"][0]["mode"], "direct", "{shown}");
    assert!(lab.ctl.run(&["show"]).unwrap().contains("direct"));

    let arrivals: Vec<Arrivals> = (lab.net.member_namespaces().iter())
        .map(|ns| Arrivals::start(ns).expect("receiver"))
        .collect();
    let start = Instant::now();
    let senders = Senders::start(&lab.clients).expect("senders");
    let all_heard = wait_until(Duration::from_secs(5), || {
        homes(&arrivals, start).len() == CLIENTS
    });
    assert!(all_heard, "clients heard: {:?}", homes(&arrivals, start));
    let settled = Instant::now();
    std::thread::sleep(Duration::from_millis(300));

    // Each client on one member, at least 3 on each; the router forwarded nothing.
    let before = homes(&arrivals, settled);
    let home = |c: &Ipv4Addr| -> usize {
        let h = &before[c];
        assert_eq!(h.len(), 1, "client {c} reached members {h:?}");
        h[0]
    };
    let per_member: Vec<Vec<Ipv4Addr>> = (0..ips.len())
        .map(|m| before.keys().filter(|c| home(c) == m).copied().collect())
        .collect();
    let spread: Vec<usize> = per_member.iter().map(Vec::len).collect();
    println!("{CLIENTS} clients over the members: {spread:?}");
    assert!(spread.iter().all(|&n| n >= 3), "{spread:?}");
    let c = lab.counters();
    println!("router counters: {c}");
    assert_eq!(c["forwarded_packets"], 0, "the router carried data: {c}");
    assert!(
        c["direct_arp_replies"].as_u64().unwrap() >= CLIENTS as u64,
        "{c}"
    );

    // kill -9 of member 0's announcer: its clients move within hold + interval, plus a loose
    // margin for the repoint, the clients' kernels and the receiving threads on a loaded machine.
    let dead = 0;
    let killed = Instant::now();
    announcers[dead].kill();
    let theirs = &per_member[dead];
    let moved = wait_until(Duration::from_secs(3), || {
        (theirs.iter()).all(|c| first_elsewhere(&arrivals, *c, dead, killed).is_some())
    });
    std::thread::sleep(Duration::from_millis(300));
    drop(senders);
    assert!(moved, "clients of the dead member that never moved");
    let bound = Duration::from_millis(HOLD_MS + INTERVAL_MS + 300);
    for client in theirs {
        let at = first_elsewhere(&arrivals, *client, dead, killed).unwrap();
        let took = at - killed;
        println!("client {client} of the dead member reached another member after {took:?}");
        assert!(
            took <= bound,
            "client {client} took {took:?} (bound {bound:?})"
        );
    }
    // No client of a surviving member moved, nor was repointed.
    let after = homes(&arrivals, killed);
    for (m, clients) in per_member.iter().enumerate().skip(1) {
        for client in clients {
            assert_eq!(after[client], [m], "client {client} of member {m} moved");
        }
    }
    let c = lab.counters();
    println!("router counters after: {c}");
    assert_eq!(c["forwarded_packets"], 0, "the router carried data: {c}");
    assert_eq!(c["repoints"], theirs.len() as u64, "{c}");
    let to_survivors: u64 = (c["members"].as_array().unwrap().iter())
        .map(|m| m["repoints"].as_u64().unwrap())
        .sum();
    assert_eq!(to_survivors, theirs.len() as u64, "{c}");
    let log = lab.agent_log();
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "agent:\n{log}"
    );
}
