//! RFC 1546's "learn the unicast address of their peer": `announce --identity-port` on the
//! members, `anycast-ctl probe` from the client through the router, with real datagrams, over
//! IPv4 and IPv6.
use std::{
    net::{IpAddr, Ipv4Addr, UdpSocket},
    time::Duration,
};

use anycast_common::identity::{DEFAULT_PORT, Reply, Repr};
use anycast_tests::{ClientStack, Netns, cmd, ctl::binary, lab::AgentLab, topology::member_ip6};
use serde_json::Value;

/// `anycast-ctl probe ARGS...` in the client namespace (as a plain client runs it).
fn probe(client: &Netns, args: &[&str]) -> cmd::Outcome {
    let net = format!("--net={}", client.path().display());
    let bin = binary().to_str().unwrap();
    let full = [&[net.as_str(), "--", bin, "probe"][..], args].concat();
    cmd::run_with_timeout("nsenter", &full, cmd::COMMAND_TIMEOUT).unwrap()
}

fn probe_json(client: &Netns, count: usize) -> Value {
    probe_json_of(client, "198.51.100.53", count)
}

fn probe_json_of(client: &Netns, anycast: &str, count: usize) -> Value {
    let count = count.to_string();
    let out = probe(client, &[anycast, "--count", &count, "--json"])
        .ok()
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

/// The members that answered, with their answer counts; checks the totals.
fn answered(probe: &Value, count: u64) -> Vec<(IpAddr, u64)> {
    assert_eq!(probe["queries"], count);
    assert_eq!(probe["answered"], count, "{probe}");
    assert_eq!(
        (probe["timed_out"].as_u64(), probe["malformed"].as_u64()),
        (Some(0), Some(0))
    );
    (probe["members"].as_array().unwrap().iter())
        .map(|m| {
            assert!(!m["hostname"].as_str().unwrap().is_empty(), "{m}");
            let rtt = m["rtt_ms_max"].as_f64().unwrap();
            assert!(rtt > 0.0 && rtt < 1000.0, "{m}");
            (
                m["address"].as_str().unwrap().parse().unwrap(),
                m["answers"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_probe_through_the_router_sees_every_member_and_then_one_less() {
    let lab = AgentLab::new();
    let port = DEFAULT_PORT.to_string();
    let mut announcers: Vec<_> = (0..3)
        .map(|i| lab.announce(i, &["--identity-port", &port]))
        .collect();
    let all = lab.topo.member_ips();
    lab.wait_learned(&all, Duration::from_secs(3));

    let all: Vec<IpAddr> = all.iter().map(|&a| a.into()).collect();
    let seen = answered(&probe_json(&lab.topo.client, 60), 60);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), all);
    assert!(
        seen.iter().all(|s| s.1 >= 5),
        "60 flows spread badly: {seen:?}"
    );

    // The human table names each member too.
    let table = probe(&lab.topo.client, &["198.51.100.53", "--count", "30"])
        .ok()
        .unwrap();
    for ip in &all {
        assert!(table.contains(&ip.to_string()), "{table}");
    }

    // m3 leaves (SIGTERM: a leave, and its address goes from lo).
    announcers[2].signal(libc::SIGTERM);
    lab.wait_learned(&lab.topo.member_ips()[..2], Duration::from_secs(2));
    announcers[2].wait(Duration::from_secs(5)).unwrap();
    let seen = answered(&probe_json(&lab.topo.client, 60), 60);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), &all[..2]);
    drop(announcers);
}

/// A dual-stack announce with `--identity-port` answers over both families: a probe of the
/// IPv6 anycast address from the client through the router hears every member's IPv6 address,
/// one of the IPv4 address every member's IPv4 address, each from the address probed.
#[test]
fn a_probe_over_ipv6_sees_every_member_by_its_ipv6_address() {
    let lab = AgentLab::with_stack(ClientStack::Dual);
    let port = DEFAULT_PORT.to_string();
    let both = ["198.51.100.53", "2001:db8:53::53"];
    let _announcers: Vec<_> = (0..3)
        .map(|i| lab.announce_addresses(i, &both, &["--identity-port", &port]))
        .collect();
    let all6: Vec<IpAddr> = (1..=3).map(|i| member_ip6(i).into()).collect();
    lab.wait_learned_of(anycast_tests::ANYCAST6, &all6, Duration::from_secs(3));
    lab.wait_learned(&lab.topo.member_ips(), Duration::from_secs(3));

    let v6 = probe_json_of(&lab.topo.client, "2001:db8:53::53", 60);
    assert_eq!(v6["anycast"], "2001:db8:53::53", "{v6}");
    let seen = answered(&v6, 60);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), all6);
    assert!(seen.iter().all(|s| s.1 >= 5), "spread badly: {seen:?}");
    let all4: Vec<IpAddr> = (lab.topo.member_ips().into_iter())
        .map(IpAddr::from)
        .collect();
    let seen = answered(&probe_json(&lab.topo.client, 30), 30);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), all4);
}

#[test]
fn identity_answers_are_off_by_default_and_a_probe_fails_in_bounded_time() {
    let lab = AgentLab::new();
    let _announcers: Vec<_> = (0..3).map(|i| lab.announce(i, &[])).collect();
    lab.wait_learned(&lab.topo.member_ips(), Duration::from_secs(3));
    let start = std::time::Instant::now();
    let out = probe(
        &lab.topo.client,
        &["198.51.100.53", "--count", "5", "--timeout", "300ms"],
    );
    assert!(!out.status.success());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no member of 198.51.100.53 answered"), "{err}");
}

#[test]
fn malformed_replies_are_counted_and_ignored_with_a_reason() {
    // A fake responder on the client's own lo: junk first, then a proper reply.
    let ns = Netns::new("p").unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    ns.ip(&["addr", "add", "198.51.100.99/32", "dev", "lo"])
        .unwrap();
    let socket = ns
        .in_ns(|| UdpSocket::bind(("198.51.100.99", DEFAULT_PORT)))
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..2 {
            let (len, peer) = socket.recv_from(&mut buf).unwrap();
            let Ok(Repr::Query { nonce }) = Repr::parse(&buf[..len]) else {
                panic!("not a query");
            };
            socket.send_to(b"junk that is long enough", peer).unwrap();
            let reply = Repr::Reply(
                Reply::new(
                    nonce,
                    Ipv4Addr::new(198, 51, 100, 99),
                    Ipv4Addr::new(203, 0, 113, 77),
                    "fake",
                )
                .unwrap(),
            );
            let mut out = vec![0; reply.buffer_len()];
            reply.emit(&mut out);
            socket.send_to(&out, peer).unwrap();
        }
    });
    let out = probe(&ns, &["198.51.100.99", "--count", "2", "--json"])
        .ok()
        .unwrap();
    server.join().unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["answered"].as_u64(), v["malformed"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    assert_eq!(
        v["malformed_reasons"],
        serde_json::json!([
            "malformed reply from 198.51.100.99:5447: not an identity message (bad magic)"
        ])
    );
    assert_eq!(v["members"][0]["address"], "203.0.113.77");
    assert_eq!(v["members"][0]["hostname"], "fake");
}
