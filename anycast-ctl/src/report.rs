//! Reading the dataplane's state back: addresses with their members (`show`), counters
//! (`stats`) and the agent's advertisement counters (`status`); `metrics` serves the same
//! figures to Prometheus. Per-CPU counters are summed here. All are plain serde structs: the
//! JSON output is exactly these fields.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use anycast_common::{
    AddrStats, AgentCounter, Host, MemberInfo, MemberKey, MemberSet, MemberStats, PassReason, Stat,
    any_ip, names,
};
use serde::Serialize;

use crate::{
    Error, Result, batch,
    dataplane::{Maps, sum},
    journal::Words,
    mac::MacAddr,
    progress::Progress,
};

/// One member of an address, as `show` prints it.
#[derive(Debug, Serialize)]
pub struct ShownMember {
    pub address: IpAddr,
    pub ifindex: u32,
    pub interface: String,
    pub mac: String,
    pub mac_known: bool,
    pub static_mac: bool,
    /// `static` (member add) or `learned` (advertisements).
    pub source: &'static str,
    /// Milliseconds since it was added or last refreshed.
    pub age_ms: u64,
    /// Milliseconds until a learned member expires; absent for static members.
    pub expires_in_ms: Option<u64>,
    pub preference: u16,
    pub weight: u16,
    /// Fraction of new flows this member receives (of the Maglev table; 1 for an address's
    /// only member taking new flows).
    pub share: f64,
}

#[derive(Debug, Serialize)]
pub struct AddressInfo {
    pub address: IpAddr,
    /// How clients on a member's link reach it: `proxy` or `direct` (`member add --mode`).
    pub mode: crate::members::mode::Mode,
    /// Which flows the connection table keeps: `all` or `tcp` (`member add --track`).
    pub track: crate::members::mode::Track,
    /// Slots of the address's Maglev table (0: no table, because at most one member takes
    /// new flows).
    pub table_size: u32,
    pub members: Vec<ShownMember>,
    /// The metric of the address's exported route in the kernel; absent when it has none
    /// (export off, or no member). See [`crate::export`].
    pub exported_metric: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct Show {
    /// The route export settings; absent when export is off.
    pub export: Option<crate::export::Settings>,
    pub addresses: Vec<AddressInfo>,
}

/// Addresses and members, sorted by address. `ifname` names an ifindex. Reads no Maglev table:
/// a member's share is its slot count recorded in `MEMBER_SLOTS` when the table was built (or
/// all new flows for an address's single member), and host records are read once each.
/// Shows its progress on a terminal.
pub fn show(maps: &Maps, ifname: &dyn Fn(u32) -> String) -> Result<Show> {
    let all = maps.addresses_and_words()?;
    let mut reader = Reader::for_all(
        maps,
        all.len(),
        Parts {
            counters: false,
            records: true,
        },
    )?;
    let mut progress = Progress::new("addresses", all.len());
    let mut addresses = Vec::new();
    for (done, (address, entry, mode)) in all.into_iter().enumerate() {
        progress.set(done);
        let set = maps.member_set(&entry)?;
        addresses.push(reader.address_info((address, mode), &set, ifname)?);
    }
    Ok(Show {
        export: crate::export::settings(maps)?,
        addresses,
    })
}

/// [`stats`] of every address and [`show`] (with empty interface names) from one reading of
/// the addresses and their member sets, as a scrape needs both.
pub fn stats_and_show(maps: &Maps) -> Result<(Stats, Show)> {
    let all = maps.addresses_and_words()?;
    let parts = Parts {
        counters: true,
        records: true,
    };
    let mut reader = Reader::for_all(maps, all.len(), parts)?;
    let (mut counters, mut infos) = (Vec::new(), Vec::new());
    for (address, entry, mode) in all {
        let set = maps.member_set(&entry)?;
        counters.push(reader.address_counters(address, &entry, &set)?);
        infos.push(reader.address_info((address, mode), &set, &|_| String::new())?);
    }
    let stats = Stats {
        addresses: counters,
        global: global_counters(maps)?,
    };
    let show = Show {
        export: crate::export::settings(maps)?,
        addresses: infos,
    };
    Ok((stats, show))
}

/// The direct-mode counters of `maps` by key: (`DIRECT_REPLIES` summed over CPUs,
/// `REPOINTS`). Both maps hold entries for direct-mode addresses and members only, so they
/// are read whole, once, rather than looked up (and mostly missed) per address and member.
fn direct_counts(maps: &Maps) -> HashMap<u32, (u64, u64)> {
    let mut counts: HashMap<u32, (u64, u64)> = HashMap::new();
    for (key, per_cpu) in maps.direct_replies.iter().flatten() {
        counts.entry(key).or_default().0 = per_cpu.iter().sum();
    }
    for (key, repoints) in maps.repoints.iter().flatten() {
        counts.entry(key).or_default().1 = repoints;
    }
    counts
}

/// Reads addresses' figures, each host record once: one lookup per figure, or, for a report
/// of many addresses, everything at once from a [`Bulk`] read.
struct Reader<'m> {
    maps: &'m Maps,
    hosts: HashMap<u32, Host>,
    /// [`direct_counts`], read when the reader is made.
    direct: HashMap<u32, (u64, u64)>,
    /// Empty unless the report is of [`BULK_FROM`] addresses or more.
    bulk: Bulk,
    now: u64,
}

