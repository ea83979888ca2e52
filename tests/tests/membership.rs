//! Membership by host advertisement, end to end: `anycast-ctl announce` on the members,
//! `anycast-ctl agent` on the router, real multicast advertisements and real traffic.
use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anycast_common::advert::{DEFAULT_GROUP, DEFAULT_PORT, Membership, Packet, Repr};
use anycast_ctl::advert_auth;
use anycast_tests::{
    ANYCAST, Ctl, Topology, TopologyOptions,
    daemon::Daemon,
    lab::{AgentLab, HOLD_MS, INTERVAL_MS, SECRET_HEX},
    traffic::{TCP_PORT, UDP_PORT, tcp_round, udp_round},
    wait_until,
};

fn ip(member: usize) -> Ipv4Addr {
    anycast_tests::topology::member_ip(member + 1)
}

#[test]
fn members_announce_and_traffic_spreads() {
    let lab = AgentLab::native();
    let _a: Vec<Daemon> = (0..3).map(|i| lab.announce(i, &[])).collect();
    let took = lab.wait_learned(&[ip(0), ip(1), ip(2)], Duration::from_secs(3));
    assert!(
        took <= Duration::from_millis(INTERVAL_MS + 1500),
        "learned after {took:?}"
    );
    // The announcers put the anycast address on lo themselves.
    let lo = lab.topo.members[0]
        .ns
        .ip(&["-4", "addr", "show", "dev", "lo"])
        .unwrap();
    assert!(lo.contains("198.51.100.53/32"), "{lo}");

    let members = lab.topo.member_namespaces();
    let udp = udp_round(
        &lab.topo.client,
        &members,
        ANYCAST,
        UDP_PORT,
        42000..42060,
        10,
    )
    .unwrap();
    udp.assert_each_sent_once();
    udp.assert_flows_stick();
    assert!(udp.counts().iter().all(|&n| n > 0), "{:?}", udp.counts());
    let tcp = tcp_round(&lab.topo.client, &members, ANYCAST, TCP_PORT, 20, 3).unwrap();
    tcp.assert_all_ok();
    tcp.assert_each_connection_on_one_server();
    assert!(lab.ctl.status().agent.accepted > 0);
}

#[test]
fn killed_announcer_expires_after_hold_and_graceful_stop_is_immediate() {
    let lab = AgentLab::native();
    let mut a: Vec<Daemon> = (0..3).map(|i| lab.announce(i, &[])).collect();
    lab.wait_learned(&[ip(0), ip(1), ip(2)], Duration::from_secs(3));

    // kill -9: no leave is sent; the member must go within hold + one interval.
    a[1].signal(libc::SIGKILL);
    let killed = Instant::now();
    lab.wait_learned(
        &[ip(0), ip(2)],
        Duration::from_millis(HOLD_MS + INTERVAL_MS + 1000),
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_millis(HOLD_MS + INTERVAL_MS + 500),
        "expired after {took:?}"
    );
    // From here on, no datagram reaches m2 and none is lost.
    let members = lab.topo.member_namespaces();
    let udp = udp_round(
        &lab.topo.client,
        &members,
        ANYCAST,
        UDP_PORT,
        43000..43100,
        5,
    )
    .unwrap();
    udp.assert_each_sent_once();
    assert_eq!(udp.counts()[1], 0, "{:?}", udp.counts());

    // SIGTERM: a leave, removed at once (well under one interval), address removed from lo.
    a[0].signal(libc::SIGTERM);
    let stopped = Instant::now();
    lab.wait_learned(&[ip(2)], Duration::from_millis(INTERVAL_MS * 5));
    let took = stopped.elapsed();
    // Its last refresh was at most one interval before the stop, so an expiry comes no
    // sooner than hold − interval after it: a removal before that was the leave.
    assert!(
        took < Duration::from_millis(HOLD_MS - INTERVAL_MS),
        "leave took {took:?}"
    );
    let (status, log) = a[0].wait(Duration::from_secs(3)).unwrap();
    assert!(status.success(), "announce exited with {status}: {log}");
    let lo = lab.topo.members[0]
        .ns
        .ip(&["-4", "addr", "show", "dev", "lo"])
        .unwrap();
    assert!(
        !lo.contains("198.51.100.53"),
        "announce left its address on lo: {lo}"
    );

    // A member that comes back is learned again and gets new flows.
    // (m1 no longer has the anycast address, so only m2 and m3 can listen.)
    let _again = lab.announce(1, &[]);
    lab.wait_learned(&[ip(1), ip(2)], Duration::from_secs(3));
    let udp = udp_round(
        &lab.topo.client,
        &members[1..],
        ANYCAST,
        UDP_PORT,
        44000..44100,
        3,
    )
    .unwrap();
    udp.assert_each_sent_once();
    assert!(udp.counts()[0] > 0, "{:?}", udp.counts());
}

