//! Benchmark reference programs, measured in the same run as the dataplane.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::packet::{self, EthHdr};

/// Baseline: the least an L2 forwarder does. Swap the MACs and send the frame back.
#[xdp]
pub fn bench_baseline(ctx: XdpContext) -> u32 {
    match packet::header::<EthHdr>(&ctx, 0) {
        Some(eth) => {
            core::mem::swap(&mut eth.dst, &mut eth.src);
            xdp_action::XDP_TX
        }
        None => xdp_action::XDP_PASS,
    }
}
