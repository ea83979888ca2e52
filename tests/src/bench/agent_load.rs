//! The agent under 100,000 advertisements per second (`bench failover`, and part of `cargo
//! xtask bench`): the real `anycast-ctl agent` daemon, 1,000 member hosts on one member link
//! (addresses from 198.18.0.0/22 on the member's interface), each advertising its own anycast
//! address (from 198.19.0.0/22) every 10 ms, signed, multicast with TTL 255 from its own
//! socket.
//!
//! The hosts join first (untimed); then `ROUNDS` rounds of refreshes, pre-signed, are sent on
//! schedule, each round spread over its 10 ms in `SLICES` slices. Measured: the agent
//! process's CPU time (`utime + stime` of `/proc/PID/stat`) over the run, per advertisement
//! and as a share of one core, and the refreshes it accepted (its `AGENT_STATS` counter)
//! against those sent. A refresh that changes nothing writes no map and takes no lock (tested
//! in `tests/tests/membership.rs`), so this is the cost of receiving, verifying and re-arming
//! a deadline. Each anycast address has one member, so joins build no table.
use std::{
    io::Write,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anycast_common::AgentCounter;
use anycast_ctl::{dataplane::Maps, members::now_ms, pin::PinDir};
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::membership::{KEY_ID, SECRET, Sender, in_set_of};
use crate::daemon::{Daemon, KeyFile};

const HOSTS: u32 = 1_000;
const INTERVAL: Duration = Duration::from_millis(10);
/// 2 s of refreshes.
const ROUNDS: u32 = 200;
/// Sends per round are spread over this many slices of the interval (no 1,000-datagram
/// bursts into the agent's socket).
const SLICES: u32 = 10;
/// Long enough that no member expires during the run, even on a stalled machine.
const HOLD_MS: u32 = 5_000;
const JOIN_LIMIT: Duration = Duration::from_secs(30);
const MEMBER_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const ANYCAST_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const ANYCAST_PREFIX: &str = "198.19.0.0/16";

fn nth(base: Ipv4Addr, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + i)
}

/// Runs the measurement; prints a table and returns the figures as JSON.
pub fn run() -> Result<Value> {
    crate::require_root();
    let (topo, ctl) = super::attached(1)?;
    let member = &topo.members[0];
    // The hosts: 1,000 addresses on the member's interface, on-link for the router.
    let mut batch = tempfile_in_tmp("anycast-hosts")?;
    for i in 0..HOSTS {
        writeln!(
            batch.1,
            "addr add {}/32 dev {}",
            nth(MEMBER_BASE, i),
            member.iface
        )?;
    }
    batch.1.flush()?;
    member
        .ns
        .ip(&["-batch", batch.0.to_str().context("temp path")?])?;
    topo.router
        .ip(&["route", "add", "198.18.0.0/22", "dev", &member.router_iface])?;
    let key = KeyFile::new(topo.router.name(), KEY_ID, &SECRET)?;
    let pin = ctl.pin_dir().display().to_string();
    let mut agent = Daemon::spawn(
        &topo.router,
        "agent",
        &crate::daemon::agent_args(
            &pin,
            &[&member.router_iface],
            &[ANYCAST_PREFIX],
            &["--key-file", key.arg()],
        ),
    )?;
    let maps = Maps::open(&PinDir::new(ctl.pin_dir()))?;
    let measured = (|| -> Result<Figures> {
        let mut senders = (0..HOSTS)
            .map(|i| Sender::on(&member.ns, nth(MEMBER_BASE, i), nth(ANYCAST_BASE, i)))
            .collect::<Result<Vec<_>>>()?;
        join_all(&maps, &mut senders)?;
        let drops = udp_receive_errors(&topo.router)?;
        let mut f = load(&maps, &mut senders, agent.pid())?;
        f.receive_buffer_drops = udp_receive_errors(&topo.router)? - drops;
        Ok(f)
    })();
    ensure!(
        agent.running(),
        "the agent exited during the run: {}",
        agent.log()
    );
    let f = measured.with_context(|| format!("agent log:\n{}", agent.log()))?;
    agent.kill();

    let offered = f64::from(HOSTS) / INTERVAL.as_secs_f64();
    println!("\nagent under load ({HOSTS} members every {INTERVAL:?})");
    println!("{:<52} {:>12}", "figure", "measured");
    println!(
        "{:<52} {:>12.0}",
        "advertisements offered per second", offered
    );
    println!(
        "{:<52} {:>12.0}",
        "accepted per second (sustained)", f.accepted_per_second
    );
    println!(
        "{:<52} {:>12}",
        "sent / accepted",
        format!("{} / {}", f.sent, f.accepted)
    );
    println!(
        "{:<52} {:>12}",
        "dropped by the kernel (socket buffer full)", f.receive_buffer_drops
    );
    println!("{:<52} {:>12.1}", "agent CPU, % of one core", f.cpu_percent);
    println!(
        "{:<52} {:>12.2}",
        "agent CPU per advertisement, us", f.cpu_us_per_advert
    );
    Ok(json!({
        "agent_cpu_percent_100k": f.cpu_percent,
        "agent_cpu_us_per_advert": f.cpu_us_per_advert,
        "agent_refreshes_per_second": f.accepted_per_second,
        "details": {
            "offered_per_second": offered,
            "sent": f.sent,
            "accepted": f.accepted,
            "receive_buffer_drops": f.receive_buffer_drops,
            "seconds": f.seconds,
            "cpu_seconds": f.cpu_seconds,
            "members": HOSTS,
            "interval_ms": INTERVAL.as_millis() as u64,
        },
        "method": format!("the anycast-ctl agent daemon (release), {HOSTS} member hosts on one \
            member link each advertising its own anycast address every {} ms (signed, \
            pre-signed before the run, multicast TTL 255, each round spread over {SLICES} \
            slices), {ROUNDS} rounds; CPU = utime+stime of /proc/PID/stat over the run plus \
            300 ms to drain; accepted = the agent's AGENT_STATS accepted counter",
            INTERVAL.as_millis()),
    }))
}

