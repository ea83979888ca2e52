//! State safety, as a careless operator would meet it: pins that are not anycast's, repeated
//! interfaces, half-deleted or foreign pin directories, addresses that must never be anycast,
//! and the agent's checks before it changes anything. Each test is named after the fault it
//! guards against; each error must be one line, and an error must mean nothing changed.
use std::{net::Ipv4Addr, path::Path, time::Duration};

use anycast_common::names;
use anycast_tests::{
    ANYCAST, ClientMode, Ctl, Topology, TopologyOptions, daemon::Daemon, traffic::udp_round,
    wait_until,
};

fn topology() -> Topology {
    Topology::new(TopologyOptions::default()).expect("topology")
}

/// The topology with the anycast address off the members' `lo`: `announce` adds it.
fn topology_for_announcers() -> Topology {
    let topo = topology();
    for m in &topo.members {
        m.ns.ip(&["addr", "del", "198.51.100.53/32", "dev", "lo"])
            .unwrap();
    }
    topo
}

/// The MAC `show` gives member `ip`.
fn shown_mac(ctl: &Ctl, ip: Ipv4Addr) -> Option<String> {
    ctl.show()
        .addresses
        .iter()
        .flat_map(|a| a.members.iter())
        .find(|x| x.address == ip)
        .and_then(|x| x.mac.clone())
}

/// The first line of `stderr` that says something (clap's hint aside), which must be the only.
fn one_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    assert_eq!(lines.len(), 1, "want a one-line error, got:\n{stderr}");
    lines[0].to_string()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Pins a small map of "another tool" at `path`.
fn foreign_pin(path: &Path) {
    let map: aya::maps::Array<aya::maps::MapData, u32> =
        aya::maps::Array::create(1, 0).expect("create a map");
    map.pin(path).expect("pin it");
}

#[test]
fn detach_deletes_only_anycast_pins() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    ctl.attach(&["r0"], "native").expect("attach");
    let other = ctl.pin_dir().join("other_tool_map");
    foreign_pin(&other);
    ctl.detach(&["r0"]).expect("detach");
    assert_eq!(
        entries(ctl.pin_dir()),
        vec!["other_tool_map".to_string()],
        "the last detach must remove anycast's pins and nothing else"
    );
    std::fs::remove_file(&other).unwrap();
}

#[test]
fn pin_dir_at_the_bpffs_root_is_refused() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    let before = entries(Path::new("/sys/fs/bpf"));
    let err = one_line(&ctl.run_fail_raw(&["--pin-dir", "/sys/fs/bpf", "attach", "r0"]));
    assert!(err.contains("root of a bpf filesystem"), "{err}");
    let after = entries(Path::new("/sys/fs/bpf"));
    for name in names::PINNED.iter().chain(&["links"]) {
        assert!(
            !after.contains(&name.to_string()) || before.contains(&name.to_string()),
            "{name} was created at the bpffs root"
        );
    }
    assert!(topo.router.xdp_prog_ids("r0").unwrap().is_empty());
}

#[test]
fn pin_dir_with_a_missing_parent_is_named_as_such() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    let dir = format!("{}/nested", ctl.pin_dir().display());
    let err = one_line(&ctl.run_fail_raw(&["--pin-dir", &dir, "attach", "r0"]));
    assert!(err.contains("does not exist"), "{err}");
    assert!(!err.contains("not on a bpf filesystem"), "{err}");
}

#[test]
fn detach_with_a_repeated_interface_succeeds_and_changes_all() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    ctl.attach(&["r0", "r1", "r2", "r3", "r3"], "native")
        .expect("attach with a repeated interface");
    ctl.detach(&["r0", "r0"]).expect("detach r0 r0");
    let attached: Vec<String> = ctl
        .status()
        .interfaces
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(attached, ["r1", "r2", "r3"]);
    ctl.detach(&["r1", "r2", "r3", "r3"])
        .expect("detach r1 r2 r3 r3");
    assert!(
        !ctl.pin_dir().exists(),
        "pins left: {:?}",
        entries(ctl.pin_dir())
    );
    for i in ["r0", "r1", "r2", "r3"] {
        assert!(topo.router.xdp_prog_ids(i).unwrap().is_empty(), "{i}");
    }
}

