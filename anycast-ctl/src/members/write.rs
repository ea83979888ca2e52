//! Writing memberships into the maps.
//!
//! Invariants:
//! - A member set is written into the address's spare `MEMBER_SETS` entry, after the `HOSTS`
//!   entries it points to, and only then made live by flipping the bucket's version: the
//!   dataplane never follows a member to a half-written set or host.
//! - A counter slot is zeroed before it is handed to a new (address, member) pair; an address
//!   slot likewise. Indexes come from [`crate::alloc`], so [`add`] and [`del`] cost a constant
//!   number of map operations whatever the number of addresses.
//! - An address stays once created (with zero members it counts `no_member` passes and is no
//!   longer answered in ARP); a host is dropped from `HOST_IDS` when the last membership that
//!   refers to it goes (`HOST_REFS` counts them).
//! - A MAC belongs to the host: one static MAC for every address the host serves.
//! - [`add`], [`del`] and [`set_weight`] are transactions ([`Maps::transaction`]): on an error
//!   nothing changed.
use std::net::IpAddr;

use anycast_common::{
    AddrStats, HOST_MAC_KNOWN, HOST_MAC_SIGNED, HOST_MAC_STATIC, Host, MAX_MEMBERS, MemberInfo,
    MemberRef, MemberSet, MemberStats, NO_HOST, TABLE_ENTRIES_PER_WORD, any_ip, any_key, fold6,
    member_set_index, pack_positions, table_words,
};
use aya::maps::{Array, MapData};

use crate::{
    Error, Result,
    alloc::{self, Kind},
    dataplane::{AddrSlot, Bucket, Maps, buckets_of, zeroed},
    journal::Words,
    mac::MacAddr,
    maglev,
};

use super::{AddOutcome, Added, Edge, Placement, check_family, member_key};

/// Adds `p.member` to the anycast `address` (creating the address if needed), or refreshes
/// where it is sent and its `info` (source, preference, weight) if it already is a member; a
/// `table_size` other than the address's is applied either way (`None` keeps the address's,
/// or the default for a new one). One transaction: on an error nothing changed. A constant
/// number of map operations, whatever the number of addresses.
pub fn add(
    maps: &mut Maps,
    address: IpAddr,
    p: &Placement,
    info: MemberInfo,
    table_size: Option<u32>,
) -> Result<AddOutcome> {
    maps.transaction(|maps| add_in(maps, (address, p, info), table_size))
}

fn add_in(
    maps: &mut Maps,
    (address, p, info): (IpAddr, &Placement, MemberInfo),
    table_size: Option<u32>,
) -> Result<AddOutcome> {
    check_family(address, p.member)?;
    let (index, entry, old) = match maps.bucket(address)? {
        Bucket::Found { index, entry } => (index, Some(entry), maps.member_set(&entry)?),
        Bucket::Free { index } => (index, None, MemberSet::default()),
        Bucket::Full => {
            return Err(Error::Full {
                what: "address index",
                max: buckets_of(address),
            });
        }
    };
    let known_host = maps.host_ids.get(&any_key(p.member), 0).ok();
    check_mac(maps, address, p, known_host, &old)?;
    if let Some(host) = known_host
        && old.members().any(|m| m.host == host)
    {
        let entry = entry.expect("a found address has a bucket entry");
        return refresh(maps, address, (index, entry), &old, (p, info), table_size);
    }
    let position = old
        .positions()
        .iter()
        .position(|m| m.host == NO_HOST)
        .unwrap_or(old.positions().len());
    if position >= MAX_MEMBERS {
        return Err(Error::TooManyMembers {
            address,
            max: MAX_MEMBERS,
        });
    }
    let entry = match entry {
        Some(entry) => entry,
        None => create_address(maps, address)?,
    };
    let counter = alloc::take(maps, Kind::Counter)?;
    let (host, stored) = write_host(maps, p)?;
    let refs = maps.word(Words::HostRefs, host)?;
    maps.set_word(Words::HostRefs, host, refs + 1)?;
    maps.member_stats
        .set(counter, zeroed::<MemberStats>()?, 0)
        .map_err(|e| Error::map("MEMBER_STATS", e))?;
    maps.set_info(member_key(address, p.member), info)?;
    let mut new = old;
    new.members[position] = MemberRef { host, counter };
    new.n_members = new.n_members.max(position as u32 + 1);
    update(maps, address, (index, entry), (&old, new), table_size)?;
    Ok(AddOutcome {
        added: Added::New,
        host: stored,
        edge: (old.members().count() == 0).then_some(Edge::FirstMember),
    })
}

