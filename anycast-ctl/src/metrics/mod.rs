//! Prometheus metrics: the figures of `stats`, `show` and `status`, served at `/metrics` by
//! `anycast-ctl metrics` and `anycast-ctl agent --metrics-listen` ([`http`]).
//!
//! Invariants:
//! - Every figure is read by [`crate::report`] (and [`crate::export::exported`]), the code
//!   behind `stats --json`, `show --json` and `status --json`: there is no second reading of
//!   the maps here, so a scrape and the JSON outputs cannot disagree on what a counter means.
//! - A scrape opens the pinned maps anew, so it follows a detach and re-attach, and it takes no
//!   lock: like `stats`, it only reads.
//! - Names follow Prometheus conventions: prefix `anycast_`, counters end in `_total`, units are
//!   base units in the name (`_bytes`, `_seconds`); the only labels are `address`, `member` and
//!   `reason` (and `version` on the build info), so series grow with addresses and members
//!   only. Every series of a family is written at each scrape, zeros included, so rates work
//!   from the first scrape on; `member_expires_in_seconds` exists for learned members only.
pub mod http;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeLabelValue,
        EncodeMetric, LabelValueEncoder,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::{Registry, Unit},
};

use crate::{
    Result,
    dataplane::Maps,
    net::Netlink,
    pin::PinDir,
    report::{self, AgentCounters, Show, ShownMember, Stats},
};

/// Which text format a scrape is answered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 (what Prometheus asks for).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (for clients that do not ask for OpenMetrics, such as
    /// `promtool check metrics`).
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Everything one scrape reports, read at once.
#[derive(Debug)]
pub struct Snapshot {
    stats: Stats,
    show: Show,
    /// Exported route metric by address (empty when export is off).
    exported: BTreeMap<IpAddr, u32>,
    agent: AgentCounters,
}

/// Reads the dataplane's figures through [`crate::report`].
pub async fn snapshot(pin: &PinDir, nl: &Netlink) -> Result<Snapshot> {
    let maps = Maps::open(pin)?;
    let (stats, show) = report::stats_and_show(&maps)?;
    let exported = crate::export::exported(&maps, nl).await?;
    let agent = report::agent_counters(&maps);
    Ok(Snapshot {
        stats,
        show,
        exported,
        agent,
    })
}

/// A snapshot encoded in `format`.
pub fn encode(snapshot: Snapshot, format: Format) -> String {
    let mut registry = Registry::with_prefix("anycast");
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    let encoded = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
    };
    encoded.expect("writing to a String");
    out
}

/// Reads and encodes the figures: one scrape.
pub async fn scrape(pin: &PinDir, nl: &Netlink, format: Format) -> Result<String> {
    let start = std::time::Instant::now();
    let snapshot = snapshot(pin, nl).await?;
    let read = start.elapsed();
    let body = encode(snapshot, format);
    tracing::debug!(
        read_ms = read.as_millis() as u64,
        encode_ms = (start.elapsed() - read).as_millis() as u64,
        bytes = body.len(),
        "scrape"
    );
    Ok(body)
}

/// An address as a label value, written without an allocation.
#[derive(Clone, Copy)]
struct Ip(IpAddr);

impl EncodeLabelValue for Ip {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        match self.0 {
            IpAddr::V4(v4) => encoder.write_str(dotted(v4, &mut [0; 15])),
            IpAddr::V6(v6) => write!(encoder, "{v6}"),
        }
    }
}

/// `ip` in dotted decimal, as `Display` writes it, in `buf`. An address is in up to ~20
/// series of a scrape, and `Display` (the formatting machinery, octet by octet) took half of
/// the encoding time at 65,536 addresses.
fn dotted(ip: Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    std::str::from_utf8(&buf[..n]).expect("ASCII digits and dots")
}

type Labels2 = [(&'static str, Ip); 2];

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        self.encode_addresses(&mut encoder)?;
        self.encode_members(&mut encoder)?;
        self.encode_global(&mut encoder)?;
        let build = Info::new([("version", env!("CARGO_PKG_VERSION"))]);
        let metric = encoder.encode_descriptor(
            "build",
            "The anycast-ctl that serves these metrics",
            None,
            build.metric_type(),
        )?;
        build.encode(metric)
    }
}

type AddressField = fn(&report::AddressCounters) -> u64;
type MemberField = fn(&ShownMember) -> i64;

/// The per-address counters: name (before the unit), help, whether in bytes, value.
const ADDRESS_COUNTERS: [(&str, &str, bool, AddressField); 6] = [
    (
        "address_rx_packets",
        "Frames for the anycast address received (IPv4 and ARP)",
        false,
        |c| c.rx_packets,
    ),
    (
        "address_rx",
        "Bytes of the frames received for the address (whole Ethernet frames)",
        true,
        |c| c.rx_bytes,
    ),
    (
        "address_forwarded_packets",
        "Frames for the address forwarded to a member",
        false,
        |c| c.forwarded_packets,
    ),
    (
        "address_forwarded",
        "Bytes for the address forwarded to a member",
        true,
        |c| c.forwarded_bytes,
    ),
    (
        "address_arp_replies",
        "ARP requests for the address answered",
        false,
        |c| c.arp_replies,
    ),
    (
        "address_nd_replies",
        "Neighbour solicitations for the address answered",
        false,
        |c| c.nd_replies,
    ),
];

