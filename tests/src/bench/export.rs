//! Benchmarks of route export (`anycast-ctl export on`: a host route `ADDR/32 dev lo` in table
//! 201, protocol 201, for each anycast address with a member), on a one-member namespace
//! topology with the dataplane attached natively. Every change is made by the real
//! `anycast-ctl` binary as an operator on the router runs it, process start included:
//!
//! 1. `route_install_p99_ms`, `route_withdraw_p99_ms`: with export on, `member add` then
//!    `member del` of the only member of each of 100 addresses (198.51.100.10..=109), each
//!    address's del at least 1.1 s after its add (past `journal::REUSE_AFTER`; changes back to
//!    back wait a grace period: a detail, `route_change_right_after_the_last_ms`). Each is timed from the spawn of the process to the arrival of
//!    the kernel's RTM_NEWROUTE / RTM_DELROUTE notification for that route in table 201
//!    (proto 201), read from an rtnetlink socket subscribed to RTMGRP_IPV4_ROUTE in the router
//!    namespace before the spawn (no polling). The time to the process's exit is a detail.
//! 2. `routes_65536_install_ms`: 65,536 addresses (65,535 of 198.18.0.0/15 and the trial
//!    address, one member each) installed by `anycast-ctl load` with export off, then `export on` (which reconciles the table),
//!    timed from spawn to exit: each route add is acknowledged by the kernel before the process
//!    exits, so at exit all are in the table, which is then counted (`ip route show table 201
//!    proto 201`) and must hold exactly 65,536. Details: the trials of 1. again (21 of each)
//!    with the 65,535 other routes exported, and `export off` (withdrawing them all). BIRD's
//!    import (`bird_import_ms`): a BIRD in the router namespace with `contrib/bird/anycast.conf`,
//!    polled with `birdc show route count` from the spawn of `export on` until it has all.
//!
//! The topology and the pin directory are guards removed on every exit path.
use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anycast_ctl::net::{self, Event};
use anyhow::{Context, Result, bail, ensure};
use futures::{Stream, StreamExt};
use netlink_packet_route::{
    RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute},
};
use rtnetlink::packet_core::NetlinkPayload;
use serde_json::{Value, json};

use super::{
    control::{self, ms, operator, tempdir},
    membership::Summary,
};
use crate::{Ctl, Topology, bird::Bird};

