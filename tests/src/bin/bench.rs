//! `cargo xtask bench`: measures the dataplane and writes `target/bench/report.json`.
//!
//! Every TEST_RUN figure is the kernel's own time per run of BPF_PROG_TEST_RUN (1,000,000
//! repeats, whole nanoseconds, from a thread under SCHED_FIFO so that other work does not
//! preempt it), taken as the median of several interleaved rounds, and compared only as ratios
//! within this one run: this machine is shared and noisy, so absolute numbers from different
//! runs differ. Every case runs through `bench_replay` (`Bed::time`), which restores the frame
//! before each repeat: TEST_RUN does not, so without it a forward would be timed on its own
//! output from the second repeat on (a "not for this router" pass). Each case's verdict is
//! checked.
//!
//! `bench --dataplane-only` measures only the TEST_RUN cases (about a minute) and prints them,
//! without the scale, membership and end-to-end phases and without writing the report.
//! `bench control`, `bench export`, `bench failover`, `bench sites`, `bench metrics`,
//! `bench direct` and `bench upgrade` run only the control-plane, the route-export, the
//! membership-and-failover, the site-failover, the metrics-scrape, the direct-ARP-mode or the
//! upgrade-under-load part, print it, and write no
//! report; `bench e2e` likewise for the end-to-end forwarding rate (about a minute).
//! `bench ipv6` measures only the IPv6 TEST_RUN cases (the forward and the neighbour
//! advertisement against the baseline, and the forward at 65,536 IPv6 addresses) and prints
//! them; `bench dataplane` every TEST_RUN figure (the cases, `--track tcp` and the scale
//! cases), printed. Any other argument is an error.
// The report is one `json!` literal, deeper than the macro's default recursion limit.
#![recursion_limit = "256"]
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use anycast_common::{
    ALLOC_ADDR_SLOTS, any_key, bench, member_set_index, programs,
    proto::{ARPOP_REQUEST, ETH_P_IPV6, IPPROTO_ICMPV6, TCP_ACK, XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use anycast_ctl::dataplane::{AddrSlot, Bucket};
use anycast_tests::frames::{
    Bed, Ipv4, Ipv6, arp_frame, ethernet, ipv4_frame, ipv6_frame, ns_message, solicited_node,
};
use anyhow::{Context, Result};
use serde_json::json;

const REPEAT: u32 = 1_000_000;
/// Rounds of the TEST_RUN cases. Two runs of 9 (2026-12-03) gave the same medians for five
/// of eight cases and 1 ns apart for three: the kernel reports whole nanoseconds, a tenth of
/// the fastest programs' run, so no number of rounds brings those within 5 %.
const ROUNDS: usize = 9;
/// Packets per case of the end-to-end measurement.
const E2E_PACKETS: u64 = 1_000_000;
const ANYCAST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT_MAC: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x10];
/// Extra anycast addresses for the scale case come from 198.18.0.0/15 (IPv4) and
/// 2001:db8:5ca1::/48 (IPv6).
const SCALE_ADDRESSES: u32 = 65_536;
const ANYCAST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x53);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc0, 0, 0, 0, 0, 0x10);

struct Case {
    name: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    /// The verdict every run must give: a case that gives another measured the wrong path.
    verdict: u32,
}

/// The parts `bench PART` runs alone; with no argument, every part and the report.
const PARTS: [&str; 11] = [
    "--dataplane-only",
    "dataplane",
    "ipv6",
    "e2e",
    "failover",
    "control",
    "export",
    "sites",
    "metrics",
    "direct",
    "upgrade",
];

