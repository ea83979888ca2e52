//! Network-namespace guard: one named namespace per [`Netns`], deleted when it is dropped.
//!
//! Names are `ac-<role>-<pid>-<counter>`, unique within and across concurrent test processes.
//! Commands reach a namespace through `ip -n` or `nsenter --net` (never `ip netns exec`, which
//! remounts /sys and hides bpffs); Rust code reaches it through [`Netns::in_ns`], which runs a
//! closure on a fresh thread that has joined the namespace, so sockets created there live in it.
//! Namespaces left behind by a killed test process (its pid gone) are swept on first use.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::cmd;

const PREFIX: &str = "ac-";
const RUN_DIR: &str = "/run/netns";

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` sets up the shared /run/netns mount on first use; concurrent first calls race.
static CREATE: Mutex<()> = Mutex::new(());
static SWEEP: Once = Once::new();

/// A network namespace that exists exactly as long as this value.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `ac-<role>-<pid>-<counter>`. `role` is a short tag such as `c`, `r` or `m1`.
    pub fn new(role: &str) -> Result<Self> {
        crate::require_root();
        SWEEP.call_once(sweep_stale);
        let name = format!(
            "{PREFIX}{role}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        {
            let _serialised = CREATE.lock().unwrap_or_else(|e| e.into_inner());
            cmd::run("ip", &["netns", "add", &name])?;
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the bind mount that keeps the namespace alive.
    pub fn path(&self) -> PathBuf {
        Path::new(RUN_DIR).join(&self.name)
    }

    /// Runs `args` inside the namespace through `nsenter --net`; returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let net = format!("--net={}", self.path().display());
        let mut full = vec![net.as_str(), "--"];
        full.extend_from_slice(args);
        cmd::run("nsenter", &full)
    }

    /// Runs `ip -n NAME args...` from the root namespace; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        cmd::run("ip", &full)
    }

    /// Sets an IPv4/IPv6 sysctl of this namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Runs `f` on a fresh thread that has entered this namespace and waits for its result.
    ///
    /// Panics if the namespace cannot be entered; a panic inside `f` is propagated.
    pub fn in_ns<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open().unwrap_or_else(|e| panic!("{e:#}"));
        let name = self.name.clone();
        thread::scope(|scope| {
            thread::Builder::new()
                .name(format!("in-{name}"))
                .spawn_scoped(scope, move || {
                    enter(&file, &name);
                    f()
                })
                .expect("spawn namespace thread")
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Like [`Netns::in_ns`], but returns at once with the thread's handle (for servers).
    pub fn spawn_in_ns<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = self.open().unwrap_or_else(|e| panic!("{e:#}"));
        let name = self.name.clone();
        thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                enter(&file, &name);
                f()
            })
            .expect("spawn namespace thread")
    }

    /// MAC address of `ifname` in this namespace (read through netlink, not sysfs).
    pub fn link_mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let link = self.link_json(ifname)?;
        let text = link["address"]
            .as_str()
            .ok_or_else(|| anyhow!("{ifname} in {} has no address: {link}", self.name))?;
        parse_mac(text)
    }

    /// Interface index of `ifname` in this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let link = self.link_json(ifname)?;
        link["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| anyhow!("{ifname} in {} has no ifindex: {link}", self.name))
    }

    /// Sets `ifname` administratively up or down with one ioctl (no `ip` process to wait for);
    /// returns the instant just before the change was asked, for timing what follows it.
    pub fn set_link(&self, ifname: &str, up: bool) -> Result<std::time::Instant> {
        let name = std::ffi::CString::new(ifname)?;
        self.in_ns(|| {
            // SAFETY: a plain datagram socket for the ioctls, owned (and closed) by `fd`.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh descriptor nothing else owns.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            // SAFETY: ifreq is plain data; zero is a valid initial value.
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
                *dst = src as libc::c_char;
            }
            // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags of a valid ifreq.
            if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
                bail!("SIOCGIFFLAGS {ifname}: {}", std::io::Error::last_os_error());
            }
            // SAFETY: the ioctl filled ifr_flags.
            let flags = unsafe { req.ifr_ifru.ifru_flags };
            let up_flag = libc::IFF_UP as libc::c_short;
            req.ifr_ifru.ifru_flags = if up {
                flags | up_flag
            } else {
                flags & !up_flag
            };
            let asked = std::time::Instant::now();
            // SAFETY: SIOCSIFFLAGS reads ifr_name and ifr_flags of a valid ifreq.
            if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
                bail!("SIOCSIFFLAGS {ifname}: {}", std::io::Error::last_os_error());
            }
            Ok(asked)
        })
    }

    /// The kernel's neighbour entry for `addr` on `ifname` (`ip -j neigh show`), if any.
    pub fn neighbour(&self, addr: std::net::IpAddr, ifname: &str) -> Result<Option<Neighbour>> {
        let out = self.ip(&["-j", "neigh", "show", &addr.to_string(), "dev", ifname])?;
        let entries: Vec<Value> = serde_json::from_str(&out)
            .with_context(|| format!("`ip -j neigh show {addr}` printed {out:?}"))?;
        Ok(entries.first().map(|e| Neighbour {
            lladdr: e["lladdr"].as_str().map(str::to_string),
            state: (e["state"].as_array().into_iter().flatten())
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
        }))
    }

    /// Ids of the XDP programs the kernel reports on `ifname`, empty if none is attached.
    pub fn xdp_prog_ids(&self, ifname: &str) -> Result<Vec<u64>> {
        // `ip -j` prints the program under "xdp" both as "prog" and inside "attached".
        fn collect(value: &Value, out: &mut Vec<u64>) {
            match value {
                Value::Object(map) => {
                    if let Some(id) = map.get("prog").and_then(|p| p["id"].as_u64()) {
                        out.push(id);
                    }
                    map.values().for_each(|v| collect(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
                _ => {}
            }
        }
        let link = self.link_json(ifname)?;
        let mut ids = Vec::new();
        if let Some(xdp) = link.get("xdp") {
            collect(xdp, &mut ids);
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Sends `frame`, a whole Ethernet frame, out of `ifname` through a raw AF_PACKET socket:
    /// what any host on the link can do, for tests of frames the router must not believe.
    pub fn send_frame(&self, ifname: &str, frame: &[u8]) -> Result<()> {
        let ifindex = self.ifindex(ifname)?;
        self.in_ns(|| send_raw(ifindex, frame))
            .with_context(|| format!("sending a raw frame on {ifname} in {}", self.name))
    }

    /// The JSON object `ip -j link show IFNAME` prints for `ifname`.
    pub fn link_json(&self, ifname: &str) -> Result<Value> {
        let out = self.ip(&["-j", "link", "show", ifname])?;
        let mut links: Vec<Value> = serde_json::from_str(&out)
            .with_context(|| format!("`ip -j link show {ifname}` printed {out:?}"))?;
        if links.len() != 1 {
            bail!("expected one link {ifname} in {}, got {out}", self.name);
        }
        Ok(links.remove(0))
    }

    fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("open {}", self.path().display()))
    }
}

/// A neighbour entry as `ip -j neigh` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The MAC, as `ip` prints it; `None` while unresolved.
    pub lladdr: Option<String>,
    /// NUD states, e.g. `["REACHABLE"]`.
    pub state: Vec<String>,
}

impl Neighbour {
    /// Whether `state` lists `name` (e.g. `"STALE"`).
    pub fn is(&self, name: &str) -> bool {
        self.state.iter().any(|s| s == name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = cmd::run("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: could not delete namespace {}: {e:#}", self.name);
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != mac.len() {
        bail!("not a MAC address: {text:?}");
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("not a MAC: {text:?}"))?;
    }
    Ok(mac)
}

/// Formats like `ip` does: lowercase, colon separated.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Sends one frame out of interface `ifindex` of the calling thread's namespace.
fn send_raw(ifindex: u32, frame: &[u8]) -> Result<()> {
    let socket = anycast_ctl::frame::socket().context("AF_PACKET socket")?;
    anycast_ctl::frame::send(&socket, ifindex, frame).context("sendto")
}

/// Moves the calling thread into the namespace `file` refers to; panics on failure.
fn enter(file: &File, name: &str) {
    // SAFETY: setns only reads the descriptor, which `file` keeps open for the call; joining a
    // network namespace affects the calling thread alone.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!(
            "setns into {name} failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Deletes `ac-*-<pid>-*` namespaces whose process no longer exists.
fn sweep_stale() {
    let Ok(list) = cmd::run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if owner_pid(name).is_some_and(|pid| !crate::pid_alive(pid)) {
            let _ = cmd::run("ip", &["netns", "del", name]);
        }
    }
}

/// The pid embedded in a name this module made, if `name` has that shape.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut fields = rest.rsplitn(3, '-');
    let counter = fields.next()?;
    let pid = fields.next()?;
    let _role = fields.next()?;
    counter.parse::<u32>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_only_matches_our_names() {
        assert_eq!(owner_pid("ac-m1-1234-7"), Some(1234));
        assert_eq!(owner_pid("ac-r-99-0"), Some(99));
        assert_eq!(owner_pid("blue"), None);
        assert_eq!(owner_pid("ac-x-y"), None);
        assert_eq!(owner_pid("acm1-1-2"), None);
    }

    #[test]
    fn mac_round_trip() {
        let mac = parse_mac("02:aB:00:ff:10:01").unwrap();
        assert_eq!(mac, [0x02, 0xab, 0x00, 0xff, 0x10, 0x01]);
        assert_eq!(format_mac(mac), "02:ab:00:ff:10:01");
        assert!(parse_mac("zz").is_err());
        assert!(parse_mac("01:02:03:04:05").is_err());
    }
}
