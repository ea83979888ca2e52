//! The benchmark object, `anycast-bench`: reference programs measured in the same run as the
//! dataplane, and the XDP_PASS program for veth peers. A separate object from the dataplane's
//! (`anycast`), so the object anycast-ctl ships holds the dataplane alone; names and the
//! `BENCH_FRAME` layout are in `anycast_common::bench`.
#![no_std]
#![no_main]

use core::ffi::c_void;

use anycast_common::{
    bench::{BENCH_FRAME_BYTES, BenchFrame},
    proto::{ETH_HLEN, ETH_P_IP, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
};
use aya_ebpf::{
    helpers::bpf_xdp_store_bytes,
    macros::{map, xdp},
    maps::{Array, DevMap, PerCpuArray},
    programs::XdpContext,
};

// The dataplane's bounds-checked frame access; these programs use only part of it.
#[allow(dead_code)]
#[path = "../packet.rs"]
mod packet;

use packet::{EthHdr, Ports, copy_mac};

/// The one egress port of `bench_redirect` (index 0), set by the benchmark.
#[map]
pub static BENCH_PORT: DevMap = DevMap::with_max_entries(1, 0);

/// Per-CPU frame counter of `bench_gen`.
#[map]
pub static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The frame `bench_gen` writes (index 0), set by the benchmark.
#[map]
pub static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

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

/// The ceiling of any XDP forwarder on a topology: redirect every frame to one port, no logic.
#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    BENCH_PORT.redirect(0, 0).unwrap_or(XDP_ABORTED)
}

/// Traffic generator for BPF_PROG_TEST_RUN with live frames: writes the IPv4/UDP template of
/// `BENCH_FRAME` (IHL 5) over the start of each frame, gives it the next of 1,024 source ports,
/// so the frames form many flows, and sends it out of the interface it was injected on.
///
/// The whole template is written, not just the port: live frames recycle their pages without
/// resetting them, so a frame starts as whatever the router or a member left in its page (a
/// member's MAC, TTL - 1). Frames shorter than the template are aborted.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    generate(&ctx).unwrap_or(XDP_ABORTED)
}

/// Members' sink: drops IPv4 at the earliest point and passes everything else (ARP, so the
/// router still resolves the member), so a member's cost per packet is small and the same
/// whatever the router did to the frame.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    match packet::header::<EthHdr>(&ctx, 0) {
        Some(eth) if eth.ethertype() == ETH_P_IP => XDP_DROP,
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
    let template = BENCH_FRAME.get(0)?;
    let len = template.len.clamp(1, BENCH_FRAME_BYTES as u32);
    // One helper call: the verifier checks `len` against the map value, the helper checks it
    // against the frame (and fails if the frame is shorter); a byte loop through
    // `packet::header` costs ten instructions per byte.
    // SAFETY: reads `len` (clamped to 1..=BENCH_FRAME_BYTES above) bytes of `template.bytes` and
    // writes them to the frame; no reference into the frame is alive across the call.
    let written =
        unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, template.bytes.as_ptr() as *mut c_void, len) };
    if written != 0 {
        return None;
    }
    let seq = BENCH_SEQ.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot; XDP runs with migration disabled.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let ports = packet::header::<Ports>(ctx, ETH_HLEN + 20)?;
    let sport = 1024 + (n & 1023) as u16;
    let [a, b] = sport.to_be_bytes();
    ports.bytes[0] = a;
    ports.bytes[1] = b;
    Some(XDP_TX)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
