//! End-to-end forwarding rate on the DESIGN.md topology, pipelined: the traffic generator on
//! one CPU, the router's receive processing on the other, so a rate is the slowest stage's.
//!
//! The client's side injects frames with BPF_PROG_TEST_RUN in live-frames mode, `c0` as the
//! ingress device, batches of [`BATCH`]: the generator, `bench_gen`, restores the headers of
//! its template (IPv4 or IPv6 UDP), gives the frame its flow's ports (and, for the scale case,
//! its destination) and sends it with XDP_TX, so it arrives on the router's `r0` like a frame
//! from a real client. The generator thread is pinned to [`pipeline::GENERATOR_CPU`]; `r0`
//! runs threaded NAPI, its kthread pinned to [`pipeline::ROUTER_CPU`], so the router's whole
//! receive processing (XDP, or the kernel's forwarding) is on that CPU alone; the members'
//! threaded NAPI (their sink, and the return of each page to the generator's page pool, which
//! on the router's CPU contended with the generator for the pool's lock) is on the generator's
//! CPU, ahead of it. All of them run SCHED_FIFO, so other work on the shared machine does not
//! take their CPUs. The stage that limited a case is read from the veth ring and the threads'
//! CPU time (see [`pipeline::StageFigures::limiting_stage`]); on two CPUs it is mostly the
//! generator's CPU, which carries the members' sinks too. So each case also reports the router
//! kthread's CPU time per packet, the router stage alone, and the headline ratios are of it.
//!
//! Phase 1, in interleaved rounds (each case the same number of frames; median of rounds):
//! - `xdp_anycast`, `xdp6_anycast`: the product (`anycast-ctl attach r0 r1 r2 r3 --mode native`,
//!   `member add` of 198.51.100.53 and 2001:db8:53::53 for the three members);
//! - `kernel_ecmp`, `kernel_ecmp6`: no XDP on the router, an ECMP multipath route with the L4
//!   hash (`fib_multipath_hash_policy=1`, both families): the routing-only alternative;
//! - `plain_redirect`, `plain_redirect6`: `bench_spread`, a devmap redirect with no logic that
//!   spreads flows over the same three members by a trivial hash of the ports: the ceiling of
//!   any XDP program that spreads;
//! - `redirect_with_rewrite`: `bench_forward`, `plain_redirect` plus the MAC and TTL rewrite a
//!   forwarder must make, for reference;
//! - `redirect_one_member`: `bench_redirect`, every frame to `r1` (keeps the redirect's bulking
//!   whole), for reference;
//! - `generator_alone`: `bench_sink` on `r0`, counted there: the generator's own rate.
//!
//! Phase 2, the dataplane at scale (attached with a connection table of [`FLOW_TABLE`] flows,
//! 65,536 addresses from 198.18.0.0/16 installed by `anycast-ctl load`, each with member m1):
//! traffic spread over all addresses (65,536 flows, one per address) against traffic to one
//! address (65,536 flows by port), and 1,048,576 flows to one address against 1,024 (every flow
//! in the connection table before the rounds, by traffic).
//!
//! Packets are counted where they arrive: rx packets of `m1..m3` (`ip -j -s link`, before and
//! after), over the injection's duration (what is still in the rings then is at most 4 x 256
//! frames). Each member runs `bench_sink`, an XDP program that drops IPv4 and IPv6 (passing ARP
//! and ICMPv6, so neighbours resolve), so the members' cost is small. It is not the same in
//! every case: the kernel's forwarding hands the members skbs, which veth converts for XDP.

use std::time::{Duration, Instant};

use anycast_common::bench::{BENCH_FRAME_BYTES, BenchFrame, SPREAD_PORTS, names, programs};
use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, DevMap},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, links::FdLink},
};
use serde_json::{Value, json};

use super::pipeline::{self, StageFigures, Stages};
use crate::{
    Ctl, Netns,
    frames::{Ipv4, Ipv6, ipv4_frame, ipv6_frame},
    topology::{
        ANYCAST, CLIENT_IFACE, CLIENT_IP, ClientMode, ROUTER_CLIENT_IFACE, Topology,
        TopologyOptions, member_ip6,
    },
};

