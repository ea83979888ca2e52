//! Upgrade under load, shared by the test (`tests/tests/upgrade.rs`, which asserts zeros) and the
//! bench (report section `upgrade`, keys `upgrade_lost_datagrams` and
//! `upgrade_broken_connections`, target 0 each).
//!
//! The scenario: the test topology with four members, the dataplane attached natively, members
//! 1-3 added. 40 long-lived TCP connections and a steady UDP stream (64 source ports, one
//! datagram every 300 µs) run from the client. Member 4 is then added, so the Maglev table
//! changes and the established flows stay on their members only through the connection table
//! (`FLOWS`): a program that came up with an empty table would move about a quarter of them.
//! While one thread keeps exchanging a message on every connection, `anycast-ctl upgrade`
//! runs `upgrades` times, 100 ms apart. Then the stream stops and every datagram is looked
//! for at the members.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::{
    ANYCAST, Ctl, Topology,
    ctl::Stats,
    traffic::{
        DELIVERY_TIMEOUT, SpreadStream, TcpConns, TcpEcho, UDP_PORT, UdpRun, UdpSink,
        wait_for_datagrams,
    },
};

const TCP_PORT: u16 = 7310;
const CONNECTIONS: usize = 40;
const STREAM_PORTS: std::ops::Range<u16> = 51000..51064;
const STREAM_GAP: Duration = Duration::from_micros(300);
/// Bound on the TCP rounds while upgrading.
const MAX_ROUNDS: usize = 1000;

/// What happened during the upgrades.
pub struct Outcome {
    pub udp: UdpRun,
    /// Sent datagrams that no member received.
    pub lost: usize,
    /// Connections that failed a round (once failed, counted once).
    pub broken: usize,
    /// TCP rounds run while upgrading (every connection, one message each).
    pub tcp_rounds: usize,
    /// Program ids per interface before, then after each upgrade (`status --json`).
    pub program_ids: Vec<BTreeMap<String, u32>>,
    /// Wall time of each `anycast-ctl upgrade`, ms.
    pub upgrade_ms: Vec<f64>,
    pub stats_before: Stats,
    pub stats_after: Stats,
}

/// The attached lab of the scenario: four members, three of them added.
pub fn lab() -> Result<(Topology, Ctl)> {
    let (topo, ctl) = super::attached(4)?;
    for m in &topo.members[..3] {
        ctl.member_add(ANYCAST, m.ip)?;
    }
    Ok((topo, ctl))
}

/// Runs the scenario on [`lab`] (see the module doc).
pub fn under_load(topo: &Topology, ctl: &Ctl, upgrades: usize) -> Result<Outcome> {
    let members = topo.member_namespaces();
    let sinks = (members.iter())
        .map(|ns| UdpSink::start(ns, ANYCAST, UDP_PORT))
        .collect::<Result<Vec<_>>>()?;
    let _echoes = (members.iter())
        .map(|ns| TcpEcho::start(ns, ANYCAST, TCP_PORT))
        .collect::<Result<Vec<_>>>()?;
    let mut conns = TcpConns::open(&topo.client, ANYCAST, TCP_PORT, CONNECTIONS)?;
    ensure!(
        conns.round(0).iter().all(|ok| *ok),
        "a connection failed before the upgrade"
    );
    let stream = SpreadStream::start(&topo.client, ANYCAST, UDP_PORT, STREAM_PORTS, STREAM_GAP)?;
    std::thread::sleep(Duration::from_millis(200));
    ctl.member_add(ANYCAST, topo.members[3].ip)?;
    std::thread::sleep(Duration::from_millis(200));

    let stats_before = ctl.stats();
    let mut program_ids = vec![program_ids_of(ctl)];
    let mut upgrade_ms = Vec::new();
    let stop = AtomicBool::new(false);
    let (broken, tcp_rounds) = std::thread::scope(|s| -> Result<(usize, usize)> {
        let talker = s.spawn(|| talk(&mut conns, &stop));
        let upgraded = (0..upgrades).try_for_each(|_| {
            let start = Instant::now();
            ctl.run(&["upgrade"])?;
            upgrade_ms.push(start.elapsed().as_secs_f64() * 1e3);
            program_ids.push(program_ids_of(ctl));
            std::thread::sleep(Duration::from_millis(100));
            Ok::<_, anyhow::Error>(())
        });
        stop.store(true, Ordering::Relaxed);
        let talked = talker.join().expect("TCP talker panicked");
        upgraded?;
        Ok(talked)
    })?;
    let sent = stream.stop()?;
    wait_for_datagrams(&sinks, sent.len(), DELIVERY_TIMEOUT);
    let udp = UdpRun {
        sent,
        received: sinks.into_iter().map(UdpSink::stop).collect(),
    };
    let got: BTreeSet<Option<u64>> = udp.received.iter().flatten().map(|d| d.seq).collect();
    let lost = udp
        .sent
        .iter()
        .filter(|s| !got.contains(&Some(s.seq)))
        .count();
    Ok(Outcome {
        udp,
        lost,
        broken,
        tcp_rounds,
        program_ids,
        upgrade_ms,
        stats_before,
        stats_after: ctl.stats(),
    })
}

/// Rounds on every connection until `stop`; (connections that failed, rounds run).
fn talk(conns: &mut TcpConns, stop: &AtomicBool) -> (usize, usize) {
    let mut failed = [false; CONNECTIONS];
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) && rounds < MAX_ROUNDS {
        rounds += 1;
        for (f, ok) in failed.iter_mut().zip(conns.round(rounds)) {
            *f |= !ok;
        }
    }
    (failed.iter().filter(|f| **f).count(), rounds)
}

/// Interface name -> program id, from `status --json`.
pub fn program_ids_of(ctl: &Ctl) -> BTreeMap<String, u32> {
    (ctl.status().interfaces.into_iter())
        .map(|i| (i.name, i.program_id))
        .collect()
}

/// The bench section: the scenario with 3 upgrades.
pub fn run() -> Result<Value> {
    crate::require_root();
    let (topo, ctl) = lab()?;
    let o = under_load(&topo, &ctl, 3)?;
    let ids: BTreeSet<u32> = o
        .program_ids
        .last()
        .context("ids")?
        .values()
        .copied()
        .collect();
    ensure!(
        ids.len() == 1,
        "interfaces on different programs after the upgrade: {ids:?}"
    );
    let member_ips: Vec<Ipv4Addr> = topo.member_ips();
    println!(
        "upgrade under load: {} datagrams sent, {} lost; {CONNECTIONS} connections, {} broken \
         ({} rounds); upgrade took {:?} ms",
        o.udp.sent.len(),
        o.lost,
        o.broken,
        o.tcp_rounds,
        o.upgrade_ms.iter().map(|ms| ms.round()).collect::<Vec<_>>()
    );
    Ok(json!({
        "method": format!(
            "4-member netns topology, native XDP; {CONNECTIONS} long-lived TCP connections \
             (one message each per round, rounds back to back) and a UDP stream (64 ports, one \
             datagram per 300 us) through the router; a 4th member added first so flows stay \
             only through the connection table; `anycast-ctl upgrade` run 3 times, 100 ms apart; \
             every datagram looked for at the members"),
        "upgrade_lost_datagrams": o.lost,
        "upgrade_broken_connections": o.broken,
        "detail": {
            "datagrams_sent": o.udp.sent.len(),
            "tcp_rounds": o.tcp_rounds,
            "upgrade_ms": o.upgrade_ms,
            "members": member_ips,
        },
        "targets": {"upgrade_lost_datagrams": 0, "upgrade_broken_connections": 0},
    }))
}
