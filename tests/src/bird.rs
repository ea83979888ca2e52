//! BIRD 2 inside a namespace, as a guard: [`Bird::start`] writes the configuration into a
//! directory of its own and runs `bird -f` there through nsenter; dropping it kills BIRD and
//! removes the directory.
//!
//! The configurations are the files of `contrib/bird/` that the README quotes, with their
//! `define` lines replaced by the test's addresses ([`configure`]): the tests run exactly what
//! an operator is told to run (a unit test checks the README still quotes them verbatim).
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result};

use crate::netns::Netns;

/// anycast's part of a site's configuration, included by the others.
pub const ANYCAST_CONF: &str = include_str!("../../contrib/bird/anycast.conf");
/// A site router telling its upstream by BGP.
pub const SITE_BGP: &str = include_str!("../../contrib/bird/site-bgp.conf");
/// A site router telling its upstream by OSPF.
pub const SITE_OSPF: &str = include_str!("../../contrib/bird/site-ospf.conf");
/// The upstream router with two sites as BGP neighbours.
pub const UPSTREAM_BGP: &str = include_str!("../../contrib/bird/upstream-bgp.conf");
/// The upstream router with two sites as OSPF neighbours.
pub const UPSTREAM_OSPF: &str = include_str!("../../contrib/bird/upstream-ospf.conf");

pub struct Bird {
    child: Child,
    dir: PathBuf,
}

impl Bird {
    /// Starts BIRD in `ns` with the configuration `config`.
    pub fn start(ns: &Netns, config: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("anycast-bird-{}", ns.name()));
        std::fs::create_dir_all(&dir).context("creating the BIRD directory")?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).context("writing bird.conf")?;
        // What `include "anycast.conf";` reads, beside the configuration.
        std::fs::write(dir.join("anycast.conf"), ANYCAST_CONF).context("writing anycast.conf")?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg("bird")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bird (is bird2 installed? cargo xtask setup)")?;
        Ok(Self { child, dir })
    }

    /// Kills BIRD at once (SIGKILL): a router that dies without a word to its neighbours.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` to BIRD (nsenter execs it: the child is BIRD), e.g. SIGSTOP: a router
    /// that freezes, its sessions open, silent.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// What `birdc ARGS...` on this BIRD's control socket prints (for diagnostics).
    pub fn birdc(&self, ns: &Netns, args: &[&str]) -> String {
        let socket = self.dir.join("bird.ctl");
        let socket = socket.to_str().unwrap_or_default();
        let net = format!("--net={}", ns.path().display());
        let full = [&[net.as_str(), "--", "birdc", "-s", socket][..], args].concat();
        crate::cmd::run("nsenter", &full).unwrap_or_else(|e| format!("{e:#}"))
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `template` (one of the files above) with its `define NAME = ...;` lines replaced by
/// `defines`; panics if the template does not define exactly those names.
pub fn configure(template: &str, defines: &[(&str, &str)]) -> String {
    let mut names = Vec::new();
    let mut out = String::new();
    for line in template.lines() {
        match line.strip_prefix("define ") {
            Some(rest) => {
                let name = rest.split_whitespace().next().unwrap_or_default();
                let (_, value) = defines
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("no value given for BIRD define {name}"));
                out.push_str(&format!("define {name} = {value};\n"));
                names.push(name);
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (name, _) in defines {
        assert!(names.contains(name), "the template has no define {name}");
    }
    out
}

/// A site router's BIRD (BGP): `router` is its address towards the upstream at `upstream`.
pub fn site_bgp(router: &str, upstream: &str) -> String {
    let defines = [
        ("ROUTER", router),
        ("UPSTREAM", upstream),
        ("LOCAL_AS", "64512"),
        ("UPSTREAM_AS", "64513"),
    ];
    configure(SITE_BGP, &defines)
}

/// The upstream router's BIRD (BGP) with sites at `site_a` and `site_b`.
pub fn upstream_bgp(router: &str, site_a: &str, site_b: &str) -> String {
    let defines = [
        ("ROUTER", router),
        ("SITE_A", site_a),
        ("SITE_B", site_b),
        ("LOCAL_AS", "64513"),
        ("SITE_AS", "64512"),
    ];
    configure(UPSTREAM_BGP, &defines)
}

/// A site router's BIRD (OSPF) with router id `router`.
pub fn site_ospf(router: &str) -> String {
    configure(SITE_OSPF, &[("ROUTER", router)])
}

/// The upstream router's BIRD (OSPF) with router id `router`.
pub fn upstream_ospf(router: &str) -> String {
    configure(UPSTREAM_OSPF, &[("ROUTER", router)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's BIRD configuration is the one the tests run: it quotes every file of
    /// contrib/bird verbatim.
    #[test]
    fn readme_quotes_the_tested_bird_configuration() {
        let readme = include_str!("../../README.md");
        for (name, text) in [
            ("anycast.conf", ANYCAST_CONF),
            ("site-bgp.conf", SITE_BGP),
            ("site-ospf.conf", SITE_OSPF),
            ("upstream-bgp.conf", UPSTREAM_BGP),
            ("upstream-ospf.conf", UPSTREAM_OSPF),
        ] {
            assert!(
                readme.contains(text),
                "README.md does not quote contrib/bird/{name} verbatim"
            );
        }
    }

    #[test]
    fn configure_replaces_the_defines() {
        let c = site_bgp("198.18.0.5", "198.18.0.6");
        assert!(c.contains("define ROUTER = 198.18.0.5;\n"), "{c}");
        assert!(c.contains("include \"anycast.conf\";"), "{c}");
        assert!(!c.contains("198.18.0.1;"), "{c}");
    }
}