/// The per-member settings of `show`: name, help, value.
const MEMBER_GAUGES: [(&str, &str, MemberField); 3] = [
    (
        "member_weight",
        "The member's weight among the members of its preference (0: drained)",
        |m| i64::from(m.weight),
    ),
    (
        "member_preference",
        "The member's preference (the lowest takes new flows)",
        |m| i64::from(m.preference),
    ),
    (
        "member_learned",
        "1 for a member learned from advertisements, 0 for a static one",
        |m| i64::from(m.source == "learned"),
    ),
];

impl Snapshot {
    fn encode_addresses(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let label = |address: IpAddr| [("address", Ip(address))];
        for (name, help, bytes, field) in ADDRESS_COUNTERS {
            let unit = bytes.then_some(&Unit::Bytes);
            let series = (self.stats.addresses.iter()).map(|c| (label(c.address), field(c)));
            counters(e, name, help, unit, series)?;
        }
        let passed = self.stats.addresses.iter().flat_map(|c| {
            (c.passed.iter())
                .map(|(reason, n)| (([("address", Ip(c.address))], [("reason", *reason)]), *n))
        });
        let help = "Frames for the address passed to the kernel, by reason";
        counters(e, "address_passed_packets", help, None, passed)?;
        let shown = &self.show.addresses;
        let members = shown
            .iter()
            .map(|s| (label(s.address), s.members.len() as i64));
        gauges(
            e,
            "address_members",
            "Members of the address",
            None,
            members,
        )?;
        let exported = (shown.iter()).map(|s| {
            (
                label(s.address),
                i64::from(self.exported.contains_key(&s.address)),
            )
        });
        let help = "1 while the address's host route is exported (export on, and a member)";
        gauges(e, "address_route_exported", help, None, exported)?;
        let metric = self
            .exported
            .iter()
            .map(|(a, m)| (label(*a), i64::from(*m)));
        let help = "Metric of the address's exported host route";
        gauges(e, "address_route_metric", help, None, metric)
    }

    fn encode_members(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let counted = self.stats.addresses.iter().flat_map(|a| {
            (a.members.iter()).map(move |m| (member_labels(a.address, m.address), m))
        });
        let help = "Frames forwarded to the member";
        let packets = counted.clone().map(|(l, m)| (l, m.packets));
        counters(e, "member_forwarded_packets", help, None, packets)?;
        let help = "Bytes forwarded to the member";
        let bytes = counted.map(|(l, m)| (l, m.bytes));
        counters(e, "member_forwarded", help, Some(&Unit::Bytes), bytes)?;
        let shown = || {
            self.show.addresses.iter().flat_map(|a| {
                (a.members.iter()).map(move |m| (member_labels(a.address, m.address), m))
            })
        };
        for (name, help, field) in MEMBER_GAUGES {
            gauges(e, name, help, None, shown().map(|(l, m)| (l, field(m))))?;
        }
        let expiry = shown().filter_map(|(l, m)| Some((l, m.expires_in_ms? as f64 / 1000.0)));
        let help = "Time until a learned member expires without a refresh";
        gauges(e, "member_expires_in", help, Some(&Unit::Seconds), expiry)
    }

    fn encode_global(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let reason = |r: &'static str| [("reason", r)];
        let global = self.stats.global.iter().map(|(r, n)| (reason(r), *n));
        let help = "Frames not counted per address, by what became of them (stats' global)";
        counters(e, "frames", help, None, global)?;
        let accepted = std::iter::once(([] as [(&str, &str); 0], self.agent.accepted));
        let help = "Advertisements the agent accepted";
        counters(e, "agent_advertisements_accepted", help, None, accepted)?;
        let rejected = self.agent.rejected.iter().map(|(r, n)| (reason(r), *n));
        let help = "Advertisements (or entries) the agent rejected, by reason";
        counters(e, "agent_advertisements_rejected", help, None, rejected)
    }
}

fn member_labels(address: IpAddr, member: IpAddr) -> Labels2 {
    [("address", Ip(address)), ("member", Ip(member))]
}

/// A counter family: its descriptor, then one sample per label set.
fn counters<L: EncodeLabelSet, V: EncodeCounterValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result {
    let mut metric = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family: its descriptor, then one sample per label set.
fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result {
    let mut metric = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Serves `/metrics` on `listener` from a thread of its own (with its own runtime and netlink
/// handle), so that a scrape of many addresses never delays the agent's event loop.
pub fn serve_in_thread(listener: std::net::TcpListener, pin: PinDir) -> Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let served = match runtime {
                Ok(rt) => rt.block_on(async { http::serve(listener, pin, Netlink::new()?).await }),
                Err(e) => Err(crate::Error::io("starting the metrics runtime", e)),
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "the metrics server stopped");
            }
        })
        .map_err(|e| crate::Error::io("starting the metrics thread", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_writes_what_display_writes() {
        let mut buf = [0; 15];
        for octet in 0..=255u8 {
            for position in 0..4 {
                let mut octets = [192, 0, 2, 7];
                octets[position] = octet;
                let ip = Ipv4Addr::from(octets);
                assert_eq!(dotted(ip, &mut buf), ip.to_string());
            }
        }
        for ip in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(198, 18, 255, 1),
        ] {
            assert_eq!(dotted(ip, &mut buf), ip.to_string());
        }
    }
}
