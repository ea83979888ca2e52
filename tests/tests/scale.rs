//! The control plane at scale and its bulk path: `load` applies a file all or nothing, member
//! add/del reuse indexes and cost the same at any number of addresses, and the MAC and table
//! size of a membership mean what the operator asked.
use std::{net::Ipv4Addr, path::PathBuf};

use anycast_common::{ALLOC_COUNTERS, ALLOC_HOSTS, programs::ANYCAST as PROGRAM};
use anycast_ctl::{journal::Words, report};
use anycast_tests::{
    ANYCAST, Ctl, Topology, TopologyOptions,
    bench::control,
    frames::{Bed, Ipv4, XDP_REDIRECT, ipv4_frame},
    traffic::{UDP_PORT, udp_round},
};
use serde_json::Value;

/// The topology with `members` hosts and the dataplane attached (skb mode: no XDP traps).
fn lab(members: usize) -> (Topology, Ctl) {
    let topo = Topology::new(TopologyOptions {
        members,
        ..Default::default()
    })
    .expect("topology");
    let ctl = Ctl::new(&topo.router);
    let ifaces = topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    ctl.attach(&ifaces, "skb").expect("attach");
    (topo, ctl)
}

/// A file in a fresh temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("anycast-load-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn entry(anycast: Ipv4Addr, member: Ipv4Addr, extra: &str) -> String {
    format!("[[member]]\nanycast = \"{anycast}\"\nmember = \"{member}\"\n{extra}\n")
}

/// `show --json` without the fields that change with time alone.
fn state(ctl: &Ctl) -> Value {
    let mut show = ctl.json(&["show"]);
    show["addresses"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .for_each(timeless);
    show
}

/// An address of `show --json` or `stats --json` without the fields that change with time
/// alone.
fn timeless(address: &mut Value) {
    for m in address["members"].as_array_mut().unwrap() {
        let m = m.as_object_mut().unwrap();
        m.remove("age_ms");
        m.remove("expires_in_ms");
    }
}

/// Stdout of a successful run whose stderr (a pipe) holds no progress line: progress is for
/// terminals only.
fn quiet_when_piped(ctl: &Ctl, args: &[&str]) -> String {
    let outcome = ctl.outcome(args);
    let progress = ["\r", "memberships:", "addresses:"];
    assert!(
        !progress.iter().any(|p| outcome.stderr.contains(p)),
        "`{}` wrote progress to a pipe: {:?}",
        outcome.line,
        outcome.stderr
    );
    outcome.ok().unwrap_or_else(|e| panic!("{e:#}"))
}

const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 60);
const THIRD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 61);

#[test]
fn load_applies_every_membership_and_traffic_reaches_them() {
    let (topo, ctl) = lab(3);
    let [m1, m2, m3] = [0, 1, 2].map(|i| topo.members[i].ip);
    let file = TempFile::new(
        &[
            entry(ANYCAST, m1, ""),
            entry(ANYCAST, m2, "preference = 100\nweight = 300"),
            entry(ANYCAST, m3, "preference = 200"),
            entry(
                OTHER,
                m3,
                &format!(
                    "dev = \"{}\"\ntrack = \"tcp\"",
                    topo.members[2].router_iface
                ),
            ),
        ]
        .concat(),
    );
    let out = quiet_when_piped(&ctl, &["load", file.arg()]);
    assert!(
        out.contains("loaded 4 memberships (4 added, 0 updated)"),
        "{out}"
    );
    quiet_when_piped(&ctl, &["show"]);
    let show = ctl.show();
    let listed: Vec<(std::net::IpAddr, u16, u16)> = show
        .members_of(ANYCAST)
        .iter()
        .map(|m| (m.address, m.preference, m.weight))
        .collect();
    let want = [(m1, 100, 100), (m2, 100, 300), (m3, 200, 100)];
    assert_eq!(listed, want.map(|(m, p, w)| (m.into(), p, w)));
    let other = show.members_of(OTHER);
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].interface, topo.members[2].router_iface);
    let shown = ctl.json(&["show"]);
    let track = |address: std::net::Ipv4Addr| {
        let all = shown["addresses"].as_array().unwrap();
        let a = all.iter().find(|a| a["address"] == address.to_string());
        a.unwrap()["track"].as_str().unwrap().to_string()
    };
    assert_eq!((track(ANYCAST), track(OTHER)), ("all".into(), "tcp".into()));

    // The standby m3 gets nothing; m1 and m2 share the new flows.
    let members = topo.member_namespaces();
    let udp = udp_round(&topo.client, &members, ANYCAST, UDP_PORT, 42000..42100, 3).unwrap();
    udp.assert_each_sent_once();
    let counts = udp.counts();
    assert!(
        counts[0] > 0 && counts[1] > counts[0] && counts[2] == 0,
        "{counts:?}"
    );

    // Loading the same file again changes nothing but refreshes.
    let out = ctl.run(&["load", file.arg()]).unwrap();
    assert!(out.contains("(0 added, 4 updated)"), "{out}");
}

