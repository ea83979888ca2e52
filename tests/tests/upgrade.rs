//! `anycast-ctl upgrade` on a real topology: the program is replaced in place under load with no
//! datagram lost and no connection broken, on the same maps; another layout version and a swap
//! failing midway change nothing; an agent restarted afterwards adopts its state.
//!
//! The test-only knobs of the debug build (see README, "Upgrading"): `ANYCAST_TEST_LAYOUT_VERSION`
//! makes the binary act as one built with another layout version, `ANYCAST_TEST_FAIL_SWAP=IFACE`
//! makes the kernel refuse the swap on that interface.
use std::{collections::BTreeSet, time::Duration};

use anycast_common::{LAYOUT_VERSION, names};
use anycast_tests::{
    ANYCAST, Ctl, Topology,
    bench::upgrade::{lab, program_ids_of, under_load},
    cmd,
    daemon::Daemon,
    lab::AgentLab,
    traffic::{UDP_PORT, udp_round},
    wait_until,
};
use serde_json::Value;

/// The maps the program references whose contents must survive: counters, memberships, the
/// connection table and the fragments.
const KEPT: [&str; 12] = [
    names::ADDRS,
    names::MEMBER_SETS,
    names::SLOT_STATE,
    names::HOSTS,
    names::IFACES,
    names::TX_PORTS,
    names::ADDR_STATS,
    names::MEMBER_STATS,
    names::STATS,
    names::FRAGS,
    names::TABLES,
    names::FLOWS,
];

fn bpftool(args: &[&str]) -> Value {
    let out = cmd::run("bpftool", &[&["--json"], args].concat()).expect("bpftool");
    serde_json::from_str(&out).expect("bpftool JSON")
}

/// Every interface's program id, asserting they are all one program.
fn one_program(ctl: &Ctl) -> u32 {
    let ids: BTreeSet<u32> = program_ids_of(ctl).into_values().collect();
    assert_eq!(ids.len(), 1, "interfaces on different programs: {ids:?}");
    ids.into_iter().next().unwrap()
}

/// The kernel's own view: the XDP program id on each router interface.
fn kernel_ids(topo: &Topology) -> Vec<Vec<u64>> {
    (topo.router_ifaces().iter())
        .map(|i| topo.router.xdp_prog_ids(i).expect("ip link"))
        .collect()
}

/// Datagrams to the members arrive, each once.
fn traffic_flows(topo: &Topology, ports: std::ops::Range<u16>) {
    let members = topo.member_namespaces();
    udp_round(&topo.client, &members, ANYCAST, UDP_PORT, ports, 2)
        .unwrap()
        .assert_each_sent_once();
}

#[test]
fn upgrade_under_load_loses_no_datagram_breaks_no_connection_and_keeps_the_maps() {
    let (topo, ctl) = lab().unwrap();
    let o = under_load(&topo, &ctl, 2).unwrap();

    o.udp.assert_each_sent_once();
    o.udp.assert_flows_stick();
    assert_eq!(o.lost, 0);
    assert!(
        o.udp.sent.len() > 500,
        "only {} datagrams",
        o.udp.sent.len()
    );
    assert_eq!(o.broken, 0, "connections broke during the upgrade");
    assert!(o.tcp_rounds >= 2, "only {} TCP rounds", o.tcp_rounds);

    // Each upgrade put one new program on every interface.
    for pair in o.program_ids.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>()
        );
        let old: BTreeSet<_> = before.values().collect();
        let new: BTreeSet<_> = after.values().collect();
        assert_eq!((old.len(), new.len()), (1, 1), "{before:?} -> {after:?}");
        assert!(
            old.is_disjoint(&new),
            "no new program: {before:?} -> {after:?}"
        );
    }
    let program = one_program(&ctl);
    assert_eq!(
        kernel_ids(&topo),
        vec![vec![u64::from(program)]; topo.router_ifaces().len()],
        "the kernel runs another program"
    );
    assert!(ctl.status().interfaces.iter().all(|i| i.mode == "native"));

    // The new program runs on the very maps that are pinned.
    let used: BTreeSet<u64> = (bpftool(&["prog", "show", "id", &program.to_string()])["map_ids"]
        .as_array()
        .expect("map_ids"))
    .iter()
    .filter_map(Value::as_u64)
    .collect();
    for name in KEPT {
        let pin = ctl.pin_dir().join(name);
        let id = bpftool(&["map", "show", "pinned", pin.to_str().unwrap()])["id"]
            .as_u64()
            .expect("map id");
        assert!(
            used.contains(&id),
            "the new program does not use the pinned {name}"
        );
    }

    // Counters went on counting: nothing went backwards, and every datagram a member got is
    // in its counter (a reset at the upgrade would have lost those before it).
    let (before, after) = (
        o.stats_before.address(ANYCAST),
        o.stats_after.address(ANYCAST),
    );
    assert!(after.rx_packets >= before.rx_packets + o.udp.sent.len() as u64 / 2);
    assert!(after.forwarded_packets >= before.forwarded_packets);
    for (member, got) in topo.members.iter().zip(&o.udp.received) {
        assert!(after.member_packets(member.ip) >= before.member_packets(member.ip));
        assert!(
            after.member_packets(member.ip) >= got.len() as u64,
            "{}: counter {} < {} datagrams received",
            member.ip,
            after.member_packets(member.ip),
            got.len()
        );
    }
    assert_eq!(ctl.show().members_of(ANYCAST).len(), 4);
    traffic_flows(&topo, 52000..52100);
}

