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
///
/// The package install test (tests/tests/package.rs) gets the package of the debug build
/// under test (`ANYCAST_DEB`): the same recipe as `cargo xtask dist`, without a release build.
pub fn test(args: &[String]) -> Result<()> {
    setup()?;
    build_ctl(false)?;
    let deb = crate::dist::package("debug", &target_dir().join("debian/test"))?;
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
        .env("ANYCAST_CTL", ctl_path(false))
        .env("ANYCAST_DEB", deb);
    let totals = run_tests(&mut cmd);
    // One closing line over every test binary (cargo's last one is a doc-test run).
    if let Ok((passed, failed)) = &totals {
        println!("xtask test: {passed} passed, {failed} failed");
    }
    let (_, failed) = totals?;
    if failed > 0 {
        anyhow::bail!("{failed} tests failed");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and sums its `test result:` lines.
fn run_tests(cmd: &mut std::process::Command) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    println!("==> {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run cargo test: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        anyhow::bail!("cargo test failed ({status})");
    }
    Ok((passed, failed))
}

/// `test result: ok. 8 passed; 0 failed; ...` -> (8, 0).
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        let before = rest.split(&format!(" {word}")).next()?;
        before.rsplit([' ', '.', ';']).next()?.parse().ok()
    };
    Some((count("passed")?, count("failed")?))
}

/// `cargo xtask demo`: the demo binary of anycast-tests.
pub fn demo() -> Result<()> {
    setup()?;
    build_ctl(false)?;
    let mut cmd = cargo(&["run", "-p", "anycast-tests", "--bin", "demo"]);
    run(cmd.env("ANYCAST_CTL", ctl_path(false)))
}

/// `cargo xtask bench [-- ARGS]`: the release bench binary with ARGS (writes
/// target/bench/report.json).
pub fn bench(args: &[String]) -> Result<()> {
    setup()?;
    build_ctl(true)?;
    let mut cmd = cargo(&["run", "--release", "-p", "anycast-tests", "--bin", "bench"]);
    cmd.arg("--").args(args);
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

#[cfg(test)]
mod tests {
    use super::parse_result;

    #[test]
    fn parses_cargo_test_summaries() {
        let line = "test result: ok. 8 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 7.48s";
        assert_eq!(parse_result(line), Some((8, 0)));
        let line = "test result: FAILED. 7 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(parse_result(line), Some((7, 1)));
        assert_eq!(parse_result("running 8 tests"), None);
    }
}
