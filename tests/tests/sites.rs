//! Anycast across two sites (RFC 1546's internetwork service, RFC 4786's health-coupled
//! routes): each site router's agent exports 198.51.100.53/32 while the site has a live
//! member, BIRD tells the upstream router U (BGP with BFD, one test over OSPF), and the client
//! behind U reaches whichever site U prefers. Two tests do the same for 2001:db8:53::53/128
//! (dual-stack members and client): over the BGP sessions, and over OSPFv3 with an IPv6
//! client stream. Topology: [`anycast_tests::sites`].
//!
//! Timing is asserted only as loose bounds; the real failover figures are in `cargo xtask
//! bench` (`site_failover_fast_ms`, `site_failover_default_ms`, and for IPv6
//! `site_failover_fast6_ms`, `site_failover_default6_ms`).
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anycast_tests::{
    ANYCAST,
    sites::{ANYCAST6, Announce, Routing, SITE_A, SITE_B, Site, Sites},
    traffic::{self, UDP_PORT, UdpSink, UdpStream},
    wait_until,
};

/// The first BGP session or OSPF adjacency takes a few seconds to come up.
const CONVERGE: Duration = Duration::from_secs(60);
/// Any later change of U's route, with BFD and prompt BGP updates.
const CHANGE: Duration = Duration::from_secs(5);
const A: (bool, bool) = (true, false);
const B: (bool, bool) = (false, true);
const BOTH: (bool, bool) = (true, true);
const NONE: (bool, bool) = (false, false);

/// A UDP sink for `anycast` on every member of a site.
fn sinks(site: &Site, anycast: impl Into<IpAddr> + Copy) -> Vec<UdpSink> {
    (site.members.iter())
        .map(|m| UdpSink::start(&m.ns, anycast, UDP_PORT).expect("sink"))
        .collect()
}

/// Stops the sinks; every sequence number they received.
fn received(sinks: Vec<UdpSink>) -> Vec<u64> {
    sinks
        .into_iter()
        .flat_map(UdpSink::stop)
        .filter_map(|d| d.seq)
        .collect()
}

/// Waits for the site's export table to be `want` (`ip route` text), or panics.
fn wait_exported(site: &Site, want: &str, timeout: Duration) {
    let ok = wait_until(timeout, || site.exported() == want);
    assert!(
        ok,
        "site {} exports {:?}, wanted {want:?}; agent log:\n{}",
        site.name,
        site.exported(),
        site.agent_log()
    );
}

fn route(metric: u32) -> String {
    format!("{ANYCAST} dev lo metric {metric}")
}

fn stream(sites: &Sites, anycast: IpAddr, port: u16) -> UdpStream {
    let dst = SocketAddr::new(anycast, UDP_PORT);
    UdpStream::start(&sites.client, dst, port, Duration::from_millis(2)).expect("stream")
}

#[test]
fn both_sites_are_exported_and_the_clients_flows_reach_members_at_each() {
    let mut sites = Sites::new(Some(Routing::Bgp)).expect("sites");
    let key = sites.key.path().to_path_buf();
    for site in sites.sites() {
        site.announce_all(&key, Announce::FAST).expect("announce");
    }
    wait_exported(&sites.a, &route(100), CHANGE);
    wait_exported(&sites.b, &route(100), CHANGE);
    // Equal metrics: U holds one ECMP route through both sites.
    sites.wait_via(BOTH, CONVERGE).expect("U via both sites");
    let mut all = sinks(&sites.a, ANYCAST);
    let at_a = all.len();
    all.extend(sinks(&sites.b, ANYCAST));
    let sent = traffic::send_udp(&sites.client, ANYCAST, UDP_PORT, 41000..41064, 4).expect("send");
    let got = traffic::wait_for_datagrams(&all, sent.len(), traffic::DELIVERY_TIMEOUT);
    let b = all.split_off(at_a);
    let (at_a, at_b) = (received(all).len(), received(b).len());
    assert_eq!(got, sent.len(), "A got {at_a}, B got {at_b}");
    assert_eq!(at_a + at_b, sent.len());
    assert!(
        at_a > 0 && at_b > 0,
        "64 flows all at one site: A {at_a}, B {at_b}"
    );
}

