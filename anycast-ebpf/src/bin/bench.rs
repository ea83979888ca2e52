//! The benchmark object, `anycast-bench`: reference programs measured in the same run as the
//! dataplane, and the XDP_PASS program for veth peers. A separate object from the dataplane's
//! (`anycast`), so the object anycast-ctl ships holds the dataplane alone; names and the
//! `BENCH_FRAME` layout are in `anycast_common::bench`.
#![no_std]
#![no_main]

use core::ffi::c_void;

use anycast_common::{
    bench::{BENCH_FRAME_BYTES, BENCH_PORTS, BenchFrame, COLD_LINES, SPREAD_PORTS},
    proto::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMPV6, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX,
    },
};
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::bpf_xdp_store_bytes,
    macros::{map, xdp},
    maps::{Array, DevMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};

// The dataplane's bounds-checked frame access; these programs use only part of it.
#[allow(dead_code)]
#[path = "../packet.rs"]
mod packet;

use packet::{EthHdr, Ipv4Hdr, Ipv6Hdr, Ports, copy_mac};

/// The egress ports of `bench_redirect` (index 0) and `bench_spread` (0..SPREAD_PORTS), set
/// by the benchmark.
#[map]
pub static BENCH_PORT: DevMap = DevMap::with_max_entries(BENCH_PORTS, 0);

/// Per-CPU frame counter of `bench_gen`.
#[map]
pub static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The frame `bench_gen` and `bench_replay` write (index 0), set by the benchmark.
#[map]
pub static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

/// The program `bench_replay` runs (index 0), set by the benchmark.
#[map]
pub static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The cache lines `bench_cold` reads, one per flow; mmapable so that each element is
/// one whole line (the elements start page-aligned).
#[map]
pub static BENCH_COLD: Array<[u64; 8]> = Array::with_max_entries(COLD_LINES, BPF_F_MMAPABLE);

/// Baseline: the least an L2 forwarder does. Swap the MACs and send the frame back.
#[xdp]
pub fn bench_baseline(ctx: XdpContext) -> u32 {
    match packet::header::<EthHdr>(&ctx, 0) {
        Some(eth) => {
            let dst = eth.dst;
            copy_mac(&mut eth.dst, &eth.src);
            copy_mac(&mut eth.src, &dst);
            XDP_TX
        }
        None => XDP_PASS,
    }
}

/// A ceiling for an XDP forwarder with one member: redirect every frame to one port, no logic.
#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    BENCH_PORT.redirect(0, 0).unwrap_or(XDP_ABORTED)
}

/// The ceiling of an XDP forwarder that spreads flows over `SPREAD_PORTS` members: the port
/// by a trivial hash of the UDP ports (IPv4 with IHL 5, or IPv6 without extension headers), no
/// other logic, no rewrite. Unlike `bench_redirect`, this breaks up the redirect's bulking
/// the way any spreading forwarder does.
#[xdp]
pub fn bench_spread(ctx: XdpContext) -> u32 {
    spread(&ctx, false)
}

/// `bench_spread` plus the least rewrite a forwarder must make: the Ethernet addresses
/// (swapped) and the TTL or hop limit (decremented, the IPv4 checksum patched). The difference
/// to `bench_spread` is the cost of writing the frame.
#[xdp]
pub fn bench_forward(ctx: XdpContext) -> u32 {
    spread(&ctx, true)
}

/// `bench_spread` plus one read of the cache line of `BENCH_COLD` the frame's ports pick (by a
/// multiplicative hash, so consecutive flows land far apart): with many more flows than the
/// caches hold, one DRAM access (and TLB miss) per frame, the least any per-flow state costs.
#[xdp]
pub fn bench_cold(ctx: XdpContext) -> u32 {
    let Some(ports) = packet::header::<Ports>(&ctx, ETH_HLEN + 20) else {
        return XDP_ABORTED;
    };
    let h = u32::from_ne_bytes(ports.bytes).wrapping_mul(0x9e37_79b1);
    read_line_then_spread(&ctx, h >> (32 - COLD_LINES.trailing_zeros()))
}

