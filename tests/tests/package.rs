//! The Debian package installs like any router daemon's and goes away without a trace:
//! `dpkg -i`, the binary, its man pages, completions and documentation where Debian keeps
//! them, a systemd unit `systemd-analyze verify` accepts, then `dpkg -r`.
//!
//! The package is `$ANYCAST_DEB` (set by `cargo xtask test`, which packages the debug build
//! under test with the recipe of `cargo xtask dist`), else the release package `cargo xtask dist`
//! leaves in target/debian. The test refuses to run, failing, on a machine where anycast-ctl is
//! installed as a package or where any path of the package exists (a hand-installed
//! /usr/sbin/anycast-ctl, another tool's file): it would not leave such a machine as it was.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anycast_tests::cmd;

const PACKAGE: &str = "anycast-ctl";
const BIN: &str = "/usr/sbin/anycast-ctl";
const UNIT: &str = "/lib/systemd/system/anycast-agent.service";

fn deb() -> PathBuf {
    if let Some(p) = std::env::var_os("ANYCAST_DEB") {
        return PathBuf::from(p);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let found = std::fs::read_dir(&dir).ok().and_then(|d| {
        d.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
    });
    found.unwrap_or_else(|| {
        panic!(
            "no package in {}: run `cargo xtask dist` (or `cargo xtask test`), or set ANYCAST_DEB",
            dir.display()
        )
    })
}

/// dpkg's status of the package, "" when dpkg does not know it.
fn status() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", PACKAGE])
        .output()
        .expect("dpkg-query");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The files (not directories) the package holds, as absolute paths.
fn contents(deb: &Path) -> Vec<PathBuf> {
    let listing = cmd::run("dpkg-deb", &["--contents", deb.to_str().unwrap()]).unwrap();
    (listing.lines())
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| PathBuf::from(p.trim_start_matches('.')))
        .collect()
}

/// Removes the package if a test fails after installing it.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if status().starts_with("ii") {
            let _ = cmd::run("dpkg", &["-r", PACKAGE]);
        }
    }
}

#[test]
fn the_package_installs_verifies_and_removes_cleanly() {
    anycast_tests::require_root();
    let deb = deb();
    let files = contents(&deb);
    assert!(files.contains(&PathBuf::from(BIN)) && files.contains(&PathBuf::from(UNIT)));
    assert!(
        ["", "un"].contains(&status().as_str()),
        "{PACKAGE} is installed on this machine ({}): this test installs and removes it; \
         remove it first (dpkg -r {PACKAGE})",
        status()
    );
    let present: Vec<_> = files.iter().filter(|f| f.exists()).collect();
    assert!(
        present.is_empty(),
        "files of the package already exist here, from something else: {present:?}; \
         the test would replace them"
    );

    let guard = Installed;
    cmd::run("dpkg", &["-i", deb.to_str().unwrap()]).unwrap();
    assert!(status().starts_with("ii"), "dpkg status {}", status());

    let version = cmd::run(BIN, &["--version"]).unwrap();
    assert_eq!(
        version.trim(),
        format!("anycast-ctl {}", env!("CARGO_PKG_VERSION"))
    );
    // man finds the page Debian keeps, whatever else is on MANPATH; one per command.
    for page in [
        "anycast-ctl",
        "anycast-ctl-upgrade",
        "anycast-ctl-member-add",
        "anycast-ctl-probe",
    ] {
        let path = cmd::run("man", &["-w", page]).unwrap();
        assert_eq!(path.trim(), format!("/usr/share/man/man8/{page}.8.gz"));
    }
    let verify =
        cmd::run_with_timeout("systemd-analyze", &["verify", UNIT], cmd::COMMAND_TIMEOUT).unwrap();
    assert!(
        verify.status.success() && verify.stderr.trim().is_empty(),
        "systemd-analyze verify: {}",
        verify.stderr
    );
    for path in [
        "/usr/share/bash-completion/completions/anycast-ctl",
        "/usr/share/zsh/vendor-completions/_anycast-ctl",
        "/usr/share/fish/vendor_completions.d/anycast-ctl.fish",
        "/usr/share/doc/anycast-ctl/examples/agent.toml",
        "/usr/share/doc/anycast-ctl/examples/keys.toml.example",
        "/usr/share/doc/anycast-ctl/copyright",
    ] {
        assert!(Path::new(path).is_file(), "{path} missing");
    }

    cmd::run("dpkg", &["-r", PACKAGE]).unwrap();
    drop(guard);
    assert!(
        ["", "un"].contains(&status().as_str()),
        "dpkg status {}",
        status()
    );
    let left: Vec<_> = files.iter().filter(|f| f.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_package_refuses_to_replace_an_anycast_ctl_no_package_owns() {
    anycast_tests::require_root();
    let deb = deb();
    assert!(
        ["", "un"].contains(&status().as_str()) && !Path::new(BIN).exists(),
        "{BIN} or the package is already on this machine: this test needs neither"
    );
    // A hand-installed copy (as `install ... /usr/sbin/` would leave): removed at the end.
    struct Foreign;
    impl Drop for Foreign {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(BIN);
        }
    }
    let _foreign = Foreign;
    std::fs::write(BIN, "#!/bin/sh\necho someone else's\n").unwrap();
    let _guard = Installed;
    let out = cmd::run_with_timeout("dpkg", &["-i", deb.to_str().unwrap()], cmd::COMMAND_TIMEOUT)
        .unwrap();
    assert!(!out.status.success(), "dpkg -i replaced a foreign {BIN}");
    assert!(
        out.stderr
            .contains("belongs to no package; move it away first"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(BIN).unwrap(),
        "#!/bin/sh\necho someone else's\n"
    );
    // A failed preinst leaves the package "not installed" (or half-installed, which purges).
    if !["", "un"].contains(&status().as_str()) {
        cmd::run("dpkg", &["--purge", PACKAGE]).unwrap();
    }
    assert!(
        ["", "un"].contains(&status().as_str()),
        "dpkg status {}",
        status()
    );
}
