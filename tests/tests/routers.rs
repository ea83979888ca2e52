//! Several routers in front of one member LAN.
//!
//! - Frame by frame (BPF_PROG_TEST_RUN, one bed per router): routers that learned the same
//!   members in other orders, with other holes, send every flow to the same member; a flow that
//!   moves to another router while the membership changes keeps its member unless the change
//!   moved its slot.
//! - In namespaces ([`SharedLan`]): R1 and R2 run the agent on one bridged member LAN and learn
//!   the same announcers; U spreads flows over both by ECMP; 40 long-lived TCP connections
//!   steered through R1 move to R2 when R1's uplink goes down and back when it returns, and
//!   none breaks. A client on the member LAN itself gets ARP answers from both routers and
//!   sends everything through one.
use std::{
    net::Ipv4Addr,
    ops::Range,
    time::{Duration, Instant},
};

use anycast_common::programs::ANYCAST as PROGRAM;
use anycast_tests::{
    ANYCAST, Ctl,
    daemon::{Daemon, KeyFile},
    frames::*,
    topology::{ROUTER_LAN, ROUTER_UPLINK, SharedLan},
    traffic::{TcpConns, TcpEcho, rounds_while, served_by},
    wait_until,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT_MAC: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x10];
/// Client ports of the frame-level flows.
const FLOWS: Range<u16> = 20_000..23_000;

/// Member `i` of the frame-level tests: `203.0.113.(10+i)`, MAC `02:10:00:00:00:i`.
fn member(i: u8) -> (Ipv4Addr, [u8; 6]) {
    (Ipv4Addr::new(203, 0, 113, 10 + i), [0x02, 0x10, 0, 0, 0, i])
}

/// What a router hears, in order.
#[derive(Clone, Copy, Debug)]
enum Heard {
    Join(u8),
    Leave(u8),
    /// A new weight (preference stays the default).
    Weight(u8, u16),
}
use Heard::*;

/// Runs `script` as one router: on a fresh bed of its own, on a thread of its own (a bed holds
/// its thread's namespace while it lives).
fn router<T: Send>(script: impl FnOnce(&mut Bed) -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| script(&mut Bed::new().expect("TEST_RUN bed")))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn hear(bed: &mut Bed, events: &[Heard]) {
    for &event in events {
        match event {
            Join(i) => {
                let (ip, mac) = member(i);
                bed.add_member(ANYCAST, ip, 1, mac).unwrap();
            }
            Leave(i) => bed.del_member(ANYCAST, member(i).0).unwrap(),
            Weight(i, w) => bed.set_weight(ANYCAST, member(i).0, 100, w).unwrap(),
        }
    }
}

/// The member (by MAC) a TCP segment with `flags` from each client port reaches.
fn placement(bed: &Bed, flags: u8) -> Vec<Option<[u8; 6]>> {
    FLOWS
        .map(|port| {
            let mut ip = Ipv4::tcp_syn(CLIENT, ANYCAST, port, 443);
            ip.payload[13] = flags;
            let frame = ipv4_frame(bed.ports[0].mac, CLIENT_MAC, &ip);
            let (verdict, out) = bed.run(PROGRAM, 0, &frame).unwrap();
            (verdict == XDP_REDIRECT).then(|| out[0..6].try_into().unwrap())
        })
        .collect()
}

