//! Prometheus metrics, tested with the real thing: `anycast-ctl metrics` (and the agent's
//! `--metrics-listen`) serve `/metrics` in the router namespace, Debian's Prometheus scrapes it
//! there, and what its HTTP API returns must be exactly what `stats --json`, `show --json` and
//! `status --json` say after real traffic through the router. `promtool check metrics` must
//! accept the output.

use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use anycast_tests::{
    ANYCAST, Ctl, Topology, TopologyOptions,
    ctl::Show,
    daemon::Daemon,
    prometheus::{OPENMETRICS_ACCEPT, Prometheus, Series, http_get, raw_request},
    traffic::{TCP_PORT, UDP_PORT, tcp_round, udp_round},
    wait_until,
};
use serde_json::Value;

const METRICS: &str = "127.0.0.1:9446";

/// The router with the dataplane attached natively, the three members added, export on.
fn router() -> (Ctl, Topology) {
    let topo = Topology::new(TopologyOptions::default()).expect("topology");
    let ctl = Ctl::new(&topo.router);
    let ifaces = topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    ctl.attach(&ifaces, "native").expect("attach");
    for member in topo.member_ips() {
        ctl.member_add(ANYCAST, member).expect("member add");
    }
    ctl.run(&["export", "on"]).expect("export on");
    (ctl, topo)
}

/// Real UDP and TCP through the router, every datagram and connection delivered.
fn traffic(topo: &Topology) {
    let members = topo.member_namespaces();
    let udp = udp_round(&topo.client, &members, ANYCAST, UDP_PORT, 41000..41100, 3).unwrap();
    udp.assert_each_sent_once();
    let tcp = tcp_round(&topo.client, &members, ANYCAST, TCP_PORT, 12, 4).unwrap();
    tcp.assert_all_ok();
}

fn series(name: &str, labels: &[(&str, &str)], value: f64) -> (BTreeMap<String, String>, f64) {
    let mut l: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert("__name__".into(), format!("anycast_{name}"));
    (l, value)
}

