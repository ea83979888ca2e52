//! End-to-end forwarding rate on the DESIGN.md topology, with traffic generated in the kernel.
//!
//! The client's side injects frames with BPF_PROG_TEST_RUN in live-frames mode, `c0` as the
//! ingress device: a generator program writes an IPv4/UDP frame (192.0.2.10 -> 198.51.100.53:9,
//! random source port in 1024..2048, so 1,024 flows) and sends it with XDP_TX, so it arrives on
//! the router's `r0` like a frame from a real client. The router forwards it to the members in
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
//! after), so only packets that crossed the router count. Each member runs a sink, an XDP
//! program that drops IPv4 and passes ARP, so the members' cost is small and the same in every
//! case (see [`sink_program`]). A reference measurement, the generator into `r0` with the sink
//! on `r0` itself, gives the cost that every case shares before the router does anything.
//!
//! The generator, the router's NAPI poll and the members' NAPI polls all run on the injecting
//! CPU (softirq after each batch of the TEST_RUN), so a rate is the reciprocal of the whole
//! path's cost per packet. The generator's share is the same in all cases and dilutes the
//! end-to-end ratios; `above_reference_ns_per_packet` takes it out.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use anycast_common::{names, programs};
use anycast_ctl::pin::PinDir;
use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::DevMap,
    programs::{Xdp, XdpMode},
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
    // Dropped in reverse order: the bench object (its pins, bench_redirect's link), then the
    // namespaces with every veth, route and attachment in them.
    let topo = Topology::new(TopologyOptions {
        members: 3,
        client_mode: ClientMode::Routed,
    })
    .context("build the topology")?;
    topo.router
        .sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
    let mut bench = BenchObject::load()?;

    let r0_mac = topo.router.link_mac(ROUTER_CLIENT_IFACE)?;
    let c0_mac = topo.client.link_mac(CLIENT_IFACE)?;
    let frame = ipv4_frame(
        r0_mac,
        c0_mac,
        &Ipv4::udp(CLIENT_IP, ANYCAST, 1024, DST_PORT, &[0; PAYLOAD]),
    );
    let generator = Generator::load(&frame)?;
    let sink = sink_program()?;
    let sink_pin = bench.pin.join("sink");
    pin_program(&sink, &sink_pin)?;
    let sink_pin = sink_pin.to_str().context("UTF-8 pin path")?.to_string();
    for m in &topo.members {
        set_xdp(&m.ns, &m.iface, Some(&sink_pin))?;
    }
    let c0 = topo.client.ifindex(CLIENT_IFACE)?;
    let r0 = topo.router.ifindex(ROUTER_CLIENT_IFACE)?;
    let r1 = topo.router.ifindex(&topo.members[0].router_iface)?;
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

    let measure = |counted: &[(&Netns, &str)]| -> Result<Sample> {
        measure(&topo.client, &generator, c0, &frame, packets, counted)
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
                    let sample = measure(&members)?;
                    if let (Some(b), Some(a)) = (before, forwarded(&ctl)) {
                        dataplane_forwarded.push(a - b);
                    }
                    ctl.detach(&ifaces)?;
                    sample
                }
                Case::KernelEcmp => {
                    topo.router.ip(&route)?;
                    let sample = measure(&members);
                    topo.router.ip(&["route", "del", "198.51.100.53/32"])?;
                    sample?
                }
                Case::PlainRedirect => {
                    bench.redirect_on(&topo, r0, r1)?;
                    let sample = measure(&members);
                    bench.redirect_off(&topo)?;
                    sample?
                }
                Case::Reference => {
                    set_xdp(&topo.router, ROUTER_CLIENT_IFACE, Some(&sink_pin))?;
                    let sample = measure(&router_in);
                    set_xdp(&topo.router, ROUTER_CLIENT_IFACE, None)?;
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
             {}-byte IPv4/UDP 192.0.2.10 -> 198.51.100.53:{DST_PORT}, random source port in \
             1024..2048. The generator rewrites the whole header of every frame, because live \
             frames recycle pages as the router left them (bench_gen, which sets only the port, \
             delivered only the first ~128 frames through the kernel). Counted: rx packets of \
             m1..m3 (ip -j -s link, before/after), each member running an XDP sink that drops \
             IPv4 and passes ARP, so only packets that crossed the router count and the members' \
             cost is small and equal in all cases. Rate = packets counted / time from the start \
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
    generator: &Generator,
    c0: u32,
    frame: &[u8],
    packets: u64,
    counted: &[(&Netns, &str)],
) -> Result<Sample> {
    let deadline = Instant::now() + CASE_DEADLINE;
    let base = rx_packets(counted)?;
    generator.inject(client, c0, frame, WARM_UP, deadline)?;
    settle(counted, &base, WARM_UP, Instant::now(), deadline)?;

    let before = rx_packets(counted)?;
    let start = Instant::now();
    let injected = generator.inject(client, c0, frame, packets, deadline)?;
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

/// Attaches the program pinned at `pinned` natively to `iface` in `ns`, or detaches (`None`).
fn set_xdp(ns: &Netns, iface: &str, pinned: Option<&str>) -> Result<()> {
    let mut args = vec!["ip", "link", "set", "dev", iface, "xdpdrv"];
    match pinned {
        Some(path) => args.extend_from_slice(&["pinned", path]),
        None => args.push("off"),
    }
    ns.run(&args)
        .with_context(|| format!("XDP on {iface} in {}", ns.name()))?;
    Ok(())
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

/// The embedded object loaded a second time for its bench programs, its pinned maps in a
/// private pin directory; dropping it detaches `bench_redirect` (its link is an fd) and
/// removes the directory.
struct BenchObject {
    ebpf: Option<Ebpf>,
    pin: PathBuf,
    redirect_link: Option<aya::programs::xdp::XdpLinkId>,
}

impl BenchObject {
    fn load() -> Result<Self> {
        let pin = PathBuf::from(format!(
            "/sys/fs/bpf/anycast-test-{}-e2e",
            std::process::id()
        ));
        std::fs::create_dir_all(&pin).with_context(|| format!("create {}", pin.display()))?;
        let mut this = BenchObject {
            ebpf: None,
            pin,
            redirect_link: None,
        };
        let mut ebpf = anycast_ctl::dataplane::load(&PinDir::new(&this.pin), None)?;
        let redirect: &mut Xdp = ebpf
            .program_mut(programs::BENCH_REDIRECT)
            .context("program bench_redirect")?
            .try_into()?;
        redirect.load().context("load bench_redirect")?;
        this.ebpf = Some(ebpf);
        Ok(this)
    }

    fn ebpf(&mut self) -> &mut Ebpf {
        self.ebpf.as_mut().expect("loaded")
    }

    /// Attaches `bench_redirect` natively to r0 with BENCH_PORT[0] = r1.
    fn redirect_on(&mut self, topo: &Topology, r0: u32, r1: u32) -> Result<()> {
        ensure!(
            topo.router.xdp_prog_ids(ROUTER_CLIENT_IFACE)?.is_empty(),
            "r0 still runs XDP"
        );
        let ebpf = self.ebpf();
        // The devmap resolves the ifindex in the caller's namespace: set it from the router's.
        let mut port =
            DevMap::try_from(ebpf.map_mut(names::BENCH_PORT).context("map BENCH_PORT")?)?;
        topo.router
            .in_ns(|| port.set(0, r1, None, 0))
            .context("BENCH_PORT[0] = r1")?;
        let prog: &mut Xdp = ebpf
            .program_mut(programs::BENCH_REDIRECT)
            .context("program bench_redirect")?
            .try_into()?;
        let link = topo
            .router
            .in_ns(|| prog.attach_to_if_index(r0, XdpMode::Driver))
            .context("attach bench_redirect to r0 (native)")?;
        self.redirect_link = Some(link);
        Ok(())
    }

    fn redirect_off(&mut self, topo: &Topology) -> Result<()> {
        let Some(link) = self.redirect_link.take() else {
            return Ok(());
        };
        let prog: &mut Xdp = self
            .ebpf()
            .program_mut(programs::BENCH_REDIRECT)
            .context("program bench_redirect")?
            .try_into()?;
        topo.router
            .in_ns(|| prog.detach(link))
            .context("detach bench_redirect")?;
        Ok(())
    }
}

impl Drop for BenchObject {
    fn drop(&mut self) {
        // Closing the program and link fds detaches and unloads; then the pins go.
        self.ebpf = None;
        if let Err(e) = std::fs::remove_dir_all(&self.pin)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: could not remove {}: {e}", self.pin.display());
        }
    }
}

/// The traffic generator: a 26-instruction XDP program, loaded with bpf(2), that writes the
/// whole header of the template (bytes 0..44: Ethernet, IPv4 with its checksum, UDP) into every
/// frame, gives it a random source port in 1024..2048 and sends it with XDP_TX.
///
/// Why not `bench_gen`, which only sets the source port: in live-frames mode TEST_RUN recycles
/// its pages through a page pool of about 128 pages and initialises a page only when it is new,
/// so a frame comes back as the router left it (member's MAC, TTL - 1). Measured here: the
/// dataplane then forwarded each page 63 times until its TTL ran out (8,064 of 200,000 frames
/// reached the members), and the kernel delivered only the first 128 (wrong destination MAC).
struct Generator {
    fd: OwnedFd,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const BPF_FUNC_GET_PRANDOM_U32: i32 = 7;
/// Header bytes the generator rewrites (a whole number of 32-bit words, at least 14 + 20 + 8).
const HEADER_WORDS: usize = 11;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// One eBPF instruction.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst as u64) << 8)
        | ((src as u64) << 12)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

impl Generator {
    fn load(template: &[u8]) -> Result<Self> {
        ensure!(
            template.len() >= 4 * HEADER_WORDS,
            "template frame too short"
        );
        let len = template.len() as i32;
        let mut insns = vec![
            insn(0x61, 2, 1, 0, 0),   // r2 = ctx->data
            insn(0x61, 3, 1, 4, 0),   // r3 = ctx->data_end
            insn(0xbf, 7, 2, 0, 0),   // r7 = r2
            insn(0xbf, 4, 2, 0, 0),   // r4 = r2
            insn(0x07, 4, 0, 0, len), // r4 += len
            insn(0x2d, 4, 3, 0, 0),   // if r4 > r3 goto abort (offset patched below)
        ];
        let check = insns.len() - 1;
        for word in 0..HEADER_WORDS {
            let at = 4 * word;
            let bytes: [u8; 4] = template[at..at + 4].try_into().expect("4 bytes");
            // *(u32 *)(r7 + at) = the template's bytes (stored little-endian, as they are read)
            insns.push(insn(0x62, 7, 0, at as i16, i32::from_le_bytes(bytes)));
        }
        insns.extend([
            insn(0x85, 0, 0, 0, BPF_FUNC_GET_PRANDOM_U32), // r0 = random
            insn(0x57, 0, 0, 0, 1023),                     // r0 &= 1023
            insn(0x07, 0, 0, 0, 1024),                     // r0 += 1024
            insn(0xdc, 0, 0, 0, 16),                       // r0 = htons(r0)
            insn(0x6b, 7, 0, 14 + 20, 0),                  // UDP source port = r0
            insn(0xb7, 0, 0, 0, 3),                        // r0 = XDP_TX
            insn(0x95, 0, 0, 0, 0),                        // exit
        ]);
        let abort = insns.len();
        insns.extend([insn(0xb7, 0, 0, 0, 0), insn(0x95, 0, 0, 0, 0)]); // XDP_ABORTED
        insns[check] = insn(0x2d, 4, 3, (abort - check - 1) as i16, 0);

        Ok(Generator {
            fd: load_raw(b"ac_e2e_gen", &insns).context("load the generator")?,
        })
    }

    /// Injects `packets` frames built from `frame` as if received on c0 (ifindex `c0`, in the
    /// client's namespace), in chunks until `deadline`; returns how many were injected.
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
        let fd = self.fd.as_raw_fd() as u32;
        client.in_ns(|| {
            let mut done = 0;
            while done < packets {
                if Instant::now() >= deadline {
                    bail!("injection timed out after {done} of {packets} packets");
                }
                let n = (packets - done).min(CHUNK);
                let attr = TestRunAttr {
                    prog_fd: fd,
                    data_size_in: frame.len() as u32,
                    data_in: frame.as_ptr() as u64,
                    repeat: n as u32,
                    ctx_size_in: ctx.len() as u32,
                    ctx_in: ctx.as_ptr() as u64,
                    flags: BPF_F_TEST_XDP_LIVE_FRAMES,
                    batch_size: BATCH,
                    ..TestRunAttr::default()
                };
                // SAFETY: `attr` is `union bpf_attr` for BPF_PROG_TEST_RUN, alive for the call;
                // it points at `frame` and `ctx`, which outlive the call, and asks for no output.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_bpf,
                        BPF_PROG_TEST_RUN,
                        &attr as *const TestRunAttr,
                        std::mem::size_of::<TestRunAttr>() as libc::c_uint,
                    )
                };
                if rc != 0 {
                    bail!(
                        "BPF_PROG_TEST_RUN (live frames) on c0: {}",
                        std::io::Error::last_os_error()
                    );
                }
                done += n;
            }
            Ok(done)
        })
    }
}

