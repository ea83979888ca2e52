//! IPv6 advertisements end to end: `anycast-ctl announce` with IPv6 (and dual-stack) anycast
//! addresses on the members, the agent's IPv6 listener on the router, real multicast on the
//! member links, and version-1 (IPv4-only) interop.
//!
//! The agent applies a believed IPv6 membership through the members API, as an IPv4 one
//! (before branch v6dp it counted it as `family_unsupported`); the one switch
//! [`MEMBERS_TAKE_IPV6`] says which of the two outcomes the tests assert.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    time::{Duration, Instant},
};

use anycast_common::advert::{
    DEFAULT_GROUP, DEFAULT_GROUP6, DEFAULT_PORT, Membership, Packet, Repr,
};
use anycast_ctl::{advert_auth, sys};
use anycast_tests::{
    ANYCAST, Ctl, Netns, Topology, TopologyOptions,
    daemon::Daemon,
    topology::{member_ip, member_ip6},
    wait_until,
};

// The agent's `apply_one` hands IPv6 memberships to the members API (branch v6dp): the tests
// require the IPv6 member in `show --json` and no `family_unsupported`. (false: the count and
// its absence, as before the merge.)
const MEMBERS_TAKE_IPV6: bool = true;

const SECRET_HEX: &str = "5f1c2b3a4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
const KEY_ID: u32 = 1;
const ANYCAST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x53);
const INTERVAL: &str = "200ms";
const HOLD: &str = "600ms";
/// How long a test waits for anything the agent or an announcer does.
const WAIT: Duration = Duration::from_secs(3);

fn secret() -> Vec<u8> {
    (0..SECRET_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&SECRET_HEX[i..i + 2], 16).unwrap())
        .collect()
}

/// The default topology with IPv6 on the member links, the dataplane on r0..r3, the agent on
/// r1..r3 (IPv4 and IPv6 prefixes), and a key file.
struct Lab {
    agent: Daemon,
    ctl: Ctl,
    topo: Topology,
    key_file: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let topo = Topology::new(TopologyOptions::default()).expect("topology");
        topo.enable_member_ipv6().expect("IPv6 on the member links");
        let ctl = Ctl::new(&topo.router);
        let ifaces = topo.router_ifaces();
        let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
        ctl.run(&[&["attach"], &ifaces[..]].concat())
            .expect("attach");
        let key_file = std::env::temp_dir().join(format!(
            "anycast-key6-{}-{}",
            std::process::id(),
            topo.router.name()
        ));
        let text = format!("[[key]]\nid = {KEY_ID}\nsecret = \"{SECRET_HEX}\"\n");
        std::fs::write(&key_file, text).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pin = ctl.pin_dir().display().to_string();
        let key = key_file.display().to_string();
        let mut args = vec!["--pin-dir", &pin, "agent", "--key-file", &key];
        args.extend(["--dev", "r1", "--dev", "r2", "--dev", "r3"]);
        args.extend(["--anycast-prefix", "198.51.100.0/24"]);
        args.extend(["--anycast-prefix", "2001:db8:53::/48"]);
        let agent = Daemon::spawn_agent(&topo.router, "agent", &args).expect("agent");
        Lab {
            agent,
            ctl,
            topo,
            key_file,
        }
    }

    /// `announce ADDRESSES... --dev m<i>` with the test interval and hold.
    fn announce(&self, member: usize, addresses: &[&str]) -> Daemon {
        let m = &self.topo.members[member - 1];
        let key = self.key_file.display().to_string();
        let mut args = vec!["announce"];
        args.extend_from_slice(addresses);
        args.extend(["--dev", &m.iface, "--interval", INTERVAL, "--hold", HOLD]);
        args.extend(["--key-file", &key]);
        Daemon::spawn(&m.ns, &format!("announce m{member}"), &args).expect("announce")
    }

    fn accepted(&self) -> u64 {
        self.ctl.status().agent.accepted
    }

    /// An agent counter other than `accepted` (`status --json` lists them as rejections).
    fn counter(&self, name: &str) -> u64 {
        let status = self.ctl.status();
        status.agent.rejected.get(name).copied().unwrap_or(0)
    }

    /// Every counter but `accepted` and `names` is zero.
    fn assert_no_other_rejections(&self, names: &[&str]) {
        let status = self.ctl.status();
        for (name, n) in &status.agent.rejected {
            if !names.contains(&name.as_str()) {
                assert_eq!(*n, 0, "{name}: {:?}\n{}", status.agent, self.agent.log());
            }
        }
    }

    /// The learned IPv4 members of `anycast`.
    fn learned(&self, anycast: Ipv4Addr) -> Vec<Ipv4Addr> {
        let show = self.ctl.show();
        let members = show.members_of(anycast);
        members
            .iter()
            .filter(|m| m.source == "learned")
            .filter_map(|m| m.ipv4())
            .collect()
    }

    /// The members `show --json` lists for `anycast`, of either family (read as raw JSON, so
    /// that IPv6 entries parse too).
    fn shown(&self, anycast: IpAddr) -> Vec<IpAddr> {
        let show = self.ctl.json(&["show"]);
        let addresses = show["addresses"].as_array().cloned().unwrap_or_default();
        addresses
            .iter()
            .filter(|a| a["address"].as_str().and_then(|s| s.parse().ok()) == Some(anycast))
            .flat_map(|a| a["members"].as_array().cloned().unwrap_or_default())
            .filter_map(|m| m["address"].as_str().and_then(|s| s.parse().ok()))
            .collect()
    }

    /// What the agent did with `member`'s IPv6 membership of [`ANYCAST6`] (see
    /// [`MEMBERS_TAKE_IPV6`]).
    fn assert_ipv6_membership_handled(&self, member: Ipv6Addr) {
        let member = IpAddr::V6(member);
        if MEMBERS_TAKE_IPV6 {
            let learned = wait_until(WAIT, || self.shown(ANYCAST6.into()).contains(&member));
            assert!(learned, "{member} not shown\n{}", self.agent.log());
            assert_eq!(self.counter("family_unsupported"), 0);
        } else {
            let counted = wait_until(WAIT, || self.counter("family_unsupported") >= 2);
            assert!(counted, "{:?}\n{}", self.ctl.status(), self.agent.log());
            assert!(!self.shown(ANYCAST6.into()).contains(&member));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.agent.kill();
        let _ = std::fs::remove_file(&self.key_file);
    }
}