/// Site A (preference 50) is preferred; B (100) is the fallback.
fn preferred_a(routing: Routing) -> Sites {
    let mut sites = Sites::new(Some(routing)).expect("sites");
    let key = sites.key.path().to_path_buf();
    let fast = Announce::FAST;
    sites
        .a
        .announce_all(&key, fast.preference(50))
        .expect("announce");
    sites.b.announce_all(&key, fast).expect("announce");
    wait_exported(&sites.a, &route(50), CHANGE);
    wait_exported(&sites.b, &route(100), CHANGE);
    sites.wait_via(A, CONVERGE).expect("U via A");
    sites
}

/// Kills every announcer at A while the client streams to `anycast` (either family); returns
/// (ms from the kill to A's withdrawal, ms from the kill to the send time of the first
/// datagram that reached B).
fn fail_a(sites: &mut Sites, anycast: IpAddr) -> (f64, f64) {
    let (a, b) = (sinks(&sites.a, anycast), sinks(&sites.b, anycast));
    let stream = stream(sites, anycast, 42000);
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    sites.a.kill_announcers();
    let gone = wait_until(Duration::from_secs(3), || {
        sites.a.exported_to(anycast).is_empty()
    });
    let withdrawn = killed.elapsed();
    assert!(gone, "A still exports {:?}", sites.a.exported_to(anycast));
    sites.wait_via_to(anycast, B, CHANGE).expect("U via B");
    let at_b = wait_until(CHANGE, || b.iter().any(|s| s.received() > 0));
    std::thread::sleep(Duration::from_millis(100));
    let sent = stream.stop().expect("stream");
    assert!(at_b, "the stream never reached site B");
    let (at_a, at_b) = (received(a), received(b));
    assert!(
        !at_a.is_empty(),
        "the stream never reached site A before the kill"
    );
    let first = at_b.iter().min().expect("datagrams at B");
    let sent_at = sent.iter().find(|(s, _)| s == first).expect("sent").1;
    let gap = sent_at.saturating_duration_since(killed);
    (withdrawn.as_secs_f64() * 1e3, gap.as_secs_f64() * 1e3)
}

#[test]
fn every_announcer_at_a_dies_u_moves_to_b_and_back_when_they_return() {
    let mut sites = preferred_a(Routing::Bgp);
    let (withdrawn_ms, gap_ms) = fail_a(&mut sites, ANYCAST.into());
    let fast = Announce::FAST;
    // The last advertisement came at most one interval before the kill (the announcers are
    // killed one after the other, so one more interval), and each look of the poll above is
    // a process: a loose bound on a loaded machine (`cargo xtask bench` has the figure).
    let bound = (fast.hold_ms + 2 * fast.interval_ms + 500) as f64;
    assert!(
        withdrawn_ms <= bound,
        "A withdrew {withdrawn_ms:.0} ms after the kill (bound {bound} ms)"
    );
    eprintln!(
        "A withdrew after {withdrawn_ms:.0} ms; first datagram at B {gap_ms:.0} ms after the kill"
    );
    assert!(gap_ms < 5_000.0, "gap {gap_ms:.0} ms");
    // A's members come back: A's route returns and U uses A again.
    let key = sites.key.path().to_path_buf();
    sites
        .a
        .announce_all(&key, fast.preference(50))
        .expect("announce");
    wait_exported(&sites.a, &route(50), CHANGE);
    sites.wait_via(A, CHANGE).expect("U via A again");
    let a = sinks(&sites.a, ANYCAST);
    let sent = traffic::send_udp(&sites.client, ANYCAST, UDP_PORT, 43000..43016, 4).expect("send");
    let got = traffic::wait_for_datagrams(&a, sent.len(), traffic::DELIVERY_TIMEOUT);
    assert_eq!(got, sent.len(), "datagrams at A after its return");
}

/// With A preferred, takes A's router out by `fail` and checks that U routes via B within 1 s
/// (BFD 3 x 100 ms) and that the client's datagrams reach B. Returns the sites for more checks.
fn site_router_fails(fail: impl FnOnce(&mut Sites)) -> Sites {
    let mut sites = preferred_a(Routing::Bgp);
    let failed = Instant::now();
    fail(&mut sites);
    let moved = wait_until(Duration::from_secs(3), || sites.upstream_via() == B);
    let took = failed.elapsed();
    assert!(moved, "U still routes {:?}", sites.upstream_route());
    eprintln!("U routes via B {took:?} after the failure");
    assert!(
        took < Duration::from_secs(1),
        "U converged in {took:?} (BFD 3 x 100 ms)"
    );
    let b = sinks(&sites.b, ANYCAST);
    let sent = traffic::send_udp(&sites.client, ANYCAST, UDP_PORT, 44000..44016, 4).expect("send");
    let got = traffic::wait_for_datagrams(&b, sent.len(), traffic::DELIVERY_TIMEOUT);
    assert_eq!(got, sent.len(), "datagrams at B");
    sites
}

