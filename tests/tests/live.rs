//! The live view: `stats --interval D --json` prints one object of per-second rates per line;
//! the rates times each line's `seconds` must add up to the traffic really sent, member by
//! member, and Ctrl-C ends it with status 0.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use anycast_tests::{
    ANYCAST, Ctl, Topology, TopologyOptions,
    daemon::Daemon,
    traffic::{UDP_PORT, udp_round},
    wait_until,
};
use serde_json::Value;

const REPORTS: usize = 8;

#[test]
fn stats_interval_json_rates_add_up_to_the_traffic_sent() {
    let topo = Topology::new(TopologyOptions::default()).expect("topology");
    let ctl = Ctl::new(&topo.router);
    let ifaces = topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    ctl.attach(&ifaces, "native").expect("attach");
    for member in topo.member_ips() {
        ctl.member_add(ANYCAST, member).expect("member add");
    }
    let count = REPORTS.to_string();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", topo.router.path().display()))
        .arg("--")
        .arg(anycast_tests::ctl::binary())
        .args(["--pin-dir", ctl.pin_dir().to_str().unwrap()])
        .args(["stats", "--interval", "500ms", "--count", &count, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("stats --interval");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The first report is out, so its reading is the base of all the traffic below.
    let mut reports = vec![lines.next().expect("a first report").unwrap()];
    let udp = udp_round(
        &topo.client,
        &topo.member_namespaces(),
        ANYCAST,
        UDP_PORT,
        43000..43100,
        3,
    )
    .unwrap();
    udp.assert_each_sent_once();
    reports.extend(lines.map(Result::unwrap));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(reports.len(), REPORTS, "{reports:#?}");

    let mut forwarded = 0.0;
    let mut per_member = vec![0.0; topo.members.len()];
    for line in &reports {
        let r: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let seconds = r["seconds"].as_f64().unwrap();
        assert!((0.4..2.0).contains(&seconds), "{line}");
        let a = &r["addresses"][0];
        assert_eq!(a["address"], ANYCAST.to_string());
        forwarded += a["forwarded_packets_per_s"].as_f64().unwrap() * seconds;
        for m in a["members"].as_array().unwrap() {
            let ip: std::net::Ipv4Addr = m["address"].as_str().unwrap().parse().unwrap();
            let i = topo.members.iter().position(|x| x.ip == ip).unwrap();
            per_member[i] += m["packets_per_s"].as_f64().unwrap() * seconds;
        }
    }
    assert_eq!(forwarded.round() as usize, udp.sent.len(), "{reports:#?}");
    let per_member: Vec<usize> = per_member.iter().map(|p| p.round() as usize).collect();
    assert_eq!(per_member, udp.counts(), "{reports:#?}");
}

#[test]
fn ctrl_c_ends_stats_interval_with_status_0() {
    let topo = Topology::new(TopologyOptions {
        members: 1,
        ..Default::default()
    })
    .expect("topology");
    let ctl = Ctl::new(&topo.router);
    ctl.attach(&["r0", "r1"], "native").expect("attach");
    let pin = ctl.pin_dir().display().to_string();
    let mut live = Daemon::spawn(
        &topo.router,
        "stats",
        &["--pin-dir", &pin, "stats", "--interval", "200ms"],
    )
    .unwrap();
    // Its first report is out, so its Ctrl-C handler is in place (not a fixed sleep).
    let reported = wait_until(Duration::from_secs(5), || !live.log().is_empty());
    assert!(reported && live.running(), "{}", live.log());
    live.signal(libc::SIGINT);
    let (status, log) = live
        .wait(Duration::from_secs(3))
        .expect("exit after SIGINT");
    assert!(status.success(), "{status}: {log}");
}
