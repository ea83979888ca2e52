//! Counters. All are per-CPU (summed by user space), so updates are plain increments.
//!
//! Invariants:
//! - Each frame bumps exactly one outcome counter: its member's (forwarded), the address's
//!   multicast or ARP/NA reply counter, or one pass reason (global, or the address's with the
//!   frame's bytes).
//! - A datagram forwarded to a member touches the member's counters only, one line: the
//!   address's forwarded and received totals are derived from those by user space (see
//!   `anycast_common::AddrStats`).
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

/// A datagram to the anycast address in `slot`, of `bytes` bytes, whose outcome is counted
/// against the address (a pass) or its member (a forward).
#[derive(Clone, Copy)]
pub struct Datagram {
    pub slot: u32,
    pub bytes: u64,
}

impl Datagram {
    /// Counts the datagram as passed for `reason` and returns the XDP_PASS verdict.
    #[inline(always)]
    pub fn pass(self, reason: PassReason) -> u32 {
        if let Some(counters) = addr(self.slot) {
            if let Some(c) = counters.passed.get_mut(reason.index()) {
                *c += 1;
            }
            counters.passed_bytes += self.bytes;
        }
        XDP_PASS
    }

    /// Counts the datagram as forwarded to the member with counter `index`.
    #[inline(always)]
    pub fn forwarded(self, index: u32) {
        if let Some(counters) = MEMBER_STATS.get_ptr_mut(index) {
            // SAFETY: per-CPU slot; XDP runs with migration disabled, so this is the only
            // reference.
            let counters = unsafe { &mut *counters };
            counters.packets += 1;
            counters.bytes += self.bytes;
        }
    }

    /// Counts the datagram as forwarded in multicast mode (not counted per member).
    #[inline(always)]
    pub fn multicast(self) {
        if let Some(counters) = addr(self.slot) {
            counters.multicast_packets += 1;
            counters.multicast_bytes += self.bytes;
        }
    }
}
