//! Drives the `anycast-ctl` binary the way an operator would, inside the router namespace.
//!
//! Each [`Ctl`] owns a private pin directory `/sys/fs/bpf/anycast-test-<pid>-<counter>` (removed
//! when dropped) and runs `nsenter --net=<router> -- anycast-ctl --pin-dir DIR ...`: nsenter
//! changes only the network namespace, so bpffs stays visible. The binary comes from
//! `$ANYCAST_CTL` (set by `cargo xtask test`), else `target/debug/anycast-ctl` of the workspace.
//! The `--json` outputs are parsed into the typed views below, which spell out the CLI contract.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::cmd::{self, Outcome};
use crate::netns::Netns;

const BPFFS: &str = "/sys/fs/bpf";
const PIN_PREFIX: &str = "anycast-test-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One operator's view of one dataplane instance (one pin directory) on the router.
#[derive(Debug)]
pub struct Ctl {
    bin: PathBuf,
    pin_dir: PathBuf,
    net: String,
}

impl Ctl {
    /// A controller for the router namespace `router`, with a fresh pin directory.
    pub fn new(router: &Netns) -> Self {
        crate::require_root();
        ensure_bpffs();
        let pin_dir = Path::new(BPFFS).join(format!(
            "{PIN_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        Ctl {
            bin: binary().to_path_buf(),
            pin_dir,
            net: format!("--net={}", router.path().display()),
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Runs `anycast-ctl --pin-dir DIR args...` and returns what happened, success or not.
    pub fn outcome(&self, args: &[&str]) -> Outcome {
        let dir = self.pin_dir.to_str().expect("UTF-8 pin dir");
        let mut full = vec!["--pin-dir", dir];
        full.extend_from_slice(args);
        self.outcome_raw(&full)
    }

    /// Runs `anycast-ctl --pin-dir DIR args...` on a terminal (a pty from util-linux `script`):
    /// the outcome's stdout is what the terminal showed, the command's stdout and stderr.
    pub fn on_terminal(&self, args: &[&str]) -> Outcome {
        let bin = self.bin.to_str().expect("UTF-8 binary path");
        let dir = self.pin_dir.to_str().expect("UTF-8 pin dir");
        let mut line = vec!["nsenter", self.net.as_str(), "--", bin, "--pin-dir", dir];
        line.extend_from_slice(args);
        let line = line.join(" ");
        cmd::run_with_timeout(
            "script",
            &["-qec", &line, "/dev/null"],
            cmd::COMMAND_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs `anycast-ctl args...` without adding `--pin-dir`.
    pub fn outcome_raw(&self, args: &[&str]) -> Outcome {
        self.outcome_env(&[], args)
    }

    /// Runs `anycast-ctl args...` (no `--pin-dir` added) with `env` (`NAME=VALUE`) added to its
    /// environment, for the debug build's test-only knobs.
    pub fn outcome_env(&self, env: &[&str], args: &[&str]) -> Outcome {
        let bin = self.bin.to_str().expect("UTF-8 binary path");
        let mut full = vec![self.net.as_str(), "--", "env"];
        full.extend_from_slice(env);
        full.push(bin);
        full.extend_from_slice(args);
        cmd::run_with_timeout("nsenter", &full, cmd::COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Stdout of a successful run; an error with stderr otherwise.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.outcome(args).ok()
    }

    /// Asserts the run fails and returns its stderr.
    pub fn run_fail(&self, args: &[&str]) -> String {
        expect_failure(self.outcome(args))
    }

    /// Like [`Ctl::run_fail`], without adding `--pin-dir`.
    pub fn run_fail_raw(&self, args: &[&str]) -> String {
        expect_failure(self.outcome_raw(args))
    }

    /// Runs `args --json` and parses stdout; panics (with stderr) on failure or bad JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.run(&full).unwrap_or_else(|e| panic!("{e:#}"));
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`{}` printed invalid JSON ({e}): {out}", full.join(" ")))
    }

    /// `attach IFACE... --mode MODE`.
    pub fn attach(&self, ifaces: &[&str], mode: &str) -> Result<String> {
        let mut args = vec!["attach"];
        args.extend_from_slice(ifaces);
        args.extend_from_slice(&["--mode", mode]);
        self.run(&args)
    }

    /// `detach IFACE...`.
    pub fn detach(&self, ifaces: &[&str]) -> Result<String> {
        let mut args = vec!["detach"];
        args.extend_from_slice(ifaces);
        self.run(&args)
    }

    /// `member add ANYCAST MEMBER` (the tool finds the interface and MAC itself).
    pub fn member_add(
        &self,
        anycast: impl Into<IpAddr>,
        member: impl Into<IpAddr>,
    ) -> Result<String> {
        let (anycast, member) = (anycast.into().to_string(), member.into().to_string());
        self.run(&["member", "add", &anycast, &member])
    }

    /// `member del ANYCAST MEMBER`.
    pub fn member_del(
        &self,
        anycast: impl Into<IpAddr>,
        member: impl Into<IpAddr>,
    ) -> Result<String> {
        let (anycast, member) = (anycast.into().to_string(), member.into().to_string());
        self.run(&["member", "del", &anycast, &member])
    }

    /// `status --json`, typed.
    pub fn status(&self) -> Status {
        typed(self.json(&["status"]), "status")
    }

    /// `show --json`, typed.
    pub fn show(&self) -> Show {
        typed(self.json(&["show"]), "show")
    }

    /// `stats --json`, typed.
    pub fn stats(&self) -> Stats {
        typed(self.json(&["stats"]), "stats")
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if let Err(e) = remove_pins(&self.pin_dir) {
            eprintln!(
                "warning: could not remove {}: {e:#}",
                self.pin_dir.display()
            );
        }
    }
}

/// `status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    pub pin_dir: String,
    pub interfaces: Vec<AttachedInterface>,
    #[serde(default)]
    pub agent: AgentStatus,
}

/// The agent's advertisement counters in `status --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AgentStatus {
    pub accepted: u64,
    pub rejected: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    pub mode: String,
    pub program_id: u32,
}

/// `show --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Show {
    pub addresses: Vec<ShownAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ShownAddress {
    pub address: IpAddr,
    pub members: Vec<ShownMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ShownMember {
    pub address: IpAddr,
    pub interface: String,
    pub mac: Option<String>,
    pub mac_known: bool,
    /// `static` or `learned`.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub expires_in_ms: Option<u64>,
    #[serde(default)]
    pub preference: u16,
    #[serde(default)]
    pub weight: u16,
}

impl ShownMember {
    /// The member's address if it is an IPv4 one.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        match self.address {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }
}

impl Show {
    /// The members of `anycast`, empty if the address is not configured.
    pub fn members_of(&self, anycast: impl Into<IpAddr>) -> Vec<&ShownMember> {
        let anycast = anycast.into();
        self.addresses
            .iter()
            .filter(|a| a.address == anycast)
            .flat_map(|a| &a.members)
            .collect()
    }
}

/// `stats --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Stats {
    pub addresses: Vec<AddressStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AddressStats {
    pub address: IpAddr,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// ARP replies (an IPv4 address; 0 for IPv6).
    pub arp_replies: u64,
    /// Neighbor Advertisements (an IPv6 address; 0 for IPv4).
    pub nd_replies: u64,
    pub passed: Passed,
    pub members: Vec<MemberStats>,
}

/// Frames to an anycast address that went to the kernel instead, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Passed {
    pub ttl_exceeded: u64,
    pub no_member: u64,
    pub mac_unknown: u64,
    pub egress_not_attached: u64,
    pub not_for_router: u64,
    pub bad_checksum: u64,
    pub bad_source: u64,
    /// IPv6 extension headers deeper than the dataplane walks.
    pub ext_headers: u64,
}

impl Passed {
    pub fn total(&self) -> u64 {
        self.ttl_exceeded
            + self.no_member
            + self.mac_unknown
            + self.egress_not_attached
            + self.not_for_router
            + self.bad_checksum
            + self.bad_source
            + self.ext_headers
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemberStats {
    pub address: IpAddr,
    pub packets: u64,
    pub bytes: u64,
}

impl Stats {
    /// The counters of `anycast`; panics if the tool does not list the address.
    pub fn address(&self, anycast: impl Into<IpAddr>) -> &AddressStats {
        let anycast = anycast.into();
        self.addresses
            .iter()
            .find(|a| a.address == anycast)
            .unwrap_or_else(|| panic!("stats do not list {anycast}: {self:?}"))
    }
}

impl AddressStats {
    /// Packets forwarded to `member` (0 if not listed).
    pub fn member_packets(&self, member: impl Into<IpAddr>) -> u64 {
        let member = member.into();
        self.members
            .iter()
            .find(|m| m.address == member)
            .map_or(0, |m| m.packets)
    }

    /// Bytes forwarded to `member` (0 if not listed).
    pub fn member_bytes(&self, member: impl Into<IpAddr>) -> u64 {
        let member = member.into();
        self.members
            .iter()
            .find(|m| m.address == member)
            .map_or(0, |m| m.bytes)
    }
}

/// The `anycast-ctl` binary under test; panics with instructions if it is missing.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let path = if let Some(p) = std::env::var_os("ANYCAST_CTL") {
            PathBuf::from(p)
        } else {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
                PathBuf::from,
            );
            target.join("debug/anycast-ctl")
        };
        assert!(
            path.is_file(),
            "anycast-ctl binary not found at {}: run `cargo xtask test`, or \
             `cargo build -p anycast-ctl`, or set ANYCAST_CTL",
            path.display()
        );
        path
    })
}