#[test]
fn a_dead_site_router_is_dropped_by_bfd_within_a_second() {
    let sites = site_router_fails(|sites| sites.a.bird.as_mut().expect("A's BIRD").kill());
    // A's dataplane and export table are untouched by its BIRD's death.
    assert_eq!(sites.a.exported(), route(50));
}

#[test]
fn a_site_router_whose_link_to_u_goes_down_is_dropped_within_a_second() {
    let mut sites = site_router_fails(|sites| {
        (sites.a.router.ip(&["link", "set", "u0", "down"])).expect("u0 down");
    });
    // A still has its members and its route: only the link to U is gone.
    assert_eq!(sites.a.exported(), route(50));
    assert!(sites.a.agent.as_mut().expect("A's agent").running());
}

#[test]
fn a_frozen_site_router_is_dropped_by_bfd_alone_within_a_second() {
    // SIGSTOP: BGP's TCP session stays open and its hold time is 240 s, so only BFD's
    // missing packets can tell U within a second.
    let sites = site_router_fails(|sites| {
        (sites.a.bird.as_ref().expect("A's BIRD")).signal(libc::SIGSTOP);
    });
    assert_eq!(sites.a.exported(), route(50));
}

#[test]
fn a_drained_or_standby_site_is_exported_worse_and_taken_when_the_other_goes() {
    let mut sites = Sites::new(Some(Routing::Bgp)).expect("sites");
    let key = sites.key.path().to_path_buf();
    let fast = Announce::FAST;
    // Every member at A drained: exported with 100 + 65,536, so U prefers B.
    sites
        .a
        .announce_all(&key, fast.weight(0))
        .expect("announce");
    sites.b.announce_all(&key, fast).expect("announce");
    wait_exported(&sites.a, &route(100 + 65_536), CHANGE);
    wait_exported(&sites.b, &route(100), CHANGE);
    sites.wait_via(B, CONVERGE).expect("U via B over drained A");
    // A on standby instead (preference 200, taking new flows): still worse than B.
    sites
        .a
        .announce_all(&key, fast.preference(200))
        .expect("announce");
    wait_exported(&sites.a, &route(200), CHANGE);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sites.upstream_via(), B, "{}", sites.upstream_route());
    // B's members go: U falls back to A, and A's members take the client's flows.
    sites.b.kill_announcers();
    wait_exported(&sites.b, "", CHANGE);
    sites.wait_via(A, CHANGE).expect("U falls back to A");
    let a = sinks(&sites.a, ANYCAST);
    let sent = traffic::send_udp(&sites.client, ANYCAST, UDP_PORT, 45000..45016, 4).expect("send");
    let got = traffic::wait_for_datagrams(&a, sent.len(), traffic::DELIVERY_TIMEOUT);
    assert_eq!(got, sent.len(), "datagrams at standby site A");
}

#[test]
fn over_ospf_u_prefers_the_better_site_and_fails_over() {
    let mut sites = preferred_a(Routing::Ospf);
    let (withdrawn_ms, gap_ms) = fail_a(&mut sites, ANYCAST.into());
    eprintln!(
        "OSPF: A withdrew after {withdrawn_ms:.0} ms; first datagram at B after {gap_ms:.0} ms"
    );
    assert!(gap_ms < 5_000.0, "gap {gap_ms:.0} ms");
    let key = sites.key.path().to_path_buf();
    sites
        .a
        .announce_all(&key, Announce::FAST.preference(50))
        .expect("announce");
    sites.wait_via(A, CHANGE).expect("U via A again");
}

