//! Persistent index allocators, kept in pinned maps so that every process shares them, each an
//! O(1) number of map operations whatever the number of addresses:
//! - address slots: a mark in `ALLOC` that only grows (an address is never removed);
//! - member counters and host indexes: a freed index goes onto its stack (`FREE_COUNTERS`,
//!   `FREE_HOSTS`) and is reused before the mark grows.
//!
//! Invariant: an index below its mark is either in use or on its free stack exactly once; an
//! index at or above the mark was never handed out.
use anycast_common::{
    ALLOC_ADDR_SLOTS, ALLOC_COUNTERS, ALLOC_HOSTS, MAX_ADDRS, MAX_HOSTS, MAX_MEMBER_COUNTERS,
};

use crate::{
    Error, Result,
    dataplane::Maps,
    journal::{Free, Words},
};

/// What is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    AddrSlot,
    Counter,
    Host,
}

impl Kind {
    /// `ALLOC` index, capacity, free stack and name.
    fn params(self) -> (u32, u32, Option<Free>, &'static str) {
        match self {
            Kind::AddrSlot => (ALLOC_ADDR_SLOTS, MAX_ADDRS, None, "address"),
            Kind::Counter => (
                ALLOC_COUNTERS,
                MAX_MEMBER_COUNTERS,
                Some(Free::Counters),
                "member counter",
            ),
            Kind::Host => (ALLOC_HOSTS, MAX_HOSTS, Some(Free::Hosts), "member host"),
        }
    }
}

/// Hands out an index: the last one freed, else the next never used.
pub fn take(maps: &mut Maps, kind: Kind) -> Result<u32> {
    let (mark, max, free, what) = kind.params();
    if let Some(free) = free
        && let Some(index) = maps.pop_free(free)?
    {
        return Ok(index);
    }
    let next = maps.word(Words::Alloc, mark)?;
    if next >= max {
        return Err(Error::Full { what, max });
    }
    maps.set_word(Words::Alloc, mark, next + 1)?;
    Ok(next)
}

/// Gives an index back for reuse (address slots are never given back).
pub fn give_back(maps: &mut Maps, kind: Kind, index: u32) -> Result<()> {
    match kind.params().2 {
        Some(free) => maps.push_free(free, index),
        None => Ok(()),
    }
}
