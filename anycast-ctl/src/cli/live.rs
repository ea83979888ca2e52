//! `anycast-ctl stats --interval DURATION`: per-second rates per address and member, like
//! `ifstat`. Each report is the difference of two readings of [`report::stats`] (the code of
//! `stats --json`) divided by the time between them, measured, not assumed.
//!
//! Invariants: every counted packet falls into exactly one report (each reading is the next
//! one's base), so the rates times `seconds` add up to the counters' growth; a counter that went
//! down (a member removed and its counter reused) counts as 0. SIGINT and SIGTERM end the loop
//! with status 0, and so does a closed stdout (`| head`).
use std::{
    collections::HashMap,
    io::Write as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use super::output::table;
use crate::{
    Error, Result,
    dataplane::Maps,
    report::{self, Stats},
};

#[derive(Debug, Serialize)]
pub struct MemberRates {
    pub address: IpAddr,
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct AddressRates {
    pub address: IpAddr,
    pub rx_packets_per_s: f64,
    pub rx_bytes_per_s: f64,
    pub forwarded_packets_per_s: f64,
    pub forwarded_bytes_per_s: f64,
    pub passed_per_s: f64,
    pub arp_replies_per_s: f64,
    pub nd_replies_per_s: f64,
    pub members: Vec<MemberRates>,
}

/// One report: the rates over the last `seconds`.
#[derive(Debug, Serialize)]
pub struct Rates {
    /// Milliseconds since the Unix epoch at the end of the interval.
    pub timestamp_ms: u64,
    /// The measured length of the interval.
    pub seconds: f64,
    pub addresses: Vec<AddressRates>,
}

/// Counters of one reading, by address and by (address, member).
#[derive(Default)]
struct Reading {
    addresses: HashMap<IpAddr, [u64; 7]>,
    members: HashMap<(IpAddr, IpAddr), [u64; 2]>,
}

fn reading(stats: &Stats) -> Reading {
    let mut r = Reading::default();
    for a in &stats.addresses {
        let passed = a.passed.values().sum();
        let counters = [
            a.rx_packets,
            a.rx_bytes,
            a.forwarded_packets,
            a.forwarded_bytes,
            passed,
            a.arp_replies,
            a.nd_replies,
        ];
        r.addresses.insert(a.address, counters);
        for m in &a.members {
            r.members
                .insert((a.address, m.address), [m.packets, m.bytes]);
        }
    }
    r
}

/// The rates from `before` to `stats`, over `seconds`.
fn rates(before: &Reading, stats: &Stats, seconds: f64) -> Rates {
    let rate = |now: u64, then: Option<u64>| now.saturating_sub(then.unwrap_or(0)) as f64 / seconds;
    let addresses = (stats.addresses.iter())
        .map(|a| {
            let then = before.addresses.get(&a.address);
            let r = |i: usize, now: u64| rate(now, then.map(|t| t[i]));
            let members = (a.members.iter())
                .map(|m| {
                    let then = before.members.get(&(a.address, m.address));
                    MemberRates {
                        address: m.address,
                        packets_per_s: rate(m.packets, then.map(|t| t[0])),
                        bytes_per_s: rate(m.bytes, then.map(|t| t[1])),
                    }
                })
                .collect();
            AddressRates {
                address: a.address,
                rx_packets_per_s: r(0, a.rx_packets),
                rx_bytes_per_s: r(1, a.rx_bytes),
                forwarded_packets_per_s: r(2, a.forwarded_packets),
                forwarded_bytes_per_s: r(3, a.forwarded_bytes),
                passed_per_s: r(4, a.passed.values().sum()),
                arp_replies_per_s: r(5, a.arp_replies),
                nd_replies_per_s: r(6, a.nd_replies),
                members,
            }
        })
        .collect();
    Rates {
        timestamp_ms: crate::members::now_ms(),
        seconds,
        addresses,
    }
}

const HEADERS: [&str; 8] = [
    "ANYCAST",
    "MEMBER",
    "RX PKT/S",
    "RX B/S",
    "FWD PKT/S",
    "FWD B/S",
    "PASSED/S",
    "ARP/ND/S",
];

fn render(r: &Rates) -> String {
    let f = |v: f64| format!("{v:.1}");
    let mut rows = Vec::new();
    for a in &r.addresses {
        rows.push(vec![
            a.address.to_string(),
            String::new(),
            f(a.rx_packets_per_s),
            f(a.rx_bytes_per_s),
            f(a.forwarded_packets_per_s),
            f(a.forwarded_bytes_per_s),
            f(a.passed_per_s),
            f(a.arp_replies_per_s + a.nd_replies_per_s),
        ]);
        for m in &a.members {
            let (p, b) = (f(m.packets_per_s), f(m.bytes_per_s));
            let blank = String::new;
            rows.push(vec![blank(), m.address.to_string(), blank(), blank(), p, b]);
        }
    }
    format!("{}\n", table(&HEADERS, rows))
}

/// Prints a report every `interval` (`count` of them, or until a signal or a closed stdout).
pub async fn run(
    maps: &Maps,
    only: Option<IpAddr>,
    interval: Duration,
    count: Option<u64>,
    json: bool,
) -> Result<()> {
    let signal = |kind, name| signal(kind).map_err(|e| Error::io(name, e));
    let mut sigint = signal(SignalKind::interrupt(), "SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate(), "SIGTERM handler")?;
    let mut before = reading(&report::stats(maps, only)?);
    let mut then = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut printed = 0;
    while count.is_none_or(|n| printed < n) {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        let stats = report::stats(maps, only)?;
        let now = Instant::now();
        let r = rates(&before, &stats, now.duration_since(then).as_secs_f64());
        (before, then) = (reading(&stats), now);
        let text = match json {
            true => format!("{}\n", serde_json::to_string(&r).expect("rates serialize")),
            false => render(&r),
        };
        let mut stdout = std::io::stdout().lock();
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(Error::io("writing to stdout", e)),
        }
        printed += 1;
    }
    Ok(())
}
