//! Test harness of anycast. `frames` builds frames and a BPF_PROG_TEST_RUN bed for fixture
//! tables; the other modules build network namespaces, the DESIGN.md topology, drive the
//! `anycast-ctl` binary, send real traffic and capture frames (`capture`), so each test in
//! `tests/` reads like an operator's session.
//!
//! Everything that creates state is a guard: namespaces, pin directories and server threads are
//! removed when dropped, also when a test panics. Every command and traffic loop is bounded in
//! time. Only documentation and benchmarking prefixes are used, and only inside namespaces the
//! harness created; the root namespace's links and routes are never touched.

pub mod bench;
pub mod bird;
pub mod capture;
pub mod cmd;
pub mod ctl;
pub mod daemon;
pub mod direct;
pub mod failover;
pub mod frames;
pub mod lab;
pub mod netns;
pub mod prometheus;
pub mod sites;
pub mod topology;
pub mod traffic;
pub mod xdp;

use std::time::{Duration, Instant};

pub use ctl::Ctl;
pub use netns::Netns;
pub use topology::{ANYCAST, ANYCAST6, ClientMode, ClientStack, Topology, TopologyOptions};

/// Panics unless running as root: namespaces, XDP and bpffs all need it, and a test that
/// silently skips proves nothing.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests build network namespaces and attach XDP: run them as root"
    );
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this pid exists (used to sweep what killed test runs left behind).
pub(crate) fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