/// Reports of at least this many addresses read counters and member records in bulk: below,
/// lookups cost less than reading every slot and counter handed out.
pub const BULK_FROM: usize = 64;

/// What a report of every address reads in bulk.
#[derive(Clone, Copy)]
struct Parts {
    /// Address and member counters (`stats`).
    counters: bool,
    /// `MEMBER_INFO` and `MEMBER_SLOTS` (`show`).
    records: bool,
}

/// The counters and member records of every slot and member counter handed out, read with a
/// few batch syscalls ([`crate::batch`]) instead of several lookups per address. A part not
/// read, or a figure beyond what was read (a slot or counter handed out since), is looked up.
/// Member sets are always looked up: the live halves of `MEMBER_SETS` are scattered, and a
/// batch read of these large values costs as much per element as a lookup.
#[derive(Default)]
struct Bulk {
    /// By slot, summed over the CPUs.
    addr_stats: Vec<AddrStats>,
    /// By member counter, summed over the CPUs.
    member_stats: Vec<MemberStats>,
    /// By member counter.
    member_slots: Vec<u32>,
    member_info: HashMap<MemberKey, MemberInfo>,
}

impl Bulk {
    fn read(maps: &Maps, parts: Parts) -> Result<Self> {
        let slots = maps.word(Words::Alloc, anycast_common::ALLOC_ADDR_SLOTS)?;
        let counters = maps.word(Words::Alloc, anycast_common::ALLOC_COUNTERS)?;
        let reading = |name: &'static str| move |e| Error::io(format!("reading {name}"), e);
        let mut bulk = Bulk::default();
        if parts.counters {
            batch::per_cpu_array(&maps.addr_stats, slots, |v| bulk.addr_stats.push(sum(v)))
                .map_err(reading(names::ADDR_STATS))?;
            batch::per_cpu_array(&maps.member_stats, counters, |v| {
                bulk.member_stats.push(sum(v))
            })
            .map_err(reading(names::MEMBER_STATS))?;
        }
        if parts.records {
            bulk.member_slots =
                batch::array(&maps.member_slots, counters).map_err(reading(names::MEMBER_SLOTS))?;
            bulk.member_info = (batch::hash(&maps.member_info)
                .map_err(reading(names::MEMBER_INFO))?)
            .into_iter()
            .collect();
        }
        Ok(bulk)
    }
}

impl<'m> Reader<'m> {
    fn new(maps: &'m Maps, bulk: Bulk) -> Self {
        Reader {
            maps,
            hosts: HashMap::new(),
            direct: direct_counts(maps),
            bulk,
            now: crate::members::now_ms(),
        }
    }

    /// A reader for a report of `addresses` addresses (all there are) that needs `parts`.
    fn for_all(maps: &'m Maps, addresses: usize, parts: Parts) -> Result<Self> {
        let bulk = if addresses >= BULK_FROM {
            Bulk::read(maps, parts)?
        } else {
            Bulk::default()
        };
        Ok(Self::new(maps, bulk))
    }

    /// A slot's address counters, summed over the CPUs.
    fn addr_stats(&self, slot: u32) -> Result<AddrStats> {
        match self.bulk.addr_stats.get(slot as usize) {
            Some(stats) => Ok(*stats),
            None => self.maps.addr_stats(slot),
        }
    }

    /// A member counter's figures, summed over the CPUs.
    fn member_stats(&self, counter: u32) -> Result<MemberStats> {
        match self.bulk.member_stats.get(counter as usize) {
            Some(stats) => Ok(*stats),
            None => self.maps.member_stats(counter),
        }
    }

