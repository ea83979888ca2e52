//! End-to-end forwarding rate on the DESIGN.md topology, with traffic generated in the kernel.
//!
//! The client's side injects frames with BPF_PROG_TEST_RUN in live-frames mode, `c0` as the
//! ingress device: the generator, `bench_gen`, writes an IPv4/UDP frame from its template
//! (192.0.2.10 -> 198.51.100.53:9) and gives it the next of 1,024 source ports (1024..2048, so
//! 1,024 flows), and sends it with XDP_TX, so it arrives on the router's `r0` like a frame from
//! a real client. The router forwards it to the members in
//! one of three ways, all measured in one run, on the same namespaces, with the same number of
//! packets, in interleaved rounds:
//! - `xdp_anycast`: the product (`anycast-ctl attach r0 r1 r2 r3 --mode native`, then
//!   `member add 198.51.100.53 <member>` for the three members);
//! - `kernel_ecmp`: no XDP on the router, an ECMP multipath route with the L4 hash
//!   (`fib_multipath_hash_policy=1`): the operator's routing-only alternative;
//! - `plain_redirect`: `bench_redirect` on `r0`, every frame to `r1` through a devmap: the
//!   ceiling of any XDP program on this topology.
//!
//! Packets are counted where they arrive: rx packets of `m1..m3` (`ip -j -s link`, before and
//! after), so only packets that crossed the router count. Each member runs a sink,
//! `bench_sink`, an XDP program that drops IPv4 and passes ARP, so the members' cost is small
//! and the same in every case: without it the members' kernels would run full UDP receive (and
//! port unreachable) for `xdp_anycast` and `kernel_ecmp`, but drop `plain_redirect`'s frames at
//! once as addressed to another host (they keep r0's MAC). A reference measurement, the
//! generator into `r0` with the sink on `r0` itself, gives the cost that every case shares
//! before the router does anything.
//!
//! The generator, the router's NAPI poll and the members' NAPI polls all run on the injecting
//! CPU (softirq after each batch of the TEST_RUN), so a rate is the reciprocal of the whole
//! path's cost per packet. The generator's share is the same in all cases and dilutes the
//! end-to-end ratios; `above_reference_ns_per_packet` takes it out.

use std::time::{Duration, Instant};

use anycast_common::bench::{BenchFrame, names, programs};
use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, DevMap},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, links::FdLink},
};
use serde_json::{Value, json};

use crate::{
    Ctl, Netns,
    frames::{Ipv4, ipv4_frame},
    topology::{
        ANYCAST, CLIENT_IFACE, CLIENT_IP, ClientMode, ROUTER_CLIENT_IFACE, Topology,
        TopologyOptions,
    },
};

/// Interleaved rounds of the cases; each case's figure is the median over them.
pub const ROUNDS: usize = 5;
/// Frames per live-frames batch: one NAPI budget, below the veth ring size (256), so the ring
/// of `r0` cannot overflow while the generator fills it.
pub const BATCH: u32 = 64;
/// Frames per TEST_RUN call; the deadline is checked between calls.
const CHUNK: u64 = 100_000;
/// Upper bound of one case: warm-up, injection and the wait for the count to settle.
const CASE_DEADLINE: Duration = Duration::from_secs(60);
/// Packets injected (and waited for) before each measured case, not counted: neighbours,
/// caches and flow state are warm when the measurement starts.
const WARM_UP: u64 = 10_000;
/// The count has stopped growing after this many unchanged polls.
const STABLE_POLLS: usize = 5;
const POLL: Duration = Duration::from_millis(20);
const DST_PORT: u16 = 9;
/// UDP payload: the frame is 60 bytes, the smallest Ethernet frame (without FCS).
const PAYLOAD: usize = 18;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    XdpAnycast,
    KernelEcmp,
    PlainRedirect,
    /// Generator into r0, dropped there: the shared cost.
    Reference,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::XdpAnycast,
        Case::KernelEcmp,
        Case::PlainRedirect,
        Case::Reference,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::XdpAnycast => "xdp_anycast",
            Case::KernelEcmp => "kernel_ecmp",
            Case::PlainRedirect => "plain_redirect",
            Case::Reference => "generator_into_r0_drop",
        }
    }
}

/// One measured run of one case.
struct Sample {
    injected: u64,
    /// Per counted interface.
    counted: Vec<u64>,
    injection: Duration,
    elapsed: Duration,
}

impl Sample {
    fn delivered(&self) -> u64 {
        self.counted.iter().sum()
    }

    fn pps(&self) -> f64 {
        self.delivered() as f64 / self.elapsed.as_secs_f64()
    }

