//! Arrays written in place through `mmap` (BPF_F_MMAPABLE): `SLOT_STATE`, the Maglev tables and
//! the connection table's keys. The one corner with `mmap`.
//!
//! Invariants:
//! - A mapping covers exactly the map's value area (its size rounded up to a page, as the
//!   kernel requires) and lives no longer than this process's handle on it.
//! - `SLOT_STATE` words are read and written only as `AtomicU64`s, so the dataplane (which
//!   reads `SlotState::down` with one aligned load) and other writers never see a torn word.
//!   A slot's `SlotState::heads` are two words each, written only for the spare set (with it,
//!   by `Maps::store_member_set`), which no packet reads until the flip.
//! - A table is written with plain stores only while no packet can read it (the spare of its
//!   address, after a grace period): see `members::write`.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

/// `CLOCK_MONOTONIC` in ns (never 0 after boot), the clock of `SlotState::retired_at`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own; CLOCK_MONOTONIC exists on
    // every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64).max(2)
}

use anycast_common::{MAX_ADDRS, SetHead, SlotState};

/// A shared read-write mapping of an mmapable array map's values.
pub struct Mapped {
    ptr: NonNull<u64>,
    /// Bytes mapped (a multiple of the page size).
    len: usize,
    /// Bytes of values (`max_entries * value_size`).
    bytes: usize,
}

impl Mapped {
    /// Maps the `bytes` bytes of values of the array map `fd` (BPF_F_MMAPABLE).
    pub fn new(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = bytes.div_ceil(page).max(1) * page;
        // SAFETY: a fresh shared mapping of a valid fd at offset 0; the kernel checks the
        // length against the map and fails rather than map past it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Self { ptr, len, bytes })
    }

    /// The values as 64-bit atomics.
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned, at least `bytes` long and lives as long as
        // `self`; AtomicU64 has the layout of u64 and every bit pattern is valid.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.bytes / 8) }
    }

    /// Copies `words` to the start of the array (a Maglev table while it is a spare).
    pub fn write(&mut self, words: &[u64]) -> io::Result<()> {
        if words.len() * 8 > self.bytes {
            return Err(io::Error::other("table larger than its map"));
        }
        // SAFETY: within the mapping (checked above); `&mut self` is the only writer here.
        unsafe { std::ptr::copy_nonoverlapping(words.as_ptr(), self.ptr.as_ptr(), words.len()) };
        std::sync::atomic::fence(Ordering::Release);
        Ok(())
    }
}

/// Forgets, in place, every entry of the connection table `FLOWS` (`fd`, `sets` sets) whose
/// `FlowEntry::key` satisfies `forget`; returns how many. Each key is one atomic 32-bit store.
/// A dataplane write racing with it on the same set may tear an entry (the member check
/// rejects it) or, rotating the set, copy the entry back before the store lands: that flow
/// then keeps its entry, which costs at most its affinity.
pub fn forget_flows(
    fd: BorrowedFd<'_>,
    sets: u32,
    forget: impl Fn(u32) -> bool,
) -> io::Result<u64> {
    use anycast_common::{FLOW_UNUSED, FlowEntry, FlowSet};
    let flows = Mapped::new(fd, sets as usize * size_of::<FlowSet>())?;
    // SAFETY: as in `Mapped::words`; AtomicU32 has the layout of u32.
    let words = unsafe {
        std::slice::from_raw_parts(flows.ptr.as_ptr().cast::<AtomicU32>(), flows.bytes / 4)
    };
    let (stride, key) = (
        size_of::<FlowEntry>() / 4,
        std::mem::offset_of!(FlowEntry, key) / 4,
    );
    let mut forgotten = 0;
    for entry in words.chunks_exact(stride) {
        let k = entry[key].load(Ordering::Relaxed);
        // 0 is a way never used (all zeros), FLOW_UNUSED one forgotten already.
        if k != 0 && k != FLOW_UNUSED && forget(k) {
            entry[key].store(FLOW_UNUSED, Ordering::Relaxed);
            forgotten += 1;
        }
    }
    Ok(forgotten)
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is shared memory accessed through atomics or `&mut self`.
unsafe impl Send for Mapped {}

/// `SLOT_STATE`: per address slot, the members out of service, the time of the last flip and
/// the heads of its two member sets.
pub struct SlotStates(Mapped);

const WORDS_PER_SLOT: usize = size_of::<SlotState>() / 8;
/// The word of `SlotState::heads` in a slot's entry.
const HEADS: usize = core::mem::offset_of!(SlotState, heads) / 8;

impl SlotStates {
    pub fn new(fd: BorrowedFd<'_>) -> io::Result<Self> {
        Ok(Self(Mapped::new(
            fd,
            MAX_ADDRS as usize * size_of::<SlotState>(),
        )?))
    }

    fn word(&self, slot: u32, field: usize) -> &AtomicU64 {
        &self.0.words()[(slot as usize % MAX_ADDRS as usize) * WORDS_PER_SLOT + field]
    }

    /// `SlotState::down` of `slot`.
    pub fn down(&self, slot: u32) -> u64 {
        self.word(slot, 0).load(Ordering::Acquire)
    }

    /// Stores `SlotState::down` of `slot` (one atomic store).
    pub fn set_down(&self, slot: u32, down: u64) {
        self.word(slot, 0).store(down, Ordering::Release);
    }

    /// `SlotState::retired_at` of `slot`: when its version last flipped (`CLOCK_MONOTONIC`
    /// ns), 0 if a grace period has passed since.
    pub fn retired_at(&self, slot: u32) -> u64 {
        self.word(slot, 1).load(Ordering::Acquire)
    }

    pub fn set_retired_at(&self, slot: u32, ns: u64) {
        self.word(slot, 1).store(ns, Ordering::Release);
    }

    /// Word `i` (0 or 1) of `SlotState::heads[version]` of `slot`.
    fn head_word(&self, slot: u32, version: u32, i: usize) -> &AtomicU64 {
        self.word(slot, HEADS + 2 * (version as usize & 1) + i)
    }

    /// `SlotState::heads[version]` of `slot`.
    pub fn head(&self, slot: u32, version: u32) -> SetHead {
        SetHead::from_words(
            [0, 1].map(|i| self.head_word(slot, version, i).load(Ordering::Acquire)),
        )
    }

    /// Stores `SlotState::heads[version]` of `slot`: the spare version's (two stores nothing
    /// reads until the flip that makes that set live).
    pub fn set_head(&self, slot: u32, version: u32, head: &SetHead) {
        for (i, word) in head.words().into_iter().enumerate() {
            self.head_word(slot, version, i)
                .store(word, Ordering::Release);
        }
    }
}
