//! Where a membership becomes a map entry.
//!
//! [`locate`] turns a member IP into where to send to it (egress interface, MACs) using the
//! router's route and neighbour tables. [`add`] and [`del`] then change the maps; the CLI and the
//! agent both go through them, under the pin-directory lock.
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
use std::{net::Ipv4Addr, time::Duration};

use anycast_common::{
    AddrBucket, AddrStats, HOST_MAC_KNOWN, HOST_MAC_SIGNED, HOST_MAC_STATIC, Host, MAX_MEMBERS,
    MemberInfo, MemberKey, MemberRef, MemberSet, MemberStats, NO_HOST, SOURCE_STATIC,
    TABLE_ENTRIES_PER_WORD, ip_key, member_set_index, pack_positions, table_words,
};
use aya::maps::{Array, MapData};

use crate::{
    Error, Result,
    alloc::{self, Kind},
    dataplane::{Bucket, Maps, zeroed},
    journal::Words,
    mac::MacAddr,
    maglev,
    net::{Link, Netlink},
};

/// How long `member add` waits for the kernel to resolve a member's MAC.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the agent waits: the member has just sent an advertisement, so it is up; a miss
/// is retried on its next advertisement rather than stalling the agent.
pub const AGENT_RESOLVE_TIMEOUT: Duration = Duration::from_millis(300);

/// Where to send to one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub member: Ipv4Addr,
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// MAC of the egress interface.
    pub smac: [u8; 6],
    /// The MAC was given by the operator and is not relearned.
    pub static_mac: bool,
    /// The MAC came in the member's signed advertisement; only another one replaces it.
    pub signed_mac: bool,
}

/// Where a member's MAC comes from. Never from a frame the dataplane saw: only from sources
/// as trustworthy as the kernel's neighbour table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacFrom {
    /// The kernel's neighbour table, resolved if needed.
    Neighbour,
    /// The operator (`--mac`).
    Operator([u8; 6]),
    /// The member's signed advertisement.
    Signed([u8; 6]),
}

/// Finds the egress interface and MACs of `member`, which must be on-link on an attached
/// interface (`dev`, if given). Resolves the MAC through the kernel for [`MacFrom::Neighbour`].
pub async fn locate(
    maps: &Maps,
    nl: &Netlink,
    member: Ipv4Addr,
    dev: Option<&str>,
    mac_from: MacFrom,
    resolve_timeout: Duration,
) -> Result<Placement> {
    crate::policy::Policy::new(nl)
        .await?
        .check_member(maps, member)?;
    let egress = on_link_egress(maps, nl, member, dev).await?;
    let mac = member_mac(nl, &egress, member, mac_from, resolve_timeout).await?;
    Ok(Placement {
        member,
        ifindex: egress.index,
        mac,
        smac: egress.mac,
        static_mac: matches!(mac_from, MacFrom::Operator(_)),
        signed_mac: matches!(mac_from, MacFrom::Signed(_)),
    })
}

/// The attached interface `member` is on-link on: the route's, which must be `dev` if given.
async fn on_link_egress(
    maps: &Maps,
    nl: &Netlink,
    member: Ipv4Addr,
    dev: Option<&str>,
) -> Result<Link> {
    let dev = match dev {
        Some(name) => Some(nl.link_by_name(name).await?),
        None => None,
    };
    let route = nl
        .route_to(member, None)
        .await?
        .filter(|r| r.unicast)
        .ok_or(Error::NoRoute { member })?;
    if let Some(gateway) = route.gateway {
        return Err(match dev {
            Some(d) => Error::NotOnLinkDev {
                member,
                iface: d.name,
            },
            None => Error::NotOnLink { member, gateway },
        });
    }
    let egress = nl.link_by_index(route.oif).await?;
    if let Some(d) = &dev
        && d.index != egress.index
    {
        return Err(Error::RouteUsesOtherDev {
            member,
            iface: d.name.clone(),
            route_iface: egress.name,
        });
    }
    if maps.iface(egress.index)?.is_none() {
        return Err(Error::EgressNotAttached {
            member,
            iface: egress.name,
        });
    }
    Ok(egress)
}

/// The member's MAC, given or resolved on `egress`; it must be a unicast MAC.
async fn member_mac(
    nl: &Netlink,
    egress: &Link,
    member: Ipv4Addr,
    mac_from: MacFrom,
    resolve_timeout: Duration,
) -> Result<[u8; 6]> {
    let mac = match mac_from {
        MacFrom::Operator(mac) | MacFrom::Signed(mac) => mac,
        MacFrom::Neighbour => nl
            .resolve(egress.index, member, resolve_timeout)
            .await?
            .ok_or_else(|| Error::MacUnresolved {
                member,
                iface: egress.name.clone(),
                millis: resolve_timeout.as_millis() as u64,
            })?,
    };
    if !crate::mac::MacAddr(mac).is_unicast() {
        return Err(Error::BadMember {
            member,
            why: format!("its MAC {} is not a unicast MAC", crate::mac::MacAddr(mac)),
        });
    }
    Ok(mac)
}