    /// A membership's info (the default if it has none). Every membership has one, so one
    /// missing from the bulk read came since: it is looked up.
    fn member_info(&self, key: &MemberKey) -> MemberInfo {
        (self.bulk.member_info.get(key).copied())
            .or_else(|| self.maps.member_info.get(key, 0).ok())
            .unwrap_or_default()
    }

    /// A member counter's slots in its address's Maglev table.
    fn member_slots(&self, counter: u32) -> Result<u32> {
        match self.bulk.member_slots.get(counter as usize) {
            Some(slots) => Ok(*slots),
            None => self.maps.word(Words::MemberSlots, counter),
        }
    }

    /// A direct-mode counter pair (0 when absent).
    fn direct(&self, of: anycast_common::direct::StatOf) -> (u64, u64) {
        let key = anycast_common::direct::stat_key(of);
        self.direct.get(&key).copied().unwrap_or_default()
    }

    fn host(&mut self, id: u32) -> Result<Host> {
        if let Some(host) = self.hosts.get(&id) {
            return Ok(*host);
        }
        let host: Host = (self.maps.hosts)
            .get(&id, 0)
            .map_err(|e| Error::map("HOSTS", e))?;
        Ok(*self.hosts.entry(id).or_insert(host))
    }

    /// One address of `show`.
    fn address_info(
        &mut self,
        (address, mode): (IpAddr, u32),
        set: &MemberSet,
        ifname: &dyn Fn(u32) -> String,
    ) -> Result<AddressInfo> {
        let now = self.now;
        let mut members = Vec::new();
        for (position, m) in set.positions().iter().enumerate() {
            if m.host == anycast_common::NO_HOST {
                continue;
            }
            let host = self.host(m.host)?;
            let member = any_ip(host.ip);
            let info = self.member_info(&crate::members::member_key(address, member));
            let learned = info.source == anycast_common::SOURCE_LEARNED;
            members.push(ShownMember {
                source: if learned { "learned" } else { "static" },
                age_ms: now.saturating_sub(info.updated_ms),
                expires_in_ms: learned
                    .then(|| (info.updated_ms + info.hold_ms as u64).saturating_sub(now)),
                preference: info.preference,
                weight: info.weight,
                address: member,
                ifindex: host.ifindex,
                interface: ifname(host.ifindex),
                mac: MacAddr(host.mac).to_string(),
                mac_known: host.mac_known(),
                static_mac: host.flags & anycast_common::HOST_MAC_STATIC != 0,
                share: self.share(set, position, m.counter)?,
            });
        }
        Ok(AddressInfo {
            address,
            mode: crate::members::mode::Mode::from_word(mode),
            track: crate::members::mode::Track::from_word(mode),
            table_size: set.table_size,
            members,
            exported_metric: None,
        })
    }

    /// The fraction of the address's new flows that the member at `position` receives.
    fn share(&self, set: &MemberSet, position: usize, counter: u32) -> Result<f64> {
        if set.single != 0 {
            return Ok(if set.single as usize == position + 1 {
                1.0
            } else {
                0.0
            });
        }
        if set.table_size == 0 {
            return Ok(0.0);
        }
        let slots = self.member_slots(counter)?;
        Ok(f64::from(slots) / f64::from(set.table_size))
    }
}

#[derive(Debug, Serialize)]
pub struct MemberCounters {
    pub address: IpAddr,
    pub packets: u64,
    pub bytes: u64,
    /// Direct mode: ARP replies that gave clients this member.
    pub direct_arp_replies: u64,
    /// Direct mode: clients repointed to this member when theirs went.
    pub repoints: u64,
}

#[derive(Debug, Serialize)]
pub struct AddressCounters {
    pub address: IpAddr,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// ARP replies sent for an IPv4 address (0 for an IPv6 one).
    pub arp_replies: u64,
    /// Neighbour advertisements sent for an IPv6 address (0 for an IPv4 one).
    pub nd_replies: u64,
    /// Direct mode: ARP replies (of `arp_replies`) that named a member's MAC.
    pub direct_arp_replies: u64,
    /// Direct mode: clients repointed when their member went.
    pub repoints: u64,
    /// Packets passed to the kernel, by reason.
    pub passed: BTreeMap<&'static str, u64>,
    pub members: Vec<MemberCounters>,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub addresses: Vec<AddressCounters>,
    /// Counters not tied to an anycast address.
    pub global: BTreeMap<&'static str, u64>,
}