#[test]
fn routers_that_learned_members_in_other_orders_send_every_flow_to_the_same_member() {
    // Members 1..=5 with weights 100, 100, 300, 100, 50; 8 and 9 come and go on some routers.
    let histories: [&[Heard]; 4] = [
        &[Join(1), Join(2), Join(3), Join(4), Join(5)],
        &[Join(5), Join(4), Join(3), Join(2), Join(1)],
        // Holes: 8's position is reused by 2, 9's stays a hole.
        &[
            Join(8),
            Join(9),
            Join(3),
            Leave(8),
            Join(2),
            Join(5),
            Join(4),
            Join(1),
            Leave(9),
        ],
        // A hole left at the front, a member that left and came back, weights set twice.
        &[
            Join(8),
            Join(4),
            Join(1),
            Weight(1, 7),
            Join(5),
            Join(3),
            Leave(8),
            Join(2),
            Leave(1),
            Join(1),
        ],
    ];
    let weights = [Weight(3, 300), Weight(5, 50)];
    let routers: Vec<_> = histories
        .iter()
        .map(|history| {
            router(|bed| {
                hear(bed, history);
                hear(bed, &weights);
                // A mid-connection segment: what a flow that moved from another router brings.
                (bed.positions(ANYCAST).unwrap(), placement(bed, TCP_ACK))
            })
        })
        .collect();
    for (i, (positions, _)) in routers.iter().enumerate() {
        println!("router {i}: positions {positions:?}");
        for (j, (other, _)) in routers.iter().enumerate().take(i) {
            assert_ne!(
                positions, other,
                "routers {j} and {i} have the same positions"
            );
        }
    }
    let (_, first) = &routers[0];
    for i in 1..=5 {
        let n = first.iter().filter(|m| **m == Some(member(i).1)).count();
        println!("member {i}: {n} of {} flows", FLOWS.len());
        assert!(n > 0, "member {i} got no flow");
    }
    assert!(
        first.iter().all(Option::is_some),
        "a flow was not forwarded"
    );
    for (i, (_, placed)) in routers.iter().enumerate().skip(1) {
        let differ = first.iter().zip(placed).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ, 0,
            "router {i} sent {differ} flows elsewhere than router 0"
        );
    }
}

/// One membership change, seen by a flow that stays on R1 (which holds it in its connection
/// table) and by one that moves to R2 (which never saw it): how many flows keep their member,
/// and how many of those that do not are explained by the change itself.
fn change_while_moving(change: Heard) {
    let changed = match change {
        Join(i) | Leave(i) | Weight(i, _) => member(i).1,
    };
    let (before, stayed) = router(|bed| {
        hear(bed, &[Join(1), Join(2), Join(3)]);
        let before = placement(bed, TCP_SYN);
        hear(bed, &[change]);
        (before, placement(bed, TCP_ACK))
    });
    let moved = router(|bed| {
        hear(bed, &[Join(3), Join(8), Join(1), Leave(8), Join(2), change]);
        placement(bed, TCP_ACK)
    });
    let gone = matches!(change, Leave(_));
    let (mut broke_explained, mut broke_other) = (0, 0);
    for ((b, s), m) in before.iter().zip(&stayed).zip(&moved) {
        let b = b.expect("every flow forwarded before");
        // On R1, the connection table holds every flow whose member is still in the set.
        if !(gone && b == changed) {
            assert_eq!(*s, Some(b), "{change:?}: a flow on R1 lost its member");
        }
        if *m != Some(b) {
            // A leaver's or drained member's flows must move; a joiner takes its slots.
            if b == changed || *m == Some(changed) {
                broke_explained += 1;
            } else {
                broke_other += 1;
            }
        }
    }
    let n = FLOWS.len();
    println!(
        "{change:?}: of {n} flows moving to R2, {broke_explained} change member with the \
         change, {broke_other} by churn between the others"
    );
    assert!(broke_explained > 0, "{change:?} moved no flow");
    assert!(
        broke_other * 50 <= n,
        "{change:?}: {broke_other} of {n} flows on unchanged members moved"
    );
}

#[test]
fn a_flow_moving_between_routers_while_a_member_leaves_changes_member_only_with_the_leaver() {
    change_while_moving(Leave(2));
}

#[test]
fn a_flow_moving_between_routers_while_a_member_joins_changes_member_only_to_the_joiner() {
    change_while_moving(Join(4));
}

#[test]
fn a_flow_moving_between_routers_while_a_member_drains_changes_member_only_with_the_drained() {
    change_while_moving(Weight(1, 0));
}

// ---- Namespaces: two routers, one member LAN ----

/// TCP port whose connections U steers through R1 (R2 as backup).
const STEERED_PORT: u16 = 7400;
/// TCP port whose connections U spreads over both routers by ECMP.
const ECMP_PORT: u16 = 7401;
const STEERED_CONNS: usize = 40;
const ECMP_CONNS: usize = 20;
/// A member the test adds on R2 only, to shift R2's positions, and removes again.
const PLACEHOLDER: &str = "203.0.113.99";

