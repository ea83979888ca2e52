//! Benchmarks of failover (`bench failover`, and part of `cargo xtask bench`):
//!
//! 1. `maglev_build_ms`: [`maglev::bench_build_ms`], 64 members at M = 65,537 (release build), on
//!    one CPU under SCHED_FIFO.
//! 2. `table_swap_ms`: a rebuilt table made live. In-process on a TEST_RUN bed with 64 members
//!    at M = 65,537: `members::set_weight` (the same call as `anycast-ctl member set`) changes
//!    one member's weight, which rebuilds the table; the clock runs from the call until another
//!    thread sees the address's `ADDRS` version flip (the new set and table live together).
//!    The rebuild is inside the figure; the grace-period wait after the flip is not (nothing
//!    waits for it: it only readies the spare for the next change).
//! 3. `link_down_p99_ms`: the real agent daemon, a member joined with a 30 s hold by crafted
//!    signed adverts; the router's interface to it set down with one ioctl; the clock stops
//!    when the pinned maps stop sending it new datagrams. Then up, and joined again.
//! 4. `hard_failure_fast_max_ms` (and the defaults): the real `anycast-ctl announce` on the
//!    member, killed with SIGKILL once the member is live; the clock runs from the kill until
//!    the maps stop sending it new datagrams. Interval 10 ms / hold 30 ms, and 1 s / 3 s.
//!
//! "No new datagram to the member" is read from the maps the dataplane reads
//! ([`super::membership::in_set`]: the live member set and the `SLOT_STATE` down bit), polled
//! every 100 us. Every loop is bounded in count and time; topology, pins, daemons and the key
//! file are guards removed on every exit path.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anycast_common::{AddrBucket, names};
use anycast_ctl::{
    dataplane::Bucket,
    maglev::{self, PAPER_TABLE_SIZE},
    members,
};
use anyhow::{Context, Result, bail, ensure};
use aya::maps::{Array, Map, MapData};
use serde_json::{Value, json};

use super::membership::{
    JOIN_HOLD_MS, KEY_ID, PREFIX, SECRET, SETTLE, Sender, Summary, in_set, wait_live,
};
use crate::{
    ANYCAST,
    daemon::{Daemon, KeyFile},
    frames::Bed,
};

const MAGLEV_BUILDS: u32 = 201;
const SWAP_TRIALS: usize = 200;
const LINK_TRIALS: usize = 100;
const FAST_TRIALS: usize = 100;
const DEFAULT_TRIALS: usize = 3;
/// Announce timers (ms): the fastest the CLI accepts, and its defaults.
const FAST: (u64, u64) = (10, 30);
const DEFAULTS: (u64, u64) = (1_000, 3_000);
/// Bound on a wait for a member to become live or to go (longer than the default hold).
const LIMIT: Duration = Duration::from_secs(5);

const TARGET_HARD_FAST_MAX_MS: f64 = 35.0;
const TARGET_LINK_DOWN_P99_MS: f64 = 5.0;
const TARGET_MAGLEV_BUILD_MS: f64 = 0.5;
const TARGET_TABLE_SWAP_MS: f64 = 1.0;

/// [`maglev::bench_build_ms`] on a thread of its own, pinned to one CPU under SCHED_FIFO (as the
/// TEST_RUN figures are measured), so that the machine's other work neither preempts nor
/// migrates it mid-build.
fn maglev_build_ms() -> Result<f64> {
    use super::pipeline::{ROUTER_CPU, STAGE_PRIORITY, pin, realtime};
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(0, ROUTER_CPU)?;
            realtime(0, STAGE_PRIORITY)?;
            Ok(maglev::bench_build_ms(MAGLEV_BUILDS))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the Maglev build thread panicked"))?
    })
}