/// Every series the metrics must hold, computed from the JSON outputs alone.
fn expected(stats: &Value, show: &Value, status: &Value) -> Series {
    let mut want = Series::new();
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v}")) as f64;
    for a in stats["addresses"].as_array().unwrap() {
        let addr = a["address"].as_str().unwrap();
        let l = [("address", addr)];
        for (name, field) in [
            ("address_rx_packets_total", "rx_packets"),
            ("address_rx_bytes_total", "rx_bytes"),
            ("address_forwarded_packets_total", "forwarded_packets"),
            ("address_forwarded_bytes_total", "forwarded_bytes"),
            ("address_arp_replies_total", "arp_replies"),
            ("address_nd_replies_total", "nd_replies"),
        ] {
            want.extend([series(name, &l, n(&a[field]))]);
        }
        for (reason, v) in a["passed"].as_object().unwrap() {
            let l = [("address", addr), ("reason", reason.as_str())];
            want.extend([series("address_passed_packets_total", &l, n(v))]);
        }
        for m in a["members"].as_array().unwrap() {
            let l = [
                ("address", addr),
                ("member", m["address"].as_str().unwrap()),
            ];
            want.extend([
                series("member_forwarded_packets_total", &l, n(&m["packets"])),
                series("member_forwarded_bytes_total", &l, n(&m["bytes"])),
            ]);
        }
    }
    for a in show["addresses"].as_array().unwrap() {
        let addr = a["address"].as_str().unwrap();
        let l = [("address", addr)];
        let members = a["members"].as_array().unwrap();
        want.extend([series("address_members", &l, members.len() as f64)]);
        let exported = &a["exported_metric"];
        want.extend([series(
            "address_route_exported",
            &l,
            f64::from(u8::from(!exported.is_null())),
        )]);
        if !exported.is_null() {
            want.extend([series("address_route_metric", &l, n(exported))]);
        }
        for m in members {
            let l = [
                ("address", addr),
                ("member", m["address"].as_str().unwrap()),
            ];
            let learned = f64::from(u8::from(m["source"] == "learned"));
            want.extend([
                series("member_weight", &l, n(&m["weight"])),
                series("member_preference", &l, n(&m["preference"])),
                series("member_learned", &l, learned),
            ]);
        }
    }
    for (reason, v) in stats["global"].as_object().unwrap() {
        want.extend([series("frames_total", &[("reason", reason)], n(v))]);
    }
    let agent = &status["agent"];
    want.extend([series(
        "agent_advertisements_accepted_total",
        &[],
        n(&agent["accepted"]),
    )]);
    for (reason, v) in agent["rejected"].as_object().unwrap() {
        want.extend([series(
            "agent_advertisements_rejected_total",
            &[("reason", reason)],
            n(v),
        )]);
    }
    want.extend([series(
        "build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    )]);
    want
}

/// What Prometheus holds for our metrics now, without its target labels.
fn scraped(prometheus: &Prometheus, topo: &Topology) -> Series {
    let all = prometheus
        .query(&topo.router, r#"{__name__=~"anycast_.+"}"#)
        .expect("query");
    all.into_iter()
        .map(|(mut labels, v)| {
            labels.remove("job");
            labels.remove("instance");
            (labels, v)
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_same_figures_as_stats_json() {
    let (ctl, topo) = router();
    traffic(&topo);
    let pin = ctl.pin_dir().display().to_string();
    let server = Daemon::spawn(
        &topo.router,
        "metrics",
        &["--pin-dir", &pin, "metrics", "--listen", METRICS],
    )
    .expect("metrics");
    let prometheus = Prometheus::start(&topo.router, &[METRICS]).expect("prometheus");
    // The counters stand still once the traffic is over (IPv6 is off, nothing else talks), so
    // a scrape after the JSON outputs must hold exactly their figures.
    let mut last = (Series::new(), Series::new());
    let same = wait_until(Duration::from_secs(30), || {
        let want = expected(
            &ctl.json(&["stats"]),
            &ctl.json(&["show"]),
            &ctl.json(&["status"]),
        );
        let got = scraped(&prometheus, &topo);
        let same = got == want;
        last = (want, got);
        same
    });
    let (want, got) = last;
    assert!(
        same,
        "Prometheus holds\n{got:#?}\nbut the JSON outputs say\n{want:#?}\nserver log: {}",
        server.log()
    );
    let forwarded = |name: &str| {
        want.iter()
            .filter(|(l, _)| l["__name__"] == format!("anycast_{name}"))
            .map(|(_, v)| *v)
            .sum::<f64>()
    };
    assert_eq!(
        forwarded("address_forwarded_packets_total"),
        forwarded("member_forwarded_packets_total")
    );
    assert!(
        forwarded("address_forwarded_packets_total") >= 300.0 + 12.0 * 3.0,
        "{want:#?}"
    );
    assert_eq!(forwarded("address_route_exported"), 1.0);
    let up = prometheus
        .query(&topo.router, r#"up{job="anycast"}"#)
        .unwrap();
    assert_eq!(up.values().copied().collect::<Vec<_>>(), vec![1.0]);
}

#[test]
fn promtool_accepts_the_output_and_the_server_speaks_http() {
    let (ctl, topo) = router();
    traffic(&topo);
    let pin = ctl.pin_dir().display().to_string();
    let _server = Daemon::spawn(
        &topo.router,
        "metrics",
        &["--pin-dir", &pin, "metrics", "--listen", METRICS],
    )
    .expect("metrics");
    let get = |path: &str, accept: &str| topo.router.in_ns(|| http_get(METRICS, path, accept));
    assert!(wait_until(Duration::from_secs(5), || get(
        "/metrics", "*/*"
    )
    .is_ok()));

    let text = get("/metrics", "*/*").unwrap();
    assert_eq!(text.status, 200);
    assert_eq!(
        text.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(text.headers["content-length"], text.body.len().to_string());
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}\n{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
        text.body
    );

    let open = get("/metrics", OPENMETRICS_ACCEPT).unwrap();
    assert_eq!(open.status, 200);
    assert_eq!(
        open.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    assert!(open.body.contains(&format!(
        "anycast_address_forwarded_packets_total{{address=\"{ANYCAST}\"}}"
    )));

    assert_eq!(get("/", "*/*").unwrap().status, 404);
    assert_eq!(get("/metrics/x", "*/*").unwrap().status, 404);
    let raw = |request: &[u8]| {
        topo.router
            .in_ns(|| raw_request(METRICS, request))
            .unwrap()
            .status
    };
    assert_eq!(raw(b"POST /metrics HTTP/1.1\r\n\r\n"), 405);
    assert_eq!(raw(b"GARBAGE\r\n\r\n"), 400);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(raw(huge.as_bytes()), 431);
    // Still serving after all that.
    assert_eq!(get("/metrics", "*/*").unwrap().status, 200);
}

#[test]
fn agent_serves_learned_members_and_its_counters() {
    let topo = Topology::new(TopologyOptions::default()).expect("topology");
    let ctl = Ctl::new(&topo.router);
    let pin = ctl.pin_dir().display().to_string();
    let mut agent = Daemon::spawn_agent(
        &topo.router,
        "agent",
        &anycast_tests::daemon::agent_args(
            &pin,
            &["r1"],
            &["198.51.100.0/24"],
            &[
                "--mode",
                "native",
                "--insecure-no-auth",
                "--metrics-listen",
                METRICS,
            ],
        ),
    )
    .expect("agent");
    let m1 = &topo.members[0];
    let _announce = Daemon::spawn(
        &m1.ns,
        "announce",
        &[
            "announce",
            &ANYCAST.to_string(),
            "--dev",
            &m1.iface,
            "--hold",
            "3s",
        ],
    )
    .expect("announce");
    let learned = wait_until(Duration::from_secs(10), || {
        let show = ctl.run(&["show", "--json"]).ok();
        let show: Option<Show> = show.and_then(|s| serde_json::from_str(&s).ok());
        show.is_some_and(|s| s.members_of(ANYCAST).iter().any(|m| m.source == "learned"))
    });
    assert!(learned, "not learned; agent log:\n{}", agent.log());
    let prometheus = Prometheus::start(&topo.router, &[METRICS]).expect("prometheus");
    let member = [
        ("address", ANYCAST.to_string()),
        ("member", m1.ip.to_string()),
    ];
    let value = |name: &str| {
        let got = scraped(&prometheus, &topo);
        got.iter()
            .find(|(l, _)| {
                l["__name__"] == format!("anycast_{name}")
                    && member.iter().all(|(k, v)| l.get(*k) == Some(v))
            })
            .map(|(_, v)| *v)
    };
    assert!(
        wait_until(Duration::from_secs(20), || value("member_learned")
            == Some(1.0)),
        "agent log:\n{}",
        agent.log()
    );
    let expires = value("member_expires_in_seconds").expect("expiry of a learned member");
    assert!(expires > 0.0 && expires <= 3.0, "expires in {expires} s");
    let accepted = prometheus
        .query(&topo.router, "anycast_agent_advertisements_accepted_total")
        .unwrap();
    let accepted: f64 = accepted.values().sum();
    let status = ctl.status();
    assert!(
        accepted >= 1.0 && accepted <= status.agent.accepted as f64,
        "Prometheus saw {accepted} accepted, status says {}",
        status.agent.accepted
    );
    assert!(agent.running(), "{}", agent.log());
}