/// Whether `add` created a member or refreshed an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    New,
    Updated,
}

/// What `add` did, and the host record now stored for the member (its MAC may be an earlier
/// static one rather than the placement's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddOutcome {
    pub added: Added,
    pub host: Host,
}

/// Adds `p.member` to the anycast `address` (creating the address if needed), or refreshes
/// where it is sent and its `info` (source, preference, weight) if it already is a member; a
/// `maps.table_size` other than the address's is applied either way. One transaction: on an
/// error nothing changed. A constant number of map operations, whatever the number of addresses.
pub fn add(
    maps: &mut Maps,
    address: Ipv4Addr,
    p: &Placement,
    info: MemberInfo,
) -> Result<AddOutcome> {
    maps.transaction(|maps| add_in(maps, address, p, info))
}

fn add_in(
    maps: &mut Maps,
    address: Ipv4Addr,
    p: &Placement,
    info: MemberInfo,
) -> Result<AddOutcome> {
    let key = ip_key(address.octets());
    let (index, entry, old) = match maps.bucket(key)? {
        Bucket::Found { index, entry } => (index, Some(entry), maps.member_set(&entry)?),
        Bucket::Free { index } => (index, None, MemberSet::default()),
        Bucket::Full => {
            return Err(Error::Full {
                what: "address index",
                max: anycast_common::ADDR_BUCKETS,
            });
        }
    };
    let known_host = maps.host_ids.get(&ip_key(p.member.octets()), 0).ok();
    check_mac(maps, address, p, known_host, &old)?;
    if let Some(host) = known_host
        && old.members().any(|m| m.host == host)
    {
        let entry = entry.expect("a found address has a bucket entry");
        return refresh(maps, address, (index, entry), &old, p, info);
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
        None => create_address(maps, key)?,
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
    update(maps, address, index, entry, &old, new)?;
    Ok(AddOutcome {
        added: Added::New,
        host: stored,
    })
}

/// `add` of a member already in the set: its host, its info, and the table if its preference,
/// weight or the table size changed.
fn refresh(
    maps: &mut Maps,
    address: Ipv4Addr,
    (index, entry): (u32, AddrBucket),
    old: &MemberSet,
    p: &Placement,
    info: MemberInfo,
) -> Result<AddOutcome> {
    let (_, stored) = write_host(maps, p)?;
    let key = member_key(address, p.member);
    let changed = maps.member_info.get(&key, 0).map_or(true, |i| {
        (i.preference, i.weight) != (info.preference, info.weight)
    });
    let resized = maps.table_size.is_some_and(|s| s != old.maglev_size);
    maps.set_info(key, info)?;
    if changed || resized {
        update(maps, address, index, entry, old, *old)?;
    }
    Ok(AddOutcome {
        added: Added::Updated,
        host: stored,
    })
}

/// A new address: its slot (zeroed counters) and directory entry, and the bucket to publish it
/// with (version 1 with an empty set, flipped to 0 by the first publish: the same path as every
/// later update; the bucket itself is written only then).
fn create_address(maps: &mut Maps, key: u32) -> Result<AddrBucket> {
    let slot = alloc::take(maps, Kind::AddrSlot)?;
    maps.addr_stats
        .set(slot, zeroed::<AddrStats>()?, 0)
        .map_err(|e| Error::map("ADDR_STATS", e))?;
    maps.insert_addr_key(key, slot)?;
    Ok(AddrBucket {
        ip: key,
        slot,
        version: 1,
        _pad: 0,
    })
}

/// A MAC belongs to the host, and so to every address it serves: a `--mac` other than the
/// host's static MAC is refused while the host serves other addresses (which are named; finding
/// them walks every address, on this error path only).
fn check_mac(
    maps: &Maps,
    address: Ipv4Addr,
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

/// The `MEMBER_INFO` key of a membership.
pub fn member_key(address: Ipv4Addr, member: Ipv4Addr) -> MemberKey {
    MemberKey {
        anycast: ip_key(address.octets()),
        member: ip_key(member.octets()),
    }
}

/// Default preference of a member (lower is better).
pub const DEFAULT_PREFERENCE: u16 = 100;
/// Default weight of a member (its share of new flows among equals).
pub const DEFAULT_WEIGHT: u16 = 100;

/// What an operator's `member add` records: static, never expires.
pub fn static_info(now_ms: u64, preference: u16, weight: u16) -> MemberInfo {
    MemberInfo {
        source: SOURCE_STATIC,
        updated_ms: now_ms,
        preference,
        weight,
        ..MemberInfo::default()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Removes `member` from `address`: its position becomes a hole, so every other member keeps
/// its position (and its flows). The address stays, possibly with no members. Its counter slot
/// is freed, and so is its host once no membership refers to it (`HOST_REFS`). One transaction;
/// a constant number of map operations, whatever the number of addresses.
pub fn del(maps: &mut Maps, address: Ipv4Addr, member: Ipv4Addr) -> Result<()> {
    maps.transaction(|maps| del_in(maps, address, member))
}

fn del_in(maps: &mut Maps, address: Ipv4Addr, member: Ipv4Addr) -> Result<()> {
    let Bucket::Found { index, entry } = maps.bucket(ip_key(address.octets()))? else {
        return Err(Error::NoSuchAddress { address });
    };
    let old = maps.member_set(&entry)?;
    let host = maps
        .host_ids
        .get(&ip_key(member.octets()), 0)
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
    update(maps, address, index, entry, &old, new)?;
    let key = member_key(address, member);
    if maps.member_info.get(&key, 0).is_ok() {
        maps.remove_info(key)?;
    }
    alloc::give_back(maps, Kind::Counter, old.members[pos].counter)?;
    let refs = maps.word(Words::HostRefs, host)?.saturating_sub(1);
    maps.set_word(Words::HostRefs, host, refs)?;
    if refs == 0 {
        maps.remove_host_id(ip_key(member.octets()))?;
        alloc::give_back(maps, Kind::Host, host)?;
    }
    Ok(())
}

/// Changes the preference and weight of a member (weight 0 drains it: no new flows, existing
/// flows stay). One transaction.
pub fn set_weight(
    maps: &mut Maps,
    address: Ipv4Addr,
    member: Ipv4Addr,
    preference: u16,
    weight: u16,
) -> Result<()> {
    maps.transaction(|maps| {
        let Bucket::Found { index, entry } = maps.bucket(ip_key(address.octets()))? else {
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
        update(maps, address, index, entry, &set, set)
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
    address: Ipv4Addr,
    index: u32,
    entry: AddrBucket,
    old: &MemberSet,
    mut new: MemberSet,
) -> Result<()> {
    let size = maps.table_size.unwrap_or(match old.maglev_size {
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
        entry = publish(maps, index, entry, &live)?;
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
                entry = publish(maps, index, entry, &live)?;
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
    publish(maps, index, entry, &new)?;
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
fn choose(maps: &Maps, address: Ipv4Addr, set: &MemberSet, size: u32) -> Result<Choice> {
    let mut candidates = Vec::new();
    for (position, m) in set.positions().iter().enumerate() {
        if m.host == NO_HOST {
            continue;
        }
        let host = maps
            .hosts
            .get(&m.host, 0)
            .map_err(|e| Error::map("HOSTS", e))?;
        let member = Ipv4Addr::from(anycast_common::ip_octets(host.ip));
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
            id: u32::from_be_bytes(anycast_common::ip_octets(*ip)),
            weight: info.weight as u32,
        })
        .collect();
    let positions: Vec<usize> = candidates.iter().map(|(p, _, _)| *p).collect();
    build_table(&backends, &positions, size)
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
fn publish(maps: &mut Maps, index: u32, entry: AddrBucket, set: &MemberSet) -> Result<AddrBucket> {
    let next = AddrBucket {
        version: entry.version ^ 1,
        ..entry
    };
    maps.set_member_set(member_set_index(next.slot, next.version), set)?;
    maps.set_addr(index, next)?;
    Ok(next)
}

/// Writes the host record of a member (a new host gets a free index) and returns its index and
/// the record now stored. A host record is shared by all the addresses a host serves. A MAC set
/// by an operator (`--mac`) is kept: only another static placement replaces it.
fn write_host(maps: &mut Maps, p: &Placement) -> Result<(u32, Host)> {
    let ip = ip_key(p.member.octets());
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
pub fn follow_neighbour(maps: &mut Maps, ip: Ipv4Addr, ifindex: u32, mac: [u8; 6]) -> Result<bool> {
    if !crate::mac::MacAddr(mac).is_unicast() {
        return Ok(false);
    }
    let Ok(index) = maps.host_ids.get(&ip_key(ip.octets()), 0) else {
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