/// Trials of each of install and withdraw.
const TRIALS: usize = 100;
/// Trials of each with 65,536 routes exported (a detail).
const SCALE_TRIALS: usize = 21;
const TABLE: u32 = 201;
const PROTO: u8 = 201;
const TARGET_P99_MS: f64 = 10.0;
const TARGET_BULK_MS: f64 = 10_000.0;
/// How often, and how long, the bulk phase asks BIRD how many routes it has.
const BIRD_POLL: Duration = Duration::from_millis(10);
const BIRD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a trial waits for its notification before it fails.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The address of the back-to-back trials (outside the bulk addresses' 198.18.0.0/15); the
/// latency trials use it and the next [`TRIALS`] - 1 (198.51.100.10..=109).
const ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// Between an address's two changes in the latency trials: more than `journal::REUSE_AFTER`.
const SPACING: Duration = Duration::from_millis(1_100);
/// Add-and-del pairs of [`back_to_back`].
const BACK_TO_BACK: usize = 10;

/// What [`run`] measured, in ms.
struct Figures {
    install: Summary,
    withdraw: Summary,
    add_exit: Summary,
    del_exit: Summary,
    /// ms to the notification of a change right after the same address's last one.
    back_to_back: Summary,
    bulk: Bulk,
}

/// Runs the measurements; prints a table and returns the figures as JSON.
pub fn run() -> Result<Value> {
    crate::require_root();
    let (topo, ctl) = super::attached(1)?;
    ctl.run(&["export", "on"])?;
    let (install, withdraw, add_exit, del_exit) = latency(&topo, &ctl, &trial_addresses(), false)?;
    let back_to_back = Summary::of(&back_to_back(&topo, &ctl)?);
    ensure!(
        count_routes(&topo)? == 0,
        "routes left in table {TABLE} after the trials"
    );
    let bulk = bulk(&topo, &ctl)?;
    let f = Figures {
        install: Summary::of(&install),
        withdraw: Summary::of(&withdraw),
        add_exit: Summary::of(&add_exit),
        del_exit: Summary::of(&del_exit),
        back_to_back,
        bulk,
    };
    print(&f);
    Ok(report(&f))
}

type Samples = Vec<f64>;

/// The addresses of the latency trials: [`ADDRESS`] and the next [`TRIALS`] - 1.
fn trial_addresses() -> Vec<Ipv4Addr> {
    (0..TRIALS as u32)
        .map(|i| Ipv4Addr::from(u32::from(ADDRESS) + i))
        .collect()
}

/// The install and withdraw trials: ms to the notification and to the process's exit of each
/// `member add` and `member del`, one trial of each per address of `addresses`: all the first
/// changes, then all the second ones, each at least [`SPACING`] after the same address's first
/// (a change within `journal::REUSE_AFTER` of the address's last one waits a grace period
/// first: [`back_to_back`] measures that case). `del_first` when every address already has the
/// member (it is left as it was).
fn latency(
    topo: &Topology,
    ctl: &Ctl,
    addresses: &[Ipv4Addr],
    del_first: bool,
) -> Result<(Samples, Samples, Samples, Samples)> {
    let pin = ctl.pin_dir().to_str().context("UTF-8 pin dir")?;
    let member = topo.members[0].ip.to_string();
    topo.router.in_ns(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            // Subscribed once, before the first spawn: no notification can be missed.
            let mut events = net::events(libc::RTMGRP_IPV4_ROUTE as u32)?;
            let (mut install, mut withdraw) = (Vec::new(), Vec::new());
            let (mut add_exit, mut del_exit) = (Vec::new(), Vec::new());
            let mut first = Vec::with_capacity(addresses.len());
            for pass in 0..2 {
                let adding = (pass == 0) != del_first;
                for (i, address) in addresses.iter().enumerate() {
                    if pass == 1 {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(
                            first[i] + SPACING,
                        ))
                        .await;
                    } else {
                        first.push(Instant::now());
                    }
                    let a = address.to_string();
                    let verb = if adding { "add" } else { "del" };
                    let args = ["member", verb, &a, &member];
                    let (seen, exit) = trial(&mut events, pin, &args, *address, adding).await?;
                    if adding {
                        install.push(seen);
                        add_exit.push(exit);
                    } else {
                        withdraw.push(seen);
                        del_exit.push(exit);
                    }
                }
            }
            Ok((install, withdraw, add_exit, del_exit))
        })
    })
}

/// `member add` then `member del` of [`ADDRESS`]'s only member right after each other,
/// [`BACK_TO_BACK`] times: ms to each notification, every change within
/// `journal::REUSE_AFTER` of the last.
fn back_to_back(topo: &Topology, ctl: &Ctl) -> Result<Samples> {
    let pin = ctl.pin_dir().to_str().context("UTF-8 pin dir")?;
    let member = topo.members[0].ip.to_string();
    let address = ADDRESS.to_string();
    topo.router.in_ns(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut events = net::events(libc::RTMGRP_IPV4_ROUTE as u32)?;
            let mut seen = Vec::new();
            for i in 0..2 * BACK_TO_BACK {
                let adding = i % 2 == 0;
                let verb = if adding { "add" } else { "del" };
                let args = ["member", verb, &address, &member];
                seen.push(trial(&mut events, pin, &args, ADDRESS, adding).await?.0);
            }
            Ok(seen)
        })
    })
}