#[test]
fn link_down_removes_the_member_without_waiting_for_its_hold() {
    let lab = AgentLab::native();
    // A long hold, so that only the link event can explain a fast removal.
    let _a: Vec<Daemon> = (0..3)
        .map(|i| lab.announce_held(i, &["198.51.100.53"], 30_000, &[]))
        .collect();
    lab.wait_learned(&[ip(0), ip(1), ip(2)], Duration::from_secs(3));
    let m3 = &lab.topo.members[2];
    let start = m3.ns.set_link(&m3.iface, false).unwrap();
    lab.wait_learned(&[ip(0), ip(1)], Duration::from_secs(2));
    let took = start.elapsed();
    // A loose bound (each poll of `show` is a process); `cargo xtask bench` measures the
    // removal itself (`link_down_p99_ms`).
    assert!(
        took <= Duration::from_millis(500),
        "removed {took:?} after link down"
    );
}

/// Another writer holding the writers' lock for longer than the hold time (an `upgrade`
/// verifying its program, a bulk `load`) keeps the agent from its sockets; the refreshes that
/// waited there are read before any member is judged, so none expires.
#[test]
fn a_writer_holding_the_lock_past_the_hold_time_expires_no_member() {
    let lab = AgentLab::native();
    let _a: Vec<Daemon> = (0..3).map(|i| lab.announce(i, &[])).collect();
    let all = lab.topo.member_ips();
    lab.wait_learned(&all, Duration::from_secs(3));
    let dir = std::fs::File::open(lab.ctl.pin_dir()).expect("pin directory");
    dir.lock().expect("taking the writers' lock");
    // The agent's next counter flush waits for the lock, well past HOLD_MS.
    std::thread::sleep(Duration::from_millis(3 * HOLD_MS));
    dir.unlock().expect("releasing the writers' lock");
    std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
    assert_eq!(lab.learned(), all);
    let log = lab.agent.as_ref().map(Daemon::log).unwrap_or_default();
    assert!(!log.contains("expired"), "a member expired:\n{log}");
}

