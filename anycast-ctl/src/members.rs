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
    AddrBucket, AddrStats, HOST_MAC_KNOWN, HOST_MAC_STATIC, Host, MAX_ADDRS, MAX_HOSTS,
    MAX_MEMBER_COUNTERS, MAX_MEMBERS, MemberInfo, MemberKey, MemberRef, MemberSet, MemberStats,
    SOURCE_STATIC, ip_key, member_set_index,
};

use crate::{
    Error, Result,
    dataplane::{Bucket, Maps, zeroed},
    net::Netlink,
};

/// How long `member add` waits for the kernel to resolve a member's MAC.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

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
}

/// Finds the egress interface and MACs of `member`, which must be on-link on an attached
/// interface (`dev`, if given). Resolves the MAC through the kernel unless `mac` is given.
pub async fn locate(
    maps: &Maps,
    nl: &Netlink,
    member: Ipv4Addr,
    dev: Option<&str>,
    mac: Option<[u8; 6]>,
) -> Result<Placement> {
    let dev = match dev {
        Some(name) => Some(nl.link_by_name(name).await?),
        None => None,
    };
    let route = nl
        .route_to(member, dev.as_ref().map(|d| d.index))
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
        return Err(Error::NotOnLinkDev {
            member,
            iface: d.name.clone(),
        });
    }
    if maps.ifaces.get(&egress.index, 0).is_err() {
        return Err(Error::EgressNotAttached {
            member,
            iface: egress.name,
        });
    }
    let (mac, static_mac) = match mac {
        Some(mac) => (mac, true),
        None => {
            let mac = nl
                .resolve(egress.index, member, RESOLVE_TIMEOUT)
                .await?
                .ok_or_else(|| Error::MacUnresolved {
                    member,
                    iface: egress.name.clone(),
                    millis: RESOLVE_TIMEOUT.as_millis() as u64,
                })?;
            (mac, false)
        }
    };
    Ok(Placement {
        member,
        ifindex: egress.index,
        mac,
        smac: egress.mac,
        static_mac,
    })
}

/// Whether `add` created a member or refreshed an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    New,
    Updated,
}

/// Adds `p.member` to the anycast `address` (creating the address if needed), or refreshes
/// where it is sent and its `info` if it already is a member.
pub fn add(maps: &mut Maps, address: Ipv4Addr, p: &Placement, info: MemberInfo) -> Result<Added> {
    let added = add_member(maps, address, p)?;
    maps.member_info
        .insert(member_key(address, p.member), info, 0)
        .map_err(|e| Error::map("MEMBER_INFO", e))?;
    Ok(added)
}

/// The `MEMBER_INFO` key of a membership.
pub fn member_key(address: Ipv4Addr, member: Ipv4Addr) -> MemberKey {
    MemberKey {
        anycast: ip_key(address.octets()),
        member: ip_key(member.octets()),
    }
}

/// What an operator's `member add` records: static, never expires.
pub fn static_info(now_ms: u64) -> MemberInfo {
    MemberInfo {
        source: SOURCE_STATIC,
        updated_ms: now_ms,
        ..MemberInfo::default()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn add_member(maps: &mut Maps, address: Ipv4Addr, p: &Placement) -> Result<Added> {
    let key = ip_key(address.octets());
    let (bucket, mut set) = match maps.bucket(key)? {
        Bucket::Found { index, entry } => ((index, Some(entry)), maps.member_set(&entry)?),
        Bucket::Free { index } => ((index, None), MemberSet::default()),
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
        && set.members().iter().any(|m| m.host == host)
    {
        write_host(maps, p)?;
        return Ok(Added::Updated);
    }
    let n = set.members().len();
    if n >= MAX_MEMBERS {
        return Err(Error::TooManyMembers {
            address,
            max: MAX_MEMBERS,
        });
    }
    let counter = free_index(used_counters(maps)?, MAX_MEMBER_COUNTERS, "member counter")?;
    let slot = match bucket.1 {
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
    set.members[n] = MemberRef { host, counter };
    set.n_members = n as u32 + 1;
    match bucket {
        (index, Some(entry)) => publish(maps, index, entry, &set)?,
        (index, None) => {
            maps.addr_stats
                .set(slot, zeroed::<AddrStats>()?, 0)
                .map_err(|e| Error::map("ADDR_STATS", e))?;
            let entry = AddrBucket {
                ip: key,
                slot,
                version: 1,
                _pad: 0,
            };
            // Version 1 now, flipped to 0 by publish: the same path as every later update.
            publish(maps, index, entry, &set)?;
            maps.addr_keys
                .insert(key, slot, 0)
                .map_err(|e| Error::map("ADDR_KEYS", e))?;
        }
    }
    Ok(Added::New)
}

/// Removes `member` from `address`. The address stays, possibly with no members.
pub fn del(maps: &mut Maps, address: Ipv4Addr, member: Ipv4Addr) -> Result<()> {
    let Bucket::Found { index, entry } = maps.bucket(ip_key(address.octets()))? else {
        return Err(Error::NoSuchAddress { address });
    };
    let mut set = maps.member_set(&entry)?;
    let host = maps
        .host_ids
        .get(&ip_key(member.octets()), 0)
        .map_err(|_| Error::NotMember { address, member })?;
    let n = set.members().len();
    let pos = set
        .members()
        .iter()
        .position(|m| m.host == host)
        .ok_or(Error::NotMember { address, member })?;
    set.members.copy_within(pos + 1..n, pos);
    set.members[n - 1] = MemberRef::default();
    set.n_members = n as u32 - 1;
    publish(maps, index, entry, &set)?;
    let _ = maps.member_info.remove(&member_key(address, member));

    let mut still_used = false;
    for (_, e) in maps.addresses()? {
        still_used |= maps
            .member_set(&e)?
            .members()
            .iter()
            .any(|m| m.host == host);
    }
    if !still_used {
        maps.host_ids
            .remove(&ip_key(member.octets()))
            .map_err(|e| Error::map("HOST_IDS", e))?;
    }
    Ok(())
}

/// Makes `set` the live member set of the address in bucket `index`: writes the spare set, then
/// flips the version in the bucket.
fn publish(maps: &mut Maps, index: u32, entry: AddrBucket, set: &MemberSet) -> Result<()> {
    let next = entry.version ^ 1;
    maps.member_sets
        .set(member_set_index(entry.slot, next), set, 0)
        .map_err(|e| Error::map("MEMBER_SETS", e))?;
    maps.addrs
        .set(
            index,
            AddrBucket {
                version: next,
                ..entry
            },
            0,
        )
        .map_err(|e| Error::map("ADDRS", e))
}

/// Writes the host record of a member (reusing its index if it has one) and returns the index.
fn write_host(maps: &mut Maps, p: &Placement) -> Result<u32> {
    let ip = ip_key(p.member.octets());
    let index = match maps.host_ids.get(&ip, 0) {
        Ok(index) => index,
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
        flags: HOST_MAC_KNOWN | if p.static_mac { HOST_MAC_STATIC } else { 0 },
    };
    maps.hosts
        .set(index, host, 0)
        .map_err(|e| Error::map("HOSTS", e))?;
    maps.host_ids
        .insert(ip, index, 0)
        .map_err(|e| Error::map("HOST_IDS", e))?;
    Ok(index)
}

fn used_counters(maps: &Maps) -> Result<Vec<u32>> {
    let mut used = Vec::new();
    for (_, entry) in maps.addresses()? {
        used.extend(maps.member_set(&entry)?.members().iter().map(|m| m.counter));
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
