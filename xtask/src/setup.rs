//! `cargo xtask setup`: install what a fresh Debian 12 machine lacks.
//!
//! Each item is checked with a cheap probe and installed only when missing,
//! so a second run is fast and prints a single summary line. The recipes
//! follow the verified toolchain notes (shared/docs/TOOLCHAIN.md).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::cmd::{cargo, command, probe, run};

/// Debian packages the tests, the demo and the package need (`prometheus` brings `promtool`;
/// `dist` needs strip; the package's install test `man -w` and `systemd-analyze verify`).
const DEB_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "bpftool",
    "strace",
    "bird2",
    "prometheus",
    "binutils",
    "man-db",
    "systemd",
];

/// Where bpffs must be mounted.
const BPFFS: &str = "/sys/fs/bpf";

/// Installs whatever is missing; prints one line per installed item.
pub fn setup() -> Result<()> {
    ensure_root()?;
    let mut installed = 0;
    // anycast-ctl's build.rs builds the eBPF crate with stable (RUSTC_BOOTSTRAP=1,
    // `-Z build-std=core`), whose LLVM is the one bpf-linker links against: no nightly needed.
    installed += usize::from(rust_src("stable")?);
    installed += usize::from(bpf_linker()?);
    installed += usize::from(deb_packages()?);
    installed += usize::from(bpffs()?);
    if installed == 0 {
        println!("setup: everything present");
    }
    Ok(())
}

/// Fails unless the effective user is root (read from /proc/self/status).
fn ensure_root() -> Result<()> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1));
    if euid != Some("0") {
        bail!(
            "cargo xtask must run as root (it installs packages, mounts bpffs and loads XDP programs)"
        );
    }
    Ok(())
}

/// Adds the rust-src component to `toolchain` (needed by `-Z build-std=core`).
fn rust_src(toolchain: &str) -> Result<bool> {
    let args = ["component", "list", "--toolchain", toolchain, "--installed"];
    let list = probe(command("rustup").args(args)).unwrap_or_default();
    if list.lines().any(|line| line.trim() == "rust-src") {
        return Ok(false);
    }
    run(command("rustup").args(["component", "add", "rust-src", "--toolchain", toolchain]))?;
    println!("setup: installed rust-src on {toolchain}");
    Ok(true)
}

/// Installs bpf-linker (0.13.0 against rustc's LLVM 22, else 0.10.4) if it does not run.
fn bpf_linker() -> Result<bool> {
    if bpf_linker_runs() {
        return Ok(false);
    }
    if let Err(err) = install_bpf_linker_llvm22() {
        println!("setup: bpf-linker 0.13.0 failed ({err:#}); falling back to 0.10.4");
        run(&mut cargo(&[
            "install",
            "bpf-linker",
            "--version",
            "0.10.4",
            "--locked",
            "--force",
        ]))?;
    }
    if !bpf_linker_runs() {
        bail!("bpf-linker was installed but `bpf-linker --version` does not run");
    }
    println!("setup: installed bpf-linker");
    Ok(true)
}

fn bpf_linker_runs() -> bool {
    probe(command("bpf-linker").arg("--version")).is_some()
}

/// bpf-linker 0.13.0 linked against the libLLVM 22 shipped in rustc's sysroot.
///
/// Stable's sysroot (1.95, LLVM 22.1 like the nightly in use) is used rather
/// than nightly's: installing or updating nightly replaces its libLLVM and
/// would leave a bpf-linker linked to it unable to start.
fn install_bpf_linker_llvm22() -> Result<()> {
    let sysroot = probe(command("rustc").args(["+stable", "--print", "sysroot"]))
        .context("`rustc +stable --print sysroot` failed")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = llvm_dylib_name(&lib)?;
    let lib = lib.display();
    let rustflags = format!("-L native={lib} -l dylib={llvm} -C link-arg=-Wl,-rpath,{lib}");
    // --force replaces a binary that no longer runs (e.g. its toolchain moved).
    let mut cmd = cargo(&[
        "+stable",
        "install",
        "bpf-linker",
        "--version",
        "0.13.0",
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        "llvm-22,no-llvm-linking",
        "--target",
        "x86_64-unknown-linux-gnu",
    ]);
    run(cmd.env("RUSTFLAGS", rustflags))
}

/// The link name (`LLVM-22-rust-...`) of `libLLVM-*-rust-*.so` in `lib`.
fn llvm_dylib_name(lib: &Path) -> Result<String> {
    let entries = fs::read_dir(lib).with_context(|| format!("cannot list {}", lib.display()))?;
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find_map(|name| {
            let stem = name.strip_prefix("lib")?.strip_suffix(".so")?;
            (stem.starts_with("LLVM-") && stem.contains("-rust-")).then(|| stem.to_string())
        })
        .with_context(|| format!("no libLLVM-*-rust-*.so in {}", lib.display()))
}

/// Installs the missing Debian packages with one `apt-get update` and one install.
fn deb_packages() -> Result<bool> {
    let missing: Vec<&str> = DEB_PACKAGES
        .iter()
        .copied()
        .filter(|name| !deb_installed(name))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    run(command("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(command("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    println!("setup: installed {}", missing.join(" "));
    Ok(true)
}

fn deb_installed(name: &str) -> bool {
    probe(command("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_some_and(|status| status.contains("install ok installed"))
}

/// Mounts bpffs at /sys/fs/bpf unless /proc/mounts already lists it.
fn bpffs() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    });
    if mounted {
        return Ok(false);
    }
    run(command("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    println!("setup: mounted bpffs at {BPFFS}");
    Ok(true)
}
