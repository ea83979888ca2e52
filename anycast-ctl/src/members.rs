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
//!   slot likewise.
//! - An address stays once created (with zero members it counts `no_member` passes and is no
//!   longer answered in ARP); hosts no member refers to are dropped from `HOST_IDS`.
use std::{collections::HashSet, net::Ipv4Addr, time::Duration};

use anycast_common::{
    AddrBucket, AddrStats, HOST_MAC_KNOWN, HOST_MAC_SIGNED, HOST_MAC_STATIC, Host, MAX_ADDRS,
    MAX_HOSTS, MAX_MEMBER_COUNTERS, MAX_MEMBERS, MemberInfo, MemberKey, MemberRef, MemberSet,
    MemberStats, NO_HOST, SOURCE_STATIC, TABLE_ENTRIES_PER_WORD, ip_key, member_set_index,
};

use crate::{
    Error, Result,
    dataplane::{Bucket, Maps, zeroed},
    maglev,
    net::Netlink,
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
    crate::policy::check_member(maps, nl, member).await?;
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
    Ok(Placement {
        member,
        ifindex: egress.index,
        mac,
        smac: egress.mac,
        static_mac: matches!(mac_from, MacFrom::Operator(_)),
        signed_mac: matches!(mac_from, MacFrom::Signed(_)),
    })
}

/// Whether `add` created a member or refreshed an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    New,
    Updated,
}