/// Runs the four measurements; prints a table and returns the figures as JSON.
pub fn run() -> Result<Value> {
    crate::require_root();
    let started = Instant::now();
    let build = maglev_build_ms()?;
    let swap = Summary::of(&table_swaps()?);

    let (topo, ctl) = super::attached(1)?;
    let member = &topo.members[0];
    let key = KeyFile::new(topo.router.name(), KEY_ID, &SECRET)?;
    let maps = anycast_ctl::dataplane::Maps::open(&anycast_ctl::pin::PinDir::new(ctl.pin_dir()))?;
    let pin = ctl.pin_dir().display().to_string();
    let mut agent = Daemon::spawn(
        &topo.router,
        "agent",
        &crate::daemon::agent_args(
            &pin,
            &[&member.router_iface],
            &[PREFIX],
            &["--key-file", key.arg()],
        ),
    )?;
    let announce = |(interval, hold): (u64, u64)| {
        Daemon::spawn(
            &member.ns,
            "announce",
            &[
                "announce",
                &ANYCAST.to_string(),
                "--dev",
                &member.iface,
                "--interval",
                &format!("{interval}ms"),
                "--hold",
                &format!("{hold}ms"),
                "--key-file",
                key.arg(),
            ],
        )
    };
    let trials = (|| -> Result<_> {
        // Crafted adverts first: `announce` numbers its adverts from the clock, far above.
        let mut sender = Sender::new(member)?;
        let link = link_down_trials(&maps, &mut sender, (&topo.router, &member.router_iface))?;
        let fast = hard_failure_trials(&maps, member.ip, || announce(FAST), FAST_TRIALS)?;
        let default = hard_failure_trials(&maps, member.ip, || announce(DEFAULTS), DEFAULT_TRIALS)?;
        Ok((link, fast, default))
    })();
    ensure!(
        agent.running(),
        "the agent exited during the run: {}",
        agent.log()
    );
    let (link, fast, default) = trials.with_context(|| format!("agent log:\n{}", agent.log()))?;
    agent.kill();
    let (link, fast, default) = (
        Summary::of(&link),
        Summary::of(&fast),
        Summary::of(&default),
    );

    println!("\nfailover ({} s)", started.elapsed().as_secs());
    println!(
        "{:<48} {:>22} {:>8}",
        "figure (ms)", "p50 / p99 / max", "target"
    );
    let row = |name: &str, s: &Summary, target: String| {
        let figures = format!("{:.3} / {:.3} / {:.3}", s.p50, s.p99, s.max);
        println!("{name:<48} {figures:>22} {target:>8}");
    };
    println!(
        "{:<48} {build:>22.3} {:>8}",
        "Maglev build, 64 members, M=65537", "<= 0.5"
    );
    row(
        &format!("table rebuild -> live ({SWAP_TRIALS})"),
        &swap,
        "<= 1".into(),
    );
    row(
        &format!("link down -> removed ({LINK_TRIALS})"),
        &link,
        "p99 <= 5".into(),
    );
    row(
        &format!("kill -9, 10/30 ms -> removed ({FAST_TRIALS})"),
        &fast,
        "max <= 35".into(),
    );
    row(
        &format!("kill -9, 1 s/3 s -> removed ({DEFAULT_TRIALS})"),
        &default,
        "-".into(),
    );

    let summary = |s: &Summary, trials: usize| json!({"p50": s.p50, "p99": s.p99, "max": s.max, "min": s.min, "trials": trials});
    let agent_load = super::agent_load::run()?;
    let jitter = super::jitter::run()?;
    let lost = datagrams_per_failover()?;
    Ok(json!({
        "agent_load": agent_load,
        "announce_jitter": jitter,
        "datagrams_per_failover": lost,
        "maglev_build_ms": build,
        "table_swap_ms": swap.p50,
        "link_down_p99_ms": link.p99,
        "hard_failure_fast_max_ms": fast.max,
        "hard_failure_default_max_ms": default.max,
        "details": {
            "table_swap_ms": summary(&swap, SWAP_TRIALS),
            "link_down_ms": summary(&link, LINK_TRIALS),
            "hard_failure_fast_ms": summary(&fast, FAST_TRIALS),
            "hard_failure_default_ms": summary(&default, DEFAULT_TRIALS),
            "fast_timers_ms": {"interval": FAST.0, "hold": FAST.1},
            "default_timers_ms": {"interval": DEFAULTS.0, "hold": DEFAULTS.1},
        },
        "targets": {
            "hard_failure_fast_max_ms": TARGET_HARD_FAST_MAX_MS,
            "link_down_p99_ms": TARGET_LINK_DOWN_P99_MS,
            "maglev_build_ms": TARGET_MAGLEV_BUILD_MS,
            "table_swap_ms": TARGET_TABLE_SWAP_MS,
            "datagrams_after_removal": 0,
        },
        "method": {
            "maglev_build_ms": format!("maglev::build of 64 equal members at M=65537, median \
                of {MAGLEV_BUILDS} builds, release build, one thread pinned to CPU 1 under \
                SCHED_FIFO"),
            "table_swap_ms": format!("median of {SWAP_TRIALS}: members::set_weight on an \
                address with 64 members at M=65537 (rebuild, write of the spare table through \
                mmap, flip) until a second thread polling ADDRS sees the version flip; TEST_RUN \
                bed, real pinned maps"),
            "link_down_p99_ms": format!("{LINK_TRIALS} trials: the router's interface to the \
                member set down by ioctl (agent: RTM_NEWLINK -> drop_interface) until the pinned \
                maps stop sending the member new datagrams; member joined with a \
                {JOIN_HOLD_MS} ms hold, so expiry cannot explain it"),
            "hard_failure_fast_max_ms": format!("{FAST_TRIALS} trials: anycast-ctl announce \
                --interval 10ms --hold 30ms killed with SIGKILL at a varied phase once the \
                member is live, until the pinned maps stop sending it new datagrams (SLOT_STATE \
                down bit or gone from the member set), polled every 100 us; {DEFAULT_TRIALS} \
                trials with the defaults 1 s / 3 s"),
        },
    }))
}

