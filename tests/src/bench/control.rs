//! Benchmarks of the control plane at scale: 65,536 anycast addresses (198.18.0.0/15), one
//! member each, on a two-member namespace topology with the dataplane attached natively. Every
//! headline figure is the wall time of the real `anycast-ctl` binary as an operator on the router
//! runs it: started in the router namespace and waited for (no polling), process start included:
//!
//! 1. `bulk_load_65536_ms`: `anycast-ctl load FILE` installing all 65,536 addresses.
//! 2. `show_65536_ms`: `anycast-ctl show --json` with them installed (median of 3 runs).
//! 3. `member_add_65536_ms`, `member_del_65536_ms`: `member del` and `member add` of the only
//!    member of one installed address (median of 21 of each, alternating), so that all 65,536
//!    addresses stay installed. The add of a second member, which builds and swaps in a Maglev
//!    table, and the library calls alone (no process start) are reported as details.
//!
//! The topology and the pin directory are guards removed on every exit path.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anycast_ctl::{
    dataplane::Maps,
    members::{self, Placement},
    pin::PinDir,
};
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::{Ctl, Topology};

/// Installed addresses: the RFC's 2^16.
pub const ADDRESSES: u32 = 65_536;
const TARGET_ADD_DEL_MS: f64 = 5.0;
const TARGET_SHOW_MS: f64 = 2_000.0;
const TARGET_LOAD_MS: f64 = 10_000.0;
const ADD_DEL_RUNS: usize = 21;
const SHOW_RUNS: usize = 3;

/// The `i`th benchmark address, 198.18.0.0 + i.
pub fn address(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i)
}

/// A `load` file of `n` addresses, each with `member` as its one member.
pub fn load_file(n: u32, member: Ipv4Addr) -> String {
    let mut text = String::with_capacity(n as usize * 64);
    for i in 0..n {
        text.push_str(&format!(
            "[[member]]\nanycast = \"{}\"\nmember = \"{member}\"\n",
            address(i)
        ));
    }
    text
}

/// What [`run`] measured, in ms.
struct Figures {
    load: f64,
    show: f64,
    add: f64,
    del: f64,
    second_member: f64,
    /// `member add` right after a `member del` of the same address (waits a grace period).
    right_after: f64,
    library_add: f64,
    library_del: f64,
}

/// Runs the measurements; prints a table and returns the figures as JSON.
pub fn run() -> Result<Value> {
    crate::require_root();
    let (topo, ctl) = super::attached(2)?;
    let f = measure(&topo, &ctl)?;
    print(&f);
    Ok(report(&f))
}

fn measure(topo: &Topology, ctl: &Ctl) -> Result<Figures> {
    let run = |args: &[&str]| operator(topo, ctl, args);
    let dir = tempdir()?;
    let file = dir.join("memberships.toml");
    std::fs::write(&file, load_file(ADDRESSES, topo.members[0].ip))?;
    let load = run(&["load", file.to_str().context("UTF-8 temp path")?])?.0;
    std::fs::remove_dir_all(&dir)?;

    let mut show = Vec::new();
    for _ in 0..SHOW_RUNS {
        let (ms, out) = run(&["show", "--json"])?;
        let listed: Value = serde_json::from_str(&out)?;
        let n = listed["addresses"].as_array().map_or(0, Vec::len);
        ensure!(n == ADDRESSES as usize, "show lists {n} addresses");
        show.push(ms);
    }

    let a = address(1).to_string();
    let (m0, m1) = (
        topo.members[0].ip.to_string(),
        topo.members[1].ip.to_string(),
    );
    // Each `del` and each `add` on an address whose last change is older than
    // `journal::REUSE_AFTER` (a change sooner than that waits one grace period first: timed
    // apart, once).
    let (mut add, mut del) = (Vec::new(), Vec::new());
    let runs: Vec<String> = (1..=ADD_DEL_RUNS as u32)
        .map(|i| address(i).to_string())
        .collect();
    for a in &runs {
        del.push(run(&["member", "del", a, &m0])?.0);
    }
    std::thread::sleep(anycast_ctl::journal::REUSE_AFTER);
    for a in &runs {
        add.push(run(&["member", "add", a, &m0])?.0);
    }
    let again = address(ADD_DEL_RUNS as u32 + 1).to_string();
    run(&["member", "del", &again, &m0])?;
    let right_after = run(&["member", "add", &again, &m0])?.0;
    std::thread::sleep(anycast_ctl::journal::REUSE_AFTER);
    let second_member = run(&["member", "add", &a, &m1])?.0;
    run(&["member", "del", &a, &m1])?;
    let (library_add, library_del) = library_add_del(topo, ctl)?;
    Ok(Figures {
        load,
        show: median(&mut show),
        add: median(&mut add),
        del: median(&mut del),
        second_member,
        right_after,
        library_add,
        library_del,
    })
}