#[test]
fn killed_agent_loses_nothing_and_a_new_agent_takes_over() {
    let mut lab = AgentLab::native();
    let _a: Vec<Daemon> = (0..3)
        .map(|i| lab.announce_held(i, &["198.51.100.53"], 2_000, &[]))
        .collect();
    lab.wait_learned(&[ip(0), ip(1), ip(2)], Duration::from_secs(3));

    // Traffic flows while the agent is killed and stays dead for a while.
    let members = lab.topo.member_namespaces();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let killer = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            lab.agent.as_ref().unwrap().signal(libc::SIGKILL);
            stop.store(true, Ordering::Relaxed);
        });
        let udp = udp_round(
            &lab.topo.client,
            &members,
            ANYCAST,
            UDP_PORT,
            45000..45300,
            10,
        )
        .unwrap();
        killer.join().unwrap();
        assert!(stop.load(Ordering::Relaxed));
        udp.assert_each_sent_once();
    });
    lab.agent.take().unwrap().kill();
    // m3 dies too while there is no agent: the restarted agent must still expire it on time.
    _a[2].signal(libc::SIGKILL);
    // Without an agent the dataplane forwards on its pinned state.
    let udp = udp_round(
        &lab.topo.client,
        &members,
        ANYCAST,
        UDP_PORT,
        46000..46100,
        3,
    )
    .unwrap();
    udp.assert_each_sent_once();
    assert_eq!(lab.learned().len(), 3);

    drop(members);
    lab.start_agent();
    let before = lab.ctl.status().agent.accepted;
    assert!(
        wait_until(Duration::from_secs(2), || lab.ctl.status().agent.accepted
            > before),
        "the restarted agent accepted nothing; its log:\n{}",
        lab.agent.as_ref().map(Daemon::log).unwrap_or_default()
    );
    // The adopted deadline of the dead m3 passes (hold 2 s from its last refresh before the
    // agent died); the live members stay.
    lab.wait_learned(&[ip(0), ip(1)], Duration::from_secs(3));
    let members = lab.topo.member_namespaces();
    let udp = udp_round(
        &lab.topo.client,
        &members[..2],
        ANYCAST,
        UDP_PORT,
        47000..47100,
        3,
    )
    .unwrap();
    udp.assert_each_sent_once();
}

#[test]
fn forged_replayed_and_malformed_advertisements_are_rejected_and_counted() {
    let lab = AgentLab::native();
    let _a: Vec<Daemon> = (0..2).map(|i| lab.announce(i, &[])).collect();
    lab.wait_learned(&[ip(0), ip(1)], Duration::from_secs(3));

    let m3 = &lab.topo.members[2];
    let m3_ip = ip(2);
    let secret = hex(SECRET_HEX);
    let now = anycast_ctl::members::now_ms();
    let good = message(m3_ip, 1_000, now, ANYCAST, 1, &secret);
    let sends: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "bad_hmac",
            message(m3_ip, 10, now, ANYCAST, 1, &[9; 32]),
            255,
        ),
        (
            "unknown_key",
            message(m3_ip, 11, now, ANYCAST, 7, &secret),
            255,
        ),
        (
            "unauthenticated",
            message(m3_ip, 12, now, ANYCAST, 0, &[]),
            255,
        ),
        ("bad_ttl", message(m3_ip, 13, now, ANYCAST, 1, &secret), 64),
        ("malformed", good[..good.len() - 5].to_vec(), 255),
        (
            "stale_timestamp",
            message(m3_ip, 14, now - 120_000, ANYCAST, 1, &secret),
            255,
        ),
        (
            "outside_prefix",
            message(m3_ip, 15, now, Ipv4Addr::new(203, 0, 113, 200), 1, &secret),
            255,
        ),
        (
            "sender_mismatch",
            message(ip(0), 16, now, ANYCAST, 1, &secret),
            255,
        ),
        // Accepted once (m3 joins), then the same bytes again: a replay.
        ("accepted", good.clone(), 255),
        ("replayed", good.clone(), 255),
    ];
    let before = lab.ctl.status().agent;
    for (what, bytes, ttl) in &sends {
        if *what == "accepted" {
            // Nothing before this message may have made m3 a member.
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(
                lab.learned(),
                vec![ip(0), ip(1)],
                "a rejected advertisement took effect"
            );
        }
        send_from(&m3.ns, m3_ip, bytes, *ttl);
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(
        wait_until(Duration::from_secs(2), || {
            let after = lab.ctl.status().agent;
            sends.iter().all(|(what, _, _)| {
                let (b, a) = match *what {
                    "accepted" => (before.accepted, after.accepted),
                    r => (before.rejected[r], after.rejected[r]),
                };
                a > b
            })
        }),
        "counters: {:?}",
        lab.ctl.status().agent
    );
    // The one good message made m3 a member; the legitimate members were never disturbed.
    lab.wait_learned(&[ip(0), ip(1), ip(2)], Duration::from_secs(1));
}