/// Counters of every address, or only of `only`.
pub fn stats(maps: &Maps, only: Option<IpAddr>) -> Result<Stats> {
    let all = maps.addresses()?;
    let mut reader = match only {
        Some(_) => Reader::new(maps, Bulk::default()),
        None => Reader::for_all(
            maps,
            all.len(),
            Parts {
                counters: true,
                records: false,
            },
        )?,
    };
    let mut addresses = Vec::new();
    for (address, entry) in all {
        if only.is_some_and(|o| o != address) {
            continue;
        }
        let set = maps.member_set(&entry)?;
        addresses.push(reader.address_counters(address, &entry, &set)?);
    }
    if let Some(address) = only
        && addresses.is_empty()
    {
        return Err(Error::NoSuchAddress { address });
    }
    let global = global_counters(maps)?;
    Ok(Stats { addresses, global })
}

impl Reader<'_> {
    /// One address of `stats`. The forward path counts a datagram against its member only,
    /// so the address's forwarded and received totals are derived here (see
    /// `anycast_common::AddrStats`): from one member set, so each member, present or gone, is
    /// counted once.
    fn address_counters(
        &mut self,
        address: IpAddr,
        entry: &crate::dataplane::AddrSlot,
        set: &MemberSet,
    ) -> Result<AddressCounters> {
        let own = self.addr_stats(entry.slot)?;
        let direct = self.direct(anycast_common::direct::StatOf::Addr(entry.slot));
        let members = self.member_counters(set)?;
        let forwarded_packets = own.multicast_packets
            + set.gone.packets
            + members.iter().map(|m| m.packets).sum::<u64>();
        let forwarded_bytes =
            own.multicast_bytes + set.gone.bytes + members.iter().map(|m| m.bytes).sum::<u64>();
        Ok(AddressCounters {
            address,
            rx_packets: forwarded_packets + own.passed.iter().sum::<u64>(),
            rx_bytes: forwarded_bytes + own.passed_bytes,
            forwarded_packets,
            forwarded_bytes,
            arp_replies: if address.is_ipv4() {
                own.arp_replies
            } else {
                0
            },
            nd_replies: if address.is_ipv6() {
                own.arp_replies
            } else {
                0
            },
            direct_arp_replies: direct.0,
            repoints: direct.1,
            passed: PassReason::ALL
                .iter()
                .map(|r| (r.name(), own.passed[r.index()]))
                .collect(),
            members,
        })
    }

    /// The counters of each member of `set`.
    fn member_counters(&mut self, set: &MemberSet) -> Result<Vec<MemberCounters>> {
        let mut members = Vec::new();
        for m in set.members() {
            let host = self.host(m.host)?;
            let c = self.member_stats(m.counter)?;
            let direct = self.direct(anycast_common::direct::StatOf::Member(m.counter));
            members.push(MemberCounters {
                address: any_ip(host.ip),
                packets: c.packets,
                bytes: c.bytes,
                direct_arp_replies: direct.0,
                repoints: direct.1,
            });
        }
        Ok(members)
    }
}

/// The counters not tied to an address, by name.
fn global_counters(maps: &Maps) -> Result<BTreeMap<&'static str, u64>> {
    let mut global = BTreeMap::new();
    for counter in Stat::ALL {
        let per_cpu = maps
            .stats
            .get(&counter.index(), 0)
            .map_err(|e| Error::map("STATS", e))?;
        global.insert(counter.name(), per_cpu.iter().sum());
    }
    Ok(global)
}

/// The agent's advertisement counters, as `AGENT_STATS` holds them (published by the agent).
#[derive(Debug, Default, Serialize)]
pub struct AgentCounters {
    pub accepted: u64,
    /// Rejected advertisements (or entries) by reason.
    pub rejected: BTreeMap<&'static str, u64>,
}

/// The agent's counters (zero if no agent ever ran on these maps).
pub fn agent_counters(maps: &Maps) -> AgentCounters {
    let mut counters = AgentCounters::default();
    for counter in AgentCounter::ALL {
        let value = maps.agent_stats.get(&counter.index(), 0).unwrap_or(0);
        if counter == AgentCounter::Accepted {
            counters.accepted = value;
        } else {
            counters.rejected.insert(counter.name(), value);
        }
    }
    counters
}