/// Interleaved rounds of the cases; each case's figure is the median over them.
pub const ROUNDS: usize = 5;
/// Frames per live-frames batch: the kernel's largest (TEST_XDP_MAX_BATCH), so the generator's
/// per-batch cost is spread thin (its page pool holds a batch); `r0`'s ring (256) drops what
/// the router cannot take.
pub const BATCH: u32 = 256;
/// Frames per TEST_RUN call; the deadline is checked between calls. Each call sets up and tears
/// down a page pool, which stalls the generator for milliseconds, long enough for the router
/// to run dry: so one call per injection.
const CHUNK: u64 = 1 << 21;
/// Upper bound of one case: warm-up, injection and the wait for the count to settle.
const CASE_DEADLINE: Duration = Duration::from_secs(60);
/// Packets injected (and waited for) before each measured case, not counted: neighbours,
/// caches and flow state are warm when the measurement starts.
const WARM_UP: u64 = 20_000;
/// The count has stopped growing after this many unchanged polls.
const STABLE_POLLS: usize = 5;
const POLL: Duration = Duration::from_millis(20);
const DST_PORT: u16 = 9;
/// UDP payload of the IPv4 frame: the frame is 60 bytes, the smallest Ethernet frame.
const PAYLOAD: usize = 18;
const ANYCAST6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x53);
const CLIENT6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xc0, 0, 0, 0, 0, 0x10);
/// Connection table size of phase 2 (flows): 1,048,576 live flows fill a quarter of it, so
/// nearly every one keeps its entry (a 4-way set overflows only with 5 of them).
const FLOW_TABLE: u32 = 1 << 22;
/// Addresses of phase 2, 198.18.0.0/16.
const SCALE_ADDRESSES: u32 = 65_536;
const MANY_FLOWS: u32 = 1 << 20;
const FEW_FLOWS: u32 = 1 << 10;

/// What `r0` runs during a case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Router {
    Anycast,
    /// The dataplane with both addresses tracking TCP only (`member track ADDR tcp`): UDP
    /// placed by the Maglev table alone, no connection-table line per datagram.
    AnycastTrackTcp,
    KernelEcmp,
    Spread,
    Forward,
    /// The spreading ceiling plus one per-flow cache line read (`bench_cold`).
    Cold,
    /// `Cold` with the flows' lines consecutive, in 64 times fewer pages (`bench_packed`).
    Packed,
    One,
    Sink,
}

/// One measured case: what the router runs and the traffic.
struct Case {
    name: &'static str,
    router: Router,
    template: BenchFrame,
    frame: Vec<u8>,
}

/// One measured run of one case.
struct Sample {
    injected: u64,
    delivered: u64,
    injection: Duration,
    stages: StageFigures,
}

impl Sample {
    fn pps(&self) -> f64 {
        self.delivered as f64 / self.injection.as_secs_f64()
    }

    fn json(&self) -> Value {
        json!({
            "injected": self.injected,
            "delivered": self.delivered,
            "injection_s": self.injection.as_secs_f64(),
            "pps": self.pps(),
            "offered_pps": self.injected as f64 / self.injection.as_secs_f64(),
            "router_ring_drops": self.stages.router_ring_drops,
            "member_ring_drops": self.stages.member_ring_drops,
            "router_thread_busy": self.stages.router_busy,
            "members_threads_busy": self.stages.members_busy,
            "router_cpu_ns_per_packet": self.stages.router_ns_per_packet(self.injected),
            "generator_thread_busy": self.stages.generator_busy,
            "cpu_busy": self.stages.cpu_busy,
            "cpu_steal": self.stages.cpu_steal,
            "limiting_stage": self.stages.limiting_stage(self.injected),
        })
    }
}

/// The namespaces and everything loaded into them, for the length of the benchmark.
struct Bench {
    // Dropped in field order: the pin directory, the bench object (and the sinks' links), then
    // the namespaces.
    ctl: Ctl,
    bench: BenchObject,
    _sinks: Vec<FdLink>,
    topo: Topology,
    router_threads: Vec<u32>,
    member_threads: Vec<u32>,
    c0: u32,
    packets: u64,
}

/// Measures every case with `packets` frames per case and round; returns the report.
pub fn run(packets: u64) -> Result<Value> {
    crate::require_root();
    ensure!(
        (1..=u64::from(u32::MAX)).contains(&packets),
        "packets must be 1..=2^32-1"
    );
    ensure!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) > pipeline::ROUTER_CPU,
        "the pipelined measurement needs CPUs {} and {}",
        pipeline::GENERATOR_CPU,
        pipeline::ROUTER_CPU
    );
    crate::ctl::ensure_bpffs();
    let started = Instant::now();
    let mut b = Bench::new(packets)?;
    let phase1 = b.phase1()?;
    let phase2 = b.phase2()?;
    eprintln!("end to end: {:.0} s", started.elapsed().as_secs_f64());
    Ok(report(&b, phase1, phase2))
}