/// One datagram received on `socket` within [`WAIT`], with its TTL/hop limit and interface.
fn receive(socket: &socket2::Socket) -> (sys::Received, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0; 2048];
    loop {
        match sys::recv(socket, &mut buf) {
            Ok(rx) => return (rx, buf[..rx.len].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no advertisement within {WAIT:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("receiving: {e}"),
        }
    }
}

/// The next advertisement the router hears on `iface` on the IPv6 group, through a listener
/// of its own (beside the agent's, which gets its copy too).
fn sniff6(router: &Netns, iface: &str) -> (sys::Received, Vec<u8>) {
    let index = router.ifindex(iface).unwrap();
    router.in_ns(|| {
        let group = Ipv6Addr::from(DEFAULT_GROUP6);
        let socket = sys::listener6(DEFAULT_PORT, group, &[index]).expect("IPv6 listener");
        receive(&socket)
    })
}

/// The next advertisement the router hears on `iface` on the IPv4 group.
fn sniff4(router: &Netns, iface: &str) -> (sys::Received, Vec<u8>) {
    let index = router.ifindex(iface).unwrap();
    router.in_ns(|| {
        let group = Ipv4Addr::from(DEFAULT_GROUP);
        let socket = sys::listener(DEFAULT_PORT, group, &[index]).expect("IPv4 listener");
        receive(&socket)
    })
}

/// An IPv6 advertisement from `sender` serving [`ANYCAST6`], signed with `secret`.
fn message6(sender: Ipv6Addr, seq: u64, secret: &[u8]) -> Vec<u8> {
    let mut repr = Repr::new(sender, seq, now_ms(), KEY_ID);
    repr.push(Membership {
        anycast: ANYCAST6.into(),
        hold_ms: 5_000,
        preference: 100,
        weight: 100,
    })
    .unwrap();
    let mut buf = vec![0; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    advert_auth::sign(&mut buf, KEY_ID, secret).unwrap();
    buf
}

/// Sends `msg` from member `index`'s IPv6 address to the IPv6 group with hop limit `hops`.
fn send6(topo: &Topology, index: usize, msg: &[u8], hops: u32) {
    let m = &topo.members[index - 1];
    let ifindex = m.ns.ifindex(&m.iface).unwrap();
    m.ns.in_ns(|| {
        let socket = sys::sender6(&m.iface, ifindex, member_ip6(index)).expect("sender6");
        socket.set_multicast_hops_v6(hops).unwrap();
        let group = SocketAddrV6::new(Ipv6Addr::from(DEFAULT_GROUP6), DEFAULT_PORT, 0, ifindex);
        socket.send_to(msg, &group.into()).expect("sending");
    });
}

/// Sends `msg` from member `index`'s IPv4 address to the IPv4 group (TTL 255).
fn send4(topo: &Topology, index: usize, msg: &[u8]) {
    let m = &topo.members[index - 1];
    m.ns.in_ns(|| {
        let socket = sys::sender(&m.iface, member_ip(index)).expect("sender");
        let group = SocketAddrV4::new(Ipv4Addr::from(DEFAULT_GROUP), DEFAULT_PORT);
        socket.send_to(msg, &group.into()).expect("sending");
    });
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A version-1 advertisement written byte by byte from the format as it was before IPv6
/// (docs/advert-format.md, types 1 and 2 only), without this code's encoder, then signed:
/// what a version-1 announcer sends.
fn v1_message(
    sender: Ipv4Addr,
    (seq, timestamp_ms): (u64, u64),
    memberships: &[(Ipv4Addr, u32, u16, u16)],
    mac: Option<[u8; 6]>,
) -> Vec<u8> {
    let count = memberships.len() + usize::from(mac.is_some());
    let total = 28 + 14 * memberships.len() + if mac.is_some() { 8 } else { 0 } + 36;
    let mut b = vec![0x41, 0x43, 1, 0];
    b.extend((total as u16).to_be_bytes());
    b.extend((count as u16).to_be_bytes());
    b.extend(sender.octets());
    b.extend(seq.to_be_bytes());
    b.extend(timestamp_ms.to_be_bytes());
    for (anycast, hold_ms, preference, weight) in memberships {
        b.extend([1, 12]);
        b.extend(anycast.octets());
        b.extend(hold_ms.to_be_bytes());
        b.extend(preference.to_be_bytes());
        b.extend(weight.to_be_bytes());
    }
    if let Some(mac) = mac {
        b.extend([2, 6]);
        b.extend(mac);
    }
    b.extend(KEY_ID.to_be_bytes());
    b.extend([0; 32]);
    assert_eq!(b.len(), total);
    advert_auth::sign(&mut b, KEY_ID, &secret()).unwrap();
    b
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

#[test]
fn ipv6_announcer_is_heard_on_the_ipv6_group_with_hop_limit_255() {
    let lab = Lab::new();
    let _announcer = lab.announce(1, &["2001:db8:53::53"]);

    // On the wire: from the member's global address, on r1, hop limit 255, an IPv6 message.
    let (rx, datagram) = sniff6(&lab.topo.router, "r1");
    assert_eq!(rx.src, IpAddr::V6(member_ip6(1)));
    assert_eq!(rx.ttl, Some(255));
    assert_eq!(rx.ifindex, lab.topo.router.ifindex("r1").unwrap());
    let repr = Repr::parse(&Packet::new_checked(&datagram[..]).unwrap()).unwrap();
    assert_eq!(repr.sender, IpAddr::V6(member_ip6(1)));
    let anycast: Vec<IpAddr> = repr.memberships().iter().map(|m| m.anycast).collect();
    assert_eq!(anycast, [IpAddr::V6(ANYCAST6)]);
    assert_eq!(repr.memberships()[0].hold_ms, 600);
    assert!(repr.link_addr.is_some());

    // The agent believed it (HMAC, window, sequence) and handed the membership on.
    assert!(
        wait_until(WAIT, || lab.accepted() >= 2),
        "{}",
        lab.agent.log()
    );
    lab.assert_ipv6_membership_handled(member_ip6(1));
    lab.assert_no_other_rejections(&["family_unsupported"]);
    // The announcer put the address on lo, without duplicate address detection.
    let lo = lab.topo.members[0]
        .ns
        .ip(&["-6", "addr", "show", "dev", "lo"]);
    let lo = lo.unwrap();
    assert!(lo.contains("2001:db8:53::53/128"), "{lo}");
    assert!(lo.contains("nodad") && !lo.contains("tentative"), "{lo}");
}

#[test]
fn hop_limit_254_forged_and_spoofed_ipv6_messages_are_counted_and_dropped() {
    let lab = Lab::new();
    let key = secret();
    let start = now_ms() * 1000;
    // GTSM: a good message that crossed a router (hop limit 254).
    send6(&lab.topo, 1, &message6(member_ip6(1), start, &key), 254);
    // Forged: signed with another key.
    send6(
        &lab.topo,
        1,
        &message6(member_ip6(1), start + 1, &[0x42; 32]),
        255,
    );
    // Spoofed: member 1 signs as member 2's address.
    send6(&lab.topo, 1, &message6(member_ip6(2), start + 2, &key), 255);
    let expected = [("bad_ttl", 1), ("bad_hmac", 1), ("sender_mismatch", 1)];
    let counted = wait_until(WAIT, || {
        expected.iter().all(|(name, n)| lab.counter(name) == *n)
    });
    assert!(counted, "{:?}\n{}", lab.ctl.status(), lab.agent.log());
    assert_eq!(lab.accepted(), 0);
    assert_eq!(lab.counter("family_unsupported"), 0);
    lab.assert_no_other_rejections(&["bad_ttl", "bad_hmac", "sender_mismatch"]);

    // None of them moved the replay state: the good message with hop limit 255 is taken.
    send6(&lab.topo, 1, &message6(member_ip6(1), start, &key), 255);
    assert!(
        wait_until(WAIT, || lab.accepted() == 1),
        "{}",
        lab.agent.log()
    );
    assert!(
        !lab.shown(ANYCAST6.into())
            .contains(&IpAddr::V6(member_ip6(2)))
    );
}

/// Interop with version 1: a message written to the format of before IPv6 is learned by the
/// new agent, and the new announcer's IPv4 messages are version-1 messages byte for byte.
#[test]
fn version_1_ipv4_announcer_and_receiver_interoperate() {
    let lab = Lab::new();
    let seq = now_ms() * 1000;
    let v1 = v1_message(
        member_ip(1),
        (seq, now_ms()),
        &[(ANYCAST, 5_000, 100, 100)],
        None,
    );
    send4(&lab.topo, 1, &v1);
    let learned = wait_until(WAIT, || lab.learned(ANYCAST) == [member_ip(1)]);
    assert!(learned, "{:?}\n{}", lab.ctl.status(), lab.agent.log());
    // The counters reach `status` within one flush interval of the learning.
    let counted = wait_until(WAIT, || lab.accepted() == 1);
    assert!(counted, "{:?}\n{}", lab.ctl.status(), lab.agent.log());

    // The new announcer, IPv4 only: what it sends is what the v1 encoder writes for the same
    // fields (so a version-1 agent accepts it exactly as before).
    let _announcer = lab.announce(2, &["198.51.100.53"]);
    let (rx, datagram) = sniff4(&lab.topo.router, "r2");
    assert_eq!((rx.src, rx.ttl), (IpAddr::V4(member_ip(2)), Some(255)));
    let mac = lab.topo.members[1].ns.link_mac("m2").unwrap();
    let fields = (be_u64(&datagram[12..20]), be_u64(&datagram[20..28]));
    let expected = v1_message(member_ip(2), fields, &[(ANYCAST, 600, 100, 100)], Some(mac));
    assert_eq!(datagram, expected);
    let both = wait_until(WAIT, || {
        lab.learned(ANYCAST) == [member_ip(1), member_ip(2)]
    });
    assert!(both, "{:?}\n{}", lab.learned(ANYCAST), lab.agent.log());
    lab.assert_no_other_rejections(&[]);
}

#[test]
fn dual_stack_announce_advertises_both_and_removes_only_what_it_added() {
    let lab = Lab::new();
    let ns = &lab.topo.members[0].ns;
    // 198.51.100.53 is on m1's lo already (the topology's); 2001:db8:53::53 is not.
    let lo4 = || ns.ip(&["-4", "addr", "show", "dev", "lo"]).unwrap();
    let lo6 = || ns.ip(&["-6", "addr", "show", "dev", "lo"]).unwrap();
    assert!(lo4().contains("198.51.100.53/32") && !lo6().contains("2001:db8:53::53"));
    let mut announcer = lab.announce(1, &["198.51.100.53", "2001:db8:53::53"]);

    // One message per family, each with its own sender and only its own family.
    let (rx6, d6) = sniff6(&lab.topo.router, "r1");
    let (rx4, d4) = sniff4(&lab.topo.router, "r1");
    assert_eq!((rx6.ttl, rx4.ttl), (Some(255), Some(255)));
    for (rx, datagram, anycast) in [(rx6, d6, IpAddr::V6(ANYCAST6)), (rx4, d4, ANYCAST.into())] {
        let repr = Repr::parse(&Packet::new_checked(&datagram[..]).unwrap()).unwrap();
        assert_eq!(repr.sender, rx.src);
        let served: Vec<IpAddr> = repr.memberships().iter().map(|m| m.anycast).collect();
        assert_eq!(served, [anycast]);
    }
    let learned = wait_until(WAIT, || lab.learned(ANYCAST) == [member_ip(1)]);
    assert!(learned, "{}", lab.agent.log());
    lab.assert_ipv6_membership_handled(member_ip6(1));
    assert!(lo6().contains("2001:db8:53::53/128"), "{}", lo6());

    // On exit: the leave withdraws the IPv4 member at once; lo loses the IPv6 address it
    // added and keeps the IPv4 one it found.
    announcer.signal(libc::SIGTERM);
    let (status, log) = announcer.wait(WAIT).unwrap();
    assert!(status.success(), "{log}");
    assert!(!lo6().contains("2001:db8:53::53"), "{}", lo6());
    assert!(lo4().contains("198.51.100.53/32"), "{}", lo4());
    let left = wait_until(Duration::from_millis(500), || {
        lab.learned(ANYCAST).is_empty()
    });
    assert!(left, "{:?}", lab.learned(ANYCAST));
    lab.assert_no_other_rejections(&["family_unsupported"]);
}