/// `bench_cold` with the line of the flow's own index (`BenchFrame`: source port
/// `1024 + i % 1024`, destination port the template's plus `i / 1024`), so that the lines of
/// 1,024 flows are consecutive: 16 pages, where `bench_cold` spreads the same number of lines
/// over 1,024 pages. The difference is what the TLB misses cost.
#[xdp]
pub fn bench_packed(ctx: XdpContext) -> u32 {
    let Some(ports) = packet::header::<Ports>(&ctx, ETH_HLEN + 20) else {
        return XDP_ABORTED;
    };
    let src = u32::from(u16::from_be_bytes([ports.bytes[0], ports.bytes[1]]));
    let dst = u32::from(u16::from_be_bytes([ports.bytes[2], ports.bytes[3]]));
    read_line_then_spread(&ctx, (src % 1024) | (dst << 10))
}

/// Reads line `index` of `BENCH_COLD` (masked to its size), then `bench_spread`.
#[inline(always)]
fn read_line_then_spread(ctx: &XdpContext, index: u32) -> u32 {
    let Some(line) = BENCH_COLD.get(index & (COLD_LINES - 1)) else {
        return XDP_ABORTED;
    };
    // SAFETY: an array element is valid memory; volatile so that the read is made.
    if unsafe { core::ptr::read_volatile(&line[0]) } != 0 {
        return XDP_PASS;
    }
    spread(ctx, false)
}

#[inline(always)]
fn spread(ctx: &XdpContext, rewrite: bool) -> u32 {
    let Some(eth) = packet::header::<EthHdr>(ctx, 0) else {
        return XDP_ABORTED;
    };
    let v6 = eth.ethertype() == ETH_P_IPV6;
    let l4 = if v6 { ETH_HLEN + 40 } else { ETH_HLEN + 20 };
    let Some(ports) = packet::header::<Ports>(ctx, l4) else {
        return XDP_ABORTED;
    };
    let h = u32::from_ne_bytes(ports.bytes);
    if rewrite {
        let dst = eth.dst;
        copy_mac(&mut eth.dst, &eth.src);
        copy_mac(&mut eth.src, &dst);
        if v6 {
            if let Some(ip) = packet::header::<Ipv6Hdr>(ctx, ETH_HLEN) {
                ip.hop_limit = ip.hop_limit.wrapping_sub(1);
            }
        } else if let Some(ip) = packet::header::<Ipv4Hdr>(ctx, ETH_HLEN) {
            ip.ttl = ip.ttl.wrapping_sub(1);
            // The TTL is the high byte of its checksum word: add 0x0100 back (RFC 1624).
            let mut sum = u16::from_be_bytes(ip.check) as u32 + 0x0100;
            sum = (sum & 0xffff) + (sum >> 16);
            ip.check = (sum as u16).to_be_bytes();
        }
    }
    BENCH_PORT
        .redirect((h ^ (h >> 16)) % SPREAD_PORTS, 0)
        .unwrap_or(XDP_ABORTED)
}

/// Traffic generator for BPF_PROG_TEST_RUN with live frames: restores the headers of
/// `BENCH_FRAME` over the start of each frame, gives it its flow's ports (and destination, see
/// `BenchFrame`), and sends it out of the interface it was injected on.
///
/// The headers are restored on every frame, not just the ports: live frames recycle their
/// pages without resetting them, so a frame starts as whatever the router or a member left in
/// its page (a member's MAC, TTL - 1). The payload is not rewritten. Frames shorter than the
/// template are aborted.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    generate(&ctx).unwrap_or(XDP_ABORTED)
}