#[test]
fn agent_refuses_unauthenticated_setup_and_second_announce_fails() {
    let topo = Topology::new(TopologyOptions {
        members: 1,
        ..Default::default()
    })
    .unwrap();
    let ctl = Ctl::new(&topo.router);
    let err = ctl.run_fail(&[
        "agent",
        "--dev",
        "r1",
        "--anycast-prefix",
        "198.51.100.0/24",
    ]);
    assert!(err.contains("--insecure-no-auth"), "{err}");
    let m = &topo.members[0];
    let mut first = Daemon::spawn(
        &m.ns,
        "announce",
        &["announce", "198.51.100.53", "--dev", &m.iface],
    )
    .unwrap();
    // "announcing" comes after its claim on the address and its signal handlers.
    let started = wait_until(Duration::from_secs(5), || {
        first.log().contains("announcing")
    });
    assert!(started && first.running(), "{}", first.log());
    let mut second = Daemon::spawn(
        &m.ns,
        "announce 2",
        &["announce", "198.51.100.53", "--dev", &m.iface],
    )
    .unwrap();
    let (status, log) = second.wait(Duration::from_secs(3)).unwrap();
    assert!(!status.success());
    assert!(log.contains("already announced"), "{log}");
    first.signal(libc::SIGTERM);
    assert!(first.wait(Duration::from_secs(3)).unwrap().0.success());
}

fn message(
    sender: Ipv4Addr,
    seq: u64,
    ts: u64,
    anycast: Ipv4Addr,
    key_id: u32,
    secret: &[u8],
) -> Vec<u8> {
    let mut repr = Repr::new(sender, seq, ts, key_id);
    repr.push(Membership {
        anycast: anycast.into(),
        hold_ms: 5_000,
        preference: 100,
        weight: 100,
    })
    .unwrap();
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    if key_id != 0 {
        advert_auth::sign(&mut buf, key_id, secret).unwrap();
    }
    buf
}

