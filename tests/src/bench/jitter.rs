//! `announce`'s schedule with idle and with busy CPUs (`bench failover`, and part of `cargo
//! xtask bench`): the real `anycast-ctl announce --interval 10ms` on a member, its
//! advertisements received in the router namespace on a socket joined to the group, each
//! dated by the kernel on arrival (`SO_TIMESTAMPNS`, so the receiver's own scheduling does not
//! count). Then again with one spinning process per CPU (`sh -c 'while :; do :; done'`, at the
//! default priority, like any busy service on the member).
//!
//! Reported per phase: the deviation of each gap between consecutive advertisements from the
//! interval (p50 / p99 / max of its absolute value), and the lateness of each advertisement
//! against its slot of the absolute schedule (`announce` ticks on an absolute schedule:
//! arrival − (phase + k × interval), the phase being the earliest seen).
use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anycast_common::advert::{DEFAULT_GROUP, DEFAULT_PORT};
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::membership::{KEY_ID, SECRET, Summary};
use crate::{ANYCAST, daemon::Daemon, daemon::KeyFile};

const INTERVAL: Duration = Duration::from_millis(10);
/// Advertisements received per phase (3 s).
const SAMPLES: usize = 300;
const LIMIT: Duration = Duration::from_secs(10);

/// Runs both phases; prints a table and returns the figures as JSON.
pub fn run() -> Result<Value> {
    crate::require_root();
    let (topo, _ctl) = super::attached(1)?;
    let member = &topo.members[0];
    let key = KeyFile::new(topo.router.name(), KEY_ID, &SECRET)?;
    let ifindex = topo.router.ifindex(&member.router_iface)?;
    let socket = topo.router.in_ns(|| receiver(ifindex))?;
    let mut announce = Daemon::spawn(
        &member.ns,
        "announce",
        &[
            "announce",
            &ANYCAST.to_string(),
            "--dev",
            &member.iface,
            "--interval",
            "10ms",
            "--hold",
            "30ms",
            "--key-file",
            key.arg(),
        ],
    )?;
    let phases = (|| -> Result<(Vec<f64>, Vec<f64>)> {
        let idle = arrivals(&socket, member.ip)?;
        let spinners = Spinners::start(cpus())?;
        let busy = arrivals(&socket, member.ip);
        drop(spinners);
        Ok((idle, busy?))
    })();
    ensure!(
        announce.running(),
        "announce exited during the run: {}",
        announce.log()
    );
    let (idle, busy) = phases.with_context(|| format!("announce log:\n{}", announce.log()))?;
    announce.kill();
    let (idle_gap, idle_late) = (Summary::of(&gaps(&idle)), Summary::of(&lateness(&idle)));
    let (busy_gap, busy_late) = (Summary::of(&gaps(&busy)), Summary::of(&lateness(&busy)));
    println!("\nannounce schedule, interval 10 ms ({SAMPLES} adverts per phase)");
    println!("{:<44} {:>24}", "deviation (ms)", "p50 / p99 / max");
    let row = |name: &str, s: &Summary| {
        println!(
            "{name:<44} {:>24}",
            format!("{:.3} / {:.3} / {:.3}", s.p50, s.p99, s.max)
        );
    };
    row("gap - interval, idle", &idle_gap);
    row(
        &format!("gap - interval, {} CPUs spinning", cpus()),
        &busy_gap,
    );
    row("late against the schedule, idle", &idle_late);
    row("late against the schedule, busy", &busy_late);
    let summary = |s: &Summary| json!({"p50": s.p50, "p99": s.p99, "max": s.max});
    Ok(json!({
        "announce_jitter_busy_p99_ms": busy_gap.p99,
        "announce_jitter_busy_max_ms": busy_gap.max,
        "gap_deviation_ms": {"idle": summary(&idle_gap), "busy": summary(&busy_gap)},
        "lateness_ms": {"idle": summary(&idle_late), "busy": summary(&busy_late)},
        "method": format!("anycast-ctl announce --interval 10ms (release) on a member; \
            {SAMPLES} adverts per phase dated on arrival in the router namespace by the \
            kernel (SO_TIMESTAMPNS); busy phase: one `while :; do :; done` shell per CPU \
            ({} CPUs) at the default priority; gap deviation = |gap - 10 ms|, lateness = \
            arrival - (earliest phase + k x 10 ms)", cpus()),
    }))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// A UDP socket on the advertisement port, joined to the group on `ifindex`, with kernel
/// receive timestamps.
fn receiver(ifindex: u32) -> Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DEFAULT_PORT).into())?;
    socket.join_multicast_v4_n(
        &Ipv4Addr::from(DEFAULT_GROUP),
        &socket2::InterfaceIndexOrAddress::Index(ifindex),
    )?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a c_int that lives across the call and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "SO_TIMESTAMPNS: {}",
        std::io::Error::last_os_error()
    );
    Ok(socket.into())
}

/// Arrival times (ms, kernel clock) of the next [`SAMPLES`] advertisements from `from`.
fn arrivals(socket: &UdpSocket, from: Ipv4Addr) -> Result<Vec<f64>> {
    let start = Instant::now();
    let mut out = Vec::with_capacity(SAMPLES);
    while out.len() < SAMPLES {
        ensure!(
            start.elapsed() < LIMIT,
            "{} of {SAMPLES} advertisements within {LIMIT:?}",
            out.len()
        );
        if let Some((src, at)) = recv_stamped(socket)?
            && src == from
        {
            out.push(at);
        }
    }
    Ok(out)
}

/// One datagram's source and kernel arrival time in ms (`None` on a read timeout).
fn recv_stamped(socket: &UdpSocket) -> Result<Option<(Ipv4Addr, f64)>> {
    let mut buf = [0u8; 2048];
    let mut control = [0u64; 16];
    // SAFETY: an all-zero sockaddr_in is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer in it refers to a local buffer that
    // outlives the call, with its true length.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: see above.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return Ok(None);
        }
        return Err(e).context("recvmsg");
    }
    // SAFETY: the kernel filled `control` with `msg_controllen` bytes of cmsgs; CMSG_FIRSTHDR
    // and CMSG_NXTHDR stay within them, and SCM_TIMESTAMPNS carries one timespec.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_TIMESTAMPNS {
            let ts: libc::timespec =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            let ms = ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6;
            let src = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            return Ok(Some((src, ms)));
        }
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    anyhow::bail!("a datagram without its SCM_TIMESTAMPNS")
}

/// |gap − interval| for each pair of consecutive arrivals, in ms.
fn gaps(at: &[f64]) -> Vec<f64> {
    let interval = INTERVAL.as_secs_f64() * 1e3;
    at.windows(2)
        .map(|w| (w[1] - w[0] - interval).abs())
        .collect()
}

/// Each arrival's lateness against the absolute schedule, in ms.
fn lateness(at: &[f64]) -> Vec<f64> {
    let interval = INTERVAL.as_secs_f64() * 1e3;
    let offsets: Vec<f64> = (at.iter().enumerate())
        .map(|(k, &t)| t - k as f64 * interval)
        .collect();
    let phase = offsets.iter().copied().fold(f64::INFINITY, f64::min);
    offsets.iter().map(|o| o - phase).collect()
}

/// Busy loops, one per CPU, killed (and reaped) when dropped.
struct Spinners(Vec<Child>);

impl Spinners {
    fn start(n: usize) -> Result<Self> {
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            children.push(
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .context("starting a spinner")?,
            );
        }
        // Let them get going.
        std::thread::sleep(Duration::from_millis(200));
        Ok(Self(children))
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