/// TEST_RUN harness: restores `BENCH_FRAME` over the frame, then tail-calls `BENCH_TARGET[0]`
/// (XDP_ABORTED if that slot is empty), so that every repeat of a TEST_RUN sees the frame the
/// benchmark gave. Without it, repeats run on what the previous run left: a forward rewrites
/// the destination MAC and the TTL, so from the second repeat on the dataplane would measure
/// its "not for this router" pass, and an ARP or ND reply would meet its own reply. The
/// benchmark runs the baseline through this program too, so that both carry its cost.
#[xdp]
pub fn bench_replay(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_none() {
        return XDP_ABORTED;
    }
    // SAFETY: a tail call with the context this program was given; on success it does not
    // return, and no reference into the frame is alive across it.
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    XDP_ABORTED
}

/// Members' sink: drops IPv4, and IPv6 other than ICMPv6, at the earliest point and passes
/// everything else (ARP and neighbour discovery, so the router still resolves the member), so a
/// member's cost per packet is small and the same whatever the router did to the frame.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    match packet::header::<EthHdr>(&ctx, 0) {
        Some(eth) if eth.ethertype() == ETH_P_IP => XDP_DROP,
        Some(eth) if eth.ethertype() == ETH_P_IPV6 => {
            match packet::header::<Ipv6Hdr>(&ctx, ETH_HLEN) {
                Some(ip) if ip.next_hdr == IPPROTO_ICMPV6 => XDP_PASS,
                _ => XDP_DROP,
            }
        }
        _ => XDP_PASS,
    }
}

/// Passes every frame. A veth delivers the frames its peer sends with XDP_TX only if it runs
/// an XDP program itself (veth's XDP_TX flush wakes the peer's NAPI only then), and redirected
/// frames only if it runs XDP or has GRO on. So this is what the tests attach, natively, to the
/// veth peer of an interface the dataplane answers ARP on, and what an operator would attach to
/// the peer of a veth the dataplane is attached to.
#[xdp]
pub fn peer_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[inline(always)]
fn generate(ctx: &XdpContext) -> Option<u32> {
    let template = restore(ctx)?;
    let seq = BENCH_SEQ.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot; XDP runs with migration disabled.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let flow = n & template.flows_mask;
    // Bounded for the verifier (a variable packet offset needs a known range).
    let l4 = (template.l4 & (BENCH_FRAME_BYTES as u32 - 1)) as usize;
    let ports = packet::header::<Ports>(ctx, l4)?;
    let sport = 1024 + (flow & 1023) as u16;
    let dport =
        u16::from_be_bytes([ports.bytes[2], ports.bytes[3]]).wrapping_add((flow >> 10) as u16);
    let [a, b] = sport.to_be_bytes();
    let [c, d] = dport.to_be_bytes();
    ports.bytes = [a, b, c, d];
    let spread = n & template.spread_mask & 0xffff;
    if spread != 0 {
        // The template's destination ends in 0.0: add `spread` to it, and to the checksum's
        // one's-complement sum (RFC 1624, eqn. 3, with m = 0).
        let ip = packet::header::<Ipv4Hdr>(ctx, ETH_HLEN)?;
        let [e, f] = (spread as u16).to_be_bytes();
        ip.dst[2] = e;
        ip.dst[3] = f;
        let mut sum = !u16::from_be_bytes(ip.check) as u32 + spread;
        sum = (sum & 0xffff) + (sum >> 16);
        ip.check = (!(sum as u16)).to_be_bytes();
    }
    Some(XDP_TX)
}

/// Writes the first `len` bytes of `BENCH_FRAME` over the start of the frame: the template, or
/// `None` if the frame is shorter.
#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<&'static BenchFrame> {
    let template = BENCH_FRAME.get(0)?;
    let len = template.len.clamp(1, BENCH_FRAME_BYTES as u32);
    // One helper call: the verifier checks `len` against the map value, the helper checks it
    // against the frame (and fails if the frame is shorter); a byte loop through
    // `packet::header` costs ten instructions per byte.
    // SAFETY: reads `len` (clamped to 1..=BENCH_FRAME_BYTES above) bytes of `template.bytes` and
    // writes them to the frame; no reference into the frame is alive across the call.
    let written =
        unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, template.bytes.as_ptr() as *mut c_void, len) };
    (written == 0).then_some(template)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