#[test]
fn a_missing_map_pin_is_refused_and_attach_leaves_nothing_new() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    ctl.attach(&["r0"], "native").expect("attach");
    std::fs::remove_file(ctl.pin_dir().join(names::HOSTS)).unwrap();
    let before = entries(ctl.pin_dir());
    let err = one_line(&ctl.run_fail(&["attach", "r1"]));
    assert!(err.contains("HOSTS") && err.contains("detach"), "{err}");
    assert_eq!(entries(ctl.pin_dir()), before, "attach changed the pins");
    assert!(topo.router.xdp_prog_ids("r1").unwrap().is_empty());
    // The way out the error names works.
    ctl.detach(&["r0"])
        .expect("detach from an incomplete pin directory");
    assert!(!ctl.pin_dir().exists());
}

#[test]
fn pins_of_another_layout_version_are_refused_in_one_line() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    ctl.attach(&["r0"], "native").expect("attach");
    let data = aya::maps::MapData::from_pin(ctl.pin_dir().join(names::LAYOUT)).unwrap();
    let mut layout: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    layout.set(0, 1, 0).unwrap();
    let before = entries(ctl.pin_dir());
    let err = one_line(&ctl.run_fail(&["attach", "r1"]));
    assert!(err.contains("layout version 1"), "{err}");
    assert_eq!(entries(ctl.pin_dir()), before);
    assert!(topo.router.xdp_prog_ids("r1").unwrap().is_empty());
}

#[test]
fn attach_in_another_mode_or_with_new_flows_is_refused() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    ctl.attach(&["r0"], "skb").expect("attach in skb mode");
    let err = one_line(&ctl.run_fail(&["attach", "r0", "r1", "--mode", "native"]));
    assert!(err.contains("r0") && err.contains("skb"), "{err}");
    assert!(topo.router.xdp_prog_ids("r1").unwrap().is_empty());
    let err = one_line(&ctl.run_fail(&["attach", "r1", "--mode", "skb", "--flows", "4096"]));
    assert!(err.contains("--flows"), "{err}");
    assert!(topo.router.xdp_prog_ids("r1").unwrap().is_empty());
    ctl.attach(&["r0", "r1"], "skb")
        .expect("the same mode is idempotent");
}

/// Regression: `member add` accepted the router's own address, members', the client's, a
/// subnet broadcast and non-unicast classes as anycast addresses.
#[test]
fn addresses_that_must_never_be_anycast_are_refused() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    ctl.attach(&["r0", "r1", "r2", "r3"], "native")
        .expect("attach");
    ctl.member_add(ANYCAST, topo.members[0].ip)
        .expect("a real anycast address");
    let show = ctl.show();
    for bad in [
        "192.0.2.1",       // the router's own address
        "203.0.113.1",     // the router's, towards m1
        "203.0.113.2",     // a member's address (m1 itself)
        "203.0.113.6",     // another member's address
        "192.0.2.10",      // the client's
        "192.0.2.255",     // the client subnet's broadcast
        "240.0.0.1",       // reserved
        "169.254.1.1",     // link-local
        "0.0.0.0",         // this network
        "255.255.255.255", // limited broadcast
        "127.0.0.1",       // loopback
        "224.0.0.1",       // multicast
    ] {
        let member = topo.members[0].ip.to_string();
        let err = one_line(&ctl.run_fail(&["member", "add", bad, &member]));
        assert!(err.contains(bad), "{bad}: {err}");
        assert_eq!(ctl.show(), show, "{bad} changed the state");
    }
    // A member that is an anycast address, or the router itself, is refused too.
    let err = one_line(&ctl.run_fail(&["member", "add", "198.51.100.54", "192.0.2.1"]));
    assert!(err.contains("192.0.2.1"), "{err}");
    assert_eq!(ctl.show(), show);
}