/// Spawns `anycast-ctl --pin-dir PIN args...` and waits for the notification that the route of
/// `address` was added (`added`) or deleted: the ms from spawn to its arrival, and to exit.
async fn trial(
    events: &mut (impl Stream<Item = Event> + Unpin),
    pin: &str,
    args: &[&str],
    address: Ipv4Addr,
    added: bool,
) -> Result<(f64, f64)> {
    let start = Instant::now();
    let child = Command::new(crate::ctl::binary())
        .arg("--pin-dir")
        .arg(pin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning anycast-ctl")?;
    let seen = tokio::time::timeout(TIMEOUT, async {
        while let Some(event) = events.next().await {
            if is_our_route(&event, address, added) {
                return Some(start.elapsed());
            }
        }
        None
    })
    .await;
    // The route change is acknowledged before the process exits: waiting here blocks briefly.
    let out = child.wait_with_output()?;
    let exit = start.elapsed();
    ensure!(
        out.status.success(),
        "anycast-ctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let seen = match seen {
        Ok(Some(seen)) => seen,
        Ok(None) => bail!("the rtnetlink notification stream ended"),
        Err(_) => bail!(
            "anycast-ctl {}: no route notification within {TIMEOUT:?}",
            args.join(" ")
        ),
    };
    Ok((ms(seen), ms(exit)))
}

/// Whether `event` is the RTM_NEWROUTE (`added`) or RTM_DELROUTE of `address`/32 in our
/// table with our protocol.
fn is_our_route(event: &Event, address: Ipv4Addr, added: bool) -> bool {
    let route = match (&event.payload, added) {
        (NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)), true)
        | (NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)), false) => r,
        _ => return false,
    };
    let mut table = u32::from(route.header.table);
    let mut dst = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
            _ => {}
        }
    }
    table == TABLE
        && u8::from(route.header.protocol) == PROTO
        && route.header.destination_prefix_length == 32
        && dst == Some(address)
}

/// What [`bulk`] measured, in ms.
struct Bulk {
    install: f64,
    /// ms from the spawn of `export on` until BIRD's kernel protocol had learned every route.
    bird_import: f64,
    withdraw: f64,
    at_scale_install: Summary,
    at_scale_withdraw: Summary,
}

/// `export on` with 65,536 addresses installed (ms, spawn to exit, all routes checked in the
/// table), the install and withdraw trials of the trial address with the 65,535 others
/// exported, then `export off` (ms, all checked gone).
fn bulk(topo: &Topology, ctl: &Ctl) -> Result<Bulk> {
    let addresses = control::ADDRESSES;
    operator(topo, ctl, &["export", "off"])?;
    let dir = tempdir()?;
    let file = dir.join("export-memberships.toml");
    // The trial addresses keep their slots after their last member left, so they are among
    // the 65,536: the dataplane holds no more.
    let member = topo.members[0].ip;
    let mut text = control::load_file(addresses - TRIALS as u32, member);
    for address in trial_addresses() {
        text.push_str(&format!(
            "[[member]]\nanycast = \"{address}\"\nmember = \"{member}\"\n"
        ));
    }
    std::fs::write(&file, text)?;
    operator(
        topo,
        ctl,
        &["load", file.to_str().context("UTF-8 temp path")?],
    )?;
    std::fs::remove_dir_all(&dir)?;
    let bird = Bird::start(&topo.router, &bird_config())?;
    wait_bird_up(topo, &bird)?;
    let start = Instant::now();
    let (install, out, bird_import) = std::thread::scope(|s| {
        let learned = s.spawn(|| bird_learned_all(topo, &bird, start, addresses as usize));
        let done = operator(topo, ctl, &["export", "on"]);
        let learned = learned.join().expect("BIRD poller");
        done.map(|(install, out)| (install, out, learned))
    })?;
    let bird_import = bird_import?;
    drop(bird);
    let n = count_routes(topo)?;
    ensure!(
        n == addresses as usize,
        "{n} routes in table {TABLE} after `export on` ({})",
        out.trim()
    );
    let scale_addresses = &trial_addresses()[..SCALE_TRIALS];
    let (at_scale_install, at_scale_withdraw, _, _) = latency(topo, ctl, scale_addresses, true)?;
    let (withdraw, _) = operator(topo, ctl, &["export", "off"])?;
    let n = count_routes(topo)?;
    ensure!(
        n == 0,
        "{n} routes left in table {TABLE} after `export off`"
    );
    Ok(Bulk {
        install,
        bird_import,
        withdraw,
        at_scale_install: Summary::of(&at_scale_install),
        at_scale_withdraw: Summary::of(&at_scale_withdraw),
    })
}