/// Adds `p.member` to the anycast `address` (creating the address if needed), or refreshes
/// where it is sent and its `info` (source, preference, weight) if it already is a member.
pub fn add(maps: &mut Maps, address: Ipv4Addr, p: &Placement, info: MemberInfo) -> Result<Added> {
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

    // Check everything that can fail before writing anything.
    let known_host = maps.host_ids.get(&ip_key(p.member.octets()), 0).ok();
    if let Some(host) = known_host
        && old.members().any(|m| m.host == host)
    {
        write_host(maps, p)?;
        let changed = maps
            .member_info
            .get(&member_key(address, p.member), 0)
            .map_or(true, |i| {
                (i.preference, i.weight) != (info.preference, info.weight)
            });
        write_info(maps, address, p.member, info)?;
        if changed {
            let entry = entry.expect("a found address has a bucket entry");
            update(maps, address, index, entry, &old, old)?;
        }
        return Ok(Added::Updated);
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
    let counter = free_index(used_counters(maps)?, MAX_MEMBER_COUNTERS, "member counter")?;
    let slot = match entry {
        Some(entry) => entry.slot,
        None => free_index(
            maps.addr_keys.iter().filter_map(|r| r.ok()).map(|(_, s)| s),
            MAX_ADDRS,
            "address",
        )?,
    };

    let host = write_host(maps, p)?;
    maps.member_stats
        .set(counter, zeroed::<MemberStats>()?, 0)
        .map_err(|e| Error::map("MEMBER_STATS", e))?;
    write_info(maps, address, p.member, info)?;
    let mut new = old;
    new.members[position] = MemberRef { host, counter };
    new.n_members = new.n_members.max(position as u32 + 1);
    match entry {
        Some(entry) => update(maps, address, index, entry, &old, new)?,
        None => {
            maps.addr_stats
                .set(slot, zeroed::<AddrStats>()?, 0)
                .map_err(|e| Error::map("ADDR_STATS", e))?;
            // Version 1 with an empty set, flipped to 0 by the first publish: the same path
            // as every later update.
            let entry = AddrBucket {
                ip: key,
                slot,
                version: 1,
                _pad: 0,
            };
            // The directory entry first: a failed update then leaks a slot rather than letting
            // the next new address take the same one.
            maps.addr_keys
                .insert(key, slot, 0)
                .map_err(|e| Error::map("ADDR_KEYS", e))?;
            update(maps, address, index, entry, &MemberSet::default(), new)?;
        }
    }
    Ok(Added::New)
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
/// its position (and its flows). The address stays, possibly with no members.
pub fn del(maps: &mut Maps, address: Ipv4Addr, member: Ipv4Addr) -> Result<()> {
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
    let _ = maps.member_info.remove(&member_key(address, member));

    let mut still_used = false;
    for (_, e) in maps.addresses()? {
        still_used |= maps.member_set(&e)?.members().any(|m| m.host == host);
    }
    if !still_used {
        maps.host_ids
            .remove(&ip_key(member.octets()))
            .map_err(|e| Error::map("HOST_IDS", e))?;
    }
    Ok(())
}

/// Changes the preference and weight of a member (weight 0 drains it: no new flows, existing
/// flows stay).
pub fn set_weight(
    maps: &mut Maps,
    address: Ipv4Addr,
    member: Ipv4Addr,
    preference: u16,
    weight: u16,
) -> Result<()> {
    let Bucket::Found { index, entry } = maps.bucket(ip_key(address.octets()))? else {
        return Err(Error::NoSuchAddress { address });
    };
    let key = member_key(address, member);
    let mut info = maps
        .member_info
        .get(&key, 0)
        .map_err(|_| Error::NotMember { address, member })?;
    let before = info;
    info.preference = preference;
    info.weight = weight;
    write_info(maps, address, member, info)?;
    let set = maps.member_set(&entry)?;
    let result = update(maps, address, index, entry, &set, set);
    if result.is_err() {
        let _ = write_info(maps, address, member, before);
    }
    result
}

fn write_info(
    maps: &mut Maps,
    address: Ipv4Addr,
    member: Ipv4Addr,
    info: MemberInfo,
) -> Result<()> {
    maps.member_info
        .insert(member_key(address, member), info, 0)
        .map_err(|e| Error::map("MEMBER_INFO", e))
}

/// Moves the address in bucket `index` from member set `old` to `new` (their positions differ by
/// at most one member), with a Maglev table rebuilt from `new` and `MEMBER_INFO`, so that the
/// dataplane never follows a table to a missing position:
/// 1. a set with an added position is published first, with the old table still in use;
/// 2. the new table is swapped in;
/// 3. the final set (and a removed member's hole) is published.
fn update(
    maps: &mut Maps,
    address: Ipv4Addr,
    index: u32,
    entry: AddrBucket,
    old: &MemberSet,
    mut new: MemberSet,
) -> Result<()> {
    // Everything that can fail for lack of memory happens before the first write.
    let table = build_table(maps, address, &new, old.table_size)?;
    let size = table.as_ref().map_or(0, |(size, _)| *size);
    let mut entry = entry;
    let mut live = *old;
    if new.n_members > old.n_members || new.members().count() > old.members().count() {
        live = new;
        live.table_size = old.table_size;
        entry = publish(maps, index, entry, &live)?;
    }
    if let Some((size, inner)) = table {
        // A smaller table is announced before it is swapped in, a larger one after, so the
        // dataplane never indexes past the end of the table it reads.
        if size < live.table_size {
            live.table_size = size;
            entry = publish(maps, index, entry, &live)?;
        }
        maps.tables
            .set(entry.slot, &inner, 0)
            .map_err(|e| Error::map("TABLES", e))?;
    }
    new.table_size = size;
    publish(maps, index, entry, &new)?;
    Ok(())
}

/// Builds the Maglev table of a member set in a new map, not yet in `TABLES`; `None` if no
/// member takes new flows. Only members of the best (lowest) preference among those with a
/// weight take new flows; the others are hot standby.
fn build_table(
    maps: &Maps,
    address: Ipv4Addr,
    set: &MemberSet,
    current: u32,
) -> Result<Option<(u32, aya::maps::Array<aya::maps::MapData, u64>)>> {
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
        return Ok(None);
    };
    candidates.retain(|(_, _, i)| i.preference == best);
    let backends: Vec<maglev::Backend> = candidates
        .iter()
        .map(|(_, ip, info)| maglev::Backend {
            id: u32::from_be_bytes(anycast_common::ip_octets(*ip)),
            weight: info.weight as u32,
        })
        .collect();
    let size = maps.table_size.unwrap_or(if current > 0 {
        current
    } else {
        anycast_common::DEFAULT_TABLE_SIZE
    });
    let table =
        maglev::build(&backends, size).map_err(|e| Error::Usage(format!("Maglev table: {e}")))?;
    let words = size.div_ceil(TABLE_ENTRIES_PER_WORD);
    let mut inner: aya::maps::Array<aya::maps::MapData, u64> =
        aya::maps::Array::create(words, anycast_common::TABLE_MAP_FLAGS)
            .map_err(|e| Error::map("TABLES", e))?;
    for (w, chunk) in table.chunks(TABLE_ENTRIES_PER_WORD as usize).enumerate() {
        let mut word = [0u8; 8];
        for (byte, backend) in word.iter_mut().zip(chunk) {
            *byte = candidates[*backend as usize].0 as u8;
        }
        inner
            .set(w as u32, u64::from_le_bytes(word), 0)
            .map_err(|e| Error::map("TABLES", e))?;
    }
    Ok(Some((size, inner)))
}

/// Makes `set` the live member set of the address in bucket `index`: writes the spare set, then
/// flips the version in the bucket.
fn publish(maps: &mut Maps, index: u32, entry: AddrBucket, set: &MemberSet) -> Result<AddrBucket> {
    let next = AddrBucket {
        version: entry.version ^ 1,
        ..entry
    };
    maps.member_sets
        .set(member_set_index(next.slot, next.version), set, 0)
        .map_err(|e| Error::map("MEMBER_SETS", e))?;
    maps.addrs
        .set(index, next, 0)
        .map_err(|e| Error::map("ADDRS", e))?;
    Ok(next)
}

/// Writes the host record of a member (reusing its index if it has one) and returns the index.
/// A host record is shared by all the addresses a host serves. A MAC set by an operator
/// (`--mac`) is kept: only another static placement replaces it.
fn write_host(maps: &mut Maps, p: &Placement) -> Result<u32> {
    let ip = ip_key(p.member.octets());
    let index = match maps.host_ids.get(&ip, 0) {
        Ok(index) => {
            let current = maps
                .hosts
                .get(&index, 0)
                .map_err(|e| Error::map("HOSTS", e))?;
            if mac_rank(current.flags) > mac_rank(host_flags(p)) {
                return Ok(index);
            }
            index
        }
        Err(_) => free_index(
            maps.host_ids.iter().filter_map(|r| r.ok()).map(|(_, i)| i),
            MAX_HOSTS,
            "member host",
        )?,
    };
    let host = Host {
        ip,
        ifindex: p.ifindex,
        mac: p.mac,
        smac: p.smac,
        flags: host_flags(p),
    };
    maps.hosts
        .set(index, host, 0)
        .map_err(|e| Error::map("HOSTS", e))?;
    maps.host_ids
        .insert(ip, index, 0)
        .map_err(|e| Error::map("HOST_IDS", e))?;
    Ok(index)
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
    maps.hosts
        .set(index, host, 0)
        .map_err(|e| Error::map("HOSTS", e))?;
    Ok(true)
}

fn used_counters(maps: &Maps) -> Result<Vec<u32>> {
    let mut used = Vec::new();
    for (_, entry) in maps.addresses()? {
        used.extend(maps.member_set(&entry)?.members().map(|m| m.counter));
    }
    Ok(used)
}

/// The smallest index below `max` not in `used`.
fn free_index(used: impl IntoIterator<Item = u32>, max: u32, what: &'static str) -> Result<u32> {
    let used: HashSet<u32> = used.into_iter().collect();
    (0..max)
        .find(|i| !used.contains(i))
        .ok_or(Error::Full { what, max })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_index_takes_the_smallest_gap() {
        assert_eq!(free_index([].into_iter(), 4, "x").unwrap(), 0);
        assert_eq!(free_index([0, 1, 3].into_iter(), 4, "x").unwrap(), 2);
        assert!(matches!(
            free_index([0, 1, 2, 3].into_iter(), 4, "x"),
            Err(Error::Full { max: 4, .. })
        ));
    }
}
