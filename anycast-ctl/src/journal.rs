//! Transactions over the membership maps. Every write that [`crate::members`] makes goes through
//! the methods here; inside [`Maps::transaction`] each first records how to undo itself, and an
//! error undoes the whole transaction, so a failed command changes nothing.
//!
//! Invariants:
//! - Undo replays the log backwards, so the maps pass back through the states the forward writes
//!   went through, each of which the dataplane could already read safely (spares excepted,
//!   which stay as written: see below).
//! - Counter resets (`MEMBER_STATS`, `ADDR_STATS`) are not undone: a counter slot is zeroed again
//!   whenever it is handed out.
//! - A Maglev table swapped into a `TABLES` slot that was empty stays there after an undo: no
//!   live member set refers to it. A table written in place, and every member set written
//!   (with its head), is a spare: an undo that flips back makes the other one, untouched, live
//!   again, and leaves the spare as written. Restoring it would rewrite, without waiting, a
//!   set that XDP runs begun before the flip-back may still be reading; nothing reads a spare,
//!   and the next change of the address writes it whole.
//! - Every write of an `ADDRS` or `ADDRS6` bucket (a flip, or an undo that flips back) stamps
//!   its slot's `SlotState::retired_at` before and after the write, and only [`Maps::settle`]
//!   clears it, once a grace period has passed since: waited for if the stamp is younger than
//!   [`REUSE_AFTER`], taken as passed if older. Nothing waits right after a flip, so a leave,
//!   a `member add` or `del` and the route export that follows never wait behind a grace
//!   period; only a rewrite of the same address's spare within [`REUSE_AFTER`] of its last
//!   flip does, before it writes anything.
//! - Why a time bound is safe: a reader of the retired set and table is one run of the XDP
//!   program, which started before the flip, runs with preemption off and ends within
//!   microseconds (the verifier bounds it); [`REUSE_AFTER`] is five orders of magnitude more,
//!   and the kernel would report an RCU stall long before a reader could outlive it.
use std::{net::IpAddr, time::Duration};

use anycast_common::{
    AddrBucket, AddrBucket6, AddrEntry, Host, Ip6Key, MemberInfo, MemberKey, ip_key, ip6_key,
};
use aya::maps::{Array, MapData};

use crate::{
    Error, Result,
    dataplane::{AddrSlot, Maps},
    mapped::monotonic_ns,
};

/// How long after a flip the spare it retired may be rewritten without waiting for a grace
/// period (see the module docs).
pub const REUSE_AFTER: Duration = Duration::from_secs(1);

/// The `SlotState::retired_at` of a writer older than this one: 1 meant "not settled".
const LEGACY_RETIRING: u64 = 1;

/// The `u32` arrays user space keeps for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Words {
    /// `ALLOC`: allocator marks.
    Alloc,
    /// `HOST_REFS`: memberships per host.
    HostRefs,
    /// `MEMBER_SLOTS`: Maglev slots per member counter.
    MemberSlots,
}

impl Words {
    pub const fn name(self) -> &'static str {
        match self {
            Words::Alloc => "ALLOC",
            Words::HostRefs => "HOST_REFS",
            Words::MemberSlots => "MEMBER_SLOTS",
        }
    }
}

/// The stacks of freed indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Free {
    Counters,
    Hosts,
}

/// How to undo one write.
pub enum Undo {
    Addr(u32, AddrBucket),
    Addr6(u32, AddrBucket6),
    /// The key was absent.
    AddrKey(Ip6Key),
    Host(u32, Host),
    HostId(Ip6Key, Option<u32>),
    Info(MemberKey, Option<MemberInfo>),
    Table(u32, MapData),
    Down(u32, u64),
    Word(Words, u32, u32),
    Popped(Free, u32),
    Pushed(Free),
}

