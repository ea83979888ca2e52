//! The pipelined end-to-end measurement's machinery: the router's receive processing on one
//! CPU, the traffic generator on the other, and what each stage cost during a run.
//!
//! - [`threaded_napi`] turns on threaded NAPI for a veth inside its namespace
//!   (`/sys/class/net/DEV/threaded`, through `ip netns exec`, which remounts /sys there) and
//!   returns the kthreads it created (`napi/DEV-N`, told apart from other namespaces' by being
//!   new); [`pin`] puts a thread on one CPU with `sched_setaffinity`, and [`realtime`] runs it
//!   under SCHED_FIFO, so that the stages keep their CPUs on a machine shared with other work.
//! - [`Usage`] samples, before and after a run, each CPU's busy time (`/proc/stat`), the
//!   kthreads' run time (`/proc/PID/schedstat`, ns) and the veths' XDP transmit errors
//!   (`ethtool -S`: a frame sent into a full veth ring is counted there and dropped).
//!
//! Invariant: nothing here changes anything outside the namespaces the benchmark created,
//! except the CPU affinity and scheduling of the kthreads those namespaces' veths own (which
//! go with the namespaces).

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context, Result, bail, ensure};

use crate::Netns;

/// The CPU the generator runs on.
pub const GENERATOR_CPU: usize = 0;
/// The CPU the router's receive processing runs on.
pub const ROUTER_CPU: usize = 1;

/// The pids of every NAPI kthread whose name starts with `napi/{dev}-`, in any namespace.
fn napi_threads(dev: &str) -> Result<BTreeSet<u32>> {
    let prefix = format!("napi/{dev}-");
    let mut pids = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").context("read /proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm"))
            && comm.trim_end().starts_with(&prefix)
        {
            pids.insert(pid);
        }
    }
    Ok(pids)
}