struct Lab {
    net: SharedLan,
    ctls: Vec<Ctl>,
    key: KeyFile,
    _agents: Vec<Daemon>,
}

impl Lab {
    /// Two routers with the dataplane on both interfaces and the agent on the LAN.
    fn new() -> Self {
        let net = SharedLan::new(2, 3).expect("topology");
        let key = KeyFile::new(net.upstream.name(), 1, &[0x5f; 32]).expect("key file");
        let mut ctls = Vec::new();
        let mut agents = Vec::new();
        for r in &net.routers {
            let ctl = Ctl::new(&r.ns);
            ctl.attach(&[ROUTER_UPLINK, ROUTER_LAN], "native")
                .expect("attach");
            let pin = ctl.pin_dir().display().to_string();
            let args = anycast_tests::daemon::agent_args(
                &pin,
                &[ROUTER_LAN],
                &["198.51.100.0/24"],
                &["--key-file", key.arg()],
            );
            let name = format!("agent R{}", r.index);
            agents.push(Daemon::spawn_agent(&r.ns, &name, &args).expect("agent"));
            ctls.push(ctl);
        }
        Lab {
            net,
            ctls,
            key,
            _agents: agents,
        }
    }

    fn announce(&self, i: usize) -> Daemon {
        let m = &self.net.members[i];
        let args = [
            "announce",
            "198.51.100.53",
            "--dev",
            &m.iface,
            "--interval",
            "200ms",
            "--hold",
            "1s",
            "--key-file",
            self.key.arg(),
        ];
        Daemon::spawn(&m.ns, &format!("announce m{}", i + 1), &args).expect("announce")
    }

    /// Each router's members of the anycast address, in position order.
    fn members(&self) -> Vec<Vec<Ipv4Addr>> {
        (self.ctls.iter())
            .map(|ctl| {
                ctl.show()
                    .members_of(ANYCAST)
                    .iter()
                    .filter_map(|m| m.ipv4())
                    .collect()
            })
            .collect()
    }

    /// Waits until both routers have learned exactly `want` (in any order).
    fn wait_learned(&self, want: &[Ipv4Addr]) {
        let mut want = want.to_vec();
        want.sort();
        let same = |mut have: Vec<Ipv4Addr>| {
            have.sort();
            have == want
        };
        let ok = wait_until(Duration::from_secs(5), || {
            self.members().into_iter().all(same)
        });
        assert!(ok, "routers have {:?}, want {want:?}", self.members());
    }

    /// Packets each router's dataplane forwarded to the anycast address so far.
    fn forwarded(&self) -> Vec<u64> {
        (self.ctls.iter())
            .map(|ctl| ctl.stats().address(ANYCAST).forwarded_packets)
            .collect()
    }

    /// Waits until U's choice for the steered port is router `want` (1-based).
    fn wait_upstream(&self, want: usize) {
        let ok = wait_until(Duration::from_secs(5), || {
            self.net.upstream_choice(STEERED_PORT) == Some(want)
        });
        let routes = self.net.upstream.ip(&["route", "show", "table", "all"]);
        assert!(
            ok,
            "U does not send the steered port via R{want}: {routes:?}"
        );
    }
}

/// One quiet round on `conns`, all intact; how many packets each router forwarded meanwhile.
fn round_through(lab: &Lab, conns: &mut TcpConns, round: usize) -> Vec<u64> {
    // Let delayed ACKs of the previous round go first.
    std::thread::sleep(Duration::from_millis(100));
    let before = lab.forwarded();
    let ok = conns.round(round);
    let broke: Vec<usize> = (0..ok.len()).filter(|&i| !ok[i]).collect();
    assert!(
        broke.is_empty(),
        "round {round}: connections {broke:?} broke"
    );
    std::thread::sleep(Duration::from_millis(100));
    let after = lab.forwarded();
    after.iter().zip(&before).map(|(a, b)| a - b).collect()
}