/// Times `SWAP_TRIALS` rebuilds of a 64-member table at M = 65,537 until each is live.
fn table_swaps() -> Result<Vec<f64>> {
    let mut bed = Bed::new()?;
    let members: Vec<Ipv4Addr> = (0..64u32)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(203, 0, 113, 100)) + i))
        .collect();
    for (i, &m) in members.iter().enumerate() {
        bed.add_member(ANYCAST, m, 0, [0x02, 0x20, 0, 0, 0, i as u8])?;
    }
    let set = |bed: &mut Bed, weight: u16| {
        members::set_weight(
            &mut bed.maps,
            (ANYCAST.into(), members[0].into()),
            members::DEFAULT_PREFERENCE,
            weight,
            Some(PAPER_TABLE_SIZE),
        )
    };
    set(&mut bed, members::DEFAULT_WEIGHT)?;
    let Bucket::Found { index, entry } = bed.maps.bucket(ANYCAST.into())? else {
        bail!("{ANYCAST} is not installed");
    };
    bed.maps.settle(entry.slot)?;
    let addrs: Array<MapData, AddrBucket> =
        Array::try_from(Map::Array(MapData::from_pin(bed.pin().map(names::ADDRS))?))?;
    let version = move |addrs: &Array<MapData, AddrBucket>| -> Result<u32> {
        Ok(addrs.get(&index, 0)?.version)
    };
    let mut out = Vec::with_capacity(SWAP_TRIALS);
    for trial in 0..SWAP_TRIALS {
        let before = version(&addrs)?;
        let watch = &addrs;
        let took = std::thread::scope(|s| -> Result<Duration> {
            let watcher = s.spawn(move || -> Result<Instant> {
                let deadline = Instant::now() + LIMIT;
                while version(watch)? == before {
                    ensure!(Instant::now() < deadline, "no flip within {LIMIT:?}");
                }
                Ok(Instant::now())
            });
            let start = Instant::now();
            set(&mut bed, members::DEFAULT_WEIGHT + 1 + (trial % 2) as u16)?;
            let live = watcher.join().expect("watcher panicked")?;
            Ok(live.saturating_duration_since(start))
        })?;
        out.push(ms(took));
        // Untimed: the grace period a rewrite this soon after the flip would wait for first
        // (changes of one address further apart than `journal::REUSE_AFTER` never wait).
        bed.maps.settle(entry.slot)?;
    }
    Ok(out)
}