fn main() -> Result<()> {
    // A mistyped part must not start the full run (and overwrite the report).
    if let Some(arg) = std::env::args().nth(1)
        && !PARTS.contains(&arg.as_str())
    {
        anyhow::bail!("unknown part {arg:?}: one of {}", PARTS.join(", "));
    }
    anycast_tests::require_root();
    // `bench control`: only the control plane at scale, printed, no report.
    if std::env::args().nth(1).as_deref() == Some("control") {
        let control = anycast_tests::bench::control::run()?;
        println!("{}", serde_json::to_string_pretty(&control)?);
        return Ok(());
    }
    // `bench metrics`: only the Prometheus scrape at scale, printed, no report.
    if std::env::args().nth(1).as_deref() == Some("metrics") {
        let metrics = anycast_tests::bench::metrics::run()?;
        println!("{}", serde_json::to_string_pretty(&metrics)?);
        return Ok(());
    }
    // `bench export`: only route export, printed, no report.
    if std::env::args().nth(1).as_deref() == Some("export") {
        let export = anycast_tests::bench::export::run()?;
        println!("{}", serde_json::to_string_pretty(&export)?);
        return Ok(());
    }
    // `bench failover`: only membership by advertisement (the leave) and failover, printed,
    // and put in place of those two sections of the report (which is made if missing).
    if std::env::args().nth(1).as_deref() == Some("failover") {
        let membership = anycast_tests::bench::membership::run()?;
        let failover = anycast_tests::bench::failover::run()?;
        let both = json!({"membership": membership, "failover": failover});
        println!("{}", serde_json::to_string_pretty(&both)?);
        let path = target_dir().join("bench").join("report.json");
        let mut report: serde_json::Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_else(|| json!({}));
        report["membership"] = both["membership"].clone();
        report["failover"] = both["failover"].clone();
        std::fs::create_dir_all(path.parent().expect("a report directory"))?;
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
        println!(
            "\nreport (membership and failover sections): {}",
            path.display()
        );
        return Ok(());
    }
    // `bench sites`: only site failover through BIRD, printed, no report.
    if std::env::args().nth(1).as_deref() == Some("sites") {
        let sites = anycast_tests::bench::sites::run()?;
        println!("{}", serde_json::to_string_pretty(&sites)?);
        return Ok(());
    }
    // `bench e2e`: only the end-to-end forwarding rate, printed and merged into the report.
    if std::env::args().nth(1).as_deref() == Some("e2e") {
        let e2e = anycast_tests::bench::e2e::run(E2E_PACKETS)?;
        println!("{}", serde_json::to_string_pretty(&e2e)?);
        merge_end_to_end(&e2e)?;
        return Ok(());
    }
    // `bench direct`: only direct ARP mode's repoint and router load, printed, no report.
    if std::env::args().nth(1).as_deref() == Some("direct") {
        let direct = anycast_tests::bench::direct::run()?;
        println!("{}", serde_json::to_string_pretty(&direct)?);
        return Ok(());
    }
    // `bench upgrade`: only the upgrade under load, printed, no report.
    if std::env::args().nth(1).as_deref() == Some("upgrade") {
        let upgrade = anycast_tests::bench::upgrade::run()?;
        println!("{}", serde_json::to_string_pretty(&upgrade)?);
        return Ok(());
    }
    let mut bed = Bed::new()?;
    for (i, member) in [[203, 0, 113, 2], [203, 0, 113, 6], [203, 0, 113, 10]]
        .iter()
        .enumerate()
    {
        bed.add_member(
            ANYCAST,
            Ipv4Addr::from(*member),
            1,
            [0x02, 0x10, 0, 0, 0, i as u8],
        )?;
        let member6 = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 2 + i as u16);
        bed.add_member(ANYCAST6, member6, 1, [0x02, 0x16, 0, 0, 0, i as u8])?;
    }
    let p0 = bed.ports[0].mac;
    let udp6 = ipv6_frame(
        p0,
        CLIENT_MAC,
        &Ipv6::udp(CLIENT6, ANYCAST6, 40000, 53, &[0; 18]),
    );
    let (group, group_mac) = solicited_node(ANYCAST6);
    let ns6 = ns_message(CLIENT6, group, ANYCAST6, Some(CLIENT_MAC), &[]);
    let mut ns6 = Ipv6::new(CLIENT6, group, IPPROTO_ICMPV6, ns6);
    ns6.hop_limit = 255;
    let ns6 = ethernet(group_mac, CLIENT_MAC, ETH_P_IPV6, &ns6.bytes());
    let udp = ipv4_frame(
        p0,
        CLIENT_MAC,
        &Ipv4::udp(CLIENT, ANYCAST, 40000, 53, &[0; 18]),
    );
    let syn = ipv4_frame(p0, CLIENT_MAC, &Ipv4::tcp_syn(CLIENT, ANYCAST, 40000, 80));
    let mut ack = Ipv4::tcp_syn(CLIENT, ANYCAST, 40001, 80);
    ack.payload[13] = TCP_ACK;
    let ack = ipv4_frame(p0, CLIENT_MAC, &ack);
    let arp = arp_frame(
        [0xff; 6],
        ARPOP_REQUEST,
        CLIENT_MAC,
        CLIENT,
        [0; 6],
        ANYCAST,
    );
    let other = ipv4_frame(
        p0,
        CLIENT_MAC,
        &Ipv4::udp(CLIENT, Ipv4Addr::new(203, 0, 113, 99), 40000, 53, &[0; 18]),
    );
    let cases = [
        Case {
            name: "baseline_swap_macs_tx",
            program: bench::programs::BENCH_BASELINE,
            frame: udp.clone(),
            verdict: XDP_TX,
        },
        Case {
            name: "udp_forward",
            program: programs::ANYCAST,
            frame: udp.clone(),
            verdict: XDP_REDIRECT,
        },
        Case {
            name: "tcp_forward_established",
            program: programs::ANYCAST,
            frame: ack,
            verdict: XDP_REDIRECT,
        },
        Case {
            name: "tcp_syn_new_connection",
            program: programs::ANYCAST,
            frame: syn,
            verdict: XDP_REDIRECT,
        },
        Case {
            name: "arp_reply",
            program: programs::ANYCAST,
            frame: arp,
            verdict: XDP_TX,
        },
        Case {
            name: "pass_not_anycast",
            program: programs::ANYCAST,
            frame: other,
            verdict: XDP_PASS,
        },
        Case {
            name: "udp6_forward",
            program: programs::ANYCAST,
            frame: udp6,
            verdict: XDP_REDIRECT,
        },
        Case {
            name: "nd_reply",
            program: programs::ANYCAST,
            frame: ns6,
            verdict: XDP_TX,
        },
        // The replay's own cost: restore the frame, tail-call a program that only passes it.
        Case {
            name: "replay_then_pass",
            program: bench::programs::PEER_PASS,
            frame: udp,
            verdict: XDP_PASS,
        },
    ];
    if std::env::args().nth(1).as_deref() == Some("ipv6") {
        let ipv6 = [&cases[0], &cases[1], &cases[6], &cases[7]];
        let ns = measure(&mut bed, ipv6)?;
        let scale6 = scale(&mut bed, &ns, ipv6)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&ipv6_figures(&ns, &scale6))?
        );
        return Ok(());
    }

    let mut ns = measure(&mut bed, &cases)?;
    if std::env::args().any(|a| a == "--dataplane-only") {
        print_dataplane(&ns);
        return Ok(());
    }
    ns.insert("udp_forward_1_address", ns["udp_forward"]);
    let track_tcp = track_tcp(&mut bed, [&cases[0], &cases[1], &cases[6]])?;
    // `bench dataplane`: every TEST_RUN figure (the cases, `--track tcp`, scale), printed.
    if std::env::args().nth(1).as_deref() == Some("dataplane") {
        let scaled = scale(&mut bed, &ns, [&cases[0], &cases[1], &cases[6], &cases[7]])?;
        print_dataplane(&ns);
        let scaled = serde_json::to_string_pretty(&scaled)?;
        println!("{}\n{scaled}", serde_json::to_string_pretty(&track_tcp)?);
        return Ok(());
    }

    let scaled = scale(&mut bed, &ns, [&cases[0], &cases[1], &cases[6], &cases[7]])?;
    let scale = scaled["scale_65536_vs_1"];
    ns.insert(
        "udp_forward_65536_addresses",
        scaled["udp_forward_65536_addresses"],
    );
    ns.insert(
        "udp6_forward_65536_addresses",
        scaled["udp6_forward_65536_addresses"],
    );
    let ipv6 = ipv6_figures(&ns, &scaled);

    drop(bed);
    let forward_vs_baseline = ns["udp_forward"] / ns["baseline_swap_macs_tx"];
    let established_vs_baseline = ns["tcp_forward_established"] / ns["baseline_swap_macs_tx"];
    let new_connection_vs_baseline = ns["tcp_syn_new_connection"] / ns["baseline_swap_macs_tx"];
    print_dataplane(&ns);
    println!("scale_65536_vs_1             {scale:.3}  (target <= 1.1)");

    println!("\n== membership by advertisement (real agent, namespaces)");
    let membership = anycast_tests::bench::membership::run()?;

    println!("\n== failover: Maglev build, table swap, link down, kill -9 (namespaces)");
    let failover = anycast_tests::bench::failover::run()?;

    println!("\n== control plane at 65,536 addresses (anycast-ctl binary, namespaces)");
    let control = anycast_tests::bench::control::run()?;

    println!("\n== route export (anycast-ctl binary, namespaces)");
    let route_export = anycast_tests::bench::export::run()?;

    println!("\n== site failover through BIRD (two sites, BGP + BFD, namespaces)");
    let site_failover = anycast_tests::bench::sites::run()?;

    println!("\n== Prometheus scrape at 65,536 addresses (anycast-ctl metrics, namespaces)");
    let metrics = anycast_tests::bench::metrics::run()?;

    println!("\n== upgrade under load (anycast-ctl binary, namespaces)");
    let upgrade = anycast_tests::bench::upgrade::run()?;

    println!("\n== direct ARP mode: repoint and router load (namespaces)");
    let direct = anycast_tests::bench::direct::run()?;

    println!("\n== end-to-end forwarding rate (live frames, namespaces)");
    let end_to_end = anycast_tests::bench::e2e::run(E2E_PACKETS)?;

    let program = program_ns(&ns);
    let mut report = json!({
        "machine": machine(),
        "dataplane": {
            "method": format!("BPF_PROG_TEST_RUN, {REPEAT} repeats, median of {ROUNDS} interleaved rounds; kernel-measured ns per run (integer ns), the measuring thread on CPU 1 under SCHED_FIFO. Every case, the baseline included, runs through bench_replay, which restores the frame and tail-calls the program, so that each repeat sees the frame as given (TEST_RUN runs a repeat on what the previous one left); replay_then_pass is the replay's own cost (restore, tail call, XDP_PASS); each case's last verdict is checked"),
            "replay_ns": ns["replay_then_pass"],
            "ns_per_packet": ns,
            "program_ns": program,
            "ratios": {
                "forward_vs_baseline": forward_vs_baseline,
                "established_vs_baseline": established_vs_baseline,
                "new_connection_vs_baseline": new_connection_vs_baseline,
                "scale_65536_vs_1": scale,
            },
            "ipv6": ipv6,
            "track_tcp": track_tcp,
        },
        "membership": membership,
        "failover": failover,
        "control_plane": control,
        "route_export": route_export,
        "site_failover": site_failover,
        "metrics": metrics,
        "upgrade": upgrade,
        "direct": direct,
        "end_to_end": end_to_end,
        "ratios": {
            "forward_vs_baseline": forward_vs_baseline,
            "scale_65536_vs_1": scale,
            "forward6_vs_baseline": ipv6["forward6_vs_baseline"],
            "scale6_65536_vs_1": ipv6["scale6_65536_vs_1"],
            "nd_reply_ns": ipv6["nd_reply_ns"],
            "forward_program_ns": program["udp_forward"],
            "forward6_program_ns": program["udp6_forward"],
            "forward_track_tcp_vs_baseline": track_tcp["forward_track_tcp_vs_baseline"],
            "forward6_track_tcp_vs_baseline": track_tcp["forward6_track_tcp_vs_baseline"],
        },
        "targets": {
            "forward_vs_baseline": 1.5,
            "forward6_vs_baseline": 1.5,
            "scale6_65536_vs_1": 1.1,
            "scale_65536_vs_1": 1.1,
            "maglev_build_ms": 0.5,
            "table_swap_ms": 1,
            "link_down_p99_ms": 5,
            "hard_failure_fast_max_ms": 35,
            "datagrams_after_removal": 0,
            "adverts_per_second": 100_000,
            "leave_p99_ms": 1,
            "expiry_after_last_advert_ms": anycast_tests::bench::membership::TARGET_EXPIRY_MAX_MS,
            "member_add_65536_ms": 5,
            "member_del_65536_ms": 5,
            "show_65536_ms": 2_000,
            "bulk_load_65536_ms": 10_000,
            "route_install_p99_ms": 10,
            "route_withdraw_p99_ms": 10,
            "routes_65536_install_ms": 10_000,
            "route_install_at_scale_p99_ms": 10,
            "route_withdraw_at_scale_p99_ms": 10,
            "site_failover_fast_ms": 1_000,
            "metrics_scrape_65536_ms": 1_000,
            "upgrade_lost_datagrams": 0,
            "upgrade_broken_connections": 0,
        },
    });
    copy_end_to_end(&mut report, &end_to_end);
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("\nreport: {}", path.display());
    Ok(())
}