/// A named temporary file under /tmp, removed when the guard goes.
fn tempfile_in_tmp(tag: &str) -> Result<(std::path::PathBuf, TempFile)> {
    let path = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let file = std::fs::File::create(&path)?;
    Ok((path.clone(), TempFile { path, file }))
}

struct TempFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends every host's join (repeated while some are missing) until all are live.
fn join_all(maps: &Maps, senders: &mut [Sender]) -> Result<()> {
    let start = Instant::now();
    let mut missing: Vec<usize> = (0..senders.len()).collect();
    while !missing.is_empty() {
        ensure!(
            start.elapsed() < JOIN_LIMIT,
            "{} of {HOSTS} hosts not learned within {JOIN_LIMIT:?}",
            missing.len()
        );
        for &i in &missing {
            let join = senders[i].message(now_ms(), HOLD_MS)?;
            senders[i].send(&join)?;
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut still = Vec::new();
        for &i in &missing {
            let s = &senders[i];
            if !in_set_of(maps, nth(ANYCAST_BASE, i as u32), s.ip)? {
                still.push(i);
            }
        }
        missing = still;
    }
    Ok(())
}

struct Figures {
    /// UDP datagrams the kernel dropped in the router namespace for a full socket buffer.
    receive_buffer_drops: u64,
    sent: u64,
    accepted: u64,
    seconds: f64,
    cpu_seconds: f64,
    cpu_percent: f64,
    cpu_us_per_advert: f64,
    accepted_per_second: f64,
}

/// The timed run: pre-signed refreshes on schedule; CPU and acceptance around it.
fn load(maps: &Maps, senders: &mut [Sender], pid: i32) -> Result<Figures> {
    let now = now_ms();
    let mut rounds = Vec::with_capacity(ROUNDS as usize);
    for _ in 0..ROUNDS {
        let round = (senders.iter_mut())
            .map(|s| s.message(now, HOLD_MS))
            .collect::<Result<Vec<_>>>()?;
        rounds.push(round);
    }
    // Let the counters of the joins reach AGENT_STATS (flushed every 200 ms).
    std::thread::sleep(Duration::from_millis(400));
    let accepted_before = accepted(maps)?;
    let cpu_before = cpu_seconds(pid)?;
    let start = Instant::now();
    let per_slice = HOSTS.div_ceil(SLICES) as usize;
    let mut sent = 0u64;
    for (r, round) in rounds.iter().enumerate() {
        for (k, slice) in round.chunks(per_slice).enumerate() {
            let due = start + INTERVAL * r as u32 + INTERVAL / SLICES * k as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let first = k * per_slice;
            for (i, m) in slice.iter().enumerate() {
                senders[first + i].send(m)?;
                sent += 1;
            }
        }
    }
    let sending = start.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let window = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu_before;
    // The last counters reach the map within one flush interval.
    std::thread::sleep(Duration::from_millis(300));
    let accepted = accepted(maps)? - accepted_before;
    Ok(Figures {
        receive_buffer_drops: 0,
        sent,
        accepted,
        seconds: sending.as_secs_f64(),
        cpu_seconds: cpu,
        cpu_percent: 100.0 * cpu / window,
        cpu_us_per_advert: cpu * 1e6 / accepted.max(1) as f64,
        accepted_per_second: accepted as f64 / sending.as_secs_f64(),
    })
}

/// `Udp: RcvbufErrors` of `/proc/net/snmp` in `ns`.
fn udp_receive_errors(ns: &crate::Netns) -> Result<u64> {
    let snmp = ns.run(&["cat", "/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    let (Some(names), Some(values)) = (names, values) else {
        anyhow::bail!("no Udp lines in /proc/net/snmp");
    };
    let at = (names.split_whitespace())
        .position(|n| n == "RcvbufErrors")
        .context("no RcvbufErrors in /proc/net/snmp")?;
    Ok(values
        .split_whitespace()
        .nth(at)
        .context("short Udp line")?
        .parse()?)
}

/// The agent's accepted-advertisement counter, as it last flushed it.
fn accepted(maps: &Maps) -> Result<u64> {
    Ok(maps.agent_stats.get(&AgentCounter::Accepted.index(), 0)?)
}

/// `utime + stime` of process `pid`, in seconds.
pub(crate) fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let rest = stat
        .rsplit_once(')')
        .context("malformed /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect::<Vec<_>>();
    let field = |n: usize| -> Result<f64> {
        Ok(rest
            .get(n - 3)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((field(14)? + field(15)?) / ticks)
}
