//! `cargo xtask dist`: the Debian package `target/debian/anycast-ctl_VERSION_ARCH.deb`.
//!
//! Built with `dpkg-deb` from a tree staged here, not with cargo-deb: dpkg-deb is part of every
//! Debian system, so nothing has to be compiled or kept in step with rustc, and the tree is
//! plain to read. It holds:
//! - `/usr/sbin/anycast-ctl` (stripped; the eBPF object is inside it);
//! - `/lib/systemd/system/anycast-agent.service` (contrib/);
//! - `/usr/share/doc/anycast-ctl/`: README, copyright and, under `examples/`, the agent
//!   configuration and the key file example (contrib/), to copy to /etc/anycast/;
//! - a man page per command, `/usr/share/man/man8/anycast-ctl*.8.gz`, and bash, zsh and fish
//!   completions, all written by `anycast-ctl-assets` from the clap definitions;
//! - a `preinst` that refuses to install over an `/usr/sbin/anycast-ctl` no package owns (a
//!   hand-installed copy or another tool): dpkg would overwrite it silently.
//!
//! [`package`] is also what `cargo xtask test` uses, on the debug build it tests, for the
//! install test (tests/tests/package.rs); `dist` packages the release build.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::cmd::{command, probe, run, target_dir, workspace_root};

pub const PACKAGE: &str = "anycast-ctl";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const BIN: &str = "usr/sbin/anycast-ctl";
const UNIT: &str = "lib/systemd/system/anycast-agent.service";
const DOC: &str = "usr/share/doc/anycast-ctl";

const PREINST: &str = r#"#!/bin/sh
# Refuse to replace an anycast-ctl this package did not install: dpkg would overwrite it.
set -e
if [ "$1" = install ] && [ -e /usr/sbin/anycast-ctl ] \
    && ! dpkg-query -S /usr/sbin/anycast-ctl >/dev/null 2>&1; then
    echo "anycast-ctl: /usr/sbin/anycast-ctl exists and belongs to no package; move it away first" >&2
    exit 1
fi
"#;

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: anycast

Files: *
License: Expat or Apache-2.0
";

/// `cargo xtask dist`: builds the release binaries and packages them.
pub fn dist() -> Result<()> {
    crate::setup::setup()?;
    run(&mut crate::cmd::cargo(&[
        "build",
        "--release",
        "-p",
        "anycast-ctl",
    ]))?;
    let deb = package("release", &target_dir().join("debian"))?;
    println!("package: {}", deb.display());
    Ok(())
}

/// Packages the binaries of `profile` (`debug` or `release`) into `out_dir`; returns the .deb.
pub fn package(profile: &str, out_dir: &Path) -> Result<PathBuf> {
    let bins = target_dir().join(profile);
    let arch = probe(command("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture failed: is this Debian?")?;
    let name = format!("{PACKAGE}_{VERSION}_{}", arch.trim());
    let stage = out_dir.join(format!("stage-{profile}")).join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let root = workspace_root();
    let contrib = root.join("contrib");
    install(&bins.join("anycast-ctl"), &stage.join(BIN), 0o755)?;
    run(command("strip").arg(stage.join(BIN)))?;
    install(
        &contrib.join("anycast-agent.service"),
        &stage.join(UNIT),
        0o644,
    )?;
    install(
        &root.join("README.md"),
        &stage.join(DOC).join("README.md"),
        0o644,
    )?;
    for example in ["agent.toml", "keys.toml.example"] {
        install(
            &contrib.join(example),
            &stage.join(DOC).join("examples").join(example),
            0o644,
        )?;
    }
    fs::write(stage.join(DOC).join("copyright"), COPYRIGHT)?;
    assets(
        &bins.join("anycast-ctl-assets"),
        &stage,
        &out_dir.join(format!("assets-{profile}")),
    )?;
    control(&stage, arch.trim())?;
    let deb = out_dir.join(format!("{name}.deb"));
    run(command("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

/// Man pages (gzipped, as Debian ships them) and completions, from `anycast-ctl-assets`.
fn assets(tool: &Path, stage: &Path, scratch: &Path) -> Result<()> {
    if scratch.exists() {
        fs::remove_dir_all(scratch)?;
    }
    run(command(tool.to_str().context("UTF-8 path")?).arg(scratch))?;
    let man = stage.join("usr/share/man/man8");
    let mut pages = Vec::new();
    for page in fs::read_dir(scratch.join("man8"))? {
        let page = page?.path();
        let dst = man.join(page.file_name().context("page name")?);
        install(&page, &dst, 0o644)?;
        pages.push(dst);
    }
    run(command("gzip").args(["-9n"]).args(&pages))?;
    let completions = scratch.join("completions");
    for (file, dir) in [
        (
            "anycast-ctl.bash",
            "usr/share/bash-completion/completions/anycast-ctl",
        ),
        (
            "_anycast-ctl",
            "usr/share/zsh/vendor-completions/_anycast-ctl",
        ),
        (
            "anycast-ctl.fish",
            "usr/share/fish/vendor_completions.d/anycast-ctl.fish",
        ),
    ] {
        install(&completions.join(file), &stage.join(dir), 0o644)?;
    }
    Ok(())
}

fn control(stage: &Path, arch: &str) -> Result<()> {
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let size_kib = du(stage)? / 1024 + 1;
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: anycast developers <anycast@example.invalid>\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6, libgcc-s1\n\
         Suggests: bird2\n\
         Section: net\n\
         Priority: optional\n\
         Description: RFC 1546 host anycasting: XDP router dataplane and its control tool\n \
         anycast-ctl attaches an XDP program to a Linux router's interfaces that answers ARP\n \
         for anycast addresses and forwards each flow to one member host, and runs the agent\n \
         that learns members from their signed advertisements (anycast-agent.service).\n"
    );
    fs::write(debian.join("control"), control)?;
    fs::write(debian.join("preinst"), PREINST)?;
    fs::set_permissions(debian.join("preinst"), fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Copies `src` to `dst` (making its directories) with `mode`.
fn install(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    if !src.is_file() {
        bail!("{} is missing (was it built?)", src.display());
    }
    fs::create_dir_all(dst.parent().context("destination has a parent")?)?;
    fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            du(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