/// Regression: `--dev r2` for a member reached through r1 waited 3 s for ARP and left a
/// FAILED neighbour entry on r2.
#[test]
fn member_dev_the_route_does_not_use_is_refused_at_once() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    ctl.attach(&["r0", "r1", "r2", "r3"], "native")
        .expect("attach");
    let start = std::time::Instant::now();
    let m1 = topo.members[0].ip.to_string();
    let err = one_line(&ctl.run_fail(&["member", "add", "198.51.100.53", &m1, "--dev", "r2"]));
    assert!(err.contains("r1") && err.contains("r2"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    let neigh = topo.router.ip(&["neigh", "show", "dev", "r2"]).unwrap();
    assert!(!neigh.contains(&m1), "neighbour entry left on r2: {neigh}");
}

/// An agent started with `args` (plus `--pin-dir`) on r1.
fn agent(topo: &Topology, ctl: &Ctl, args: &[&str]) -> Daemon {
    let pin = ctl.pin_dir().display().to_string();
    let mut full = vec!["--pin-dir", pin.as_str(), "agent", "--dev", "r1"];
    full.extend_from_slice(args);
    Daemon::spawn(&topo.router, "agent", &full).expect("agent")
}

struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str, mode: u32) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("anycast-{tag}-{}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const SECRET_1: &str = "5f1c2b3a4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
const SECRET_2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn key_text(keys: &[(u32, &str)]) -> String {
    keys.iter()
        .map(|(id, secret)| format!("[[key]]\nid = {id}\nsecret = \"{secret}\"\n"))
        .collect()
}

/// Regression: with a bad key file or configuration the agent printed the right error, but
/// only after it had attached XDP and created pins.
#[test]
fn agent_checks_config_and_keys_before_it_attaches() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    let open = TempFile::new("key-0644", &key_text(&[(1, SECRET_1)]), 0o644);
    let empty = TempFile::new("key-empty", "", 0o600);
    let bad = TempFile::new("key-bad", "[[key]]\nid = 1\nsecret = \"zz\"\n", 0o600);
    let dup = TempFile::new("key-dup", &key_text(&[(1, SECRET_1), (1, SECRET_2)]), 0o600);
    let good = TempFile::new("key-good", &key_text(&[(1, SECRET_1)]), 0o600);
    let window = TempFile::new("cfg-window", "replay_window_ms = 0\n", 0o600);
    let port = TempFile::new("cfg-port", "port = 0\n", 0o600);
    let fifo = std::env::temp_dir().join(format!("anycast-cfg-fifo-{}", std::process::id()));
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let prefix = ["--anycast-prefix", "198.51.100.0/24"];
    let key = |f: &TempFile| vec!["--key-file".to_string(), f.path().to_string()];
    let config = |p: &str| vec!["--config".to_string(), p.to_string()];
    let cases: Vec<Vec<String>> = vec![
        key(&open),
        key(&empty),
        key(&bad),
        key(&dup),
        vec!["--key-file".into(), "/nonexistent/key".into()],
        [key(&good), config("/dev/zero")].concat(),
        [key(&good), config(fifo.to_str().unwrap())].concat(),
        [key(&good), config(window.path())].concat(),
        [key(&good), config(port.path())].concat(),
        [key(&good), vec!["--port".into(), "0".into()]].concat(),
        [key(&good), vec!["--dev".into(), "nosuch0".into()]].concat(),
    ];
    for case in cases {
        let mut args: Vec<&str> = prefix.to_vec();
        args.extend(case.iter().map(String::as_str));
        let mut daemon = agent(&topo, &ctl, &args);
        let (status, log) = daemon.wait(Duration::from_secs(5)).expect("agent exits");
        assert!(!status.success(), "{case:?} was accepted");
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("anycast-ctl:"))
            .collect();
        assert_eq!(lines.len(), 1, "{case:?}: want one error line, got:\n{log}");
        assert!(
            !ctl.pin_dir().exists(),
            "{case:?} left pins: {:?}",
            entries(ctl.pin_dir())
        );
        assert!(
            topo.router.xdp_prog_ids("r1").unwrap().is_empty(),
            "{case:?} attached"
        );
    }
    std::fs::remove_file(&fifo).unwrap();
}

#[test]
fn second_agent_on_one_pin_dir_is_refused_naming_the_first() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    let args = ["--anycast-prefix", "198.51.100.0/24", "--insecure-no-auth"];
    let mut first = agent(&topo, &ctl, &args);
    assert!(
        wait_until(Duration::from_secs(5), || !topo
            .router
            .xdp_prog_ids("r1")
            .unwrap()
            .is_empty()),
        "first agent did not attach: {}",
        first.log()
    );
    let mut second = agent(&topo, &ctl, &args);
    let (status, log) = second.wait(Duration::from_secs(5)).expect("second exits");
    assert!(!status.success());
    assert!(
        log.contains(&format!("pid {}", first.pid())) || log.contains("another agent"),
        "{log}"
    );
    assert!(first.running(), "the first agent died: {}", first.log());
}

/// Announces 198.51.100.53 from member `i` with `key` (interval 100 ms, hold 400 ms).
fn announce(topo: &Topology, i: usize, key: &TempFile) -> Daemon {
    let m = &topo.members[i];
    let args = [
        "announce",
        "198.51.100.53",
        "--dev",
        &m.iface,
        "--interval",
        "100ms",
        "--hold",
        "400ms",
        "--key-file",
        key.path(),
    ];
    Daemon::spawn(&m.ns, &format!("announce m{}", i + 1), &args).expect("announce")
}