/// `add` of a member already in the set: its host, its info, and the table if its preference,
/// weight or the table size changed.
fn refresh(
    maps: &mut Maps,
    address: IpAddr,
    (index, entry): (u32, AddrSlot),
    old: &MemberSet,
    (p, info): (&Placement, MemberInfo),
    table_size: Option<u32>,
) -> Result<AddOutcome> {
    let (_, stored) = write_host(maps, p)?;
    let key = member_key(address, p.member);
    let changed = maps.member_info.get(&key, 0).map_or(true, |i| {
        (i.preference, i.weight) != (info.preference, info.weight)
    });
    let resized = table_size.is_some_and(|s| s != old.maglev_size);
    maps.set_info(key, info)?;
    if changed || resized {
        update(maps, address, (index, entry), (old, *old), table_size)?;
    }
    Ok(AddOutcome {
        added: Added::Updated,
        host: stored,
        edge: None,
    })
}

/// A new address: its slot (zeroed counters) and directory entry, and the bucket to publish it
/// with (version 1 with an empty set, flipped to 0 by the first publish: the same path as every
/// later update; the bucket itself is written only then).
fn create_address(maps: &mut Maps, address: IpAddr) -> Result<AddrSlot> {
    let slot = alloc::take(maps, Kind::AddrSlot)?;
    maps.addr_stats
        .set(slot, zeroed::<AddrStats>()?, 0)
        .map_err(|e| Error::map("ADDR_STATS", e))?;
    maps.insert_addr_key(any_key(address), slot)?;
    Ok(AddrSlot { slot, version: 1 })
}

/// A MAC belongs to the host, and so to every address it serves: a `--mac` other than the
/// host's static MAC is refused while the host serves other addresses (which are named; finding
/// them walks every address, on this error path only).
fn check_mac(
    maps: &Maps,
    address: IpAddr,
    p: &Placement,
    host: Option<u32>,
    old: &MemberSet,
) -> Result<()> {
    let Some(index) = host.filter(|_| p.static_mac) else {
        return Ok(());
    };
    let current = maps
        .hosts
        .get(&index, 0)
        .map_err(|e| Error::map("HOSTS", e))?;
    if current.flags & HOST_MAC_STATIC == 0 || current.mac == p.mac {
        return Ok(());
    }
    let here = u32::from(old.members().any(|m| m.host == index));
    if maps.word(Words::HostRefs, index)? <= here {
        return Ok(());
    }
    let mut others = Vec::new();
    for (a, entry) in maps.addresses()? {
        if a != address && maps.member_set(&entry)?.members().any(|m| m.host == index) {
            others.push(a.to_string());
        }
    }
    Err(Error::MacConflict {
        member: p.member,
        mac: MacAddr(p.mac),
        current: MacAddr(current.mac),
        addresses: others.join(", "),
    })
}

/// Removes `member` from `address`: its position becomes a hole, so every other member keeps
/// its position (and its flows). The address stays, possibly with no members. Its counter slot
/// is freed, and so is its host once no membership refers to it (`HOST_REFS`). One transaction;
/// a constant number of map operations, whatever the number of addresses. Returns
/// [`Edge::LastMemberGone`] when this was the address's last member.
pub fn del(maps: &mut Maps, address: IpAddr, member: IpAddr) -> Result<Option<Edge>> {
    maps.transaction(|maps| del_in(maps, address, member))
}