#[test]
fn upgrade_to_another_layout_version_is_refused_and_changes_nothing() {
    let (topo, ctl) = lab().unwrap();
    let (ids, kernel, show) = (program_ids_of(&ctl), kernel_ids(&topo), ctl.show());
    let other = LAYOUT_VERSION + 1;
    let knob = format!("ANYCAST_TEST_LAYOUT_VERSION={other}");
    let pin = ctl.pin_dir().to_str().unwrap().to_string();
    let out = ctl.outcome_env(&[&knob], &["--pin-dir", &pin, "upgrade"]);
    assert!(!out.status.success(), "upgrade to layout {other} succeeded");
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("layout version {LAYOUT_VERSION}"))
            && err.contains(&format!("uses {other}")),
        "{err}"
    );
    assert_eq!(program_ids_of(&ctl), ids);
    assert_eq!(kernel_ids(&topo), kernel);
    assert_eq!(ctl.show(), show);
    traffic_flows(&topo, 52200..52300);

    // The migration the README gives: detach everything, attach with the new binary; the
    // memberships are what is lost.
    let ifaces = topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    let with_knob = |args: &[&str]| {
        let out = ctl.outcome_env(&[&knob], &[&["--pin-dir", &pin][..], args].concat());
        out.ok().unwrap()
    };
    with_knob(&[&["detach"][..], &ifaces].concat());
    with_knob(&[&["attach"][..], &ifaces].concat());
    let show: Value = serde_json::from_str(&with_knob(&["show", "--json"])).unwrap();
    assert_eq!(
        show["addresses"],
        serde_json::json!([]),
        "memberships survived a detach"
    );
    let status: Value = serde_json::from_str(&with_knob(&["status", "--json"])).unwrap();
    assert_eq!(
        status["interfaces"].as_array().map(Vec::len),
        Some(topo.router_ifaces().len())
    );
}

#[test]
fn a_swap_failing_midway_leaves_every_interface_on_the_old_program() {
    let (topo, ctl) = lab().unwrap();
    let (ids, kernel) = (program_ids_of(&ctl), kernel_ids(&topo));
    // The third interface in the order upgrade swaps (by ifindex): two are done before it.
    let third = ctl.status().interfaces[2].name.clone();
    let knob = format!("ANYCAST_TEST_FAIL_SWAP={third}");
    let pin = ctl.pin_dir().to_str().unwrap().to_string();
    let out = ctl.outcome_env(&[&knob], &["--pin-dir", &pin, "upgrade"]);
    assert!(!out.status.success(), "the injected failure did not fail");
    let err = out.stderr.trim();
    assert!(
        err.contains(&third) && err.contains("every interface is on its old program"),
        "{err}"
    );
    assert_eq!(program_ids_of(&ctl), ids);
    assert_eq!(kernel_ids(&topo), kernel);
    traffic_flows(&topo, 52400..52500);

    // Without the fault the same upgrade goes through.
    let old = one_program(&ctl);
    ctl.run(&["upgrade"]).unwrap();
    assert_ne!(one_program(&ctl), old);
    traffic_flows(&topo, 52500..52600);
}

#[test]
fn an_agent_restarted_after_an_upgrade_adopts_the_learned_members() {
    let mut lab = AgentLab::new();
    let _a: Vec<_> = (0..3).map(|i| lab.announce(i, &[])).collect();
    let all = lab.topo.member_ips();
    lab.wait_learned(&all, Duration::from_secs(3));
    let old = one_program(&lab.ctl);

    // Upgrade under the running agent: it keeps learning on the same maps.
    lab.ctl.run(&["upgrade"]).unwrap();
    assert_ne!(one_program(&lab.ctl), old);
    assert_eq!(
        lab.learned(),
        all,
        "agent log:\n{}\nstatus: {:?}",
        lab.agent.as_ref().map(Daemon::log).unwrap_or_default(),
        lab.ctl.run(&["status", "--json"])
    );
    let accepted = lab.ctl.status().agent.accepted;
    assert!(wait_until(Duration::from_secs(2), || {
        lab.ctl.status().agent.accepted > accepted
    }));

    // The agent restarted (as after installing the new binary) adopts members and counters.
    let upgraded = one_program(&lab.ctl);
    lab.agent.take().unwrap().kill();
    lab.start_agent();
    assert_eq!(
        one_program(&lab.ctl),
        upgraded,
        "the agent's attach replaced the program"
    );
    assert_eq!(lab.learned(), all);
    let accepted = lab.ctl.status().agent.accepted;
    assert!(wait_until(Duration::from_secs(2), || {
        lab.ctl.status().agent.accepted > accepted
    }));
    traffic_flows(&lab.topo, 52600..52700);
}