/// Learned members, by address (none while nothing is attached yet).
fn learned(ctl: &Ctl) -> Vec<Ipv4Addr> {
    let Ok(json) = ctl.run(&["show", "--json"]) else {
        return Vec::new();
    };
    let show: anycast_tests::ctl::Show = serde_json::from_str(&json).expect("show --json");
    let mut out: Vec<Ipv4Addr> = show
        .addresses
        .iter()
        .flat_map(|a| a.members.iter())
        .filter(|m| m.source == "learned")
        .filter_map(|m| m.ipv4())
        .collect();
    out.sort();
    out
}

/// Regression: SIGHUP killed the agent silently, after which learned members never expired.
/// Now it reloads the key file: a new key is accepted at once, learned members stay, a broken
/// file keeps the old keys, and a retired key stops being accepted.
#[test]
fn sighup_reloads_keys_without_losing_members() {
    let topo = Topology::new(TopologyOptions {
        members: 2,
        client_mode: ClientMode::OnLink,
        ..Default::default()
    })
    .expect("topology");
    for m in &topo.members {
        m.ns.ip(&["addr", "del", "198.51.100.53/32", "dev", "lo"])
            .unwrap();
    }
    let ctl = Ctl::new(&topo.router);
    let keys = TempFile::new("keys-hup", &key_text(&[(1, SECRET_1)]), 0o600);
    let key_1 = TempFile::new("key-1", &key_text(&[(1, SECRET_1)]), 0o600);
    let key_2 = TempFile::new("key-2", &key_text(&[(2, SECRET_2)]), 0o600);
    let pin = ctl.pin_dir().display().to_string();
    let args = anycast_tests::daemon::agent_args(
        &pin,
        &["r1", "r2"],
        &["198.51.100.0/24"],
        &["--key-file", keys.path()],
    );
    let mut agent = Daemon::spawn(&topo.router, "agent", &args).expect("agent");
    let _m1 = announce(&topo, 0, &key_1);
    let _m2 = announce(&topo, 1, &key_2);
    let m1 = topo.members[0].ip;
    let m2 = topo.members[1].ip;
    assert!(
        wait_until(Duration::from_secs(5), || learned(&ctl) == [m1]),
        "m1 not learned: {:?}\n{}",
        learned(&ctl),
        agent.log()
    );

    // Rollover: key 2 added; m2 joins, m1 stays.
    std::fs::write(&keys.0, key_text(&[(1, SECRET_1), (2, SECRET_2)])).unwrap();
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(3), || learned(&ctl) == [m1, m2]),
        "after reload: {:?}\n{}",
        learned(&ctl),
        agent.log()
    );
    // A broken file keeps the running keys.
    std::fs::write(&keys.0, "[[key]]\nid = 3\n").unwrap();
    agent.signal(libc::SIGHUP);
    let failed = wait_until(Duration::from_secs(3), || {
        agent.log().contains("reload failed")
    });
    assert!(failed, "{}", agent.log());
    assert!(
        agent.running(),
        "the agent died on a bad reload: {}",
        agent.log()
    );
    assert_eq!(learned(&ctl), [m1, m2], "{}", agent.log());
    // Key 1 retired: m1 expires, m2 stays.
    std::fs::write(&keys.0, key_text(&[(2, SECRET_2)])).unwrap();
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(3), || learned(&ctl) == [m2]),
        "after retiring key 1: {:?}\n{}",
        learned(&ctl),
        agent.log()
    );
    assert!(agent.running());
}

