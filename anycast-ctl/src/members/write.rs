//! Writing memberships into the maps.
//!
//! Invariants:
//! - A member set and its Maglev table are written into the address's spare `MEMBER_SETS` and
//!   `TABLES` entries (the set's head into its `SLOT_STATE` line with it), after the `HOSTS`
//!   entries they point to, and only then made live together by flipping the bucket's
//!   version: the dataplane never follows a member to a half-written set, head, table or host.
//! - Removal ([`del`], and through it leave, expiry and link down) first takes the member out of
//!   service with one atomic store into `SLOT_STATE` (the dataplane then sends it nothing and
//!   gives its flows to the fallback), and only then rebuilds the set and table.
//! - Table swaps never wait for an RCU grace period, before or after the flip. Why two tables
//!   per address, written in place through mmap: replacing an inner map of `TABLES` (the old
//!   way) waits for a grace period on every swap and took a syscall per word to fill; a batched
//!   update of `TABLES` still waits. Double buffering reuses the member sets' flip (one store
//!   makes set and table live together), and mmap fills a table with one copy. The price is
//!   the rule that a spare is rewritten only after a grace period since the flip that retired
//!   it (`SlotState::retired_at`): [`update`] checks it before writing ([`Maps::settle`]), and
//!   waits only when the address flipped less than `journal::REUSE_AFTER` ago. A table of a
//!   new size gets a new map, put in place while it is still the spare (once per address and
//!   size).
//! - A counter slot is zeroed before it is handed to a new (address, member) pair; an address
//!   slot likewise. A removed member's counters are added to the set's `gone` first (the set
//!   without it carries them), so an address's forward totals never go backwards. Indexes
//!   come from [`crate::alloc`], so [`add`] and [`del`] cost a constant number of map
//!   operations whatever the number of addresses.
//! - An address stays once created (with zero members it counts `no_member` passes and is no
//!   longer answered in ARP); a host is dropped from `HOST_IDS` when the last membership that
//!   refers to it goes (`HOST_REFS` counts them).
//! - A MAC belongs to the host: one static MAC for every address the host serves.
//! - [`add`], [`del`] and [`set_weight`] are transactions ([`Maps::transaction`]): on an error
//!   nothing changed.
use std::net::IpAddr;

use anycast_common::{
    AddrStats, HOST_MAC_KNOWN, HOST_MAC_SIGNED, HOST_MAC_STATIC, Host, Ip6Key, MAX_MEMBERS,
    MemberInfo, MemberRef, MemberSet, MemberStats, NO_HOST, TABLE_ENTRIES_PER_WORD, any_ip,
    any_key, fold6, member_set_index, pack_positions, position_bit, table_words,
};

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
    crate::repoint::forget_counter(maps, counter);
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
    let (host, stored) = write_host(maps, p)?;
    // A member placed again is serving: back in service if a removal was cut short.
    if let Some(position) = old.positions().iter().position(|m| m.host == host) {
        let down = maps.slot_state.down(entry.slot);
        if down & position_bit(position as u32) != 0 {
            maps.set_down(entry.slot, down & !position_bit(position as u32));
        }
    }
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
    let leaving = crate::repoint::leaving(maps, address, member);
    // Direct mode: the member's clients learn where to go right after the flip (best effort).
    let edge = maps.transaction(|maps| del_in(maps, address, member));
    if edge.is_ok() {
        crate::repoint::after_removal(maps, leaving);
    }
    edge
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
    // The one write that matters: from here the dataplane sends the member nothing.
    take_down(maps, entry.slot, pos);
    let mut new = old;
    // What it forwarded stays in the address's totals: read once it is out of service, so
    // only XDP runs already under way when it went can still count after this.
    new.gone += maps.member_stats(old.members[pos].counter)?;
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
/// [`choose`]). The spare set and its table are written once the last flip has settled (a
/// grace period since it, waited for here only if that flip was recent), then one flip makes
/// both live. Positions that become members are in service before the flip; positions that
/// become holes are cleared from `SlotState::down` after it.
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
    (new.single, new.table_size) = (0, 0);
    (new.eligible, new.standby) = (choice.eligible, choice.standby);
    let slot = entry.slot;
    maps.settle(slot)?;
    let spare = member_set_index(slot, entry.version ^ 1);
    let mut slots = None;
    match choice.pick {
        Pick::Nobody => {}
        Pick::Single(position) => new.single = position as u32 + 1,
        Pick::Table(words, counts) => {
            maps.write_table(spare, &words)?;
            slots = Some(counts);
            new.table_size = size;
        }
    }
    let (was, now) = (occupied(old), occupied(&new));
    let down = maps.slot_state.down(slot);
    if down & now & !was != 0 {
        maps.set_down(slot, down & !(now & !was));
    }
    publish(maps, (address, index), entry, &new)?;
    let down = maps.slot_state.down(slot);
    if down & !now != 0 {
        maps.set_down(slot, down & now);
    }
    // Each member's count of slots (for `show` and the metrics), after the flip: it is not on
    // the way to the new table, and only the counts that changed are written.
    if let Some(slots) = slots {
        for (position, m) in new.positions().iter().enumerate() {
            if m.host != NO_HOST && maps.word(Words::MemberSlots, m.counter)? != slots[position] {
                maps.set_word(Words::MemberSlots, m.counter, slots[position])?;
            }
        }
    }
    // The retired set and table may still have readers: the flip's time is on record, and
    // the next change of this address settles it (see `Maps::settle`). Nothing waits here.
    Ok(())
}