fn del_in(maps: &mut Maps, address: IpAddr, member: IpAddr) -> Result<Option<Edge>> {
    let Bucket::Found { index, entry } = maps.bucket(address)? else {
        return Err(Error::NoSuchAddress { address });
    };
    let old = maps.member_set(&entry)?;
    let host = maps
        .host_ids
        .get(&any_key(member), 0)
        .map_err(|_| Error::NotMember { address, member })?;
    let pos = old
        .positions()
        .iter()
        .position(|m| m.host == host)
        .ok_or(Error::NotMember { address, member })?;
    let mut new = old;
    new.members[pos] = MemberRef {
        host: NO_HOST,
        counter: 0,
    };
    while new.n_members > 0 && new.members[new.n_members as usize - 1].host == NO_HOST {
        new.n_members -= 1;
    }
    update(maps, address, (index, entry), (&old, new), None)?;
    let key = member_key(address, member);
    if maps.member_info.get(&key, 0).is_ok() {
        maps.remove_info(key)?;
    }
    alloc::give_back(maps, Kind::Counter, old.members[pos].counter)?;
    let refs = maps.word(Words::HostRefs, host)?.saturating_sub(1);
    maps.set_word(Words::HostRefs, host, refs)?;
    if refs == 0 {
        maps.remove_host_id(any_key(member))?;
        alloc::give_back(maps, Kind::Host, host)?;
    }
    Ok((new.members().count() == 0).then_some(Edge::LastMemberGone))
}

/// Changes the preference and weight of a member (weight 0 drains it: no new flows, existing
/// flows stay), and the address's table size if given. One transaction.
pub fn set_weight(
    maps: &mut Maps,
    (address, member): (IpAddr, IpAddr),
    preference: u16,
    weight: u16,
    table_size: Option<u32>,
) -> Result<()> {
    maps.transaction(|maps| {
        let Bucket::Found { index, entry } = maps.bucket(address)? else {
            return Err(Error::NoSuchAddress { address });
        };
        let key = member_key(address, member);
        let mut info = maps
            .member_info
            .get(&key, 0)
            .map_err(|_| Error::NotMember { address, member })?;
        info.preference = preference;
        info.weight = weight;
        maps.set_info(key, info)?;
        let set = maps.member_set(&entry)?;
        update(maps, address, (index, entry), (&set, set), table_size)
    })
}

/// Removes the `MEMBER_INFO` entry of a membership that is not in its member set any more
/// (left behind by a writer killed between the two).
pub fn forget_info(maps: &mut Maps, (address, member): (IpAddr, IpAddr)) -> Result<()> {
    let key = member_key(address, member);
    if maps.member_info.get(&key, 0).is_ok() {
        maps.remove_info(key)?;
    }
    Ok(())
}

/// Records a refresh of a member already in place (the agent's, on each advertisement), whose
/// recorded info is `current`: its new `info`, and a new choice of members if its preference
/// or weight changed. One transaction; one map write when nothing but the deadline changed.
pub fn renew(
    maps: &mut Maps,
    (address, member): (IpAddr, IpAddr),
    current: &MemberInfo,
    info: MemberInfo,
) -> Result<()> {
    let key = member_key(address, member);
    if (current.preference, current.weight) == (info.preference, info.weight) {
        return maps.set_info(key, info);
    }
    maps.transaction(|maps| {
        maps.set_info(key, info)?;
        let Bucket::Found { index, entry } = maps.bucket(address)? else {
            return Err(Error::NoSuchAddress { address });
        };
        let set = maps.member_set(&entry)?;
        update(maps, address, (index, entry), (&set, set), None)
    })
}

