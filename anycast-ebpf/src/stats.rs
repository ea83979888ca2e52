//! Counters. All are per-CPU (summed by user space), so updates are plain increments.
//!
//! Invariant: each frame bumps exactly one outcome counter (forwarded, an ARP reply, or one pass
//! reason), besides the per-address `rx_*` counters.
use anycast_common::{AddrStats, PassReason, Stat, proto::XDP_PASS};

use crate::maps::{ADDR_STATS, MEMBER_STATS, STATS};

#[inline(always)]
pub fn global(counter: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot; XDP runs with migration disabled, so nothing else touches it now.
        unsafe { *counter += 1 };
    }
}

/// Counts a global pass reason and returns the XDP_PASS verdict.
#[inline(always)]
pub fn pass_global(counter: Stat) -> u32 {
    global(counter);
    XDP_PASS
}

#[inline(always)]
pub fn malformed() -> u32 {
    pass_global(Stat::Malformed)
}

/// The counters of an anycast address.
#[inline(always)]
pub fn addr<'a>(slot: u32) -> Option<&'a mut AddrStats> {
    // SAFETY: per-CPU slot; XDP runs with migration disabled, so this is the only reference.
    ADDR_STATS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

/// Counts a per-address pass reason and returns the XDP_PASS verdict.
#[inline(always)]
pub fn pass(counters: &mut AddrStats, reason: PassReason) -> u32 {
    if let Some(c) = counters.passed.get_mut(reason.index()) {
        *c += 1;
    }
    XDP_PASS
}

#[inline(always)]
pub fn member(index: u32, bytes: u64) {
    if let Some(counters) = MEMBER_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; XDP runs with migration disabled, so this is the only reference.
        let counters = unsafe { &mut *counters };
        counters.packets += 1;
        counters.bytes += bytes;
    }
}