/// The end-to-end keys of the report (`end_to_end`, its ratios, targets and limiting stages),
/// written into `target/bench/report.json` over those of an earlier full run, whose other
/// figures stay as they were (a report that is not there or not JSON is started afresh).
fn merge_end_to_end(e2e: &serde_json::Value) -> Result<()> {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("report.json");
    let mut report: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| json!({"machine": machine()}));
    report["end_to_end"] = e2e.clone();
    copy_end_to_end(&mut report, e2e);
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("\nreport: {} (end-to-end keys)", path.display());
    Ok(())
}

/// The end-to-end limiting stages, and the ratios of [`E2E_KEYS`] with their targets, into the
/// top level of `report`.
fn copy_end_to_end(report: &mut serde_json::Value, e2e: &serde_json::Value) {
    report["limiting_stage"] = e2e["limiting_stage"].clone();
    for key in E2E_KEYS {
        report["ratios"][key] = e2e["ratios"][key].clone();
        if !e2e["targets"][key].is_null() {
            report["targets"][key] = e2e["targets"][key].clone();
        }
    }
}

/// The end-to-end ratios the report carries at its top level.
const E2E_KEYS: [&str; 13] = [
    "xdp_vs_kernel_ecmp",
    "xdp_vs_plain_redirect",
    "xdp6_vs_kernel_ecmp6",
    "xdp6_vs_plain_redirect6",
    "scale_65536_spread_vs_1",
    "flows_1m_vs_1k",
    "cold_line_1m_vs_1k",
    "cold_line_1k_vs_packed",
    "xdp_track_tcp_vs_kernel_ecmp",
    "xdp_track_tcp_vs_plain_redirect",
    "xdp6_track_tcp_vs_kernel_ecmp6",
    "xdp6_track_tcp_vs_plain_redirect6",
    "flows_1m_track_tcp_vs_1k",
];