fn print(f: &Figures) {
    println!("\ncontrol plane at {ADDRESSES} addresses (anycast-ctl binary, wall time)");
    println!("{:<44} {:>10} {:>10}", "figure", "ms", "target");
    for (name, ms, target) in [
        ("load FILE (65,536 memberships)", f.load, TARGET_LOAD_MS),
        ("show --json, median of 3", f.show, TARGET_SHOW_MS),
        (
            "member add (only member), median of 21",
            f.add,
            TARGET_ADD_DEL_MS,
        ),
        (
            "member del (only member), median of 21",
            f.del,
            TARGET_ADD_DEL_MS,
        ),
    ] {
        println!("{name:<44} {ms:>10.2} {:>10}", format!("< {target:.0}"));
    }
    println!(
        "{:<44} {:>10.2}",
        "member add (2nd member: Maglev table)", f.second_member
    );
    println!(
        "{:<44} {:>10.2}",
        "member add right after a del of the address", f.right_after
    );
    println!(
        "{:<44} {:>10}",
        "library add / del alone, median ms",
        format!("{:.3} / {:.3}", f.library_add, f.library_del)
    );
}

fn report(f: &Figures) -> Value {
    let method = |what: &str| {
        format!(
            "{what}; with {ADDRESSES} addresses (198.18.0.0/15) installed by `load`, one member \
             each; the real anycast-ctl binary started in the router namespace and waited \
             for, wall time from spawn to exit (process start included)"
        )
    };
    json!({
        "bulk_load_65536_ms": {
            "value": f.load,
            "target_below": TARGET_LOAD_MS,
            "method": method("`anycast-ctl load FILE` of 65,536 [[member]] entries, one run, into an empty dataplane"),
        },
        "show_65536_ms": {
            "value": f.show,
            "target_below": TARGET_SHOW_MS,
            "method": method("`anycast-ctl show --json`, median of 3 runs (output read, not parsed, within the time)"),
        },
        "member_add_65536_ms": {
            "value": f.add,
            "target_below": TARGET_ADD_DEL_MS,
            "method": method("`member add A M` of the only member of an installed address (after its del more than journal::REUSE_AFTER before), median of 21 addresses"),
            "second_member_with_maglev_table_ms": f.second_member,
            "right_after_a_change_of_the_address_ms": f.right_after,
            "library_call_ms": f.library_add,
        },
        "member_del_65536_ms": {
            "value": f.del,
            "target_below": TARGET_ADD_DEL_MS,
            "method": method("`member del A M` of the only member of an installed address, median of 21 addresses"),
            "library_call_ms": f.library_del,
        },
    })
}

/// Median ms of `members::add` and `members::del` called in-process on the pinned maps (the
/// only member of an installed address, as above): the map work without process start.
fn library_add_del(topo: &Topology, ctl: &Ctl) -> Result<(f64, f64)> {
    let mut maps = Maps::open(&PinDir::new(ctl.pin_dir()))?;
    let member = &topo.members[0];
    let p = Placement {
        member: member.ip.into(),
        ifindex: topo.router.ifindex(&member.router_iface)?,
        mac: topo.members[0].ns.link_mac(&member.iface)?,
        smac: topo.router.link_mac(&member.router_iface)?,
        static_mac: false,
        signed_mac: false,
    };
    let (mut add, mut del) = (Vec::new(), Vec::new());
    let addresses: Vec<Ipv4Addr> = (0..ADD_DEL_RUNS as u32).map(|i| address(100 + i)).collect();
    for &a in &addresses {
        let start = Instant::now();
        members::del(&mut maps, a.into(), member.ip.into())?;
        del.push(ms(start.elapsed()));
    }
    std::thread::sleep(anycast_ctl::journal::REUSE_AFTER);
    for &a in &addresses {
        let info = members::static_info(members::now_ms(), 100, 100);
        let start = Instant::now();
        members::add(&mut maps, a.into(), &p, info, None)?;
        add.push(ms(start.elapsed()));
    }
    Ok((median(&mut add), median(&mut del)))
}

/// Runs `anycast-ctl --pin-dir DIR args...` in the router namespace as an operator there
/// would: the ms from spawn to exit, and stdout; an error with stderr if it failed.
pub(crate) fn operator(topo: &Topology, ctl: &Ctl, args: &[&str]) -> Result<(f64, String)> {
    let mut full = vec![
        "--pin-dir",
        ctl.pin_dir().to_str().context("UTF-8 pin dir")?,
    ];
    full.extend_from_slice(args);
    let (elapsed, out) = topo.router.in_ns(|| {
        let start = Instant::now();
        let out = std::process::Command::new(crate::ctl::binary())
            .args(&full)
            .stdin(std::process::Stdio::null())
            .output();
        (start.elapsed(), out)
    });
    let out = out?;
    ensure!(
        out.status.success(),
        "anycast-ctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok((ms(elapsed), String::from_utf8(out.stdout)?))
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("anycast-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