/// The entry of `address` in a `show --json` or `stats --json`, without the fields that
/// change with time alone.
fn entry_of(report: &Value, address: Ipv4Addr) -> Value {
    let all = report["addresses"].as_array().unwrap();
    let mut entry = (all.iter())
        .find(|a| a["address"] == address.to_string())
        .unwrap_or_else(|| panic!("{address} is not in {report}"))
        .clone();
    timeless(&mut entry);
    entry
}

#[test]
fn reports_of_many_addresses_read_in_bulk_say_what_lookups_say() {
    let (topo, ctl) = lab(3);
    let [m1, m2, m3] = [0, 1, 2].map(|i| topo.members[i].ip);
    let file = TempFile::new(
        &[
            entry(ANYCAST, m1, ""),
            entry(ANYCAST, m2, "weight = 300"),
            entry(ANYCAST, m3, "preference = 200"),
            entry(OTHER, m3, ""),
        ]
        .concat(),
    );
    ctl.run(&["load", file.arg()]).unwrap();
    let members = topo.member_namespaces();
    let udp = udp_round(&topo.client, &members, ANYCAST, UDP_PORT, 42000..42060, 2).unwrap();
    udp.assert_each_sent_once();
    // Two addresses: `show` and `stats` look every figure up (one batch read: the keys).
    let (show, stats) = (ctl.json(&["show"]), ctl.json(&["stats"]));
    assert_eq!(batch_reads(&topo, &ctl, &["stats"]), 1);

    // Enough more addresses that both read their counters and member records in bulk.
    let more: String = (0..report::BULK_FROM as u32)
        .map(|i| entry(Ipv4Addr::from(0xc612_0100 + i), m1, ""))
        .collect();
    ctl.run(&["load", TempFile::new(&more).arg()]).unwrap();
    let (bulk_show, bulk_stats) = (ctl.json(&["show"]), ctl.json(&["stats"]));
    let addresses = bulk_stats["addresses"].as_array().unwrap().len();
    assert_eq!(addresses, report::BULK_FROM + 2);
    // The keys, then the address and member counters (`stats`), or the member records
    // (`show`).
    assert_eq!(batch_reads(&topo, &ctl, &["stats"]), 3);
    assert_eq!(batch_reads(&topo, &ctl, &["show"]), 3);
    for address in [ANYCAST, OTHER] {
        assert_eq!(entry_of(&bulk_show, address), entry_of(&show, address));
        assert_eq!(entry_of(&bulk_stats, address), entry_of(&stats, address));
    }
    let forwarded = |a: Ipv4Addr| entry_of(&bulk_stats, a)["forwarded_packets"].as_u64();
    assert_eq!((forwarded(ANYCAST), forwarded(OTHER)), (Some(120), Some(0)));
    let shares: Vec<f64> = (entry_of(&bulk_show, ANYCAST)["members"].as_array().unwrap())
        .iter()
        .map(|m| m["share"].as_f64().unwrap())
        .collect();
    assert!(
        shares[1] > 2.5 * shares[0]
            && shares[2] == 0.0
            && (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
        "{shares:?}"
    );
    // The per-address `stats` (lookups) agrees with the bulk read of everything.
    let one = ctl.json(&["stats", &ANYCAST.to_string()]);
    assert_eq!(entry_of(&one, ANYCAST), entry_of(&bulk_stats, ANYCAST));
}

#[test]
fn load_and_show_show_progress_on_a_terminal() {
    let (topo, ctl) = lab(2);
    let [m1, m2] = [0, 1].map(|i| topo.members[i].ip);
    let file = TempFile::new(&[entry(ANYCAST, m1, ""), entry(OTHER, m2, "")].concat());
    let load = ctl.on_terminal(&["load", file.arg()]);
    assert!(load.status.success(), "{}: {}", load.line, load.stdout);
    assert!(
        load.stdout.contains("\rmemberships: 0/2 (0%)"),
        "{:?}",
        load.stdout
    );
    assert!(
        load.stdout.contains("loaded 2 memberships"),
        "{:?}",
        load.stdout
    );
    let show = ctl.on_terminal(&["show"]);
    assert!(
        show.stdout.contains("\raddresses: 0/2 (0%)"),
        "{:?}",
        show.stdout
    );
}

#[test]
fn load_with_one_bad_entry_changes_nothing() {
    let (topo, ctl) = lab(2);
    let [m1, m2] = [0, 1].map(|i| topo.members[i].ip);
    let (a, b) = (ANYCAST.to_string(), m1.to_string());
    ctl.run(&["member", "add", &a, &b, "--mac", "02:00:00:00:00:aa"])
        .unwrap();
    ctl.member_add(OTHER, m2).unwrap();
    let before = state(&ctl);
    let good = [entry(THIRD, m2, ""), entry(ANYCAST, m2, "weight = 5")].concat();
    for (bad, needle) in [
        // Refused by the checks before anything is written.
        (entry(THIRD, m1, "weight = -1"), "line 12"),
        (
            entry(THIRD, Ipv4Addr::new(192, 0, 2, 200), ""),
            "192.0.2.200",
        ),
        (entry(THIRD, m1, "mac = \"01:00:5e:00:00:01\""), "multicast"),
        // Refused while applying, after the two good entries were written: undone.
        (
            entry(THIRD, m1, "mac = \"02:00:00:00:00:bb\""),
            "198.51.100.53",
        ),
    ] {
        let file = TempFile::new(&format!("{good}{bad}"));
        let err = ctl.run_fail(&["load", file.arg()]);
        assert!(
            err.contains(needle) && err.trim().lines().count() == 1,
            "{err}"
        );
        assert_eq!(state(&ctl), before, "after the failed load of:\n{bad}");
    }
    // The good entries alone apply.
    let file = TempFile::new(&good);
    ctl.run(&["load", file.arg()]).unwrap();
    assert_eq!(ctl.show().members_of(THIRD).len(), 1);
}

/// Member MAC of a forwarded frame to `vip`, or `None`.
fn forwarded_to(bed: &Bed, vip: Ipv4Addr, sport: u16) -> Option<[u8; 6]> {
    let client = Ipv4Addr::new(192, 0, 2, 10);
    let frame = ipv4_frame(
        bed.ports[0].mac,
        [0x02, 0xc0, 0, 0, 0, 0x10],
        &Ipv4::udp(client, vip, sport, 53, b"x"),
    );
    let (verdict, out) = bed.run(PROGRAM, 0, &frame).unwrap();
    (verdict == XDP_REDIRECT).then(|| out[0..6].try_into().unwrap())
}

#[test]
fn many_add_del_cycles_reuse_indexes_and_zero_reused_counters() {
    let mut bed = Bed::new().expect("TEST_RUN bed");
    let members: Vec<(Ipv4Addr, [u8; 6])> = (0..4u8)
        .map(|i| {
            (
                Ipv4Addr::new(203, 0, 113, 4 * i + 2),
                [0x02, 0x10, 0, 0, 0, i],
            )
        })
        .collect();
    for round in 0..50u16 {
        let vip = control::address(u32::from(round % 10));
        for &(ip, mac) in &members {
            bed.add_member(vip, ip, 1, mac).unwrap();
        }
        // Fresh counters: every member of the set starts at zero, whatever the slot had.
        let stats = report::stats(&bed.maps, Some(vip.into())).unwrap();
        assert!(
            stats.addresses[0].members.iter().all(|m| m.packets == 0),
            "{stats:?}"
        );
        for sport in 0..20 {
            let mac = forwarded_to(&bed, vip, 30000 + sport).expect("forwarded");
            assert!(members.iter().any(|(_, m)| *m == mac));
        }
        let stats = report::stats(&bed.maps, Some(vip.into())).unwrap();
        let sent: u64 = stats.addresses[0].members.iter().map(|m| m.packets).sum();
        assert_eq!(sent, 20);
        for &(ip, _) in &members[1..] {
            bed.del_member(vip, ip).unwrap();
        }
        // One member left: it takes every new flow, without a table.
        assert_eq!(forwarded_to(&bed, vip, 1), Some(members[0].1));
        bed.del_member(vip, members[0].0).unwrap();
        assert_eq!(forwarded_to(&bed, vip, 1), None);
    }
    // 200 memberships came and went; at most 4 were live at once, so 4 counters and 4 hosts
    // were ever handed out, and the hosts are gone from HOST_IDS.
    assert_eq!(bed.maps.word(Words::Alloc, ALLOC_COUNTERS).unwrap(), 4);
    assert_eq!(bed.maps.word(Words::Alloc, ALLOC_HOSTS).unwrap(), 4);
    assert_eq!(bed.maps.host_ids.keys().count(), 0);
}

/// bpf(2) calls made by `anycast-ctl args...` in the router namespace (counted by strace).
fn bpf_calls(topo: &Topology, ctl: &Ctl, args: &[&str]) -> usize {
    bpf_trace(topo, ctl, args)
        .lines()
        .filter(|l| l.contains("bpf("))
        .count()
}

/// `BPF_MAP_LOOKUP_BATCH` calls made by `anycast-ctl args...` in the router namespace.
fn batch_reads(topo: &Topology, ctl: &Ctl, args: &[&str]) -> usize {
    let trace = bpf_trace(topo, ctl, args);
    trace
        .lines()
        .filter(|l| l.contains("BPF_MAP_LOOKUP_BATCH"))
        .count()
}

/// strace's record of the bpf(2) calls of `anycast-ctl args...` in the router namespace.
fn bpf_trace(topo: &Topology, ctl: &Ctl, args: &[&str]) -> String {
    let trace = TempFile::new("");
    let bin = anycast_tests::ctl::binary().to_str().unwrap();
    let mut full = vec![
        "-f",
        "-qq",
        "-e",
        "trace=bpf",
        "-o",
        trace.arg(),
        bin,
        "--pin-dir",
        ctl.pin_dir().to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    let out = topo
        .router
        .in_ns(|| std::process::Command::new("strace").args(&full).output());
    let out = out.expect("strace (Debian package strace)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&trace.0).unwrap()
}

/// Add and del of a member, and their bpf calls: (add, del).
fn add_del_calls(topo: &Topology, ctl: &Ctl, vip: Ipv4Addr, member: Ipv4Addr) -> (usize, usize) {
    let (vip, member) = (vip.to_string(), member.to_string());
    let add = bpf_calls(topo, ctl, &["member", "add", &vip, &member]);
    let del = bpf_calls(topo, ctl, &["member", "del", &vip, &member]);
    (add, del)
}

#[test]
fn add_and_del_cost_does_not_grow_with_the_number_of_addresses() {
    let (topo, ctl) = lab(2);
    let [m1, m2] = [0, 1].map(|i| topo.members[i].ip);
    let file = TempFile::new(&control::load_file(10, m1));
    ctl.run(&["load", file.arg()]).unwrap();
    let vip = control::address(3);
    let few = add_del_calls(&topo, &ctl, vip, m2);
    let file = TempFile::new(&control::load_file(5_000, m1));
    ctl.run(&["load", file.arg()]).unwrap();
    let many = add_del_calls(&topo, &ctl, vip, m2);
    // The walks this replaced made about five calls per address (25,000 here); a probe run
    // in ADDRS may be a little longer with more addresses.
    assert!(
        many.0 <= few.0 + 16 && many.1 <= few.1 + 16,
        "bpf calls at 10 addresses {few:?}, at 5,000 {many:?}"
    );
}

#[test]
fn table_size_given_to_an_existing_member_is_applied() {
    let (topo, ctl) = lab(2);
    let [m1, m2] = [0, 1].map(|i| topo.members[i].ip.to_string());
    let a = ANYCAST.to_string();
    ctl.run(&["member", "add", &a, &m1]).unwrap();
    ctl.run(&["member", "add", &a, &m2]).unwrap();
    let size = |ctl: &Ctl| ctl.json(&["show"])["addresses"][0]["table_size"].clone();
    assert_eq!(size(&ctl), 16381);
    let out = ctl
        .run(&["member", "add", &a, &m1, "--table-size", "6421"])
        .unwrap();
    assert!(out.starts_with("updated"), "{out}");
    assert_eq!(size(&ctl), 6421);
}

#[test]
fn a_static_mac_belongs_to_the_host_and_is_printed_as_stored() {
    let (topo, ctl) = lab(1);
    let m1 = topo.members[0].ip.to_string();
    let (a, other) = (ANYCAST.to_string(), OTHER.to_string());
    let x = "02:00:00:00:00:aa";
    ctl.run(&["member", "add", &a, &m1, "--mac", x]).unwrap();
    // A later add without --mac keeps the host's static MAC, and says so.
    let out = ctl.run(&["member", "add", &other, &m1]).unwrap();
    assert!(out.contains(&format!("mac {x} static")), "{out}");
    // Another MAC on one address would change it for the other: refused, naming it.
    let err = ctl.run_fail(&["member", "add", &other, &m1, "--mac", "02:00:00:00:00:bb"]);
    assert!(err.contains(&a) && err.trim().lines().count() == 1, "{err}");
    let macs: Vec<String> = ctl
        .show()
        .addresses
        .iter()
        .flat_map(|a| a.members.iter().map(|m| m.mac.clone().unwrap_or_default()))
        .collect();
    assert_eq!(macs, vec![x.to_string(), x.to_string()]);
    // Once the host serves only one address, its MAC can change there.
    ctl.run(&["member", "del", &a, &m1]).unwrap();
    let out = ctl
        .run(&["member", "add", &other, &m1, "--mac", "02:00:00:00:00:bb"])
        .unwrap();
    assert!(out.contains("mac 02:00:00:00:00:bb static"), "{out}");
}

#[test]
fn broadcast_multicast_and_zero_macs_are_refused() {
    let (topo, ctl) = lab(1);
    let m1 = topo.members[0].ip.to_string();
    let a = ANYCAST.to_string();
    for (mac, needle) in [
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
        ("01:00:5e:00:00:01", "multicast"),
        ("00:00:00:00:00:00", "all-zero"),
    ] {
        let err = ctl.run_fail(&["member", "add", &a, &m1, "--mac", mac]);
        assert!(err.contains(needle), "{mac}: {err}");
    }
    assert!(ctl.show().addresses.is_empty());
}
