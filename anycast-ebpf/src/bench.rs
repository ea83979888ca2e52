//! Benchmark reference programs, measured in the same run as the dataplane. None of them is
//! attached by anycast-ctl.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{DevMap, PerCpuArray},
    programs::XdpContext,
};

use crate::packet::{self, ETH_HLEN, EthHdr, Ports, copy_mac};

/// The one egress port of `bench_redirect` (index 0), set by the benchmark.
#[map]
pub static BENCH_PORT: DevMap = DevMap::with_max_entries(1, 0);

/// Per-CPU frame counter of `bench_gen`.
#[map]
pub static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Baseline: the least an L2 forwarder does. Swap the MACs and send the frame back.
#[xdp]
pub fn bench_baseline(ctx: XdpContext) -> u32 {
    match packet::header::<EthHdr>(&ctx, 0) {
        Some(eth) => {
            let dst = eth.dst;
            copy_mac(&mut eth.dst, &eth.src);
            copy_mac(&mut eth.src, &dst);
            xdp_action::XDP_TX
        }
        None => xdp_action::XDP_PASS,
    }
}

/// The ceiling of any XDP forwarder on a topology: redirect every frame to one port, no logic.
#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    BENCH_PORT.redirect(0, 0).unwrap_or(xdp_action::XDP_ABORTED)
}

/// Traffic generator for BPF_PROG_TEST_RUN with live frames: gives each frame of an IPv4/UDP
/// template (IHL 5) the next of 1,024 source ports, so the frames form many flows, and sends it
/// out of the interface it was injected on.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let Some(seq) = BENCH_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot; XDP runs with migration disabled.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let Some(ports) = packet::header::<Ports>(&ctx, ETH_HLEN + 20) else {
        return xdp_action::XDP_ABORTED;
    };
    let sport = 1024 + (n & 1023) as u16;
    let [a, b] = sport.to_be_bytes();
    ports.bytes[0] = a;
    ports.bytes[1] = b;
    xdp_action::XDP_TX
}