/// The router's BIRD: `contrib/bird/anycast.conf` (the kernel protocol learning table 201)
/// and nothing to tell anyone.
fn bird_config() -> String {
    "router id 203.0.113.1;\nprotocol device {}\ninclude \"anycast.conf\";\n".to_string()
}

/// Waits until BIRD answers on its control socket.
fn wait_bird_up(topo: &Topology, bird: &Bird) -> Result<()> {
    let up = crate::wait_until(TIMEOUT, || {
        bird.birdc(&topo.router, &["show", "status"])
            .contains("Daemon is up and running")
    });
    ensure!(up, "BIRD not up within {TIMEOUT:?}");
    Ok(())
}

/// Polls `birdc show route count` (every [`BIRD_POLL`]) until BIRD holds `n` routes: the ms
/// from `start` to the first reading that shows them all.
fn bird_learned_all(topo: &Topology, bird: &Bird, start: Instant, n: usize) -> Result<f64> {
    let mut last = String::new();
    while start.elapsed() < BIRD_TIMEOUT {
        last = bird.birdc(&topo.router, &["show", "route", "count"]);
        if bird_route_count(&last) == Some(n) {
            return Ok(ms(start.elapsed()));
        }
        std::thread::sleep(BIRD_POLL);
    }
    bail!(
        "BIRD did not learn {n} routes within {BIRD_TIMEOUT:?}: {}",
        last.trim()
    )
}

