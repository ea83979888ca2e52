//! Link-level multicast mode in namespaces: two routers (agents) in front of one bridged member
//! LAN, both with the address in multicast mode. The routers elect the one with the lower LAN
//! address (R1) to put group frames on the LAN; R2 relays to it. 1,000 UDP datagrams from the
//! client, spread over both routers by the upstream's ECMP, reach every member exactly once; a
//! host on the LAN that does not serve the address delivers nothing to its sockets; a member
//! that leaves gets nothing more; when R1's agent dies, R2 takes over.
use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anycast_ctl::{dataplane::Maps, pin::PinDir};
use anycast_tests::{
    ANYCAST, Ctl,
    daemon::{Daemon, KeyFile},
    netns::format_mac,
    topology::{ROUTER_LAN, ROUTER_UPLINK, SharedLan},
    traffic::{Datagram, UdpSink, send_udp},
    wait_until,
};

const PORT: u16 = 7800;
const DATAGRAMS: usize = 1_000;

/// R<i>'s `MCAST_LANS`: the relay MAC of each LAN where another router forwards.
fn relays(ctl: &Ctl) -> Vec<(u32, [u8; 6])> {
    let maps = Maps::open(&PinDir::new(ctl.pin_dir())).expect("maps");
    (maps.mcast_lans.iter())
        .filter_map(|e| e.ok())
        .map(|(ifindex, lan)| (ifindex, lan.relay_mac))
        .collect()
}

fn seqs(got: &[Datagram]) -> Vec<u64> {
    got.iter().filter_map(|d| d.seq).collect()
}