impl Bench {
    fn new(packets: u64) -> Result<Self> {
        let topo = Topology::new(TopologyOptions {
            members: 3,
            client_mode: ClientMode::Routed,
            ..Default::default()
        })
        .context("build the topology")?;
        topo.enable_member_ipv6()?;
        let r = &topo.router;
        r.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        r.sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;
        r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        r.sysctl(
            &format!("net.ipv6.conf.{ROUTER_CLIENT_IFACE}.disable_ipv6"),
            "0",
        )?;

        let mut ports = Vec::new();
        for m in &topo.members {
            ports.push(r.ifindex(&m.router_iface)?);
        }
        let mut bench = BenchObject::load(r, &ports)?;
        let sinks = topo
            .members
            .iter()
            .map(|m| bench.attach(programs::BENCH_SINK, &m.ns, &m.iface))
            .collect::<Result<Vec<FdLink>>>()?;
        // The router's receive processing on its CPU (r0 has NAPI: GRO is on).
        let router_threads = pipeline::threaded_napi(r, ROUTER_CLIENT_IFACE)?;
        for &pid in &router_threads {
            pipeline::pin(pid, pipeline::ROUTER_CPU)?;
            pipeline::realtime(pid, pipeline::STAGE_PRIORITY)?;
        }
        // The members' receive processing (the sink, and the return of each page to the
        // generator's page pool) on the generator's CPU, ahead of the generator, so that it
        // is not the router's cost and never waits behind the generator.
        let mut member_threads = Vec::new();
        for m in &topo.members {
            for pid in pipeline::threaded_napi(&m.ns, &m.iface)? {
                pipeline::pin(pid, pipeline::GENERATOR_CPU)?;
                pipeline::realtime(pid, pipeline::STAGE_PRIORITY + 1)?;
                member_threads.push(pid);
            }
        }
        let c0 = topo.client.ifindex(CLIENT_IFACE)?;
        Ok(Bench {
            ctl: Ctl::new(&topo.router),
            bench,
            _sinks: sinks,
            topo,
            router_threads,
            member_threads,
            c0,
            packets,
        })
    }

    fn ifaces(&self) -> Vec<String> {
        self.topo.router_ifaces()
    }

    /// IPv4 UDP from the client to `dst` (60 bytes), its template restoring the headers.
    fn frame4(
        &self,
        dst: std::net::Ipv4Addr,
        flows: u32,
        spread: u32,
    ) -> Result<(Vec<u8>, BenchFrame)> {
        let r0 = self.topo.router.link_mac(ROUTER_CLIENT_IFACE)?;
        let c0 = self.topo.client.link_mac(CLIENT_IFACE)?;
        let frame = ipv4_frame(
            r0,
            c0,
            &Ipv4::udp(CLIENT_IP, dst, 1024, DST_PORT, &[0; PAYLOAD]),
        );
        let mut t = BenchFrame::new(&frame, 14 + 20 + 8, 14 + 20).context("IPv4 template")?;
        t.flows_mask = flows - 1;
        t.spread_mask = spread - 1;
        Ok((frame, t))
    }

    /// IPv6 UDP from the client to the IPv6 anycast address (62 bytes, no payload).
    fn frame6(&self) -> Result<(Vec<u8>, BenchFrame)> {
        let r0 = self.topo.router.link_mac(ROUTER_CLIENT_IFACE)?;
        let c0 = self.topo.client.link_mac(CLIENT_IFACE)?;
        let frame = ipv6_frame(r0, c0, &Ipv6::udp(CLIENT6, ANYCAST6, 1024, DST_PORT, &[]));
        ensure!(frame.len() <= BENCH_FRAME_BYTES, "IPv6 frame too long");
        let mut t = BenchFrame::new(&frame, frame.len(), 14 + 40).context("IPv6 template")?;
        t.flows_mask = FEW_FLOWS - 1;
        Ok((frame, t))
    }

