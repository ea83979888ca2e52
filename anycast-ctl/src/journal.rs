//! Transactions over the membership maps. Every write that [`crate::members`] makes goes through
//! the methods here; inside [`Maps::transaction`] each first records how to undo itself, and an
//! error undoes the whole transaction, so a failed command changes nothing.
//!
//! Invariants:
//! - Undo replays the log backwards, so the maps pass back through the states the forward writes
//!   went through, each of which the dataplane could already read safely.
//! - Counter resets (`MEMBER_STATS`, `ADDR_STATS`) are not undone: a counter slot is zeroed again
//!   whenever it is handed out.
//! - A Maglev table swapped into a `TABLES` slot that was empty stays there after an undo: no
//!   restored member set refers to it.
use std::net::IpAddr;

use anycast_common::{
    AddrBucket, AddrBucket6, AddrEntry, Host, Ip6Key, MemberInfo, MemberKey, MemberSet, ip_key,
    ip6_key,
};
use aya::maps::{Array, MapData};

use crate::{
    Error, Result,
    dataplane::{AddrSlot, Maps},
};

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
    MemberSet(u32, Box<MemberSet>),
    /// The key was absent.
    AddrKey(Ip6Key),
    Host(u32, Host),
    HostId(Ip6Key, Option<u32>),
    Info(MemberKey, Option<MemberInfo>),
    Table(u32, Array<MapData, u64>),
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
            Undo::Addr(index, old) => self
                .addrs
                .set(index, old, 0)
                .map_err(|e| Error::map("ADDRS", e)),
            Undo::Addr6(index, old) => self
                .addrs6
                .set(index, old, 0)
                .map_err(|e| Error::map("ADDRS6", e)),
            Undo::MemberSet(index, old) => self.set_member_set(index, &old),
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

    /// Writes bucket `index` of the index of `ip`'s family: `ip` at `entry`.
    pub fn set_addr(&mut self, ip: IpAddr, index: u32, entry: AddrSlot) -> Result<()> {
        match ip {
            IpAddr::V4(v4) => {
                self.record(|m| Undo::Addr(index, m.addrs.get(&index, 0).unwrap_or_default()));
                let bucket = AddrBucket::new(ip_key(v4.octets()), entry.slot, entry.version);
                self.addrs
                    .set(index, bucket, 0)
                    .map_err(|e| Error::map("ADDRS", e))
            }
            IpAddr::V6(v6) => {
                self.record(|m| Undo::Addr6(index, m.addrs6.get(&index, 0).unwrap_or_default()));
                let bucket = AddrBucket6::new(ip6_key(v6.octets()), entry.slot, entry.version);
                self.addrs6
                    .set(index, bucket, 0)
                    .map_err(|e| Error::map("ADDRS6", e))
            }
        }
    }

    pub fn set_member_set(&mut self, index: u32, set: &MemberSet) -> Result<()> {
        self.record(|m| {
            Undo::MemberSet(
                index,
                Box::new(m.member_sets.get(&index, 0).unwrap_or_default()),
            )
        });
        self.member_sets
            .set(index, set, 0)
            .map_err(|e| Error::map("MEMBER_SETS", e))
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

    pub fn set_table(&mut self, slot: u32, table: &Array<MapData, u64>) -> Result<()> {
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