/// Sends one advertisement from a member namespace to the group with the given TTL.
fn send_from(ns: &anycast_tests::Netns, from: Ipv4Addr, bytes: &[u8], ttl: u32) {
    ns.in_ns(|| {
        let socket = UdpSocket::bind(SocketAddrV4::new(from, 0)).unwrap();
        socket.set_multicast_ttl_v4(ttl).unwrap();
        socket.set_multicast_loop_v4(false).unwrap();
        socket
            .send_to(
                bytes,
                SocketAddrV4::new(Ipv4Addr::from(DEFAULT_GROUP), DEFAULT_PORT),
            )
            .unwrap();
    });
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn unicast_announce_static_members_and_a_clean_agent_exit() {
    let mut lab = AgentLab::native();
    // m1 advertises unicast to its router (point-to-point style) instead of multicast.
    let m1 = &lab.topo.members[0];
    let key = lab.key_file.display().to_string();
    let _a1 = Daemon::spawn(
        &m1.ns,
        "announce m1 --to",
        &[
            "announce",
            "198.51.100.53",
            "--dev",
            &m1.iface,
            "--interval",
            "200ms",
            "--hold",
            "600ms",
            "--key-file",
            &key,
            "--to",
            "203.0.113.1",
        ],
    )
    .unwrap();
    lab.wait_learned(&[ip(0)], Duration::from_secs(3));

    // An operator's static member coexists with learned ones and is never expired by the agent.
    lab.ctl
        .run(&["member", "add", "198.51.100.53", &ip(2).to_string()])
        .unwrap();
    // m3 also announces itself: the operator's static entry must not change.
    let _a3 = lab.announce(2, &[]);
    std::thread::sleep(Duration::from_millis(HOLD_MS * 2));
    let show = lab.ctl.show();
    let members = show.members_of(ANYCAST);
    let source = |a: Ipv4Addr| {
        members
            .iter()
            .find(|m| m.address == a)
            .map(|m| m.source.clone())
    };
    assert_eq!(source(ip(0)).as_deref(), Some("learned"));
    assert_eq!(source(ip(2)).as_deref(), Some("static"));
    let learned = members.iter().find(|m| m.address == ip(0)).unwrap();
    assert!(learned.expires_in_ms.is_some_and(|e| e <= HOLD_MS));
    assert!(
        members
            .iter()
            .find(|m| m.address == ip(2))
            .unwrap()
            .expires_in_ms
            .is_none()
    );

    // SIGTERM: the agent exits 0 and the dataplane stays attached with its members.
    let mut agent = lab.agent.take().unwrap();
    agent.signal(libc::SIGTERM);
    let (status, log) = agent.wait(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "agent exited with {status}: {log}");
    assert_eq!(lab.ctl.status().interfaces.len(), 4);
    assert_eq!(lab.ctl.show().members_of(ANYCAST).len(), 2);
}

#[test]
fn commands_without_privileges_fail_clearly() {
    let topo = Topology::new(TopologyOptions {
        members: 1,
        ..Default::default()
    })
    .unwrap();
    let ctl = Ctl::new(&topo.router);
    ctl.run(&["attach", "r0", "r1"]).unwrap();
    let before = ctl.show();
    let pin = ctl.pin_dir().display().to_string();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(anycast_tests::ctl::binary())
        .args([
            "--pin-dir",
            &pin,
            "member",
            "add",
            "198.51.100.53",
            "203.0.113.2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("needs root"), "{err}");
    assert_eq!(ctl.show(), before);
}

/// A member that stops serving leaves at once: a failing `--check-cmd`, then the anycast
/// address removed from `lo`. The hold time (10 s) is far longer than the bound, so only a
/// leave explains the removal; the member that passes its check again comes back.
#[test]
fn failing_health_check_or_address_gone_from_lo_sends_a_leave() {
    let lab = AgentLab::native();
    let flag = std::env::temp_dir().join(format!("anycast-health-{}", std::process::id()));
    std::fs::write(&flag, "").unwrap();
    let check = format!("test -e {}", flag.display());
    let extra = ["--check-cmd", &check, "--check-interval", "20ms"];
    let _a = [
        lab.announce_timed(0, &["198.51.100.53"], (INTERVAL_MS, 10_000), &extra),
        lab.announce_timed(1, &["198.51.100.53"], (INTERVAL_MS, 10_000), &[]),
    ];
    lab.wait_learned(&[ip(0), ip(1)], Duration::from_secs(3));

    std::fs::remove_file(&flag).unwrap();
    let took = lab.wait_learned(&[ip(1)], Duration::from_secs(2));
    assert!(
        took < Duration::from_secs(1),
        "health check leave took {took:?}"
    );

    lab.topo.members[1]
        .ns
        .ip(&["addr", "del", "198.51.100.53/32", "dev", "lo"])
        .unwrap();
    let took = lab.wait_learned(&[], Duration::from_secs(2));
    assert!(
        took < Duration::from_secs(1),
        "leave after lo lost its address took {took:?}"
    );

    std::fs::write(&flag, "").unwrap();
    lab.wait_learned(&[ip(0)], Duration::from_secs(2));
    let _ = std::fs::remove_file(&flag);
}

/// BFD-class timers: with a 10 ms interval and a 30 ms hold, 40 ms after a kill -9 of its
/// announcer no datagram reaches the member, and none is lost. Only that member runs the fast
/// timers: a survivor's announcer stalled 30 ms on a loaded machine must not expire too.
#[test]
fn hard_failure_with_fast_timers_stops_traffic_within_40ms() {
    let lab = AgentLab::native();
    let timers = |i| if i == 1 { (10, 30) } else { (100, 3_000) };
    let a: Vec<Daemon> = (0..3)
        .map(|i| lab.announce_timed(i, &["198.51.100.53"], timers(i), &[]))
        .collect();
    lab.wait_learned(&[ip(0), ip(1), ip(2)], Duration::from_secs(3));
    a[1].signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(40));
    let members = lab.topo.member_namespaces();
    let udp = udp_round(
        &lab.topo.client,
        &members,
        ANYCAST,
        UDP_PORT,
        47000..47100,
        3,
    )
    .unwrap();
    udp.assert_each_sent_once();
    assert_eq!(udp.counts()[1], 0, "{:?}", udp.counts());
    assert_eq!(lab.learned(), vec![ip(0), ip(2)]);
}

/// A graceful leave under a steady UDP stream (64 flows over three members): once the maps
/// have the member out of service, not one datagram sent reaches it (its address stays on
/// `lo`, so one would be seen), none is lost, and the 40 TCP connections of the other members
/// stay up. The removal follows the leave within a loose bound.
#[test]
fn leave_under_a_steady_stream_sends_nothing_to_the_member_once_it_is_out() {
    let out = anycast_tests::failover::run(anycast_tests::failover::Kind::Leave).unwrap();
    println!("{out:?}");
    out.check().unwrap();
    assert!(out.removal_ms < 1_000.0, "{out:?}");
}

/// Kill -9 of the announcer (10 ms / 30 ms timers), the router's link to the member down, and
/// `member del` of a static member, each under the stream and 40 long-lived TCP connections:
/// the connections of the surviving members all stay up, and nothing reaches the member or is
/// lost once it is out of service (see `anycast_tests::failover`).
#[test]
fn survivors_connections_stay_up_through_every_kind_of_failover() {
    use anycast_tests::failover::Kind;
    for kind in [Kind::Kill, Kind::LinkDown, Kind::Del] {
        let out = anycast_tests::failover::run(kind).unwrap();
        println!("{out:?}");
        out.check().unwrap();
        assert!(out.removal_ms < 1_000.0, "{out:?}");
    }
}

/// Refreshes that change nothing cost the agent no writers' lock and no map write: 2,000
/// signed refreshes of a learned member through an in-process agent leave its lock count,
/// the member's `MEMBER_INFO` and its `SENDER_SEQ` as they were (they reach the maps at the
/// next flush, every 200 ms).
#[test]
fn refreshes_that_change_nothing_take_no_lock_and_write_no_map() {
    anycast_tests::bench::membership::refreshes_write_nothing(2_000).unwrap();
}

/// `track_tcp` in the agent's configuration: a learned address in those prefixes tracks TCP
/// only from its first member on (no UDP entry in the connection table); one outside does not.
#[test]
fn agent_track_tcp_applies_to_learned_addresses_in_its_prefixes() {
    let mut lab = AgentLab::new();
    let config = std::env::temp_dir().join(format!("anycast-track-{}.toml", std::process::id()));
    std::fs::write(&config, "track_tcp = [\"198.51.100.53/32\"]\n").unwrap();
    let path = config.display().to_string();
    lab.restart_agent_with(&["--config", &path]);
    let _a = lab.announce_addresses(0, &["198.51.100.53", "198.51.100.54"], &[]);
    lab.wait_learned(&[ip(0)], Duration::from_secs(3));
    let other = Ipv4Addr::new(198, 51, 100, 54);
    lab.wait_learned_of(other, &[ip(0).into()], Duration::from_secs(3));
    std::fs::remove_file(&config).unwrap();
    let shown = lab.ctl.json(&["show"]);
    let track = |address: &str| {
        let all = shown["addresses"].as_array().unwrap();
        let a = all.iter().find(|a| a["address"] == address).unwrap();
        a["track"].as_str().unwrap().to_string()
    };
    assert_eq!(track("198.51.100.53"), "tcp", "{shown}");
    assert_eq!(track("198.51.100.54"), "all", "{shown}");

    let members = [&lab.topo.members[0].ns];
    let udp = udp_round(
        &lab.topo.client,
        &members,
        ANYCAST,
        UDP_PORT,
        43000..43050,
        4,
    )
    .unwrap();
    udp.assert_each_sent_once();
    let tracked = anycast_tests::frames::tracked_flows(lab.ctl.pin_dir(), 17);
    assert_eq!(
        tracked, 0,
        "UDP flows of a track_tcp address in the connection table"
    );
}