    /// The comparison: the dataplane, Linux ECMP and the redirect ceilings, both families.
    fn phase1(&mut self) -> Result<Vec<(Case, Vec<Sample>)>> {
        let (f4, t4) = self.frame4(ANYCAST, FEW_FLOWS, 1)?;
        let (f4_many, t4_many) = self.frame4(ANYCAST, MANY_FLOWS, 1)?;
        let (f6, t6) = self.frame6()?;
        let case = |name, router, v6: bool| Case {
            name,
            router,
            template: if v6 { t6 } else { t4 },
            frame: if v6 { f6.clone() } else { f4.clone() },
        };
        let cases = vec![
            case("xdp_anycast", Router::Anycast, false),
            case("xdp6_anycast", Router::Anycast, true),
            case("xdp_anycast_track_tcp", Router::AnycastTrackTcp, false),
            case("xdp6_anycast_track_tcp", Router::AnycastTrackTcp, true),
            case("kernel_ecmp", Router::KernelEcmp, false),
            case("kernel_ecmp6", Router::KernelEcmp, true),
            case("plain_redirect", Router::Spread, false),
            case("plain_redirect6", Router::Spread, true),
            case("redirect_with_rewrite", Router::Forward, false),
            case("cold_line_1024_flows", Router::Cold, false),
            Case {
                name: "cold_line_1048576_flows",
                router: Router::Cold,
                template: t4_many,
                frame: f4_many,
            },
            case("packed_line_1024_flows", Router::Packed, false),
            case("redirect_one_member", Router::One, false),
            case("generator_alone", Router::Sink, false),
        ];
        let mut samples: Vec<Vec<Sample>> = cases.iter().map(|_| Vec::new()).collect();
        for round in 1..=ROUNDS {
            let mut i = 0;
            while i < cases.len() {
                // The cases of one router setting run together, in one setting-up.
                let router = cases[i].router;
                let group = cases[i..].iter().take_while(|c| c.router == router).count();
                let setting = self.set_router(router)?;
                for (case, samples) in cases[i..i + group].iter().zip(&mut samples[i..]) {
                    eprintln!("round {round}/{ROUNDS}: {} ...", case.name);
                    let sample = self.measure(case, WARM_UP);
                    print_sample(&sample);
                    samples.push(sample?);
                }
                self.unset_router(router, setting)?;
                i += group;
            }
        }
        Ok(cases.into_iter().zip(samples).collect())
    }

    /// Sets `r0` up for `router`; returns the link of a bench program, if one is attached.
    fn set_router(&mut self, router: Router) -> Result<Option<FdLink>> {
        ensure!(
            self.topo
                .router
                .xdp_prog_ids(ROUTER_CLIENT_IFACE)?
                .is_empty(),
            "r0 still runs an XDP program"
        );
        let r = &self.topo.router;
        match router {
            Router::Anycast | Router::AnycastTrackTcp => {
                let ctl = &self.ctl;
                let ifaces = self.ifaces();
                let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
                ctl.attach(&ifaces, "native")?;
                for m in &self.topo.members {
                    ctl.member_add(ANYCAST, m.ip)?;
                    ctl.run(&[
                        "member",
                        "add",
                        &ANYCAST6.to_string(),
                        &member_ip6(m.index).to_string(),
                    ])?;
                }
                if router == Router::AnycastTrackTcp {
                    for address in [ANYCAST.to_string(), ANYCAST6.to_string()] {
                        ctl.run(&["member", "track", &address, "tcp"])?;
                    }
                }
                Ok(None)
            }
            Router::KernelEcmp => {
                let mut route4 = vec![
                    "route".to_string(),
                    "replace".into(),
                    format!("{ANYCAST}/32"),
                ];
                let mut route6 = vec![
                    "-6".to_string(),
                    "route".into(),
                    "replace".into(),
                    format!("{ANYCAST6}/128"),
                ];
                for m in &self.topo.members {
                    route4.extend(["nexthop", "via", &m.ip.to_string()].map(String::from));
                    route6.extend(
                        [
                            "nexthop",
                            "via",
                            &member_ip6(m.index).to_string(),
                            "dev",
                            &m.router_iface,
                        ]
                        .map(String::from),
                    );
                }
                for route in [route4, route6] {
                    let args: Vec<&str> = route.iter().map(String::as_str).collect();
                    r.ip(&args)?;
                }
                Ok(None)
            }
            Router::Spread => Ok(Some(self.bench.attach(
                programs::BENCH_SPREAD,
                &self.topo.router,
                ROUTER_CLIENT_IFACE,
            )?)),
            Router::Forward => Ok(Some(self.bench.attach(
                programs::BENCH_FORWARD,
                &self.topo.router,
                ROUTER_CLIENT_IFACE,
            )?)),
            Router::Cold => Ok(Some(self.bench.attach(
                programs::BENCH_COLD,
                &self.topo.router,
                ROUTER_CLIENT_IFACE,
            )?)),
            Router::Packed => Ok(Some(self.bench.attach(
                programs::BENCH_PACKED,
                &self.topo.router,
                ROUTER_CLIENT_IFACE,
            )?)),
            Router::One => Ok(Some(self.bench.attach(
                programs::BENCH_REDIRECT,
                &self.topo.router,
                ROUTER_CLIENT_IFACE,
            )?)),
            Router::Sink => Ok(Some(self.bench.attach(
                programs::BENCH_SINK,
                &self.topo.router,
                ROUTER_CLIENT_IFACE,
            )?)),
        }
    }

