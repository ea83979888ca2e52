//! Builds the eBPF object (crate `anycast-ebpf`) and leaves it in OUT_DIR as `anycast`, for
//! `include_bytes`.
//!
//! The object is built with the stable toolchain: its LLVM (22) is the one bpf-linker is linked
//! against (`cargo xtask setup`), so the bitcode always matches the linker, whatever nightly the
//! machine has. `-Z build-std=core` on stable needs RUSTC_BOOTSTRAP, set for that child only.
//!
//! This is the small equivalent of `aya_build::build_ebpf` (same command, flags and target
//! directory) that keeps the inner build's output to itself unless the build fails: aya-build
//! forwards every line of it as a cargo warning.
use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

const PACKAGE: &str = "anycast-ebpf";
/// The objects of the eBPF crate's binaries: the dataplane, and the benchmark and test-peer
/// programs (used only by the tests and the bench).
const BINARIES: [&str; 2] = ["anycast", "anycast-bench"];
const ROOT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../anycast-ebpf");
const TOOLCHAIN: &str = "stable";
const SKIP: &str = "AYA_BUILD_SKIP";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP}");
    if let Some(skip) = env::var_os(SKIP)
        && (skip == "1" || skip.eq_ignore_ascii_case("true"))
    {
        println!(
            "cargo:warning={SKIP}={}; skipping eBPF build",
            skip.display()
        );
        return Ok(());
    }
    // The build-dependency on anycast-ebpf covers its library; this covers its binary.
    println!("cargo:rerun-if-changed={ROOT_DIR}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let target = bpf_target()?;
    let target_dir = out_dir.join("aya-build").join("target").join(PACKAGE);
    let mut cmd = ebpf_build(&target, &target_dir)?;
    let output = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&output.stderr).lines())
        {
            println!("cargo:warning={line}");
        }
        bail!("{cmd:?} failed: {:?}", output.status);
    }
    for binary in BINARIES {
        let object = target_dir.join(&target).join("release").join(binary);
        let dst = out_dir.join(binary);
        fs::copy(&object, &dst)
            .with_context(|| format!("failed to copy {} to {}", object.display(), dst.display()))?;
    }
    Ok(())
}

/// `bpfel-unknown-none` or `bpfeb-unknown-none`, after the host's byte order.
fn bpf_target() -> anyhow::Result<String> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    let prefix = match endian.as_str() {
        "little" => "bpfel",
        "big" => "bpfeb",
        other => bail!("unsupported endian={other}"),
    };
    Ok(format!("{prefix}-unknown-none"))
}

/// The inner `cargo build` of the eBPF binary, with aya-build's arguments and environment.
fn ebpf_build(target: &str, target_dir: &Path) -> anyhow::Result<Command> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let arch = if arch.starts_with("riscv64") {
        "riscv64"
    } else {
        arch.as_str()
    };
    // `allows-misaligned-mem-access`: LLVM may load and store packet and map bytes in wide
    // words at any offset (a MAC in two accesses, not twelve; an IPv4 header summed in five
    // words). The kernel accepts misaligned packet and map-value accesses on architectures
    // with efficient unaligned access (x86-64, arm64) unless a program asks for strict
    // alignment, which ours does not; elsewhere the verifier checks alignment strictly, so
    // the flag is set only for those two (the code is the same without it: LLVM then splits
    // the wide accesses into bytes). Stack accesses must be aligned everywhere: the one byte
    // buffer written through a pointer (the ARP answer) is `packet::Aligned`. On the AMD VM
    // the flag took 10-45% off every TEST_RUN case (the ND reply most).
    let mut rustflags = OsString::new();
    let mut flags = vec![
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "\x1f-Cdebuginfo=2".to_owned(),
        "\x1f-Clink-arg=--btf".to_owned(),
    ];
    if matches!(arch, "x86_64" | "aarch64") {
        flags.push("\x1f-Ctarget-feature=+allows-misaligned-mem-access".to_owned());
    }
    for s in flags {
        rustflags.push(s);
    }
    let mut cmd = cargo();
    cmd.args(["build", "--package", PACKAGE, "--bins", "--release"])
        .args(["--target", target])
        .args(["-Z", "build-std=core", "--features", ""])
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // Make sure that the toolchain's own rustc is used.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    Ok(cmd)
}

/// `cargo` of the stable toolchain through rustup, or the current one where there is no rustup.
fn cargo() -> Command {
    let rustup = env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join("rustup").is_file()));
    if !rustup {
        println!("cargo:warning=rustup not found; proceeding with current toolchain");
        return Command::new("cargo");
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo"]);
    cmd
}
