//! Site failover seen by a client ([`crate::sites`]: two sites behind U, BGP with BFD
//! 3 × 100 ms, site A preferred by preference 50 against B's 100):
//!
//! `site_failover_fast_ms` (announce interval 100 ms, hold 300 ms) and
//! `site_failover_default_ms` (the announce defaults, 1 s and 3 s): the client streams UDP to
//! the anycast address (one flow, a datagram every ms), every announcer at A is killed
//! (`kill -9`), and the gap is the time from the kill to the send time of the first datagram
//! that reached a member at B. Each trial also times, by polling (`ip route`, a few ms per
//! look), when A's export table lost the route (the agent's expiry) and when U's kernel route
//! stopped going through A (BIRD: kernel protocol, BGP update, U's kernel protocol); what is
//! left of the gap is the client's own path. After each trial A's announcers restart and U
//! returns to A.
//!
//! `site_failover_fast6_ms` and `site_failover_default6_ms`: the same for the IPv6 anycast
//! address ([`Sites::dual_stack`]: dual-stack members, the client streaming over IPv6, the
//! `/128` over the same BGP sessions).
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::membership::Summary;
use crate::{
    ANYCAST,
    sites::{ANYCAST6, Announce, Routing, Site, Sites},
    traffic::{UDP_PORT, UdpSink, UdpStream},
};

const TARGET_FAST_MS: f64 = 1_000.0;
const FAST_TRIALS: usize = 5;
const DEFAULT_TRIALS: usize = 3;
/// How long one change may take before the trial fails.
const LIMIT: Duration = Duration::from_secs(15);

/// One trial, in ms from the kill.
struct Trial {
    gap: f64,
    withdrawn: f64,
    upstream: f64,
}

pub fn run() -> Result<Value> {
    crate::require_root();
    let fast = Announce::FAST;
    let default = Announce {
        interval_ms: 1_000,
        hold_ms: 3_000,
        ..fast
    };
    let (v4, v6) = (ANYCAST.into(), ANYCAST6.into());
    Ok(json!({
        "site_failover_fast_ms": case(v4, fast, FAST_TRIALS, Some(TARGET_FAST_MS))?,
        "site_failover_default_ms": case(v4, default, DEFAULT_TRIALS, None)?,
        "site_failover_fast6_ms": case(v6, fast, FAST_TRIALS, Some(TARGET_FAST_MS))?,
        "site_failover_default6_ms": case(v6, default, DEFAULT_TRIALS, None)?,
    }))
}

/// `trials` failovers of A for `anycast` (IPv4 or IPv6) with the announce timers of `how`, as
/// a report entry.
fn case(anycast: IpAddr, how: Announce, trials: usize, target: Option<f64>) -> Result<Value> {
    let mut sites = match anycast {
        IpAddr::V4(_) => Sites::new(Some(Routing::Bgp))?,
        IpAddr::V6(_) => Sites::dual_stack(Routing::Bgp)?,
    };
    let key = sites.key.path().to_path_buf();
    sites.b.announce_all(&key, how)?;
    let mut done = Vec::new();
    for _ in 0..trials {
        sites.a.announce_all(&key, how.preference(50))?;
        sites.wait_via_to(anycast, (true, false), Duration::from_secs(60))?;
        done.push(trial(&mut sites, anycast)?);
    }
    let of = |f: fn(&Trial) -> f64| Summary::of(&done.iter().map(f).collect::<Vec<_>>());
    let (gap, withdrawn, upstream) = (of(|t| t.gap), of(|t| t.withdrawn), of(|t| t.upstream));
    let dual = match anycast {
        IpAddr::V4(_) => "",
        IpAddr::V6(_) => ", dual-stack members, the /128 over the same BGP sessions",
    };
    println!(
        "site failover to {anycast}, interval {} ms hold {} ms ({trials} trials): gap p50 {:.0} \
         max {:.0} ms; A withdrew at {:.0}, U moved at {:.0} ms (p50)",
        how.interval_ms, how.hold_ms, gap.p50, gap.max, withdrawn.p50, upstream.p50
    );
    Ok(json!({
        "value": gap.p50,
        "max": gap.max,
        "min": gap.min,
        "target_below": target,
        "agent_withdrawal_p50_ms": withdrawn.p50,
        "upstream_route_moved_p50_ms": upstream.p50,
        "bird_propagation_p50_ms": upstream.p50 - withdrawn.p50,
        "method": format!(
            "two sites behind an upstream router U (namespaces; BIRD 2 from contrib/bird, BGP, \
             BFD 3 x 100 ms); site A's two members announce (interval {} ms, hold {} ms) with \
             preference 50, site B's with 100; the client streams UDP to the anycast address \
             {anycast} (one flow, one datagram per ms){dual}; `kill -9` of every announcer at \
             A; the gap is the time from the kill to the send time of the first datagram \
             received by a member at B; median of {trials} trials (A's announcers restarted and \
             U back on A between trials). Polled with `ip route` (a few ms per look): A's \
             export table losing the route (agent_withdrawal) and U's kernel route leaving A \
             (upstream_route_moved); bird_propagation is their difference, within the polls' \
             resolution (about 10 ms, so it can come out negative).",
            how.interval_ms, how.hold_ms
        ),
        "dominated_by": "the hold time: the agent withdraws when the last member's hold has \
            passed since its last advertisement (so the gap is between hold - interval and \
            hold after the death); BIRD's propagation (kernel table -> BGP -> U's kernel) adds \
            a few ms, and the client's path nothing measurable (its next datagram follows U's \
            new route). BFD plays no part here: the routers stay up.",
    }))
}

/// Kills A's announcers while the client streams to `anycast`; the gap and the times of the
/// two route changes.
fn trial(sites: &mut Sites, anycast: IpAddr) -> Result<Trial> {
    let (_a, b) = (sinks(&sites.a, anycast)?, sinks(&sites.b, anycast)?);
    let dst = SocketAddr::new(anycast, UDP_PORT);
    let stream = UdpStream::start(&sites.client, dst, 47000, Duration::from_millis(1))?;
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    sites.a.kill_announcers();
    let (mut withdrawn, mut upstream) = (None, None);
    while (withdrawn.is_none() || upstream.is_none()) && killed.elapsed() < LIMIT {
        if withdrawn.is_none() && sites.a.exported_to(anycast).is_empty() {
            withdrawn = Some(killed.elapsed());
        }
        if upstream.is_none() && !sites.upstream_via_to(anycast).0 {
            upstream = Some(killed.elapsed());
        }
    }
    let arrived = crate::wait_until(LIMIT, || b.iter().any(|s| s.received() > 0));
    std::thread::sleep(Duration::from_millis(50));
    let sent = stream.stop()?;
    ensure!(arrived, "the stream never reached site B");
    let first = (b.into_iter().flat_map(UdpSink::stop))
        .filter_map(|d| d.seq)
        .min()
        .context("no datagram at B")?;
    let at = sent.iter().find(|(s, _)| *s == first).context("unsent")?.1;
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    Ok(Trial {
        gap: ms(Some(at.saturating_duration_since(killed))),
        withdrawn: ms(withdrawn),
        upstream: ms(upstream),
    })
}

fn sinks(site: &Site, anycast: IpAddr) -> Result<Vec<UdpSink>> {
    (site.members.iter())
        .map(|m| UdpSink::start(&m.ns, anycast, UDP_PORT))
        .collect()
}