impl Maps {
    /// Runs `f` as one transaction: if it fails, every write it made is undone. Nested calls
    /// join the outer transaction.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&mut Maps) -> Result<T>) -> Result<T> {
        if self.journal.is_some() {
            return f(self);
        }
        self.journal = Some(Vec::new());
        let result = f(self);
        let log = self.journal.take().unwrap_or_default();
        if result.is_err() {
            for undo in log.into_iter().rev() {
                // Best effort: keep undoing the rest even if one step fails.
                let _ = self.revert(undo);
            }
        }
        result
    }

    fn revert(&mut self, undo: Undo) -> Result<()> {
        match undo {
            Undo::Addr(index, old) => {
                self.slot_state.set_retired_at(old.slot, monotonic_ns());
                let undone = self.addrs.set(index, old, 0);
                self.slot_state.set_retired_at(old.slot, monotonic_ns());
                undone.map_err(|e| Error::map("ADDRS", e))
            }
            Undo::Addr6(index, old) => {
                self.slot_state.set_retired_at(old.slot, monotonic_ns());
                let undone = self.addrs6.set(index, old, 0);
                self.slot_state.set_retired_at(old.slot, monotonic_ns());
                undone.map_err(|e| Error::map("ADDRS6", e))
            }
            Undo::AddrKey(key) => self
                .addr_keys
                .remove(&key)
                .map_err(|e| Error::map("ADDR_KEYS", e)),
            Undo::Host(index, old) => self.set_host(index, old),
            Undo::HostId(ip, Some(old)) => self.set_host_id(ip, old),
            Undo::HostId(ip, None) => self.remove_host_id(ip),
            Undo::Info(key, Some(old)) => self.set_info(key, old),
            Undo::Info(key, None) => self.remove_info(key),
            Undo::Table(slot, old) => self.set_table(slot, &old),
            Undo::Down(slot, old) => {
                self.set_down(slot, old);
                Ok(())
            }
            Undo::Word(words, index, old) => self.set_word(words, index, old),
            Undo::Popped(free, index) => self.push_free(free, index),
            Undo::Pushed(free) => self.pop_free(free).map(|_| ()),
        }
    }

    fn record(&mut self, undo: impl FnOnce(&Maps) -> Undo) {
        if self.journal.is_some() {
            let undo = undo(self);
            if let Some(log) = &mut self.journal {
                log.push(undo);
            }
        }
    }

    /// Writes bucket `index` of the index of `ip`'s family: `ip` at `entry`, in the mode the
    /// bucket already has for `ip` (proxy for a new address).
    pub fn set_addr(&mut self, ip: IpAddr, index: u32, entry: AddrSlot) -> Result<()> {
        match ip {
            IpAddr::V4(v4) => {
                let old = self.addrs.get(&index, 0).unwrap_or_default();
                self.record(|_| Undo::Addr(index, old));
                self.slot_state.set_retired_at(entry.slot, monotonic_ns());
                let key = ip_key(v4.octets());
                let bucket = AddrBucket {
                    mode: if old.ip == key { old.mode } else { 0 },
                    ..AddrBucket::new(key, entry.slot, entry.version)
                };
                let written = self.addrs.set(index, bucket, 0);
                self.slot_state.set_retired_at(entry.slot, monotonic_ns());
                written.map_err(|e| Error::map("ADDRS", e))
            }
            IpAddr::V6(v6) => {
                let old = self.addrs6.get(&index, 0).unwrap_or_default();
                self.record(|_| Undo::Addr6(index, old));
                self.slot_state.set_retired_at(entry.slot, monotonic_ns());
                let key = ip6_key(v6.octets());
                let bucket = AddrBucket6 {
                    mode: if old.ip == key { old.mode } else { 0 },
                    ..AddrBucket6::new(key, entry.slot, entry.version)
                };
                let written = self.addrs6.set(index, bucket, 0);
                self.slot_state.set_retired_at(entry.slot, monotonic_ns());
                written.map_err(|e| Error::map("ADDRS6", e))
            }
        }
    }

    /// Sets the mode word (`ADDR_MODE_*` and `ADDR_TRACK_*` flags) of the address of `ip`'s
    /// family in bucket `index` (one aligned 32-bit field: the dataplane sees the old word or
    /// the new one).
    pub fn set_addr_mode(&mut self, ip: IpAddr, index: u32, mode: u32) -> Result<()> {
        match ip {
            IpAddr::V4(_) => {
                let old = (self.addrs.get(&index, 0)).map_err(|e| Error::map("ADDRS", e))?;
                self.record(|_| Undo::Addr(index, old));
                (self.addrs.set(index, AddrBucket { mode, ..old }, 0))
                    .map_err(|e| Error::map("ADDRS", e))
            }
            IpAddr::V6(_) => {
                let old = (self.addrs6.get(&index, 0)).map_err(|e| Error::map("ADDRS6", e))?;
                self.record(|_| Undo::Addr6(index, old));
                (self.addrs6.set(index, AddrBucket6 { mode, ..old }, 0))
                    .map_err(|e| Error::map("ADDRS6", e))
            }
        }
    }

    /// Adds a new key to `ADDR_KEYS`.
    pub fn insert_addr_key(&mut self, key: Ip6Key, slot: u32) -> Result<()> {
        self.record(|_| Undo::AddrKey(key));
        self.addr_keys
            .insert(key, slot, 0)
            .map_err(|e| Error::map("ADDR_KEYS", e))
    }

    pub fn set_host(&mut self, index: u32, host: Host) -> Result<()> {
        self.record(|m| Undo::Host(index, m.hosts.get(&index, 0).unwrap_or_default()));
        self.hosts
            .set(index, host, 0)
            .map_err(|e| Error::map("HOSTS", e))
    }

    pub fn set_host_id(&mut self, ip: Ip6Key, index: u32) -> Result<()> {
        self.record(|m| Undo::HostId(ip, m.host_ids.get(&ip, 0).ok()));
        self.host_ids
            .insert(ip, index, 0)
            .map_err(|e| Error::map("HOST_IDS", e))
    }

    pub fn remove_host_id(&mut self, ip: Ip6Key) -> Result<()> {
        self.record(|m| Undo::HostId(ip, m.host_ids.get(&ip, 0).ok()));
        self.host_ids
            .remove(&ip)
            .map_err(|e| Error::map("HOST_IDS", e))
    }

    pub fn set_info(&mut self, key: MemberKey, info: MemberInfo) -> Result<()> {
        self.record(|m| Undo::Info(key, m.member_info.get(&key, 0).ok()));
        self.member_info
            .insert(key, info, 0)
            .map_err(|e| Error::map("MEMBER_INFO", e))
    }

    pub fn remove_info(&mut self, key: MemberKey) -> Result<()> {
        self.record(|m| Undo::Info(key, m.member_info.get(&key, 0).ok()));
        self.member_info
            .remove(&key)
            .map_err(|e| Error::map("MEMBER_INFO", e))
    }

    pub fn set_table(&mut self, slot: u32, table: &MapData) -> Result<()> {
        if self.journal.is_some()
            && let Ok(old) = self.tables.get(&slot, 0)
            && let Some(log) = &mut self.journal
        {
            log.push(Undo::Table(slot, old));
        }
        self.tables
            .set(slot, table, 0)
            .map_err(|e| Error::map("TABLES", e))
    }

    /// Stores the members out of service of address `slot` (one atomic store the dataplane
    /// sees at once).
    pub fn set_down(&mut self, slot: u32, down: u64) {
        let old = self.slot_state.down(slot);
        self.record(|_| Undo::Down(slot, old));
        self.slot_state.set_down(slot, down);
    }

    /// Waits for a grace period: every program run that started before has ended.
    pub fn grace_period(&mut self) -> Result<()> {
        if self.grace.is_none() {
            self.grace = Some(new_table(1)?);
        }
        let grace = self.grace.as_ref().expect("made above");
        self.tables
            .set(anycast_common::GRACE_INDEX, grace, 0)
            .map_err(|e| Error::map("TABLES", e))
    }

    /// Makes the spare member set and table of address `slot` safe to rewrite: waits for a
    /// grace period only if its version flipped less than [`REUSE_AFTER`] ago.
    pub fn settle(&mut self, slot: u32) -> Result<()> {
        let at = self.slot_state.retired_at(slot);
        if at == 0 {
            return Ok(());
        }
        let recent = monotonic_ns().saturating_sub(at) < REUSE_AFTER.as_nanos() as u64;
        if recent || at == LEGACY_RETIRING {
            self.grace_period()?;
            self.waits += 1;
        }
        self.slot_state.set_retired_at(slot, 0);
        Ok(())
    }

    /// Writes the packed `words` of a Maglev table into `TABLES[index]`, a spare settled by
    /// [`Maps::settle`]: in place through mmap when the map there has the right size, else
    /// into a new map put there (which waits for a grace period, once per address and size).
    pub fn write_table(&mut self, index: u32, words: &[u64]) -> Result<()> {
        let current = self.tables.get(&index, 0).ok();
        let fits = |t: &MapData| {
            t.info()
                .is_ok_and(|i| i.max_entries() as usize == words.len())
        };
        if let Some(table) = current.filter(fits) {
            return fill_table(&table, words);
        }
        let table = new_table(words.len() as u32)?;
        fill_table(&table, words)?;
        self.set_table(index, &table)
    }

    fn words_mut(&mut self, words: Words) -> &mut Array<MapData, u32> {
        match words {
            Words::Alloc => &mut self.alloc,
            Words::HostRefs => &mut self.host_refs,
            Words::MemberSlots => &mut self.member_slots,
        }
    }

    pub fn word(&self, words: Words, index: u32) -> Result<u32> {
        let array = match words {
            Words::Alloc => &self.alloc,
            Words::HostRefs => &self.host_refs,
            Words::MemberSlots => &self.member_slots,
        };
        array
            .get(&index, 0)
            .map_err(|e| Error::map(words.name(), e))
    }

    pub fn set_word(&mut self, words: Words, index: u32, value: u32) -> Result<()> {
        let old = self.word(words, index)?;
        self.record(|_| Undo::Word(words, index, old));
        self.words_mut(words)
            .set(index, value, 0)
            .map_err(|e| Error::map(words.name(), e))
    }

    fn stack(&mut self, free: Free) -> (&mut aya::maps::Stack<MapData, u32>, &'static str) {
        match free {
            Free::Counters => (&mut self.free_counters, "FREE_COUNTERS"),
            Free::Hosts => (&mut self.free_hosts, "FREE_HOSTS"),
        }
    }

    /// Takes the most recently freed index, if any.
    pub fn pop_free(&mut self, free: Free) -> Result<Option<u32>> {
        let (stack, name) = self.stack(free);
        let index = match stack.pop(0) {
            Ok(index) => index,
            Err(aya::maps::MapError::ElementNotFound) => return Ok(None),
            Err(e) => return Err(Error::map(name, e)),
        };
        self.record(|_| Undo::Popped(free, index));
        Ok(Some(index))
    }

    pub fn push_free(&mut self, free: Free, index: u32) -> Result<()> {
        let (stack, name) = self.stack(free);
        stack.push(index, 0).map_err(|e| Error::map(name, e))?;
        self.record(|_| Undo::Pushed(free));
        Ok(())
    }
}

/// A new, empty Maglev table map of `words` words (mmapable, an inner map of `TABLES`).
fn new_table(words: u32) -> Result<MapData> {
    let def = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        8,
        words,
        anycast_common::TABLE_MAP_FLAGS,
    );
    MapData::create(def, "maglev", None).map_err(|e| Error::map("TABLES", e))
}

/// Copies a table's packed words into its map through mmap: one copy, no syscall per word.
fn fill_table(table: &MapData, words: &[u64]) -> Result<()> {
    use std::os::fd::AsFd;
    crate::mapped::Mapped::new(table.fd().as_fd(), words.len() * 8)
        .and_then(|mut m| m.write(words))
        .map_err(|e| Error::io("writing a Maglev table", e))
}