/// Loads an XDP program given as raw instructions; the verifier's log is in the error.
fn load_raw(name: &[u8], insns: &[u64]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    let n = name.len().min(15);
    attr.prog_name[..n].copy_from_slice(&name[..n]);
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr` for BPF_PROG_LOAD, alive for the
    // call; its pointers refer to `insns`, `license` and `log`, which outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        bail!(
            "BPF_PROG_LOAD: {err}\n{}",
            String::from_utf8_lossy(&log[..end])
        );
    }
    // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The members' sink: drops IPv4 at the earliest point, passes everything else (ARP, so the
/// router still resolves the members). Every case pays the same small cost per packet at the
/// members, whatever the router did to the frame. Without it the members' kernels would run
/// full UDP receive (and port unreachable) for `xdp_anycast` and `kernel_ecmp`, but drop
/// `plain_redirect`'s frames at once as addressed to another host (they keep r0's MAC).
fn sink_program() -> Result<OwnedFd> {
    let insns = [
        insn(0x61, 2, 1, 0, 0),      // r2 = ctx->data
        insn(0x61, 3, 1, 4, 0),      // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),      // r4 = r2
        insn(0x07, 4, 0, 0, 14),     // r4 += 14
        insn(0x2d, 4, 3, 4, 0),      // if r4 > r3 goto pass
        insn(0x69, 5, 2, 12, 0),     // r5 = ethertype (u16, network order)
        insn(0x55, 5, 0, 2, 0x0008), // if r5 != htons(ETH_P_IP) goto pass
        insn(0xb7, 0, 0, 0, 1),      // r0 = XDP_DROP
        insn(0x95, 0, 0, 0, 0),      // exit
        insn(0xb7, 0, 0, 0, 2),      // pass: r0 = XDP_PASS
        insn(0x95, 0, 0, 0, 0),      // exit
    ];
    load_raw(b"ac_e2e_sink", &insns).context("load the member sink")
}

/// Pins `prog` at `path` (bpffs) so that `ip link ... xdpdrv pinned` can attach it.
fn pin_program(prog: &OwnedFd, path: &std::path::Path) -> Result<()> {
    #[repr(C)]
    struct ObjPinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let attr = ObjPinAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: prog.as_raw_fd() as u32,
        file_flags: 0,
    };
    // SAFETY: `attr` is `union bpf_attr` for BPF_OBJ_PIN, alive for the call; `cpath` outlives it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &attr as *const ObjPinAttr,
            std::mem::size_of::<ObjPinAttr>() as libc::c_uint,
        )
    };
    ensure!(
        rc == 0,
        "BPF_OBJ_PIN {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    Ok(())
}
