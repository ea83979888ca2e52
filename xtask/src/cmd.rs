//! Helpers to locate the workspace and to run child processes.
//!
//! Children inherit stdio and get `$HOME/.cargo/bin` on their `PATH`, where
//! rustup, cargo and bpf-linker live.

use std::env;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory (`$CARGO_TARGET_DIR`, else `<root>/target`).
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// `$HOME/.cargo/bin`, if `HOME` is set.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin"))
}

/// The current `PATH` with `$HOME/.cargo/bin` in front (unless already there).
fn child_path() -> OsString {
    let mut paths: Vec<PathBuf> = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect())
        .unwrap_or_default();
    if let Some(bin) = cargo_bin_dir()
        && !paths.contains(&bin)
    {
        paths.insert(0, bin);
    }
    env::join_paths(paths).unwrap_or_default()
}

/// A command run from the workspace root with the extended `PATH`
/// (also used to look up `program`).
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root()).env("PATH", child_path());
    cmd
}

/// A `cargo` command with the given arguments.
pub fn cargo(args: &[&str]) -> Command {
    let mut cmd = command("cargo");
    cmd.args(args);
    cmd
}

/// Prints the command line, runs it with inherited stdio and fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("==> {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout if it ran and succeeded.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ENV=value program args...`, showing only the variables set explicitly (except `PATH`).
fn describe(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter(|(key, _)| *key != "PATH")
        .filter_map(|(key, value)| Some(format!("{}={}", key.display(), value?.display())));
    let program = std::iter::once(cmd.get_program().display().to_string());
    let args = cmd.get_args().map(|arg| arg.display().to_string());
    envs.chain(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}