/// Moves the address in bucket `index` from member set `old` to `new` (their positions differ by
/// at most one member), choosing where new flows go from `new` and `MEMBER_INFO` (see
/// [`choose`]), so that the dataplane never follows `single` or a table to a missing position:
/// 1. a set with an added position is published first, with the old choice still in use, if a
///    new table is to name that position;
/// 2. a new table is swapped in (a smaller one announced first), and each member's share of it
///    recorded in `MEMBER_SLOTS`;
/// 3. the final set (and a removed member's hole) is published.
fn update(
    maps: &mut Maps,
    address: IpAddr,
    (index, entry): (u32, AddrSlot),
    (old, mut new): (&MemberSet, MemberSet),
    table_size: Option<u32>,
) -> Result<()> {
    let size = table_size.unwrap_or(match old.maglev_size {
        0 => anycast_common::DEFAULT_TABLE_SIZE,
        size => size,
    });
    // Everything that can fail for lack of memory happens before the first write.
    let choice = choose(maps, address, &new, size)?;
    new.maglev_size = size;
    let mut entry = entry;
    let mut live = *old;
    // Only a table can name a position the live set lacks: `single` is published with its set.
    let grows = new.n_members > old.n_members || new.members().count() > old.members().count();
    if grows && matches!(choice, Choice::Table(..)) {
        live = MemberSet {
            table_size: old.table_size,
            single: old.single,
            ..new
        };
        entry = publish(maps, (address, index), entry, &live)?;
    }
    (new.single, new.table_size) = (0, 0);
    match choice {
        Choice::Nobody => {}
        Choice::Single(position) => new.single = position as u32 + 1,
        Choice::Table(table, slots) => {
            // A smaller table is announced before it is swapped in, a larger one after, so the
            // dataplane never indexes past the end of the table it reads.
            if size < live.table_size {
                live.table_size = size;
                entry = publish(maps, (address, index), entry, &live)?;
            }
            maps.set_table(entry.slot, &table)?;
            for (position, m) in new.positions().iter().enumerate() {
                if m.host != NO_HOST {
                    maps.set_word(Words::MemberSlots, m.counter, slots[position])?;
                }
            }
            new.table_size = size;
        }
    }
    publish(maps, (address, index), entry, &new)?;
    Ok(())
}

/// Where the new flows of an address go.
enum Choice {
    /// No member takes new flows.
    Nobody,
    /// All of them go to the member at this position: no table.
    Single(usize),
    /// A Maglev table in a new map, not yet in `TABLES`, and each position's slots in it.
    Table(Array<MapData, u64>, Box<[u32; MAX_MEMBERS]>),
}

/// Only members of the best (lowest) preference among those with a weight take new flows; the
/// others are hot standby. One such member needs no table; more share a table of `size` slots.
fn choose(maps: &Maps, address: IpAddr, set: &MemberSet, size: u32) -> Result<Choice> {
    let mut candidates = Vec::new();
    for (position, m) in set.positions().iter().enumerate() {
        if m.host == NO_HOST {
            continue;
        }
        let host = maps
            .hosts
            .get(&m.host, 0)
            .map_err(|e| Error::map("HOSTS", e))?;
        let member = any_ip(host.ip);
        let info = maps
            .member_info
            .get(&member_key(address, member), 0)
            .unwrap_or_default();
        if info.weight > 0 {
            candidates.push((position, host.ip, info));
        }
    }
    let Some(best) = candidates.iter().map(|(_, _, i)| i.preference).min() else {
        return Ok(Choice::Nobody);
    };
    candidates.retain(|(_, _, i)| i.preference == best);
    if let [(position, _, _)] = candidates[..] {
        return Ok(Choice::Single(position));
    }
    let backends: Vec<maglev::Backend> = candidates
        .iter()
        .map(|(_, ip, info)| maglev::Backend {
            id: backend_id(any_ip(*ip)),
            weight: info.weight as u32,
        })
        .collect();
    let positions: Vec<usize> = candidates.iter().map(|(p, _, _)| *p).collect();
    build_table(&backends, &positions, size)
}

/// A member's Maglev identity: its IPv4 address as a number, or the fold of its IPv6 address.
/// It depends on the address alone, so every router builds the same table for the same set.
fn backend_id(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => fold6(anycast_common::ip6_key(v6.octets())),
    }
}