/// Link down on the router's interface to the member until it is out of service; per trial.
fn link_down_trials(
    maps: &anycast_ctl::dataplane::Maps,
    sender: &mut Sender,
    (router, iface): (&crate::Netns, &str),
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(LINK_TRIALS);
    for trial in 0..LINK_TRIALS {
        sender.join_until_live(maps, JOIN_HOLD_MS)?;
        std::thread::sleep(SETTLE + Duration::from_micros((trial as u64 * 700) % 5_000));
        let down = router.set_link(iface, false)?;
        let took = wait_live(maps, sender.ip, false, (down, LIMIT));
        router.set_link(iface, true)?;
        out.push(ms(took?));
    }
    Ok(out)
}

/// Starts `announce`, waits until the member is live, kills it with SIGKILL at a varied phase,
/// and times until the member is out of service; per trial.
fn hard_failure_trials(
    maps: &anycast_ctl::dataplane::Maps,
    member: Ipv4Addr,
    announce: impl Fn() -> Result<Daemon>,
    trials: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(trials);
    for trial in 0..trials {
        let mut daemon = announce()?;
        wait_live(maps, member, true, (Instant::now(), LIMIT))
            .with_context(|| format!("announce log:\n{}", daemon.log()))?;
        std::thread::sleep(SETTLE + Duration::from_micros((trial as u64 * 1_300) % 10_000));
        let killed = Instant::now();
        daemon.signal(libc::SIGKILL);
        let took = wait_live(maps, member, false, (killed, LIMIT))?;
        daemon.kill();
        ensure!(
            !in_set(maps, member)?,
            "{member} came back after its announcer died"
        );
        out.push(ms(took));
    }
    Ok(out)
}

/// Each kind of failover under a steady UDP stream and 40 TCP connections
/// ([`crate::failover`]): the datagrams that went to the dead member before it was out of
/// service, and a check that none reached it or was lost after (an error otherwise).
fn datagrams_per_failover() -> Result<Value> {
    println!("\ndatagrams per failover (steady UDP stream, 64 flows, 3 members)");
    println!(
        "{:<18} {:>8} {:>14} {:>12} {:>16}",
        "kind", "sent", "to dead member", "removal ms", "after removal"
    );
    let mut out = serde_json::Map::new();
    let mut after = 0;
    for kind in crate::failover::Kind::ALL {
        let o = crate::failover::run(kind)?;
        println!(
            "{:<18} {:>8} {:>14} {:>12.2} {:>16}",
            kind.name(),
            o.sent,
            o.to_dead_member,
            o.removal_ms,
            o.to_victim_after_removal + o.lost_after_removal
        );
        o.check()?;
        after += o.to_victim_after_removal + o.lost_after_removal;
        out.insert(
            kind.name().into(),
            json!({
                "sent": o.sent,
                "to_dead_member": o.to_dead_member,
                "after_removal": o.to_victim_after_removal + o.lost_after_removal,
                "removal_ms": o.removal_ms,
                "survivor_connections": o.survivor_conns,
                "broken_survivor_connections": o.broken_survivor_conns,
            }),
        );
    }
    out.insert("datagrams_after_removal".into(), json!(after));
    out.insert(
        "method".into(),
        json!(
            "tests/src/failover.rs: three members (learned from announce, hold 3 s; the \
            kill -9 victim 10 ms / 30 ms; static for member del), a SpreadStream of one \
            datagram per ~100 us over 64 source ports, 40 TCP connections talking; member 2 \
            fails; removal = first poll (100 us) of the pinned maps with it out of service; \
            to_dead_member = datagrams sent between the failure and the removal that reached \
            it or nobody; after_removal = sent later and reached it or nobody"
        ),
    );
    Ok(Value::Object(out))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