/// The TEST_RUN table and the ratios to the baseline.
fn print_dataplane(ns: &BTreeMap<&'static str, f64>) {
    println!(
        "\n{:<32} {:>10}",
        "case (TEST_RUN, 1M repeats)", "ns/packet"
    );
    for (name, v) in ns {
        println!("{name:<32} {v:>10.1}");
    }
    let base = ns["baseline_swap_macs_tx"];
    println!(
        "\n(every case through bench_replay, which costs {:.0} ns by itself: replay_then_pass)",
        ns["replay_then_pass"]
    );
    println!(
        "forward_vs_baseline          {:.3}  (target <= 1.5; connection table hit)",
        ns["udp_forward"] / base
    );
    println!(
        "new_connection_vs_baseline   {:.3}  (connection table miss: Maglev + insert)",
        ns["tcp_syn_new_connection"] / base
    );
    let program = program_ns(ns);
    println!(
        "program ns (case - replay):  UDP forward {:.0}, IPv6 {:.0}, ARP reply {:.0}, ND reply {:.0}, baseline {:.0}",
        program["udp_forward"],
        program["udp6_forward"],
        program["arp_reply"],
        program["nd_reply"],
        program["baseline_swap_macs_tx"],
    );
}

/// Each case's ns over `replay_then_pass`: the program's own time, without the harness's
/// (TEST_RUN's loop, the frame's restore and the tail call, about 30 ns on the AMD VM, more
/// than the baseline program itself). The `*_vs_baseline` ratios include the harness on both
/// sides; this is the figure that follows the program.
fn program_ns(ns: &BTreeMap<&'static str, f64>) -> BTreeMap<&'static str, f64> {
    let replay = ns["replay_then_pass"];
    ns.iter()
        .map(|(&case, &v)| (case, (v - replay).max(0.0)))
        .collect()
}

/// The UDP forwards again with both addresses set to `member track ADDR tcp` (UDP placed by
/// the Maglev table alone; `cases`: baseline, udp_forward, udp6_forward), normalised by the
/// baseline of the same rounds; the addresses are set back to `all` afterwards.
fn track_tcp(bed: &mut Bed, cases: [&Case; 3]) -> Result<serde_json::Value> {
    use anycast_ctl::members::mode::{Track, set_track};
    for address in [IpAddr::from(ANYCAST), ANYCAST6.into()] {
        set_track(&mut bed.maps, address, Track::Tcp)?;
    }
    let ns = measure(bed, cases);
    for address in [IpAddr::from(ANYCAST), ANYCAST6.into()] {
        set_track(&mut bed.maps, address, Track::All)?;
    }
    let ns = ns?;
    let base = ns["baseline_swap_macs_tx"];
    Ok(json!({
        "method": "BPF_PROG_TEST_RUN as above, after `member track ADDR tcp` for both addresses: \
                   udp_forward and udp6_forward touch no connection-table line; own rounds, \
                   ratios to the baseline of those rounds",
        "baseline_ns": base,
        "udp_forward_ns": ns["udp_forward"],
        "udp6_forward_ns": ns["udp6_forward"],
        "forward_track_tcp_vs_baseline": ns["udp_forward"] / base,
        "forward6_track_tcp_vs_baseline": ns["udp6_forward"] / base,
    }))
}

/// Installs 65,535 more anycast addresses of each family (every slot), then measures the
/// baseline and both forwards again (`cases`: baseline, udp_forward, udp6_forward, ...). The
/// scale ratios are normalised by the baseline of each phase, so drift between them cancels.
fn scale(
    bed: &mut Bed,
    ns: &BTreeMap<&'static str, f64>,
    cases: [&Case; 4],
) -> Result<BTreeMap<&'static str, f64>> {
    eprintln!("installing {SCALE_ADDRESSES} anycast addresses of each family ...");
    let started = Instant::now();
    let base4 = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let v4: Vec<IpAddr> = (0..SCALE_ADDRESSES - 1)
        .map(|i| Ipv4Addr::from(base4 + i).into())
        .collect();
    let base6 = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0x5ca1, 0, 0, 0, 0, 0));
    let v6: Vec<IpAddr> = (0..SCALE_ADDRESSES - 1)
        .map(|i| Ipv6Addr::from(base6 + u128::from(i)).into())
        .collect();
    fill_addresses(bed, ANYCAST.into(), &v4)?;
    fill_addresses(bed, ANYCAST6.into(), &v6)?;
    eprintln!("  done in {:.1} s", started.elapsed().as_secs_f64());
    let scaled = measure(bed, cases)?;
    let ratio = |case: &str| {
        (scaled[case] / scaled["baseline_swap_macs_tx"]) / (ns[case] / ns["baseline_swap_macs_tx"])
    };
    Ok(BTreeMap::from([
        ("scale_65536_vs_1", ratio("udp_forward")),
        ("scale6_65536_vs_1", ratio("udp6_forward")),
        ("udp_forward_65536_addresses", scaled["udp_forward"]),
        ("udp6_forward_65536_addresses", scaled["udp6_forward"]),
    ]))
}