/// Regression: after an operator's detach and re-attach, the agent kept writing into the old,
/// dead maps forever. It now adopts the new state and its members come back.
#[test]
fn agent_follows_a_detach_and_reattach_under_it() {
    let topo = topology_for_announcers();
    let ctl = Ctl::new(&topo.router);
    let key = TempFile::new("key-reattach", &key_text(&[(1, SECRET_1)]), 0o600);
    ctl.attach(&["r0", "r1"], "native").expect("attach");
    let mut agent = agent(
        &topo,
        &ctl,
        &[
            "--anycast-prefix",
            "198.51.100.0/24",
            "--key-file",
            key.path(),
        ],
    );
    let _m1 = announce(&topo, 0, &key);
    let m1 = topo.members[0].ip;
    assert!(
        wait_until(Duration::from_secs(5), || learned(&ctl) == [m1]),
        "{}",
        agent.log()
    );
    // Another tool's pin keeps the directory itself alive across the detach: the agent must
    // see that its maps were replaced all the same.
    let other = ctl.pin_dir().join("other_tool_map");
    foreign_pin(&other);
    ctl.detach(&["r0", "r1"]).expect("detach everything");
    ctl.attach(&["r0", "r1"], "native").expect("attach again");
    // The agent adopts the new state, or, if it saw the dataplane gone in between, stops with
    // an error for systemd to restart it (Restart=on-failure in contrib/), as done here.
    let args = [
        "--anycast-prefix",
        "198.51.100.0/24",
        "--key-file",
        key.path(),
    ];
    // Either it stops (and is restarted) or it carries on in the new state.
    wait_until(Duration::from_secs(3), || {
        !agent.running() || learned(&ctl) == [m1]
    });
    if !agent.running() {
        assert!(
            agent.log().contains("was detached while the agent ran"),
            "{}",
            agent.log()
        );
        agent = self::agent(&topo, &ctl, &args);
    }
    assert!(
        wait_until(Duration::from_secs(3), || learned(&ctl) == [m1]),
        "the member did not come back in the new state: {:?}\n{}",
        learned(&ctl),
        agent.log()
    );
    assert!(agent.running(), "{}", agent.log());
    std::fs::remove_file(&other).unwrap();
    let run = udp_round(
        &topo.client,
        &[&topo.members[0].ns],
        ANYCAST,
        anycast_tests::traffic::UDP_PORT,
        40000..40010,
        2,
    )
    .expect("udp");
    assert_eq!(
        run.total_received(),
        20,
        "stats {:?}\nshow {:?}\nagent log:\n{}",
        ctl.stats(),
        ctl.show(),
        agent.log()
    );
    run.assert_each_sent_once();
}

/// The member's MAC comes from its signed advertisement, and a change of it is announced by
/// the member and followed within an interval or two.
#[test]
fn learned_member_mac_comes_from_its_signed_advertisement() {
    let topo = topology_for_announcers();
    let ctl = Ctl::new(&topo.router);
    let key = TempFile::new("key-lla", &key_text(&[(1, SECRET_1)]), 0o600);
    ctl.attach(&["r0", "r1"], "native").expect("attach");
    let agent = agent(
        &topo,
        &ctl,
        &[
            "--anycast-prefix",
            "198.51.100.0/24",
            "--key-file",
            key.path(),
        ],
    );
    let m = &topo.members[0];
    let _announce = announce(&topo, 0, &key);
    let mac_shown = || shown_mac(&ctl, m.ip);
    let real = anycast_tests::netns::format_mac(m.ns.link_mac(&m.iface).unwrap());
    assert!(
        wait_until(Duration::from_secs(5), || mac_shown().as_deref()
            == Some(&real)),
        "shown {:?}, want {real}\n{}",
        mac_shown(),
        agent.log()
    );
    let new = "02:aa:bb:cc:dd:02";
    m.ns.ip(&["link", "set", &m.iface, "address", new]).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || mac_shown().as_deref()
            == Some(new)),
        "the new MAC was not followed: {:?}\n{}",
        mac_shown(),
        agent.log()
    );
    let run = udp_round(
        &topo.client,
        &[&m.ns],
        ANYCAST,
        anycast_tests::traffic::UDP_PORT,
        41000..41010,
        2,
    )
    .expect("udp");
    run.assert_each_sent_once();
}

/// A static member resolved from the neighbour table follows that table (with an agent
/// running), never a frame the dataplane saw.
#[test]
fn static_member_mac_follows_the_kernel_neighbour_table() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    ctl.attach(&["r0", "r1"], "native").expect("attach");
    let m = &topo.members[0];
    ctl.member_add(ANYCAST, m.ip).expect("static member");
    let agent = agent(
        &topo,
        &ctl,
        &["--anycast-prefix", "198.51.100.0/24", "--insecure-no-auth"],
    );
    // Subscribed to neighbour events once it says it runs.
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .log()
            .contains("agent running")),
        "{}",
        agent.log()
    );
    let new = "02:aa:bb:cc:dd:03";
    m.ns.ip(&["link", "set", &m.iface, "address", new]).unwrap();
    let ip = m.ip.to_string();
    topo.router
        .ip(&[
            "neigh",
            "replace",
            &ip,
            "lladdr",
            new,
            "dev",
            "r1",
            "nud",
            "reachable",
        ])
        .unwrap();
    let shown = || shown_mac(&ctl, m.ip);
    assert!(
        wait_until(Duration::from_secs(2), || shown().as_deref() == Some(new)),
        "shown {:?}",
        shown()
    );
}