    fn json(&self) -> Value {
        json!({
            "injected": self.injected,
            "delivered": self.delivered(),
            "per_interface": self.counted,
            "injection_s": self.injection.as_secs_f64(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "pps": self.pps(),
        })
    }
}

/// Measures every case with `packets` frames per case and round; returns the report.
pub fn run(packets: u64) -> Result<Value> {
    crate::require_root();
    ensure!(
        (1..=u64::from(u32::MAX)).contains(&packets),
        "packets must be 1..=2^32-1"
    );
    crate::ctl::ensure_bpffs();
    // Dropped in reverse order: the members' sinks, the bench object, then the namespaces with
    // every veth, route and attachment in them.
    let topo = Topology::new(TopologyOptions {
        members: 3,
        client_mode: ClientMode::Routed,
        ..Default::default()
    })
    .context("build the topology")?;
    topo.router
        .sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;

    let r0_mac = topo.router.link_mac(ROUTER_CLIENT_IFACE)?;
    let c0_mac = topo.client.link_mac(CLIENT_IFACE)?;
    let frame = ipv4_frame(
        r0_mac,
        c0_mac,
        &Ipv4::udp(CLIENT_IP, ANYCAST, 1024, DST_PORT, &[0; PAYLOAD]),
    );
    let r1 = topo.router.ifindex(&topo.members[0].router_iface)?;
    let mut bench = BenchObject::load(&frame, &topo.router, r1)?;
    let _sinks = topo
        .members
        .iter()
        .map(|m| bench.attach(programs::BENCH_SINK, &m.ns, &m.iface))
        .collect::<Result<Vec<FdLink>>>()?;
    let c0 = topo.client.ifindex(CLIENT_IFACE)?;
    let members: Vec<(&Netns, &str)> = topo
        .members
        .iter()
        .map(|m| (&m.ns, m.iface.as_str()))
        .collect();
    let router_in = [(&topo.router, ROUTER_CLIENT_IFACE)];
    let ifaces = topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    let multipath: Vec<String> = topo.member_ips().iter().map(|i| i.to_string()).collect();
    let mut route = vec!["route", "replace", "198.51.100.53/32"];
    for ip in &multipath {
        route.extend_from_slice(&["nexthop", "via", ip.as_str()]);
    }

    let measure = |bench: &BenchObject, counted: &[(&Netns, &str)]| -> Result<Sample> {
        measure(&topo.client, bench, c0, &frame, packets, counted)
    };
    let mut samples: Vec<Vec<Sample>> = Case::ALL.iter().map(|_| Vec::new()).collect();
    let mut dataplane_forwarded = Vec::new();
    for round in 1..=ROUNDS {
        for (i, case) in Case::ALL.into_iter().enumerate() {
            eprintln!("round {round}/{ROUNDS}: {} ...", case.name());
            if case != Case::XdpAnycast {
                ensure!(
                    topo.router.xdp_prog_ids(ROUTER_CLIENT_IFACE)?.is_empty(),
                    "r0 still runs an XDP program"
                );
            }
            let sample = match case {
                Case::XdpAnycast => {
                    let ctl = Ctl::new(&topo.router);
                    ctl.attach(&ifaces, "native")?;
                    for ip in topo.member_ips() {
                        ctl.member_add(ANYCAST, ip)?;
                    }
                    let before = forwarded(&ctl);
                    let sample = measure(&bench, &members)?;
                    if let (Some(b), Some(a)) = (before, forwarded(&ctl)) {
                        dataplane_forwarded.push(a - b);
                    }
                    ctl.detach(&ifaces)?;
                    sample
                }
                Case::KernelEcmp => {
                    topo.router.ip(&route)?;
                    let sample = measure(&bench, &members);
                    topo.router.ip(&["route", "del", "198.51.100.53/32"])?;
                    sample?
                }
                Case::PlainRedirect => {
                    let link = bench.attach(
                        programs::BENCH_REDIRECT,
                        &topo.router,
                        ROUTER_CLIENT_IFACE,
                    )?;
                    let sample = measure(&bench, &members);
                    drop(link);
                    sample?
                }
                Case::Reference => {
                    let link =
                        bench.attach(programs::BENCH_SINK, &topo.router, ROUTER_CLIENT_IFACE)?;
                    let sample = measure(&bench, &router_in);
                    drop(link);
                    sample?
                }
            };
            eprintln!(
                "  {:.0} pps, {} of {} delivered",
                sample.pps(),
                sample.delivered(),
                sample.injected
            );
            samples[i].push(sample);
        }
    }

    let mut cases = serde_json::Map::new();
    let mut ns = Vec::new();
    for (case, samples) in Case::ALL.iter().zip(&samples) {
        let pps = median(samples.iter().map(Sample::pps));
        let injected: u64 = samples.iter().map(|s| s.injected).sum();
        let delivered: u64 = samples.iter().map(Sample::delivered).sum();
        ns.push(1e9 / pps);
        cases.insert(
            case.name().to_string(),
            json!({
                "pps": pps,
                "ns_per_packet": 1e9 / pps,
                "delivered_fraction": delivered as f64 / injected as f64,
                "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
            }),
        );
    }
    let reference = cases
        .remove(Case::Reference.name())
        .expect("reference measured");
    let (xdp, kernel, plain, shared) = (ns[0], ns[1], ns[2], ns[3]);
    let above = |case: f64| case - shared;
    Ok(json!({
        "method": format!(
            "DESIGN.md netns topology (client, router, 3 members on veth; client routes via r0). \
             Traffic: an XDP generator run by BPF_PROG_TEST_RUN with live frames (batch {BATCH}) \
             with ingress c0, in the client namespace; each frame leaves c0 by XDP_TX into r0: \
             {}-byte IPv4/UDP 192.0.2.10 -> 198.51.100.53:{DST_PORT}, source port cycling \
             through 1024..2048. The generator (bench_gen) writes the whole template frame \
             (BENCH_FRAME) over every frame before setting the port, because live frames \
             recycle pages as the router left them. Counted: rx packets of m1..m3 \
             (ip -j -s link, before/after), each member running an XDP sink (bench_sink) that \
             drops IPv4 and passes ARP, so only packets that crossed the router count and the \
             members' cost is small and equal in all cases. Rate = packets counted / time from the start \
             of injection until the count stopped growing (the injection's duration when \
             everything had arrived by then). {packets} packets per case per round after a \
             {WARM_UP}-packet warm-up, {ROUNDS} interleaved rounds, median. The generator, the \
             router and the members all run in the same kernel, on the injecting CPU of this \
             {}-core VM (the NAPI polls run in the softirq after each batch): a rate is the \
             reciprocal of the whole path's cost per packet, and the generator's share, equal \
             in all cases, dilutes the ratios. generator_into_r0_drop (the sink on r0, counted \
             on r0) measures that share; above_reference_ns_per_packet subtracts it (router, \
             link to member and member sink). kernel_ecmp: no XDP on the router, \
             `ip route 198.51.100.53/32 nexthop via <each member>`, \
             fib_multipath_hash_policy=1. plain_redirect: bench_redirect natively on r0, \
             BENCH_PORT[0] = r1. xdp_anycast: anycast-ctl attach r0 r1 r2 r3 --mode native, \
             member add 198.51.100.53 for each member.",
            frame.len(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        ),
        "packets_per_case": packets,
        "rounds": ROUNDS,
        "frame_bytes": frame.len(),
        "cases": cases,
        "reference": {Case::Reference.name(): reference},
        "above_reference_ns_per_packet": {
            "xdp_anycast": above(xdp),
            "kernel_ecmp": above(kernel),
            "plain_redirect": above(plain),
        },
        "dataplane_forwarded_per_round": dataplane_forwarded,
        "ratios": {
            "xdp_vs_kernel_ecmp": kernel / xdp,
            "xdp_vs_plain_redirect": plain / xdp,
        },
        "ratios_above_reference": {
            "xdp_vs_kernel_ecmp": above(kernel) / above(xdp),
            "xdp_vs_plain_redirect": above(plain) / above(xdp),
        },
        "targets": {"xdp_vs_kernel_ecmp": 5.0, "xdp_vs_plain_redirect": 0.8},
    }))
}

/// One measured case: warm-up, then `packets` frames injected on c0, counted on `counted`.
fn measure(
    client: &Netns,
    bench: &BenchObject,
    c0: u32,
    frame: &[u8],
    packets: u64,
    counted: &[(&Netns, &str)],
) -> Result<Sample> {
    let deadline = Instant::now() + CASE_DEADLINE;
    let base = rx_packets(counted)?;
    bench.inject(client, c0, frame, WARM_UP, deadline)?;
    settle(counted, &base, WARM_UP, Instant::now(), deadline)?;

    let before = rx_packets(counted)?;
    let start = Instant::now();
    let injected = bench.inject(client, c0, frame, packets, deadline)?;
    let injection = start.elapsed();
    let (after, last_growth) = settle(counted, &before, injected, start, deadline)?;
    Ok(Sample {
        injected,
        counted: after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
        injection,
        elapsed: last_growth.map_or(injection, |t| t.max(injection)),
    })
}

/// Polls the counters until they stop growing or have grown by `expected` since `base`.
/// Returns the final counters and, if they grew after the first poll, when they last did
/// (from `start`); `None` means everything had arrived by the first poll.
fn settle(
    counted: &[(&Netns, &str)],
    base: &[u64],
    expected: u64,
    start: Instant,
    deadline: Instant,
) -> Result<(Vec<u64>, Option<Duration>)> {
    let grown = |c: &[u64]| -> u64 { c.iter().zip(base).map(|(a, b)| a.saturating_sub(*b)).sum() };
    let mut last = rx_packets(counted)?;
    let mut last_growth = None;
    let mut unchanged = 0;
    while unchanged < STABLE_POLLS && grown(&last) < expected && Instant::now() < deadline {
        std::thread::sleep(POLL);
        let now = rx_packets(counted)?;
        if now == last {
            unchanged += 1;
        } else {
            unchanged = 0;
            last_growth = Some(start.elapsed());
            last = now;
        }
    }
    Ok((last, last_growth))
}

/// The kernel's rx packet counter of each interface (veth counts frames its XDP dropped too).
fn rx_packets(counted: &[(&Netns, &str)]) -> Result<Vec<u64>> {
    counted
        .iter()
        .map(|(ns, iface)| {
            let out = ns.ip(&["-j", "-s", "link", "show", iface])?;
            let links: Value = serde_json::from_str(&out)
                .with_context(|| format!("`ip -j -s link show {iface}`: {out}"))?;
            links[0]["stats64"]["rx"]["packets"]
                .as_u64()
                .with_context(|| format!("no rx packets for {iface}: {out}"))
        })
        .collect()
}

/// The dataplane's forwarded packet count for the anycast address, if `stats --json` has it.
fn forwarded(ctl: &Ctl) -> Option<u64> {
    let out = ctl.run(&["stats", "--json"]).ok()?;
    let stats: Value = serde_json::from_str(&out).ok()?;
    stats["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["address"] == ANYCAST.to_string())?["forwarded_packets"]
        .as_u64()
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The benchmark object loaded for its bench programs (see [`crate::xdp::load_object`]):
/// `bench_gen` with its template in BENCH_FRAME, `bench_sink`, and `bench_redirect` with
/// BENCH_PORT[0] = r1. Attachments are links owned by the caller; dropping one detaches.
struct BenchObject {
    ebpf: Ebpf,
}

impl BenchObject {
    fn load(frame: &[u8], router: &Netns, r1: u32) -> Result<Self> {
        let mut ebpf = crate::xdp::load_object()?;
        let template = BenchFrame::new(frame).context("template frame too long")?;
        let mut frames: Array<_, BenchFrame> = Array::try_from(
            ebpf.map_mut(names::BENCH_FRAME)
                .context("map BENCH_FRAME")?,
        )?;
        frames.set(0, template, 0).context("BENCH_FRAME[0]")?;
        // The devmap resolves the ifindex in the caller's namespace: set it from the router's.
        let mut port =
            DevMap::try_from(ebpf.map_mut(names::BENCH_PORT).context("map BENCH_PORT")?)?;
        router
            .in_ns(|| port.set(0, r1, None, 0))
            .context("BENCH_PORT[0] = r1")?;
        for name in [
            programs::BENCH_GEN,
            programs::BENCH_SINK,
            programs::BENCH_REDIRECT,
        ] {
            crate::xdp::load_program(&mut ebpf, name)?;
        }
        Ok(BenchObject { ebpf })
    }

    fn program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name}"))?
            .try_into()?)
    }

    /// Attaches program `name` natively to `iface` in `ns`, until the link is dropped.
    fn attach(&mut self, name: &str, ns: &Netns, iface: &str) -> Result<FdLink> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name}"))?
            .try_into()?;
        crate::xdp::attach(prog, ns, iface).with_context(|| format!("attach {name}"))
    }

    /// Injects `packets` frames built from `frame` with `bench_gen` as if received on c0
    /// (ifindex `c0`, in the client's namespace), in chunks until `deadline`; returns how many
    /// were injected.
    fn inject(
        &self,
        client: &Netns,
        c0: u32,
        frame: &[u8],
        packets: u64,
        deadline: Instant,
    ) -> Result<u64> {
        let mut ctx = [0u8; 24]; // struct xdp_md: data 0, data_end, meta 0, ingress ifindex, queue 0
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&c0.to_ne_bytes());
        let generator = self.program(programs::BENCH_GEN)?;
        client.in_ns(|| {
            let mut done = 0;
            while done < packets {
                if Instant::now() >= deadline {
                    bail!("injection timed out after {done} of {packets} packets");
                }
                let n = (packets - done).min(CHUNK);
                generator
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        ctx_in: Some(&ctx),
                        repeat: n as u32,
                        attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                        ..TestRunOptions::default()
                    })
                    .context("BPF_PROG_TEST_RUN (live frames) on c0")?;
                done += n;
            }
            Ok(done)
        })
    }
}