#[test]
fn a_member_back_within_the_hold_down_causes_no_withdrawal() {
    let mut sites = Sites::new(Some(Routing::Bgp)).expect("sites");
    let key = sites.key.path().to_path_buf();
    let hold_down = Duration::from_secs(4);
    let config = format!("export_hold_down_ms = {}\n", hold_down.as_millis());
    sites.a.start_agent(&key, Some(&config)).expect("agent");
    sites.a.announce(0, &key, Announce::FAST).expect("announce");
    wait_exported(&sites.a, &route(100), CHANGE);
    sites.wait_via(A, CONVERGE).expect("U via A");
    // The only member dies and expires; it comes back 1 s later, well within the hold-down.
    // Neither A's table nor U's route ever loses the address.
    sites.a.kill_announcers();
    let expired = wait_until(CHANGE, || sites.a.ctl.show().members_of(ANYCAST).is_empty());
    assert!(expired, "the member did not expire");
    let rejoin = Instant::now() + Duration::from_secs(1);
    let mut rejoined = false;
    while Instant::now() < rejoin + Duration::from_millis(1500) {
        if !rejoined && Instant::now() >= rejoin {
            sites.a.announce(0, &key, Announce::FAST).expect("announce");
            rejoined = true;
        }
        assert_eq!(
            sites.a.exported(),
            route(100),
            "withdrawn within the hold-down"
        );
        assert_eq!(
            sites.upstream_via(),
            A,
            "U lost the route within the hold-down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rejoined = wait_until(CHANGE, || sites.a.ctl.show().members_of(ANYCAST).len() == 1);
    assert!(rejoined, "the member did not rejoin");
    // Gone for good: withdrawn once the hold-down is over, not before.
    sites.a.kill_announcers();
    let expired = wait_until(CHANGE, || sites.a.ctl.show().members_of(ANYCAST).is_empty());
    let since = Instant::now();
    assert!(expired, "the member did not expire");
    std::thread::sleep(hold_down / 2);
    assert_eq!(
        sites.a.exported(),
        route(100),
        "withdrawn before the hold-down ended"
    );
    wait_exported(&sites.a, "", hold_down + Duration::from_secs(1));
    // `since` is when the poll saw the expiry, a little after it.
    assert!(since.elapsed() >= hold_down - Duration::from_millis(500));
    sites.wait_via(NONE, CHANGE).expect("U without a route");
}

#[test]
fn with_no_bird_running_export_and_forwarding_still_work() {
    // No routing daemon anywhere: U gets a static route to site A instead.
    let mut sites = Sites::new(None).expect("sites");
    let key = sites.key.path().to_path_buf();
    sites
        .a
        .announce_all(&key, Announce::FAST)
        .expect("announce");
    wait_exported(&sites.a, &route(100), CHANGE);
    let via = anycast_tests::sites::SITE_A.to_string();
    sites
        .upstream
        .ip(&["route", "add", &format!("{ANYCAST}/32"), "via", &via])
        .expect("route");
    let a = sinks(&sites.a, ANYCAST);
    let sent = traffic::send_udp(&sites.client, ANYCAST, UDP_PORT, 46000..46016, 4).expect("send");
    let got = traffic::wait_for_datagrams(&a, sent.len(), traffic::DELIVERY_TIMEOUT);
    assert_eq!(got, sent.len(), "datagrams at A");
    sites.a.kill_announcers();
    wait_exported(&sites.a, "", CHANGE);
    let log = sites.a.agent_log();
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "agent log:\n{log}"
    );
    assert!(
        sites.a.agent.as_mut().expect("agent").running(),
        "the agent died:\n{log}"
    );
}

/// Waits for the site's IPv6 export table to be `want` (`ip -6 route` text), or panics.
fn wait_exported6(site: &Site, want: &str, timeout: Duration) {
    let ok = wait_until(timeout, || site.exported6() == want);
    assert!(
        ok,
        "site {} exports {:?} (IPv6), wanted {want:?}; agent log:\n{}",
        site.name,
        site.exported6(),
        site.agent_log()
    );
}

fn route6(metric: u32) -> String {
    format!("{ANYCAST6} dev lo metric {metric} pref medium")
}

/// Waits for U's IPv6 route to go through exactly the sites `via` names, or panics.
fn wait_via6(sites: &Sites, via: (bool, bool), timeout: Duration) {
    let result = sites.wait_via_to(ANYCAST6.into(), via, timeout);
    result.expect("U's IPv6 route");
}

/// Dual-stack sites over `routing`, A preferred (50) and B the fallback (100), both /128s
/// exported and U's IPv6 route via A.
fn preferred_a6(routing: Routing) -> Sites {
    let mut sites = Sites::dual_stack(routing).expect("sites");
    let key = sites.key.path().to_path_buf();
    let fast = Announce::FAST;
    sites
        .a
        .announce_all(&key, fast.preference(50))
        .expect("announce");
    sites.b.announce_all(&key, fast).expect("announce");
    wait_exported6(&sites.a, &route6(50), CHANGE);
    wait_exported6(&sites.b, &route6(100), CHANGE);
    wait_via6(&sites, A, CONVERGE);
    sites
}

#[test]
fn ipv6_both_sites_export_the_128_u_prefers_the_lower_med_and_moves_when_a_dies() {
    let mut sites = preferred_a6(Routing::Bgp);
    let key = sites.key.path().to_path_buf();
    let fast = Announce::FAST;
    // U's BIRD has both paths (B's session may come up later), each with its site's metric
    // as MED, and takes A's.
    let both = wait_until(CONVERGE, || {
        let bird = sites.upstream_bird6();
        bird.contains("BGP.med: 50\n") && bird.contains("BGP.med: 100\n")
    });
    let bird = sites.upstream_bird6();
    assert!(both, "U's BIRD:\n{bird}");
    let best = bird.lines().find(|l| l.contains('*')).unwrap_or_default();
    assert!(
        best.contains("[site_a "),
        "U's best path is not A's:\n{bird}"
    );
    // Every announcer at A dies: A withdraws its /128 and U moves to B.
    sites.a.kill_announcers();
    wait_exported6(&sites.a, "", CHANGE);
    wait_via6(&sites, B, CHANGE);
    assert!(
        !sites.upstream_bird6().contains("BGP.med: 50"),
        "{}",
        sites.upstream_bird6()
    );
    // A's members come back: A's route returns and U prefers it again.
    sites
        .a
        .announce_all(&key, fast.preference(50))
        .expect("announce");
    wait_exported6(&sites.a, &route6(50), CHANGE);
    wait_via6(&sites, A, CHANGE);
}

/// The metric of the external route to the IPv6 anycast address that U's OSPFv3 holds from
/// the site router with id `site` (its LSA), if any.
fn ospf6_external(sites: &Sites, site: Ipv4Addr) -> Option<u32> {
    let bird = sites.upstream_bird.as_ref().expect("U's BIRD");
    // ospf2: the second (unnamed) OSPF protocol of upstream-ospf.conf, the OSPFv3 one.
    let state = bird.birdc(&sites.upstream, &["show", "ospf", "state", "ospf2"]);
    let block = (state.split("\n\trouter ")).find(|b| b.starts_with(&format!("{site}\n")))?;
    let external = format!("external {ANYCAST6}/128 metric ");
    let line = block
        .lines()
        .find_map(|l| l.trim().strip_prefix(&external))?;
    line.parse().ok()
}

#[test]
fn over_ospfv3_u_prefers_the_better_ipv6_site_and_fails_over() {
    let mut sites = preferred_a6(Routing::Ospf);
    // U learns the /128 from both sites, each with its metric as the external cost.
    let both = wait_until(CONVERGE, || {
        ospf6_external(&sites, SITE_A) == Some(50) && ospf6_external(&sites, SITE_B) == Some(100)
    });
    let bird = sites.upstream_bird6();
    assert!(both, "U's OSPFv3 lacks a site's /128; U's BIRD:\n{bird}");
    assert!(
        bird.contains(&format!("[{SITE_A}]")),
        "U's best is not A's:\n{bird}"
    );
    let (withdrawn_ms, gap_ms) = fail_a(&mut sites, ANYCAST6.into());
    eprintln!(
        "OSPFv3: A withdrew after {withdrawn_ms:.0} ms; first datagram at B after {gap_ms:.0} ms"
    );
    assert!(gap_ms < 5_000.0, "gap {gap_ms:.0} ms");
    assert_eq!(
        ospf6_external(&sites, SITE_A),
        None,
        "A's LSA outlived its route"
    );
    let key = sites.key.path().to_path_buf();
    sites
        .a
        .announce_all(&key, Announce::FAST.preference(50))
        .expect("announce");
    wait_via6(&sites, A, CHANGE);
}