/// Steered connections go through router `via` alone (1-based), and ECMP connections
/// through `ecmp_via` (every router that is up).
fn check_paths(lab: &Lab, conns: &mut [TcpConns; 2], round: usize, via: usize, ecmp_via: &[usize]) {
    let d = round_through(lab, &mut conns[0], round);
    println!("round {round}: steered connections forwarded by R1, R2: {d:?}");
    for (i, &n) in d.iter().enumerate() {
        if i + 1 == via {
            assert!(n >= STEERED_CONNS as u64, "R{via} forwarded {n}: {d:?}");
        } else {
            assert_eq!(n, 0, "R{} forwarded steered traffic: {d:?}", i + 1);
        }
    }
    let d = round_through(lab, &mut conns[1], round);
    println!("round {round}: ECMP connections forwarded by R1, R2: {d:?}");
    for (i, &n) in d.iter().enumerate() {
        let up = ecmp_via.contains(&(i + 1));
        assert_eq!(n > 0, up, "R{} forwarded {n} ECMP packets: {d:?}", i + 1);
    }
}

/// Rounds on every connection run on without a pause while `change` happens; none may break.
fn talk_through(conns: &mut [TcpConns; 2], first_round: usize, what: &str, change: impl FnOnce()) {
    let start = Instant::now();
    let (rounds, broke) = rounds_while(conns, first_round, change);
    println!("{what}: {rounds} rounds in {:?}", start.elapsed());
    assert!(rounds >= 2, "{what}: only {rounds} rounds ran");
    assert!(
        broke.is_empty(),
        "{what}: connections (set, index) {broke:?} broke"
    );
}

#[test]
fn connections_survive_their_router_going_down_and_coming_back() {
    let lab = Lab::new();
    let ips = lab.net.member_ips();
    // R2 first holds a member R1 never has, so that R2's positions differ from R1's.
    let r2 = &lab.ctls[1];
    r2.run(&[
        "member",
        "add",
        "198.51.100.53",
        PLACEHOLDER,
        "--mac",
        "02:00:00:00:00:99",
    ])
    .expect("placeholder on R2");
    let placeholder: Ipv4Addr = PLACEHOLDER.parse().unwrap();
    let _a1 = lab.announce(0);
    let want = [vec![ips[0]], vec![placeholder, ips[0]]];
    assert!(
        wait_until(Duration::from_secs(5), || lab.members() == want),
        "routers have {:?}, want {want:?}",
        lab.members()
    );
    r2.member_del(ANYCAST, placeholder).unwrap();
    lab.wait_learned(&ips[..1]);
    let _a2 = lab.announce(1);
    lab.wait_learned(&ips[..2]);
    let _a3 = lab.announce(2);
    lab.wait_learned(&ips);
    let members = lab.members();
    println!(
        "members by position: R1 {:?}, R2 {:?}",
        members[0], members[1]
    );
    assert_eq!(members[0], ips, "R1's positions");
    assert_eq!(members[1], [ips[1], ips[0], ips[2]], "R2's positions");

    let servers = lab.net.member_namespaces();
    let echoes = |port| -> Vec<TcpEcho> {
        (servers.iter())
            .map(|ns| TcpEcho::start(ns, ANYCAST, port).unwrap())
            .collect()
    };
    let echoes = [echoes(STEERED_PORT), echoes(ECMP_PORT)];
    lab.net.steer(STEERED_PORT, 1).expect("steering");
    lab.wait_upstream(1);
    let client = &lab.net.client;
    let mut conns = [
        TcpConns::open(client, ANYCAST, STEERED_PORT, STEERED_CONNS).unwrap(),
        TcpConns::open(client, ANYCAST, ECMP_PORT, ECMP_CONNS).unwrap(),
    ];
    check_paths(&lab, &mut conns, 0, 1, &[1, 2]);

    // R1's uplink goes down while every connection keeps talking: U moves R1's flows to R2,
    // which has never seen them and picks the same members from its own table.
    talk_through(&mut conns, 1_000, "R1 going down", || {
        std::thread::sleep(Duration::from_millis(300));
        lab.net.set_uplink(1, false).unwrap();
        lab.wait_upstream(2);
        std::thread::sleep(Duration::from_millis(700));
    });
    check_paths(&lab, &mut conns, 1, 2, &[2]);

    // R1 returns: the flows move back, R1 still has them in its connection table.
    talk_through(&mut conns, 2_000, "R1 coming back", || {
        std::thread::sleep(Duration::from_millis(300));
        lab.net.set_uplink(1, true).unwrap();
        lab.wait_upstream(1);
        std::thread::sleep(Duration::from_millis(700));
    });
    check_paths(&lab, &mut conns, 2, 1, &[1, 2]);

    // Each connection was served by one member from start to end (the member saw one peer,
    // one connection), and the steered ones were spread over all members.
    let ports: Vec<Vec<u16>> = conns.iter().map(TcpConns::local_ports).collect();
    drop(conns);
    std::thread::sleep(Duration::from_millis(200));
    let by: Vec<_> = echoes.into_iter().map(served_by).collect();
    for (ports, by) in ports.iter().zip(&by) {
        for port in ports {
            let servers = by.get(port).cloned().unwrap_or_default();
            assert_eq!(
                servers.len(),
                1,
                "client port {port} was served by {servers:?}"
            );
        }
    }
    for m in 0..3 {
        let n = ports[0].iter().filter(|p| by[0][*p] == [m]).count();
        println!("member {}: {n} steered connections", m + 1);
        assert!(n > 0, "member {} served no steered connection", m + 1);
    }
}

