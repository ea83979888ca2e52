//! `anycast-ctl probe`: which members answer for an anycast address, how often, and how fast
//! (see [`crate::identity`]). It runs anywhere, as any user: it needs no pin directory.
use std::{net::IpAddr, time::Duration};

use super::output::{table, to_json};
use crate::{Error, Result, identity::Probe};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The anycast address to probe, IPv4 or IPv6.
    #[arg(value_parser = super::args::anycast_ip, value_name = "ANYCAST_IP")]
    pub anycast: IpAddr,
    /// Queries to send, each from its own source port (so each is a flow of its own).
    #[arg(long, short, default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub count: u16,
    /// UDP port the members answer on (`announce --identity-port`).
    #[arg(long, short, default_value_t = anycast_common::identity::DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// How long to wait for each reply (at most 60s).
    #[arg(long, default_value = "1s", value_parser = timeout)]
    pub timeout: Duration,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() || d > Duration::from_secs(60) {
        return Err(format!("{s} is not between 1ms and 60s"));
    }
    Ok(d)
}

pub async fn run(args: Args) -> Result<String> {
    let probe = crate::identity::probe(
        args.anycast,
        args.port,
        usize::from(args.count),
        args.timeout,
    )
    .await?;
    if probe.answered == 0 {
        return Err(Error::Usage(format!(
            "no member of {} answered on port {} within {} ({} queries{}); is `announce \
             --identity-port {}` running on the members?",
            probe.anycast,
            probe.port,
            humantime::format_duration(args.timeout),
            probe.queries,
            match probe.malformed_reasons.first() {
                Some(why) => format!(", {} malformed replies: {why}", probe.malformed),
                None => String::new(),
            },
            probe.port
        )));
    }
    if args.json {
        return Ok(to_json(&probe));
    }
    Ok(render(&probe))
}

fn render(p: &Probe) -> String {
    let rows = (p.members.iter())
        .map(|m| {
            vec![
                m.address.to_string(),
                m.hostname.clone(),
                m.answers.to_string(),
                format!("{:.2} ms", m.rtt_ms_min),
                format!("{:.2} ms", m.rtt_ms_avg),
                format!("{:.2} ms", m.rtt_ms_max),
            ]
        })
        .collect();
    let mut out = format!(
        "{} port {}: {} queries, {} answered, {} timed out, {} malformed replies ignored\n{}",
        p.anycast,
        p.port,
        p.queries,
        p.answered,
        p.timed_out,
        p.malformed,
        table(
            &[
                "MEMBER", "HOSTNAME", "ANSWERS", "RTT MIN", "RTT AVG", "RTT MAX"
            ],
            rows
        )
    );
    for why in &p.malformed_reasons {
        out.push_str(&format!("ignored: {why}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    #[test]
    fn parses_probe_with_defaults_and_bounds() {
        let Command::Probe(args) = parse(&["probe", "198.51.100.53"]).unwrap().command else {
            panic!("not probe");
        };
        assert_eq!(
            (args.count, args.port),
            (16, anycast_common::identity::DEFAULT_PORT)
        );
        assert_eq!(args.timeout, Duration::from_secs(1));
        for bad in [
            &["probe", "198.51.100.53", "--count", "0"][..],
            &["probe", "198.51.100.53", "--count", "1001"],
            &["probe", "198.51.100.53", "--timeout", "2m"],
            &["probe", "224.0.0.1"],
            &["probe", "ff02::1"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn identity_port_is_off_by_default_and_defaults_to_the_probe_port() {
        let port = |argv: &[&str]| match parse(argv).unwrap().command {
            Command::Announce(o) => o.identity_port,
            _ => panic!("not announce"),
        };
        let base = ["announce", "198.51.100.53", "--dev", "eth0"];
        assert_eq!(port(&base), None);
        assert_eq!(
            port(&[&base[..], &["--identity-port"]].concat()),
            Some(anycast_common::identity::DEFAULT_PORT)
        );
        assert_eq!(
            port(&[&base[..], &["--identity-port", "7000"]].concat()),
            Some(7000)
        );
    }
}
