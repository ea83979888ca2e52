//! `cargo xtask fuzz [--seconds N]`: a bounded smoke run of the advertisement parser's fuzz
//! target (fuzz/fuzz_targets/advert_parse.rs).
//!
//! Not part of `cargo xtask test`, and runs no setup: it needs neither root nor the eBPF
//! toolchain, only the installed nightly toolchain and cargo-fuzz, which it installs when
//! `cargo fuzz --version` fails. New inputs go to fuzz/corpus/ (ignored by git); the committed
//! seeds in fuzz/seeds/ are read only.

use std::fs;

use anyhow::{Context, Result};

use crate::cmd::{cargo, probe, run, workspace_root};

/// How long a run lasts unless `--seconds` says otherwise.
pub const DEFAULT_SECONDS: u64 = 30;

/// The fuzz target.
const TARGET: &str = "advert_parse";

/// Installs cargo-fuzz if needed, then fuzzes [`TARGET`] for `seconds` seconds.
pub fn fuzz(seconds: u64) -> Result<()> {
    if probe(&mut cargo(&["fuzz", "--version"])).is_none() {
        run(&mut cargo(&["install", "cargo-fuzz", "--locked"]))?;
    }
    let dir = workspace_root().join("fuzz");
    let corpus = dir.join("corpus").join(TARGET);
    fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
    let mut cmd = cargo(&["+nightly", "fuzz", "run", TARGET]);
    cmd.current_dir(&dir)
        .arg(&corpus)
        .arg(dir.join("seeds").join(TARGET))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"));
    run(&mut cmd)
}