#[test]
fn every_member_gets_each_datagram_once_through_one_forwarder() {
    let net = SharedLan::new(2, 3).expect("topology");
    let key = KeyFile::new(net.upstream.name(), 1, &[0x4d; 32]).expect("key file");
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
            // 300 ms hellos: a stalled agent on a loaded machine must not lose the election
            // (a takeover then duplicates), and R2 still takes over well within the wait.
            &["--key-file", key.arg(), "--router-hello-ms", "300"],
        );
        agents.push(
            Daemon::spawn_agent(&r.ns, &format!("agent R{}", r.index), &args).expect("agent"),
        );
        ctls.push(ctl);
    }
    let mut announcers: Vec<Daemon> = (net.members.iter().enumerate())
        .map(|(i, m)| {
            let args = [
                "announce",
                "198.51.100.53",
                "--dev",
                &m.iface,
                "--interval",
                "100ms",
                "--hold",
                "500ms",
                "--key-file",
                key.arg(),
            ];
            Daemon::spawn(&m.ns, &format!("announce m{}", i + 1), &args).expect("announce")
        })
        .collect();
    let ips: BTreeSet<Ipv4Addr> = net.member_ips().into_iter().collect();
    let learned = |ctl: &Ctl| -> BTreeSet<Ipv4Addr> {
        (ctl.show().members_of(ANYCAST).iter())
            .filter_map(|m| m.ipv4())
            .collect()
    };
    let all = wait_until(Duration::from_secs(5), || {
        ctls.iter().all(|c| learned(c) == ips)
    });
    assert!(
        all,
        "routers learned {:?}",
        ctls.iter().map(learned).collect::<Vec<_>>()
    );
    for ctl in &ctls {
        ctl.run(&["member", "mode", "198.51.100.53", "multicast"])
            .expect("member mode");
        assert_eq!(ctl.json(&["show"])["addresses"][0]["mode"], "multicast");
    }

    // Every member joined the address's group on its interface.
    let group = "03:00:c6:33:64:35";
    for m in &net.members {
        let maddr = m.ns.ip(&["maddr", "show", "dev", &m.iface]).unwrap();
        assert!(maddr.contains(group), "{}: {maddr}", m.iface);
    }

    // The election: R1 (203.0.113.2) forwards, R2 (203.0.113.3) relays to R1's LAN MAC.
    let r1_mac = net.routers[0].ns.link_mac(ROUTER_LAN).unwrap();
    let r2_lan = net.routers[1].ns.ifindex(ROUTER_LAN).unwrap();
    let elected = wait_until(Duration::from_secs(5), || {
        relays(&ctls[1]) == [(r2_lan, r1_mac)] && relays(&ctls[0]).is_empty()
    });
    assert!(
        elected,
        "R1 relays {:?}, R2 relays {:?} (R1's MAC {})",
        relays(&ctls[0]),
        relays(&ctls[1]),
        format_mac(r1_mac)
    );

    let sinks: Vec<UdpSink> = (net.members.iter())
        .map(|m| UdpSink::start(&m.ns, ANYCAST, PORT).unwrap())
        .collect();
    let bystander = net.lan_client().expect("LAN host");
    let stranger = UdpSink::start(&bystander, Ipv4Addr::UNSPECIFIED, PORT).unwrap();
    let forwarded = || -> Vec<u64> {
        (ctls.iter())
            .map(|c| c.stats().address(ANYCAST).forwarded_packets)
            .collect()
    };
    // The frames do reach the bystander's interface (the bridge floods the group; veth
    // counts no multicast, so all frames are counted).
    let rx_frames = || -> u64 {
        let out = bystander.ip(&["-j", "-s", "link", "show", "lc0"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0)
    };
    let bystander_before = rx_frames();
    let before = forwarded();
    // 100 source ports, so that U's ECMP spreads the datagrams over both routers.
    let sent = send_udp(&net.client, ANYCAST, PORT, 41_000..41_100, 10).unwrap();
    assert_eq!(sent.len(), DATAGRAMS);
    let want: BTreeSet<u64> = sent.iter().map(|s| s.seq).collect();
    wait_until(Duration::from_secs(5), || {
        sinks.iter().all(|s| s.received() >= DATAGRAMS)
    });
    std::thread::sleep(Duration::from_millis(200));
    let after = forwarded();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!("forwarded by R1, R2: {delta:?}");
    // R1 put every datagram on the LAN once (its own share and R2's relays); R2 carried some.
    assert_eq!(delta[0], DATAGRAMS as u64, "{delta:?}");
    assert!(delta[1] > 0, "ECMP sent nothing through R2: {delta:?}");

    let all_got: Vec<Vec<u64>> = sinks.into_iter().map(|s| seqs(&s.stop())).collect();
    for (m, got) in all_got.iter().enumerate() {
        let distinct: BTreeSet<u64> = got.iter().copied().collect();
        println!(
            "member {}: {} datagrams, {} distinct",
            m + 1,
            got.len(),
            distinct.len()
        );
        assert_eq!(
            got.len(),
            DATAGRAMS,
            "member {} got duplicates or lost some",
            m + 1
        );
        assert_eq!(distinct, want, "member {}", m + 1);
    }
    let strays = stranger.stop();
    let heard = rx_frames() - bystander_before;
    println!(
        "the bystander's interface received {heard} frames, its socket {}",
        strays.len()
    );
    assert!(
        heard >= DATAGRAMS as u64,
        "the bystander saw {heard} group frames"
    );
    assert!(
        strays.is_empty(),
        "a host not serving the address got {strays:?}"
    );

    // Member 3 leaves (SIGTERM: a leave, its address off lo, its group left): no more for it.
    announcers[2].signal(libc::SIGTERM);
    let (status, _) = announcers[2].wait(Duration::from_secs(5)).unwrap();
    assert!(status.success());
    let two: BTreeSet<Ipv4Addr> = ips.iter().take(2).copied().collect();
    let left = wait_until(Duration::from_secs(5), || {
        ctls.iter().all(|c| learned(c) == two)
    });
    assert!(left, "member 3 still learned");
    let m3 = &net.members[2];
    let maddr = m3.ns.ip(&["maddr", "show", "dev", &m3.iface]).unwrap();
    assert!(!maddr.contains(group), "member 3 kept the group: {maddr}");
    // Its address is gone from lo: it listens on every address, to see anything at all.
    let sinks: Vec<UdpSink> = (net.members.iter().enumerate())
        .map(|(i, m)| {
            let on = if i == 2 {
                Ipv4Addr::UNSPECIFIED
            } else {
                ANYCAST
            };
            UdpSink::start(&m.ns, on, PORT + 1).unwrap()
        })
        .collect();
    let sent = send_udp(&net.client, ANYCAST, PORT + 1, 41_100..41_120, 10).unwrap();
    wait_until(Duration::from_secs(5), || {
        sinks.iter().take(2).all(|s| s.received() >= sent.len())
    });
    std::thread::sleep(Duration::from_millis(200));
    let counts: Vec<usize> = sinks.into_iter().map(|s| s.stop().len()).collect();
    println!("after member 3 left: {counts:?} of {}", sent.len());
    assert_eq!(counts, [sent.len(), sent.len(), 0]);

    // R1's agent dies (-9): after three hello intervals R2 forwards onto the LAN itself.
    agents[0].kill();
    let took_over = wait_until(Duration::from_secs(3), || relays(&ctls[1]).is_empty());
    assert!(took_over, "R2 still relays: {:?}", relays(&ctls[1]));
    let log = agents[1].log();
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "R2's agent:\n{log}"
    );
}
