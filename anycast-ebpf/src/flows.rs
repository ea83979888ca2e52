//! The connection table: keeps each flow on its member while the Maglev table changes.
//!
//! An array of 4-way sets (`FLOWS`), indexed by the flow hash, each set one 64-byte element
//! and so one cache line: a packet of a known flow costs one line of the table, which is what
//! a million live flows make a DRAM access. Array lookups are inlined by the verifier, where a
//! BPF LRU hash lookup costs as much as the whole forward path. Within a set the ways are kept
//! in recency order (a hit rotates its entry to the front; an insert replaces the flow's own
//! entry or evicts the last way), so each set is an exact LRU holding at most one entry per
//! flow. An entry names its member by counter index and position and is used only if that
//! position still holds that member and is in service: flows of a removed or out-of-service
//! member fall back to the Maglev table (their stale entries are dropped when met), flows of a
//! draining member (weight 0, still in the set) stay. A member added later in a removed
//! member's position may inherit the counter index, and so the removed member's remaining
//! entries: those flows had to move anyway.
//!
//! The table is shared by all CPUs. Two CPUs updating one set at the same instant can tear an
//! entry; the member check then rejects it (or, at worst, it names another live member), so a
//! race costs at most one flow's affinity, never a wrong or dead destination.
use anycast_common::{
    ADDR_TRACK_TCP_ONLY, FLOW_UNUSED, FLOW_WAYS, FlowEntry, FlowSet, MemberRef, flow_key,
    flow_member, flow_member_counter, flow_member_position,
};

use crate::maps::{Addr, FLOW_SETS_MASK, FLOWS};

/// A flow as the table keys it.
#[derive(Clone, Copy)]
pub struct Flow {
    /// The client (IPv4), or its `compress6` (IPv6).
    pub src: u32,
    pub ports: u32,
    /// `flow_key` of the address slot and the IP protocol.
    pub key: u32,
}

impl Flow {
    #[inline(always)]
    pub fn new(src: u32, ports: u32, proto: u8, addr: &Addr) -> Self {
        Self {
            src,
            ports,
            key: flow_key(addr.slot, proto),
        }
    }

    /// The IP protocol (of the upper layer, for IPv6).
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        self.key as u8
    }
}

const WAYS: usize = FLOW_WAYS as usize;
// `to_front` spells out the rotations of four ways.
const _: () = assert!(WAYS == 4);

/// Where a flow's set is: the set its hash falls in, or none for a datagram the address does
/// not track (`ADDR_TRACK_TCP_ONLY`), by an index beyond the table. No branch on the
/// address's setting: a branch would make the verifier walk member choice once per outcome,
/// which the program, near the verifier's limit, cannot afford.
#[derive(Clone, Copy)]
pub struct Index(u32);

impl Index {
    /// `untracked` is `ADDR_TRACK_TCP_ONLY` or 0.
    #[inline(always)]
    pub fn new(hash: u32, untracked: u32) -> Self {
        const SHIFT: u32 = 31 - ADDR_TRACK_TCP_ONLY.trailing_zeros();
        // The table has fewer than 2^31 sets: bit 31 makes the index miss every one.
        Self((hash & FLOW_SETS_MASK.load()) | (untracked << SHIFT))
    }
}

/// The set at `index`, if the flow has one.
#[inline(always)]
fn set_of<'a>(index: Index) -> Option<&'a mut FlowSet> {
    let set = FLOWS.get_ptr_mut(index.0)?;
    // SAFETY: an array element is always valid memory; see the module doc for races.
    Some(unsafe { &mut *set })
}

#[inline(always)]
fn matches(e: &FlowEntry, f: &Flow) -> bool {
    e.src == f.src && e.ports == f.ports && e.key == f.key
}

/// The member `flow` is on, if it is known and that member still serves `addr`. An entry whose
/// member is gone is dropped on the way, so a set never holds a stale copy of a live flow.
#[inline(always)]
pub fn lookup(index: Index, flow: &Flow, addr: &Addr) -> Option<(MemberRef, u32)> {
    let set = set_of(index)?;
    for way in 0..WAYS {
        let e = &mut set.ways[way];
        if !matches(e, flow) {
            continue;
        }
        let position = flow_member_position(e.member);
        let counter = flow_member_counter(e.member);
        let Some(member) = addr.serving_fast(position).filter(|m| m.counter == counter) else {
            e.key = FLOW_UNUSED;
            continue;
        };
        if way != 0 {
            to_front(set, way);
        }
        return Some((member, position));
    }
    None
}

/// Records `flow` on `member` at the front of its set: in place of the flow's own entry if it
/// has one, else evicting the least recently used way.
#[inline(always)]
pub fn insert(index: Index, flow: &Flow, member: MemberRef, position: u32) {
    let Some(set) = set_of(index) else {
        return;
    };
    let mut way = WAYS - 1;
    for w in 0..WAYS {
        if matches(&set.ways[w], flow) {
            way = w;
            break;
        }
    }
    to_front(set, way);
    set.ways[0] = FlowEntry {
        src: flow.src,
        ports: flow.ports,
        key: flow.key,
        member: flow_member(member.counter, position),
    };
}

/// Forgets `flow` (TCP RST: the next connection with these ports is new).
#[inline(always)]
pub fn forget(index: Index, flow: &Flow) {
    let Some(set) = set_of(index) else {
        return;
    };
    for e in set.ways.iter_mut() {
        if matches(e, flow) {
            e.key = FLOW_UNUSED;
        }
    }
}

/// Moves way `way` to the front, shifting the ways before it down by one (so the set stays in
/// recency order; way 0 is then overwritten or is the moved entry). Whole ways are copied
/// through locals with constant indexes: a shifting loop compiles to a `memmove` call, which
/// costs about 8 instructions per byte and subtracts pointers (refused without CAP_PERFMON).
#[inline(always)]
fn to_front(set: &mut FlowSet, way: usize) {
    let [a, b, c, d] = set.ways;
    set.ways = match way {
        1 => [b, a, c, d],
        2 => [c, a, b, d],
        3 => [d, a, b, c],
        _ => return,
    };
}