/// The IPv6 figures of the report: ratios to the baseline of the same run.
fn ipv6_figures(
    ns: &BTreeMap<&'static str, f64>,
    scaled: &BTreeMap<&'static str, f64>,
) -> serde_json::Value {
    let base = ns["baseline_swap_macs_tx"];
    json!({
        "method": "BPF_PROG_TEST_RUN as above: udp6_forward (connection table hit) and nd_reply (multicast solicitation with a source link-layer option, answered in place) against baseline_swap_macs_tx; scale6 after 65,535 more IPv6 and 65,535 more IPv4 addresses, normalised by the baseline of each phase",
        "udp6_forward_ns": ns["udp6_forward"],
        "nd_reply_ns": ns["nd_reply"],
        "baseline_ns": base,
        "forward6_vs_baseline": ns["udp6_forward"] / base,
        "forward4_vs_baseline_same_run": ns["udp_forward"] / base,
        "nd_reply_vs_baseline": ns["nd_reply"] / base,
        "scale6_65536_vs_1": scaled["scale6_65536_vs_1"],
        "udp6_forward_65536_addresses_ns": scaled["udp6_forward_65536_addresses"],
    })
}

/// Median ns/packet of each case over interleaved rounds; an error if a case gives another
/// verdict than its own.
fn measure<'a>(
    bed: &mut Bed,
    cases: impl IntoIterator<Item = &'a Case> + Clone,
) -> Result<BTreeMap<&'static str, f64>> {
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let _quiet = anycast_tests::bench::pipeline::Quiet::new(1)?;
    for _ in 0..ROUNDS {
        for case in cases.clone() {
            let timed = bed
                .time(case.program, 0, &case.frame, REPEAT)
                .with_context(|| case.name)?;
            anyhow::ensure!(
                timed.verdict == case.verdict,
                "{}: verdict {} where {} was expected",
                case.name,
                timed.verdict,
                case.verdict
            );
            samples
                .entry(case.name)
                .or_default()
                .push(timed.per_run.as_nanos() as f64);
        }
    }
    Ok(samples
        .into_iter()
        .map(|(name, mut v)| {
            v.sort_by(f64::total_cmp);
            (name, v[v.len() / 2])
        })
        .collect())
}

/// Installs `addresses` as more anycast addresses, each with the same members as `anchor`.
/// Written straight into the maps (one probe, three updates and a head each): this measures the
/// kernel's lookup at scale, not the control plane.
fn fill_addresses(bed: &mut Bed, anchor: IpAddr, addresses: &[IpAddr]) -> Result<()> {
    let Bucket::Found { entry, .. } = bed.maps.bucket(anchor)? else {
        anyhow::bail!("{anchor} is not installed");
    };
    let set = bed.maps.member_set(&entry)?;
    let mut slot = bed.maps.alloc.get(&ALLOC_ADDR_SLOTS, 0)?;
    for &ip in addresses {
        let Bucket::Free { index } = bed.maps.bucket(ip)? else {
            anyhow::bail!("no bucket for address {ip}");
        };
        bed.maps.store_member_set(member_set_index(slot, 0), &set)?;
        bed.maps
            .set_addr(ip, index, AddrSlot { slot, version: 0 })?;
        bed.maps.addr_keys.insert(any_key(ip), slot, 0)?;
        slot += 1;
    }
    bed.maps.alloc.set(ALLOC_ADDR_SLOTS, slot, 0)?;
    Ok(())
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel.trim(),
    })
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}
