//! `anycast-ctl stats`: counters per anycast address and per member.
use std::{fmt::Write as _, net::IpAddr};

use super::{
    Router,
    args::anycast_ip,
    output::{nonzero, table, to_json},
};
use crate::{
    Result,
    dataplane::Maps,
    report::{self, AddressCounters, Stats},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this anycast address.
    #[arg(value_parser = anycast_ip)]
    pub address: Option<IpAddr>,
    /// JSON (with --interval: one object per line).
    #[arg(long)]
    pub json: bool,
    /// Print per-second rates every DURATION (such as 1s or 500ms) until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub interval: Option<std::time::Duration>,
    /// With --interval: stop after N reports.
    #[arg(long, value_name = "N", requires = "interval")]
    pub count: Option<u64>,
}

const HEADERS: [&str; 8] = [
    "ANYCAST",
    "MEMBER",
    "RX PKTS",
    "RX BYTES",
    "FWD PKTS",
    "FWD BYTES",
    "PASSED",
    "ARP/ND REPLIES",
];

pub async fn run(router: &Router, args: Args) -> Result<String> {
    let maps = Maps::open(&router.pin)?;
    if let Some(interval) = args.interval {
        super::live::run(&maps, args.address, interval, args.count, args.json).await?;
        return Ok(String::new());
    }
    let stats = report::stats(&maps, args.address)?;
    if args.json {
        return Ok(to_json(&stats));
    }
    let mut out = table(&HEADERS, stats.addresses.iter().flat_map(rows).collect());
    write_passed(&mut out, &stats);
    Ok(out)
}

/// The address's row, then one row per member.
fn rows(a: &AddressCounters) -> Vec<Vec<String>> {
    let passed: u64 = a.passed.values().sum();
    let mut rows = vec![vec![
        a.address.to_string(),
        String::new(),
        a.rx_packets.to_string(),
        a.rx_bytes.to_string(),
        a.forwarded_packets.to_string(),
        a.forwarded_bytes.to_string(),
        passed.to_string(),
        (a.arp_replies + a.nd_replies).to_string(),
    ]];
    for m in &a.members {
        rows.push(vec![
            String::new(),
            m.address.to_string(),
            String::new(),
            String::new(),
            m.packets.to_string(),
            m.bytes.to_string(),
            String::new(),
            String::new(),
        ]);
    }
    rows
}

/// A line per address that passed packets to the kernel, with the reasons.
fn write_passed(out: &mut String, stats: &Stats) {
    for a in &stats.addresses {
        let reasons = nonzero(&a.passed);
        if !reasons.is_empty() {
            writeln!(
                out,
                "{} passed to the kernel: {}",
                a.address,
                reasons.join(" ")
            )
            .expect("writing to a String");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    #[test]
    fn parses_stats() {
        assert!(matches!(
            parse(&["stats", "198.51.100.53", "--json"])
                .unwrap()
                .command,
            Command::Stats(Args {
                address: Some(_),
                json: true,
                interval: None,
                count: None,
            })
        ));
        let live = parse(&["stats", "--interval", "500ms", "--count", "3"]).unwrap();
        assert!(matches!(
            live.command,
            Command::Stats(Args { interval: Some(i), count: Some(3), .. }) if i.as_millis() == 500
        ));
        assert!(parse(&["stats", "--count", "3"]).is_err());
        assert!(parse(&["stats", "--interval", "soon"]).is_err());
    }
}