    fn unset_router(&self, router: Router, link: Option<FdLink>) -> Result<()> {
        drop(link);
        match router {
            Router::Anycast | Router::AnycastTrackTcp => {
                let ifaces = self.ifaces();
                let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
                self.ctl.detach(&ifaces)?;
            }
            Router::KernelEcmp => {
                self.topo
                    .router
                    .ip(&["route", "del", &format!("{ANYCAST}/32")])?;
                self.topo
                    .router
                    .ip(&["-6", "route", "del", &format!("{ANYCAST6}/128")])?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The dataplane at scale: 65,536 addresses, then many flows.
    fn phase2(&mut self) -> Result<Vec<(Case, Vec<Sample>)>> {
        let ifaces = self.ifaces();
        let mut args = vec!["attach"];
        args.extend(ifaces.iter().map(String::as_str));
        let table = FLOW_TABLE.to_string();
        args.extend(["--mode", "native", "--flows", &table]);
        self.ctl.run(&args)?;
        let result = self.phase2_attached();
        let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
        let detached = self.ctl.detach(&ifaces);
        let result = result?;
        detached?;
        Ok(result)
    }

    fn phase2_attached(&mut self) -> Result<Vec<(Case, Vec<Sample>)>> {
        let dir = super::control::tempdir()?;
        let file = dir.join("e2e-scale.toml");
        let m1 = self.topo.members[0].ip;
        std::fs::write(&file, super::control::load_file(SCALE_ADDRESSES, m1))?;
        eprintln!("loading {SCALE_ADDRESSES} addresses ...");
        let loaded = self
            .ctl
            .run(&["load", file.to_str().context("UTF-8 temp path")?]);
        std::fs::remove_dir_all(&dir)?;
        loaded?;
        let first = super::control::address(0);
        let case = |name, flows, spread, router| -> Result<Case> {
            let (frame, template) = self.frame4(first, flows, spread)?;
            Ok(Case {
                name,
                router,
                template,
                frame,
            })
        };
        let any = Router::Anycast;
        let cases = vec![
            case(
                "spread_65536_addresses",
                SCALE_ADDRESSES,
                SCALE_ADDRESSES,
                any,
            )?,
            case("one_address_65536_flows", SCALE_ADDRESSES, 1, any)?,
            case("flows_1048576", MANY_FLOWS, 1, any)?,
            case("flows_1024", FEW_FLOWS, 1, any)?,
            // The same million flows with the address tracking TCP only: no table line.
            case(
                "flows_1048576_track_tcp",
                MANY_FLOWS,
                1,
                Router::AnycastTrackTcp,
            )?,
        ];
        let track = |ctl: &Ctl, setting| ctl.run(&["member", "track", &first.to_string(), setting]);
        // Every flow of the 1M case into the connection table first, by traffic.
        eprintln!("filling the connection table with {MANY_FLOWS} flows ...");
        self.measure(&cases[2], u64::from(MANY_FLOWS))?;
        let mut samples: Vec<Vec<Sample>> = cases.iter().map(|_| Vec::new()).collect();
        for round in 1..=ROUNDS {
            for (case, samples) in cases.iter().zip(&mut samples) {
                eprintln!("round {round}/{ROUNDS}: {} ...", case.name);
                let tcp_only = case.router == Router::AnycastTrackTcp;
                if tcp_only {
                    track(&self.ctl, "tcp")?;
                }
                let sample = self.measure(case, WARM_UP);
                if tcp_only {
                    track(&self.ctl, "all")?;
                }
                print_sample(&sample);
                samples.push(sample?);
            }
        }
        Ok(cases.into_iter().zip(samples).collect())
    }

    /// Where a case's frames are counted: `r0` for the sink, else the members' interfaces.
    fn counted(&self, router: Router) -> Vec<(&Netns, &str)> {
        if router == Router::Sink {
            return vec![(&self.topo.router, ROUTER_CLIENT_IFACE)];
        }
        self.topo
            .members
            .iter()
            .map(|m| (&m.ns, m.iface.as_str()))
            .collect()
    }

    /// One measured run: `warm_up` frames (waited for, not counted), then the case's frames.
    fn measure(&mut self, case: &Case, warm_up: u64) -> Result<Sample> {
        let deadline = Instant::now() + CASE_DEADLINE;
        self.bench.set_template(case.template)?;
        let counted = self.counted(case.router);
        let members: Vec<String> = self
            .topo
            .members
            .iter()
            .map(|m| m.router_iface.clone())
            .collect();
        let stages = Stages {
            router_threads: &self.router_threads,
            member_threads: &self.member_threads,
            client: &self.topo.client,
            client_dev: CLIENT_IFACE,
            router: &self.topo.router,
            member_devs: &members,
        };
        let base = rx_packets(&counted)?;
        let client = &self.topo.client;
        self.bench
            .inject(client, self.c0, &case.frame, warm_up, deadline)?;
        settle(&counted, &base, warm_up, Instant::now(), deadline)?;

        let before = rx_packets(&counted)?;
        let usage = stages.usage()?;
        let start = Instant::now();
        let (injected, generator_cpu) =
            self.bench
                .inject(client, self.c0, &case.frame, self.packets, deadline)?;
        let injection = start.elapsed();
        let usage_after = stages.usage()?;
        let (after, _) = settle(&counted, &before, injected, start, deadline)?;
        let delivered = after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum();
        Ok(Sample {
            injected,
            delivered,
            injection,
            stages: StageFigures::new(&usage, &usage_after, injection, generator_cpu),
        })
    }
}

fn print_sample(sample: &Result<Sample>) {
    if let Ok(s) = sample {
        eprintln!(
            "  {:.0} pps ({:.0} offered), {} of {} delivered; drops at r0 {}, at members {}; \
             threads: router {:.0} %, generator {:.0} %, members {:.0} %; CPUs {:?} (stolen {:?}): {}",
            s.pps(),
            s.injected as f64 / s.injection.as_secs_f64(),
            s.delivered,
            s.injected,
            s.stages.router_ring_drops,
            s.stages.member_ring_drops,
            100.0 * s.stages.router_busy,
            100.0 * s.stages.generator_busy,
            100.0 * s.stages.members_busy,
            s.stages
                .cpu_busy
                .iter()
                .map(|b| (b * 100.0).round())
                .collect::<Vec<_>>(),
            s.stages
                .cpu_steal
                .iter()
                .map(|b| (b * 100.0).round())
                .collect::<Vec<_>>(),
            s.stages.limiting_stage(s.injected),
        );
    }
}

fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The median sample of a case (by rate), and its figures.
fn summary(samples: &[Sample]) -> Value {
    let mut order: Vec<&Sample> = samples.iter().collect();
    order.sort_by(|a, b| a.pps().total_cmp(&b.pps()));
    let median = order[order.len() / 2];
    let stages: Vec<&str> = samples
        .iter()
        .map(|s| s.stages.limiting_stage(s.injected))
        .collect();
    let injected: u64 = samples.iter().map(|s| s.injected).sum();
    let delivered: u64 = samples.iter().map(|s| s.delivered).sum();
    json!({
        "pps": median.pps(),
        "ns_per_packet": 1e9 / median.pps(),
        "limiting_stage": median.stages.limiting_stage(median.injected),
        "limiting_stage_per_round": stages,
        "router_thread_busy": median.stages.router_busy,
        "generator_thread_busy": median.stages.generator_busy,
        "members_threads_busy": median.stages.members_busy,
        "router_cpu_ns_per_packet": median_of(
            samples.iter().map(|s| s.stages.router_ns_per_packet(s.injected)),
        ),
        "delivered_fraction": delivered as f64 / injected as f64,
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
    })
}

fn report(b: &Bench, phase1: Vec<(Case, Vec<Sample>)>, phase2: Vec<(Case, Vec<Sample>)>) -> Value {
    let mut cases = serde_json::Map::new();
    for (case, samples) in phase1.iter().chain(&phase2) {
        cases.insert(case.name.to_string(), summary(samples));
    }
    let figure = |name: &str, key: &str| cases[name][key].as_f64().unwrap_or(0.0);
    // Rates: higher is better; the router's CPU time per packet: lower is better.
    let ratio = |a: &str, b: &str| figure(a, "pps") / figure(b, "pps");
    let cpu_ratio = |a: &str, b: &str| {
        figure(b, "router_cpu_ns_per_packet") / figure(a, "router_cpu_ns_per_packet")
    };
    let pairs = [
        ("xdp_vs_kernel_ecmp", "xdp_anycast", "kernel_ecmp"),
        ("xdp_vs_plain_redirect", "xdp_anycast", "plain_redirect"),
        (
            "xdp_vs_redirect_one_member",
            "xdp_anycast",
            "redirect_one_member",
        ),
        ("xdp6_vs_kernel_ecmp6", "xdp6_anycast", "kernel_ecmp6"),
        ("xdp6_vs_plain_redirect6", "xdp6_anycast", "plain_redirect6"),
        (
            "xdp_track_tcp_vs_kernel_ecmp",
            "xdp_anycast_track_tcp",
            "kernel_ecmp",
        ),
        (
            "xdp_track_tcp_vs_plain_redirect",
            "xdp_anycast_track_tcp",
            "plain_redirect",
        ),
        (
            "xdp6_track_tcp_vs_kernel_ecmp6",
            "xdp6_anycast_track_tcp",
            "kernel_ecmp6",
        ),
        (
            "xdp6_track_tcp_vs_plain_redirect6",
            "xdp6_anycast_track_tcp",
            "plain_redirect6",
        ),
        (
            "scale_65536_spread_vs_1",
            "spread_65536_addresses",
            "one_address_65536_flows",
        ),
        ("flows_1m_vs_1k", "flows_1048576", "flows_1024"),
        (
            "flows_1m_track_tcp_vs_1k",
            "flows_1048576_track_tcp",
            "flows_1024",
        ),
        (
            "cold_line_1m_vs_1k",
            "cold_line_1048576_flows",
            "cold_line_1024_flows",
        ),
        (
            "cold_line_1k_vs_packed",
            "cold_line_1024_flows",
            "packed_line_1024_flows",
        ),
    ];
    let ratios: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(key, a, b)| (key.to_string(), json!(ratio(a, b))))
        .collect();
    let cpu_ratios: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(key, a, b)| (key.to_string(), json!(cpu_ratio(a, b))))
        .collect();
    let limiting: serde_json::Map<String, Value> = cases
        .iter()
        .map(|(k, v)| (k.clone(), v["limiting_stage"].clone()))
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let packets = b.packets;
    let method = format!(
        "DESIGN.md netns topology (client, router, 3 members on veth; client routes via r0), \
         {cores}-core VM shared with other work. Pipelined: the generator, bench_gen run by \
         BPF_PROG_TEST_RUN with live frames (batch {BATCH}) with ingress c0 in the client \
         namespace, its thread pinned to CPU {g}; each frame leaves c0 by XDP_TX into r0, whose \
         threaded NAPI kthread (napi/r0-N) is pinned to CPU {r}: the router's whole receive \
         processing (XDP, or the kernel's forwarding) runs there. The members' threaded NAPI \
         (bench_sink, and the return of each page to the generator's page pool) runs on CPU \
         {g}, ahead of the generator. All these threads run SCHED_FIFO (priority {p}, members \
         {p1}) so that the machine's other work does not take their CPU. The generator restores \
         the template's headers (live frames recycle pages as the router left them) and sets \
         the flow's ports, nothing else: 60-byte IPv4/UDP 192.0.2.10 -> 198.51.100.53:{DST_PORT} \
         or 62-byte IPv6/UDP 2001:db8:c0::10 -> 2001:db8:53::53, 1,024 flows. Counted: rx \
         packets of m1..m3 (ip -j -s link, before/after), each member running bench_sink (drops \
         IPv4 and non-ICMPv6 IPv6). pps = packets counted / injection time (frames still in \
         the rings when it ends, at most 4 x 256, are counted too). {packets} packets per case \
         per round after a {WARM_UP}-packet warm-up, {ROUNDS} interleaved rounds, median. \
         limiting_stage: if r0's ring had room for all but 1 % of the offered frames \
         (c0's tx_queue_0_xdp_xmit_errors) the router kept up: 'generator' ('members' if the \
         members' rings were full); otherwise the CPU the pipeline's threads kept busier \
         (run time over the injection, /proc/PID/schedstat and the generator's thread CPU \
         time): 'router' (CPU {r}) or 'generator_and_members' (CPU {g}). \
         router_cpu_ns_per_packet: the r0 kthread's run time (/proc/PID/schedstat) over the \
         frames r0 received: the router stage alone, whatever limited the pipeline; the \
         headline ratios are of it (higher = the first case cheaper), ratios_pps of the \
         pipeline's rates. kernel_ecmp(6): no XDP on the router, an ECMP route over the 3 \
         members, fib_multipath_hash_policy=1 for IPv4 and IPv6. plain_redirect(6): \
         bench_spread natively on r0, a devmap redirect to r1..r3 by (ports ^ ports >> 16) % \
         {SPREAD_PORTS}, no other logic, no rewrite. redirect_with_rewrite: bench_forward, the same \
         plus the MAC swap and TTL decrement. cold_line_1024_flows / cold_line_1048576_flows: \
         bench_cold, bench_spread plus one read per frame of the 64-byte line of a \
         64 MiB array that the frame's ports pick, 1,024 or 1,048,576 flows: \
         cold_line_1m_vs_1k is what one cache line of per-flow state costs by itself on this \
         machine once the flows outgrow the caches, the floor of flows_1m_vs_1k for any \
         connection table. packed_line_1024_flows: bench_packed, the same read of 1,024 \
         lines, but consecutive ones (the flow's own index): 16 pages where bench_cold's \
         1,024 lines are on 1,024 pages, so cold_line_1k_vs_packed is what the TLB misses \
         cost (BPF maps are vmalloc'd in 4 KiB pages): what per-flow or per-address state \
         costs beyond its cache lines once it spans more pages than the TLB holds. \
         redirect_one_member: bench_redirect, every \
         frame to r1. xdp_anycast / xdp6_anycast: anycast-ctl attach r0 r1 r2 r3 --mode native, \
         member add of each member (every flow tracked, the default); \
         xdp_anycast_track_tcp / xdp6_anycast_track_tcp: the same with `member track ADDR tcp` \
         for both addresses (UDP placed by the Maglev table alone, no connection-table line per \
         datagram: the setting for stateless services such as DNS). Scale: attach --flows {FLOW_TABLE}, `anycast-ctl load` of \
         {SCALE_ADDRESSES} addresses 198.18.0.0/16 each with member m1; \
         spread_65536_addresses: frame n to 198.18.0.0 + (n mod 65536), 65,536 flows; \
         one_address_65536_flows: to 198.18.0.0, 65,536 flows by port; flows_1048576 / \
         flows_1024: to 198.18.0.0, the 1,048,576 flows put into the connection table by one \
         pass of traffic before the rounds; flows_1048576_track_tcp: the same million flows \
         after `member track 198.18.0.0 tcp` (set back to all after each round): UDP placed \
         by the Maglev table alone.",
        g = pipeline::GENERATOR_CPU,
        r = pipeline::ROUTER_CPU,
        p = pipeline::STAGE_PRIORITY,
        p1 = pipeline::STAGE_PRIORITY + 1,
    );
    json!({
        "method": method,
        "packets_per_case": packets,
        "rounds": ROUNDS,
        "cases": cases,
        "limiting_stage": limiting,
        // The router alone: its kthread's CPU time per packet (the pipeline's rate is set by
        // the generator's CPU in most cases, see limiting_stage).
        "ratios": cpu_ratios,
        "ratios_pps": ratios,
        "targets": {
            "xdp_vs_kernel_ecmp": 5.0,
            "xdp_vs_plain_redirect": 0.9,
            "xdp6_vs_kernel_ecmp6": 5.0,
            "xdp6_vs_plain_redirect6": 0.9,
            "scale_65536_spread_vs_1": 0.9,
            "flows_1m_vs_1k": 0.9,
        },
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
            let links = pipeline::link_stats(ns, iface)?;
            links["stats64"]["rx"]["packets"]
                .as_u64()
                .with_context(|| format!("no rx packets for {iface}: {links}"))
        })
        .collect()
}

/// The benchmark object loaded for its bench programs (see [`crate::xdp::load_object`]):
/// `bench_gen` with its template in BENCH_FRAME, `bench_sink`, `bench_spread` and
/// `bench_redirect` with BENCH_PORT[i] = the router's port to member i + 1. Attachments are
/// links owned by the caller; dropping one detaches.
struct BenchObject {
    ebpf: Ebpf,
}

impl BenchObject {
    fn load(router: &Netns, ports: &[u32]) -> Result<Self> {
        let mut ebpf = crate::xdp::load_object()?;
        // The devmap resolves the ifindex in the caller's namespace: set it from the router's.
        let mut devmap =
            DevMap::try_from(ebpf.map_mut(names::BENCH_PORT).context("map BENCH_PORT")?)?;
        router
            .in_ns(|| -> Result<()> {
                for (i, &port) in ports.iter().enumerate() {
                    devmap.set(i as u32, port, None, 0)?;
                }
                Ok(())
            })
            .context("BENCH_PORT")?;
        for name in [
            programs::BENCH_GEN,
            programs::BENCH_SINK,
            programs::BENCH_SPREAD,
            programs::BENCH_FORWARD,
            programs::BENCH_COLD,
            programs::BENCH_PACKED,
            programs::BENCH_REDIRECT,
        ] {
            crate::xdp::load_program(&mut ebpf, name)?;
        }
        Ok(BenchObject { ebpf })
    }