/// Mounts bpffs on /sys/fs/bpf unless it already is; panics if that fails.
pub fn ensure_bpffs() {
    static MOUNTED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = MOUNTED.get_or_init(|| {
        if !bpffs_mounted() {
            cmd::run("mount", &["-t", "bpf", "bpf", BPFFS]).map_err(|e| format!("{e:#}"))?;
        }
        sweep_stale();
        Ok(())
    });
    if let Err(e) = result {
        panic!("bpffs is needed at {BPFFS}: {e}");
    }
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let (_, target, fstype) = (fields.next(), fields.next(), fields.next());
            target == Some(BPFFS) && fstype == Some("bpf")
        })
    })
}

fn expect_failure(outcome: Outcome) -> String {
    assert!(
        !outcome.status.success(),
        "`{}` should have failed but exited 0; stdout: {}",
        outcome.line,
        outcome.stdout
    );
    outcome.stderr
}

fn typed<T: serde::de::DeserializeOwned>(value: Value, what: &str) -> T {
    T::deserialize(&value)
        .with_context(|| format!("`{what} --json` does not match the contract: {value}"))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn remove_pins(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.with_context(|| format!("remove {}", dir.display())),
    }
}

/// Removes pin directories of test processes that no longer exist.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(BPFFS) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PIN_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !crate::pid_alive(pid)) {
            let _ = remove_pins(&entry.path());
        }
    }
}