/// Turns on threaded NAPI for `dev` in `ns` (which must have NAPI: GRO on or an XDP program)
/// and returns its kthreads' pids.
pub fn threaded_napi(ns: &Netns, dev: &str) -> Result<Vec<u32>> {
    let before = napi_threads(dev)?;
    let path = format!("/sys/class/net/{dev}/threaded");
    crate::cmd::run(
        "ip",
        &[
            "netns",
            "exec",
            ns.name(),
            "sh",
            "-c",
            &format!("echo 1 > {path}"),
        ],
    )
    .with_context(|| format!("threaded NAPI on {dev}"))?;
    // The kthreads are created by the write; allow them a moment to show in /proc.
    for _ in 0..50 {
        let new: Vec<u32> = napi_threads(dev)?.difference(&before).copied().collect();
        if !new.is_empty() {
            return Ok(new);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("no napi/{dev}-N kthread appeared after enabling threaded NAPI")
}

/// Pins thread `pid` (0: the calling thread) to `cpu`.
pub fn pin(pid: u32, cpu: usize) -> Result<()> {
    ensure!(cpu < libc::CPU_SETSIZE as usize, "no CPU {cpu}");
    // SAFETY: cpu_set_t is plain data, zero is the empty set; CPU_SET stays within it for
    // cpu < CPU_SETSIZE (checked); sched_setaffinity reads `size_of` bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid as libc::pid_t, std::mem::size_of_val(&set), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity({pid}, CPU {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Priority of the stages' threads under SCHED_FIFO: above every ordinary task, so that other
/// work on a shared machine does not take a stage's CPU (the kernel's RT throttling still
/// leaves ordinary tasks 5 % of each second); below the kernel's own RT threads (50, 99).
pub const STAGE_PRIORITY: i32 = 10;

/// Runs thread `pid` (0: the calling thread) under SCHED_FIFO at `priority`.
pub fn realtime(pid: u32, priority: i32) -> Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a valid sched_param, read by the call.
    let rc = unsafe { libc::sched_setscheduler(pid as libc::pid_t, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        bail!(
            "sched_setscheduler({pid}, SCHED_FIFO): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Runs the calling thread, until dropped, on one CPU under SCHED_FIFO: what it times is then
/// not preempted by other work on a shared machine. Dropping restores the ordinary policy and
/// every CPU.
pub struct Quiet(());

impl Quiet {
    pub fn new(cpu: usize) -> Result<Self> {
        pin(0, cpu)?;
        realtime(0, STAGE_PRIORITY)?;
        Ok(Quiet(()))
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a valid sched_param and a cpu_set_t filled with every CPU, read by the calls.
        unsafe {
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for cpu in 0..libc::CPU_SETSIZE as usize {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
        }
    }
}

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    // SAFETY: clock_gettime writes a timespec, which is plain data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Busy (user, nice, system, irq, softirq), stolen and total jiffies of each CPU
/// (`/proc/stat`).
fn cpu_jiffies() -> Result<Vec<[u64; 3]>> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    Ok(stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            let field = |i: usize| v.get(i).copied().unwrap_or(0);
            let busy = field(0) + field(1) + field(2) + field(5) + field(6);
            [busy, field(7), (0..8).map(field).sum()]
        })
        .collect())
}

/// Run time of thread `pid` so far (`/proc/PID/schedstat`, first field, ns).
fn run_time(pid: u32) -> Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .with_context(|| format!("schedstat of {pid}"))?;
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("schedstat of {pid}: {text}"))?;
    Ok(Duration::from_nanos(ns))
}

/// One `ethtool -S` counter of a veth (e.g. `tx_queue_0_xdp_xmit_errors`).
pub fn ethtool_stat(ns: &Netns, dev: &str, name: &str) -> Result<u64> {
    let out = ns.run(&["ethtool", "-S", dev])?;
    out.lines()
        .find_map(|l| {
            let (key, value) = l.trim().split_once(':')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .with_context(|| format!("no {name} in `ethtool -S {dev}`"))
}

/// `ip -j -s link show DEV` in `ns`: the link with its `stats64`.
pub fn link_stats(ns: &Netns, dev: &str) -> Result<serde_json::Value> {
    let out = ns.ip(&["-j", "-s", "link", "show", dev])?;
    let links: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("`ip -j -s link show {dev}`: {out}"))?;
    Ok(links[0].clone())
}

/// What the stages used, at one instant.
pub struct Usage {
    cpus: Vec<[u64; 3]>,
    router_threads: Duration,
    member_threads: Duration,
    /// XDP frames the generator's veth could not hand to the router (its ring was full).
    router_ring_drops: u64,
    /// Frames the router could not hand to the members (XDP transmit errors and tx drops).
    member_ring_drops: u64,
}

/// Where a run's stages stood: [`Usage`] before and after.
pub struct Stages<'a> {
    pub router_threads: &'a [u32],
    pub member_threads: &'a [u32],
    pub client: &'a Netns,
    pub client_dev: &'a str,
    pub router: &'a Netns,
    pub member_devs: &'a [String],
}

impl Stages<'_> {
    pub fn usage(&self) -> Result<Usage> {
        let mut router_threads = Duration::ZERO;
        for &pid in self.router_threads {
            router_threads += run_time(pid)?;
        }
        let mut member_threads = Duration::ZERO;
        for &pid in self.member_threads {
            member_threads += run_time(pid)?;
        }
        let mut member_ring_drops = 0;
        for dev in self.member_devs {
            member_ring_drops += ethtool_stat(self.router, dev, "tx_queue_0_xdp_xmit_errors")?;
            let link = link_stats(self.router, dev)?;
            member_ring_drops += link["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0);
        }
        Ok(Usage {
            cpus: cpu_jiffies()?,
            router_threads,
            member_threads,
            router_ring_drops: ethtool_stat(
                self.client,
                self.client_dev,
                "tx_queue_0_xdp_xmit_errors",
            )?,
            member_ring_drops,
        })
    }
}

/// The stages of one run, from [`Usage`] before and after it.
#[derive(Clone, Debug)]
pub struct StageFigures {
    /// Each CPU's busy fraction during the run (all processes: the machine is shared).
    pub cpu_busy: Vec<f64>,
    /// Each CPU's fraction stolen by the hypervisor during the run.
    pub cpu_steal: Vec<f64>,
    /// The router's NAPI kthreads' run time over the injection's wall time.
    pub router_busy: f64,
    /// The router's NAPI kthreads' run time during the run.
    pub router_time: Duration,
    /// The members' NAPI kthreads' run time over the injection's wall time.
    pub members_busy: f64,
    /// The generator thread's CPU time over its injection time.
    pub generator_busy: f64,
    pub router_ring_drops: u64,
    pub member_ring_drops: u64,
}

impl StageFigures {
    pub fn new(
        before: &Usage,
        after: &Usage,
        injection: Duration,
        generator_cpu: Duration,
    ) -> Self {
        let fraction = |field: usize| -> Vec<f64> {
            before
                .cpus
                .iter()
                .zip(&after.cpus)
                .map(|(b, a)| {
                    let total = a[2].saturating_sub(b[2]).max(1);
                    a[field].saturating_sub(b[field]) as f64 / total as f64
                })
                .collect()
        };
        StageFigures {
            cpu_busy: fraction(0),
            cpu_steal: fraction(1),
            router_busy: (after.router_threads.saturating_sub(before.router_threads)).as_secs_f64()
                / injection.as_secs_f64(),
            router_time: after.router_threads.saturating_sub(before.router_threads),
            members_busy: (after.member_threads.saturating_sub(before.member_threads))
                .as_secs_f64()
                / injection.as_secs_f64(),
            generator_busy: generator_cpu.as_secs_f64() / injection.as_secs_f64(),
            router_ring_drops: after.router_ring_drops - before.router_ring_drops,
            member_ring_drops: after.member_ring_drops - before.member_ring_drops,
        }
    }

    /// The router's CPU time per frame it received (`injected` less those its ring dropped),
    /// in ns: a measurement of the router stage alone, whatever the others did.
    pub fn router_ns_per_packet(&self, injected: u64) -> f64 {
        let received = injected.saturating_sub(self.router_ring_drops).max(1);
        self.router_time.as_nanos() as f64 / received as f64
    }

    /// The stage that set the rate. If the router's ring had room for all but 1 % of what the
    /// generator offered, the router kept up: `generator` (or `members`, if the router's
    /// frames found the members' rings full). Otherwise the CPU the pipeline's threads kept
    /// the busier: `router` (CPU 1, the router's kthread) or `generator_and_members` (CPU 0,
    /// the generator and the members' sinks).
    pub fn limiting_stage(&self, injected: u64) -> &'static str {
        let threshold = injected / 100;
        if self.router_ring_drops <= threshold {
            return if self.member_ring_drops > threshold {
                "members"
            } else {
                "generator"
            };
        }
        // The router's ring overflowed: the router was slower than the generator at least at
        // times. Which CPU was the busier with the pipeline's threads says which stage set the
        // rate: the router's, or the generator's with the members' sinks.
        if self.router_busy >= self.generator_busy + self.members_busy {
            "router"
        } else {
            "generator_and_members"
        }
    }
}