/// TCP port of the on-link client's connections.
const LAN_PORT: u16 = 7402;

/// A client on the member LAN ARPs for the anycast address: both routers answer (each on its
/// `lan0`, with its own MAC), the client keeps one answer, and all its flows cross that router
/// alone, while still spreading over the members.
#[test]
fn an_on_link_client_gets_arp_answers_from_both_routers_and_uses_one() {
    let lab = Lab::new();
    let ips = lab.net.member_ips();
    let _announcers: Vec<Daemon> = (0..ips.len()).map(|i| lab.announce(i)).collect();
    lab.wait_learned(&ips);
    let echoes: Vec<TcpEcho> = (lab.net.member_namespaces().iter())
        .map(|ns| TcpEcho::start(ns, ANYCAST, LAN_PORT).unwrap())
        .collect();
    let client = lab.net.lan_client().expect("LAN client");
    let arp_replies = || -> Vec<u64> {
        (lab.ctls.iter())
            .map(|ctl| ctl.stats().address(ANYCAST).arp_replies)
            .collect()
    };
    let (arp_before, before) = (arp_replies(), lab.forwarded());
    let mut conns = TcpConns::open(&client, ANYCAST, LAN_PORT, 20).unwrap();
    for round in 0..3 {
        let ok = conns.round(round);
        assert!(ok.iter().all(|ok| *ok), "round {round}: {ok:?}");
    }
    std::thread::sleep(Duration::from_millis(100));
    let delta =
        |a: Vec<u64>, b: &[u64]| -> Vec<u64> { a.iter().zip(b).map(|(a, b)| a - b).collect() };
    let arp = delta(arp_replies(), &arp_before);
    let forwarded = delta(lab.forwarded(), &before);
    let neigh = client
        .ip(&["neigh", "show", "198.51.100.53", "dev", "lc0"])
        .unwrap();
    println!("ARP replies by R1, R2: {arp:?}; forwarded: {forwarded:?}; client: {neigh}");
    assert!(
        arp.iter().all(|&n| n >= 1),
        "not every router answered ARP: {arp:?}"
    );
    let used: Vec<usize> = (0..forwarded.len()).filter(|&i| forwarded[i] > 0).collect();
    assert_eq!(
        used.len(),
        1,
        "the client's flows crossed routers {used:?}: {forwarded:?}"
    );
    let router = &lab.net.routers[used[0]];
    let mac = router.ns.link_mac(ROUTER_LAN).unwrap();
    let mac = anycast_tests::netns::format_mac(mac);
    assert!(
        neigh.contains(&mac),
        "client's entry {neigh:?}, R{}'s MAC {mac}",
        router.index
    );
    drop(conns);
    std::thread::sleep(Duration::from_millis(200));
    let by = served_by(echoes);
    let members: std::collections::BTreeSet<usize> = by.values().flatten().copied().collect();
    assert!(
        members.len() >= 2,
        "the client's connections all went to {members:?}"
    );
}