/// Regression: `member add` opened the maps before taking the writers' lock, so a detach and
/// re-attach during its MAC resolution made it write into dead maps and report success.
#[test]
fn member_add_does_not_write_into_maps_replaced_while_it_resolved() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    ctl.attach(&["r0", "r1"], "native").expect("attach");
    let m = &topo.members[0];
    let member = m.ip.to_string();
    // m1 answers no ARP until the detach is done, so the add waits in MAC resolution (up to
    // 3 s) with the old maps open while they are removed. Its answer then comes during the
    // attach or before it: either way the add finds its maps gone or replaced when it takes
    // the writers' lock, however long the attach's verification takes. On a loaded machine
    // the detach alone may outlast the wait: then the add times out, which proves nothing,
    // and the round is run again (at most 3).
    let mut verdict = None;
    for _ in 0..3 {
        m.ns.ip(&["link", "set", &m.iface, "arp", "off"]).unwrap();
        let outcome = std::thread::scope(|scope| {
            let add = scope.spawn(|| ctl.outcome(&["member", "add", "198.51.100.53", &member]));
            std::thread::sleep(Duration::from_millis(300));
            ctl.detach(&["r0", "r1"]).expect("detach");
            m.ns.ip(&["link", "set", &m.iface, "arp", "on"]).unwrap();
            ctl.attach(&["r0", "r1"], "native").expect("attach again");
            add.join().unwrap()
        });
        match outcome.ok() {
            Ok(out) => panic!("member add reported success after its maps were replaced: {out}"),
            Err(e) if format!("{e:#}").contains("could not resolve") => continue,
            Err(e) => {
                verdict = Some(format!("{e:#}"));
                break;
            }
        }
    }
    let err = verdict.expect("the replacement never happened within the MAC resolution");
    assert!(err.contains("replaced"), "{err}");
    assert!(ctl.show().addresses.is_empty(), "{:?}", ctl.show());
    ctl.member_add(ANYCAST, m.ip).expect("run again, it works");
}

/// Regression: a pre-existing map of the wrong layout was reused by name; the verifier then
/// printed kilobytes of log and the failed attach left new pins behind.
#[test]
fn a_map_of_the_wrong_layout_is_refused_in_one_line() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    ctl.attach(&["r0"], "native").expect("attach");
    let hosts = ctl.pin_dir().join(names::HOSTS);
    std::fs::remove_file(&hosts).unwrap();
    foreign_pin(&hosts);
    let before = entries(ctl.pin_dir());
    let err = one_line(&ctl.run_fail(&["attach", "r1"]));
    assert!(err.contains("HOSTS") && err.contains("value size"), "{err}");
    assert_eq!(entries(ctl.pin_dir()), before);
    assert!(topo.router.xdp_prog_ids("r1").unwrap().is_empty());
    ctl.detach(&["r0"]).expect("detach");
}

/// Regression: the agent accepted, as an anycast address, one that must never be anycast (here
/// the router's own address on r2, inside a prefix the agent allows): counted as
/// `not_anycast`, never installed.
#[test]
fn agent_refuses_an_advertised_address_that_must_never_be_anycast() {
    let topo = topology();
    let ctl = Ctl::new(&topo.router);
    let key = TempFile::new("key-notany", &key_text(&[(1, SECRET_1)]), 0o600);
    let mut agent = agent(
        &topo,
        &ctl,
        &[
            "--anycast-prefix",
            "203.0.113.0/24",
            "--key-file",
            key.path(),
        ],
    );
    let m = &topo.members[0];
    let args = [
        "announce",
        "203.0.113.5",
        "--dev",
        &m.iface,
        "--interval",
        "100ms",
        "--hold",
        "400ms",
        "--key-file",
        key.path(),
    ];
    let _announce = Daemon::spawn(&m.ns, "announce m1", &args).expect("announce");
    let rejected = || {
        ctl.outcome(&["status", "--json"])
            .ok()
            .ok()
            .and_then(|out| serde_json::from_str::<anycast_tests::ctl::Status>(&out).ok())
            .and_then(|s| s.agent.rejected.get("not_anycast").copied())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(5), || rejected() >= 2),
        "not counted: {}",
        agent.log()
    );
    assert!(ctl.show().addresses.is_empty(), "{:?}", ctl.show());
    assert!(agent.running());
}