    fn set_template(&mut self, template: BenchFrame) -> Result<()> {
        let mut frames: Array<_, BenchFrame> = Array::try_from(
            self.ebpf
                .map_mut(names::BENCH_FRAME)
                .context("map BENCH_FRAME")?,
        )?;
        frames.set(0, template, 0).context("BENCH_FRAME[0]")?;
        Ok(())
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
    /// (ifindex `c0`, in the client's namespace), in chunks until `deadline`, from a thread
    /// pinned to the generator's CPU; returns how many were injected and the thread's CPU time.
    fn inject(
        &self,
        client: &Netns,
        c0: u32,
        frame: &[u8],
        packets: u64,
        deadline: Instant,
    ) -> Result<(u64, Duration)> {
        let mut ctx = [0u8; 24]; // struct xdp_md: data 0, data_end, meta 0, ingress ifindex, queue 0
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&c0.to_ne_bytes());
        let generator = self.program(programs::BENCH_GEN)?;
        client.in_ns(|| {
            pipeline::pin(0, pipeline::GENERATOR_CPU)?;
            pipeline::realtime(0, pipeline::STAGE_PRIORITY)?;
            let cpu = pipeline::thread_cpu_time();
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
            Ok((done, pipeline::thread_cpu_time() - cpu))
        })
    }
}