/// The route count of `birdc show route count` ("65536 of 65536 routes for 65536 networks in
/// table master4").
fn bird_route_count(out: &str) -> Option<usize> {
    let line = out.lines().find(|l| l.contains(" routes for "))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The routes of our protocol in our table, as `ip route` lists them.
fn count_routes(topo: &Topology) -> Result<usize> {
    let table = TABLE.to_string();
    let proto = PROTO.to_string();
    let out = topo
        .router
        .ip(&["-4", "route", "show", "table", &table, "proto", &proto])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

fn print(f: &Figures) {
    println!("\nroute export (anycast-ctl binary; table {TABLE}, proto {PROTO})");
    println!(
        "{:<46} {:>9} {:>9} {:>9}",
        "figure", "p50 ms", "p99 ms", "target"
    );
    for (name, s, target) in [
        (
            "member add -> RTM_NEWROUTE (100 trials)",
            &f.install,
            Some(TARGET_P99_MS),
        ),
        (
            "member del -> RTM_DELROUTE (100 trials)",
            &f.withdraw,
            Some(TARGET_P99_MS),
        ),
        ("member add -> process exit", &f.add_exit, None),
        ("member del -> process exit", &f.del_exit, None),
        (
            "add/del right after the last change (10 each)",
            &f.back_to_back,
            None,
        ),
        (
            "member add -> RTM_NEWROUTE, 65,535 others (21)",
            &f.bulk.at_scale_install,
            None,
        ),
        (
            "member del -> RTM_DELROUTE, 65,535 others (21)",
            &f.bulk.at_scale_withdraw,
            None,
        ),
    ] {
        let target = target.map_or(String::new(), |t| format!("<= {t:.0}"));
        println!("{name:<46} {:>9.2} {:>9.2} {target:>9}", s.p50, s.p99);
    }
    println!(
        "{:<46} {:>19.1} {:>9}",
        "export on, 65,536 addresses (ms)",
        f.bulk.install,
        format!("< {TARGET_BULK_MS:.0}")
    );
    println!(
        "{:<46} {:>19.1}",
        "export on -> BIRD has all 65,536 (ms)", f.bulk.bird_import
    );
    println!(
        "{:<46} {:>19.1}",
        "export off, 65,536 routes (ms)", f.bulk.withdraw
    );
}

/// A trial figure with the other 65,535 routes exported, as its own report entry.
fn at_scale(s: &Summary, what: &str, event: &str) -> Value {
    json!({
        "value": s.p99,
        "p50": s.p50,
        "max": s.max,
        "target_p99_below": TARGET_P99_MS,
        "method": format!(
            "`anycast-ctl {what}` of the trial address's only member until {event}, as \
             route_install_p99_ms, {SCALE_TRIALS} trials, with the other 65,535 addresses of \
             routes_65536_install_ms installed and their routes exported (a sync touches only \
             the changed address's route: no table listing)"
        ),
    })
}

fn report(f: &Figures) -> Value {
    let latency = |s: &Summary, exit: &Summary, scale: &Summary, what: &str| {
        json!({
            "value": s.p99,
            "p50": s.p50,
            "p99": s.p99,
            "min": s.min,
            "max": s.max,
            "target_p99_below": TARGET_P99_MS,
            "method": format!(
                "{what}, {TRIALS} trials, one on each of 198.51.100.10..=109 (A's only \
                 member; each address's del at least 1.1 s after its add, past \
                 journal::REUSE_AFTER), export on (table {TABLE}, proto {PROTO}); the real \
                 anycast-ctl binary spawned in the router namespace, timed from spawn to the \
                 arrival of the kernel's route notification for ADDR/32 in table {TABLE} on an \
                 rtnetlink socket subscribed to RTMGRP_IPV4_ROUTE in that namespace before the \
                 spawn (no polling; process start included); p50 and p99 nearest rank"
            ),
            "process_exit_p50_ms": exit.p50,
            "process_exit_p99_ms": exit.p99,
            "with_65535_other_routes_exported": {
                "p50": scale.p50,
                "p99": scale.p99,
                "max": scale.max,
                "method": format!(
                    "the same, {SCALE_TRIALS} trials, the other 65,535 addresses of \
                     routes_65536_install_ms installed and their routes exported"
                ),
            },
        })
    };
    json!({
        "route_install_p99_ms": latency(
            &f.install,
            &f.add_exit,
            &f.bulk.at_scale_install,
            "`anycast-ctl member add A M` (A's only member) until RTM_NEWROUTE",
        ),
        "route_withdraw_p99_ms": latency(
            &f.withdraw,
            &f.del_exit,
            &f.bulk.at_scale_withdraw,
            "`anycast-ctl member del A M` (A's only member) until RTM_DELROUTE",
        ),
        "route_change_right_after_the_last_ms": {
            "p50": f.back_to_back.p50,
            "p99": f.back_to_back.p99,
            "method": format!(
                "member add and del of 198.51.100.10's only member back to back, {BACK_TO_BACK} \
                 of each, to the route notification as route_install_p99_ms: each change comes \
                 within journal::REUSE_AFTER (1 s) of the address's last flip, so it waits \
                 for an RCU grace period before it writes"
            ),
        },
        "route_install_at_scale_p99_ms": at_scale(&f.bulk.at_scale_install, "member add", "RTM_NEWROUTE"),
        "route_withdraw_at_scale_p99_ms": at_scale(&f.bulk.at_scale_withdraw, "member del", "RTM_DELROUTE"),
        "routes_65536_install_ms": {
            "value": f.bulk.install,
            "target_below": TARGET_BULK_MS,
            "method": format!(
                "`anycast-ctl export on` (reconcile) with {} addresses (65,535 of \
                 198.18.0.0/15 and 198.51.100.10, one member each) installed by `anycast-ctl load` while export was off and none \
                 of their routes in table {TABLE}; one run, the real binary in the router \
                 namespace, wall time from spawn to exit (every route add is acknowledged by \
                 the kernel before exit); then `ip route show table {TABLE} proto {PROTO}` \
                 checked to list exactly {}",
                control::ADDRESSES,
                control::ADDRESSES
            ),
            "bird_import_ms": f.bulk.bird_import,
            "bird_import_method": format!(
                "BIRD 2 in the router namespace with contrib/bird/anycast.conf (kernel protocol \
                 `learn`ing table {TABLE}, scan time 10 s), started before; ms from the spawn of \
                 `export on` to the first `birdc show route count` (polled every {} ms, \
                 in a thread of its own) reading {} routes",
                BIRD_POLL.as_millis(),
                control::ADDRESSES
            ),
            "withdraw_all_ms": f.bulk.withdraw,
            "withdraw_all_method": "`anycast-ctl export off` right after, spawn to exit, all routes checked gone",
        },
    })
}
