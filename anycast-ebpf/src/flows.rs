//! The connection table: keeps each flow on its member while the Maglev table changes.
//!
//! An array of 4-way sets (`FLOWS`), indexed by the flow hash: array lookups are inlined by the
//! verifier, where a BPF LRU hash lookup costs as much as the whole forward path. Within a set
//! the ways are kept in recency order (a hit rotates its entry to the front; an insert replaces
//! the flow's own entry or evicts the last way), so each set is an exact LRU holding at most one
//! entry per flow. An entry names its member by position and is used only if that position
//! still holds the same `MemberRef` and is in service: flows of a removed or out-of-service
//! member fall back to the Maglev table (their stale entries are dropped when met), flows of a
//! draining member (weight 0, still in the set) stay. A member added later in a removed member's position may inherit the counter
//! slot, and so the removed member's remaining entries: those flows had to move anyway.
//!
//! The table is shared by all CPUs. Two CPUs updating one set at the same instant can tear an
//! entry; the position check then rejects it (or, at worst, it names another live member), so a
//! race costs at most one flow's affinity, never a wrong or dead destination.
use anycast_common::{FLOW_WAYS, FlowEntry, MemberRef};

use crate::maps::{Addr, FLOW_SETS_MASK, FLOWS};

/// A flow as the table keys it.
#[derive(Clone, Copy)]
pub struct Flow {
    pub src: u32,
    pub dst: u32,
    pub ports: u32,
    pub proto: u32,
}

/// `FlowEntry::proto` of an unused or forgotten entry (no IP protocol number is this large).
const INVALID: u32 = u32::MAX;

#[inline(always)]
fn set_base(hash: u32) -> u32 {
    (hash & FLOW_SETS_MASK.load()) * FLOW_WAYS
}

#[inline(always)]
fn matches(e: &FlowEntry, f: &Flow) -> bool {
    e.src == f.src && e.dst == f.dst && e.ports == f.ports && e.proto == f.proto
}

/// The member `flow` is on, if it is known and that member still serves `addr`. An entry whose
/// member is gone is dropped on the way, so a set never holds a stale copy of a live flow.
#[inline(always)]
pub fn lookup(hash: u32, flow: &Flow, addr: &Addr) -> Option<(MemberRef, u32)> {
    let base = set_base(hash);
    for way in 0..FLOW_WAYS {
        let entry = FLOWS.get_ptr_mut(base + way)?;
        // SAFETY: an array element is always valid memory; see the module doc for races.
        let e = unsafe { &mut *entry };
        if !matches(e, flow) {
            continue;
        }
        if !addr.serves(e.position, &e.member) {
            e.proto = INVALID;
            continue;
        }
        let found = (e.member, e.position);
        if way != 0 {
            to_front(base, way);
        }
        return Some(found);
    }
    None
}

/// Records `flow` on `member` at the front of its set: in place of the flow's own entry if it
/// has one, else evicting the least recently used way.
#[inline(always)]
pub fn insert(hash: u32, flow: &Flow, member: MemberRef, position: u32) {
    let base = set_base(hash);
    let mut way = FLOW_WAYS - 1;
    for w in 0..FLOW_WAYS {
        if let Some(entry) = FLOWS.get_ptr(base + w) {
            // SAFETY: a valid array element.
            if matches(unsafe { &*entry }, flow) {
                way = w;
                break;
            }
        }
    }
    to_front(base, way);
    if let Some(first) = FLOWS.get_ptr_mut(base) {
        // SAFETY: a valid array element.
        unsafe {
            *first = FlowEntry {
                src: flow.src,
                dst: flow.dst,
                ports: flow.ports,
                proto: flow.proto,
                member,
                position,
                _pad: 0,
            }
        };
    }
}

/// Forgets `flow` (TCP RST: the next connection with these ports is new).
#[inline(always)]
pub fn forget(hash: u32, flow: &Flow) {
    let base = set_base(hash);
    for way in 0..FLOW_WAYS {
        if let Some(entry) = FLOWS.get_ptr_mut(base + way) {
            // SAFETY: a valid array element.
            let e = unsafe { &mut *entry };
            if matches(e, flow) {
                e.proto = INVALID;
            }
        }
    }
}

/// Moves way `way` of the set at `base` to the front, shifting the ways before it down by one
/// (so the set stays in recency order; way 0 is then overwritten or is the moved entry).
#[inline(always)]
fn to_front(base: u32, way: u32) {
    let Some(moved) = FLOWS.get_ptr(base + way) else {
        return;
    };
    // SAFETY: a valid array element, copied out before the shift overwrites it.
    let moved = unsafe { *moved };
    let mut w = way;
    while w > 0 {
        if let (Some(dst), Some(src)) = (FLOWS.get_ptr_mut(base + w), FLOWS.get_ptr(base + w - 1)) {
            // SAFETY: distinct valid array elements.
            unsafe { *dst = *src };
        }
        w -= 1;
    }
    if let Some(front) = FLOWS.get_ptr_mut(base) {
        // SAFETY: a valid array element.
        unsafe { *front = moved };
    }
}