/// Builds the Maglev table of `backends` (at member `positions`) in a new map.
fn build_table(backends: &[maglev::Backend], positions: &[usize], size: u32) -> Result<Choice> {
    let table =
        maglev::build(backends, size).map_err(|e| Error::Usage(format!("Maglev table: {e}")))?;
    let mut slots = Box::new([0u32; MAX_MEMBERS]);
    let words = table_words(size);
    let mut inner: Array<MapData, u64> = Array::create(words, anycast_common::TABLE_MAP_FLAGS)
        .map_err(|e| Error::map("TABLES", e))?;
    for (w, chunk) in table.chunks(TABLE_ENTRIES_PER_WORD as usize).enumerate() {
        let mut word = [0u8; 8];
        for (byte, backend) in word.iter_mut().zip(chunk) {
            let position = positions[*backend as usize];
            slots[position] += 1;
            *byte = position as u8;
        }
        inner
            .set(w as u32, pack_positions(&word), 0)
            .map_err(|e| Error::map("TABLES", e))?;
    }
    Ok(Choice::Table(inner, slots))
}

/// Makes `set` the live member set of the address in bucket `index`: writes the spare set, then
/// flips the version in the bucket.
fn publish(
    maps: &mut Maps,
    (address, index): (IpAddr, u32),
    entry: AddrSlot,
    set: &MemberSet,
) -> Result<AddrSlot> {
    let next = entry.flipped();
    maps.set_member_set(member_set_index(next.slot, next.version), set)?;
    maps.set_addr(address, index, next)?;
    Ok(next)
}

/// Writes the host record of a member (a new host gets a free index) and returns its index and
/// the record now stored. A host record is shared by all the addresses a host serves. A MAC set
/// by an operator (`--mac`) is kept: only another static placement replaces it.
fn write_host(maps: &mut Maps, p: &Placement) -> Result<(u32, Host)> {
    let ip = any_key(p.member);
    let known = maps.host_ids.get(&ip, 0).ok();
    if let Some(index) = known {
        let current = maps
            .hosts
            .get(&index, 0)
            .map_err(|e| Error::map("HOSTS", e))?;
        if mac_rank(current.flags) > mac_rank(host_flags(p)) {
            return Ok((index, current));
        }
    }
    let index = match known {
        Some(index) => index,
        None => alloc::take(maps, Kind::Host)?,
    };
    let host = Host {
        ip,
        ifindex: p.ifindex,
        mac: p.mac,
        smac: p.smac,
        flags: host_flags(p),
    };
    maps.set_host(index, host)?;
    if known.is_none() {
        maps.set_host_id(ip, index)?;
    }
    Ok((index, host))
}

/// The `HOST_*` flags of a placement.
fn host_flags(p: &Placement) -> u32 {
    let origin = match (p.static_mac, p.signed_mac) {
        (true, _) => HOST_MAC_STATIC,
        (false, true) => HOST_MAC_SIGNED,
        (false, false) => 0,
    };
    HOST_MAC_KNOWN | origin
}

/// How much a host's MAC is worth: the operator's, then the member's signed word, then the
/// neighbour table. A placement never replaces a MAC of a higher rank.
fn mac_rank(flags: u32) -> u8 {
    match (flags & HOST_MAC_STATIC != 0, flags & HOST_MAC_SIGNED != 0) {
        (true, _) => 2,
        (false, true) => 1,
        (false, false) => 0,
    }
}

/// Follows the kernel's neighbour table: gives host `ip` on `ifindex` the MAC `mac`, unless
/// its MAC came from the operator or from signed advertisements. Returns whether it changed.
pub fn follow_neighbour(maps: &mut Maps, ip: IpAddr, ifindex: u32, mac: [u8; 6]) -> Result<bool> {
    if !crate::mac::MacAddr(mac).is_unicast() {
        return Ok(false);
    }
    let Ok(index) = maps.host_ids.get(&any_key(ip), 0) else {
        return Ok(false);
    };
    let mut host = maps
        .hosts
        .get(&index, 0)
        .map_err(|e| Error::map("HOSTS", e))?;
    if host.ifindex != ifindex || mac_rank(host.flags) > 0 || host.mac == mac {
        return Ok(false);
    }
    host.mac = mac;
    host.flags |= HOST_MAC_KNOWN;
    maps.set_host(index, host)?;
    Ok(true)
}