/// The positions of `set` that hold a member.
fn occupied(set: &MemberSet) -> u64 {
    (set.positions().iter().enumerate())
        .filter(|(_, m)| m.host != NO_HOST)
        .fold(0, |bits, (p, _)| bits | position_bit(p as u32))
}

/// Takes the member at `position` of address `slot` out of service at once: one atomic store,
/// after which the dataplane sends it nothing and gives its flows to the fallback.
fn take_down(maps: &mut Maps, slot: u32, position: usize) {
    let down = maps.slot_state.down(slot);
    maps.set_down(slot, down | position_bit(position as u32));
}

/// Where the new flows of an address go, and which positions take them.
struct Choice {
    pick: Pick,
    /// Positions taking new flows.
    eligible: u64,
    /// Positions in hot standby (a weight, a worse preference).
    standby: u64,
}

enum Pick {
    /// No member takes new flows.
    Nobody,
    /// All of them go to the member at this position: no table.
    Single(usize),
    /// A Maglev table's packed words, and each position's slots in it.
    Table(Vec<u64>, Box<[u32; MAX_MEMBERS]>),
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
    let bits = |c: &[(usize, Ip6Key, MemberInfo)]| {
        c.iter().fold(0, |b, (p, _, _)| b | position_bit(*p as u32))
    };
    let Some(best) = candidates.iter().map(|(_, _, i)| i.preference).min() else {
        return Ok(Choice {
            pick: Pick::Nobody,
            eligible: 0,
            standby: 0,
        });
    };
    let all = bits(&candidates);
    candidates.retain(|(_, _, i)| i.preference == best);
    let eligible = bits(&candidates);
    let pick = if let [(position, _, _)] = candidates[..] {
        Pick::Single(position)
    } else {
        let backends: Vec<maglev::Backend> = candidates
            .iter()
            .map(|(_, ip, info)| maglev::Backend {
                id: backend_id(any_ip(*ip)),
                weight: info.weight as u32,
            })
            .collect();
        let positions: Vec<usize> = candidates.iter().map(|(p, _, _)| *p).collect();
        build_table(&backends, &positions, size)?
    };
    Ok(Choice {
        pick,
        eligible,
        standby: all & !eligible,
    })
}

/// A member's Maglev identity: its IPv4 address as a number, or the fold of its IPv6 address.
/// It depends on the address alone, so every router builds the same table for the same set.
fn backend_id(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => fold6(anycast_common::ip6_key(v6.octets())),
    }
}

/// Builds the Maglev table of `backends` (at member `positions`), packed into words. The
/// builder and its table are kept per thread, so a rebuild allocates only the packed words;
/// the table names positions directly, and each position's count of slots is its quota.
fn build_table(backends: &[maglev::Backend], positions: &[usize], size: u32) -> Result<Pick> {
    thread_local! {
        static BUILDER: std::cell::RefCell<(maglev::Builder, Vec<u8>)> = Default::default();
    }
    let labels: Vec<u8> = positions.iter().map(|&p| p as u8).collect();
    BUILDER.with_borrow_mut(|(builder, table)| {
        builder
            .build_labelled(backends, &labels, size, table)
            .map_err(|e| Error::Usage(format!("Maglev table: {e}")))?;
        let mut slots = Box::new([0u32; MAX_MEMBERS]);
        for (&count, &at) in builder.counts().iter().zip(positions) {
            slots[at] = count;
        }
        let words = (table.chunks(TABLE_ENTRIES_PER_WORD as usize))
            .map(pack_positions)
            .collect::<Vec<u64>>();
        debug_assert_eq!(words.len(), table_words(size) as usize);
        Ok(Pick::Table(words, slots))
    })
}

/// Makes `set` the live member set of the address in bucket `index`: writes the spare set, then
/// flips the version in the bucket (which makes the spare table live with it).
fn publish(
    maps: &mut Maps,
    (address, index): (IpAddr, u32),
    entry: AddrSlot,
    set: &MemberSet,
) -> Result<AddrSlot> {
    let next = entry.flipped();
    maps.store_member_set(member_set_index(next.slot, next.version), set)?;
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
