//! The tasks that build and run the project: build, test, demo and bench.
//!
//! Each runs setup first, then prints and runs its cargo steps in order,
//! stopping at the first failure.

use std::path::PathBuf;

use anyhow::Result;

use crate::cmd::{cargo, run, target_dir};
use crate::setup::setup;

/// `cargo xtask build [--release]`: anycast-ctl with the embedded eBPF object.
pub fn build(release: bool) -> Result<()> {
    setup()?;
    build_ctl(release)
}

/// `cargo xtask test [-- ARGS]`: all workspace tests, one at a time.
///
/// ARGS go to `cargo test`; anything after a further `--` goes to the test
/// harness, after `--test-threads=1`.
pub fn test(args: &[String]) -> Result<()> {
    setup()?;
    build_ctl(false)?;
    let (cargo_args, harness_args) = match args.iter().position(|arg| arg == "--") {
        Some(split) => (&args[..split], &args[split + 1..]),
        None => (args, &[][..]),
    };
    let mut cmd = cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "anycast-ebpf",
        "--no-fail-fast",
    ]);
    cmd.args(cargo_args)
        .args(["--", "--test-threads=1"])
        .args(harness_args)
        .env("ANYCAST_CTL", ctl_path(false));
    run(&mut cmd)
}

/// `cargo xtask demo`: the demo binary of anycast-tests.
pub fn demo() -> Result<()> {
    setup()?;
    build_ctl(false)?;
    let mut cmd = cargo(&["run", "-p", "anycast-tests", "--bin", "demo"]);
    run(cmd.env("ANYCAST_CTL", ctl_path(false)))
}

/// `cargo xtask bench`: the release bench binary (writes target/bench/report.json).
pub fn bench() -> Result<()> {
    setup()?;
    build_ctl(true)?;
    let mut cmd = cargo(&["run", "--release", "-p", "anycast-tests", "--bin", "bench"]);
    run(cmd.env("ANYCAST_CTL", ctl_path(true)))
}

/// `cargo build -p anycast-ctl [--release]`.
fn build_ctl(release: bool) -> Result<()> {
    let mut cmd = cargo(&["build", "-p", "anycast-ctl"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

/// Absolute path of the anycast-ctl binary of the given profile.
fn ctl_path(release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    target_dir().join(profile).join("anycast-ctl")
}
