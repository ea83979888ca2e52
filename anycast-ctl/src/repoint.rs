//! Direct mode's repoint: when a member goes (leave, expiry, link down, delete: every removal
//! goes through `members::del`), its clients are told at once where to go instead, rather than
//! sending into the void until their ARP caches time out (RFC 1546's minute).
//!
//! - The clients are the ones the dataplane recorded in `REQUESTERS` as given that member;
//!   no other client is sent anything, so clients of surviving members never move.
//! - Each gets the member the dataplane would give its next ARP request
//!   ([`anycast_common::direct`]): [`place`] reads the live set and Maglev table after the
//!   removal's flip, as `select::table_pick` does. When that member is out of service or not
//!   on the client's link, the client is pointed at the router (proxy mode for it, as the
//!   dataplane would answer) and forgotten.
//! - The news is an ARP reply unicast to the client from the interface it asked on, and (unless
//!   [`set_gratuitous`] turned it off) a gratuitous-form reply (target = the anycast address),
//!   which Linux applies even within `locktime` (1 s) of its last update of the entry; both are
//!   sent [`REPEATS`] times, [`REPEAT_INTERVAL`] apart, against loss.
//! - Cost: one walk of `REQUESTERS` per removal (empty unless direct mode answered someone),
//!   and, with clients to tell, 20 ms of the writer's time for the repeats.
//! - Only a client inside an IPv4 subnet of the interface it asked on (not the subnet's network
//!   or broadcast address, not the router's own address) is told anything: ARP requests are
//!   unauthenticated, so a record naming any other address is a forgery (or a host that cannot
//!   use the answer), and telling it would let one forged request buy [`REPEATS`] x 2 frames
//!   from the router at every removal, with the writer blocked meanwhile. Such records are
//!   dropped. (An interface with no IPv4 address limits nothing.)
//! - Repointing is best effort after the removal is done: a failure is logged, never undoes or
//!   fails the removal. `REPOINTS` counts clients repointed, per address and per member they
//!   were repointed to.
use std::{
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anycast_common::{
    MemberRef, MemberSet, NO_HOST, Requester, RequesterKey,
    direct::{StatOf, arp_reply, requester_hash, stat_key},
    ip_key, ip_octets, names, pick_index, position_bit, table_position, table_word_of,
};
use aya::maps::{Array, Map, MapData};

use crate::{
    Error, Result,
    dataplane::{AddrSlot, Bucket, Maps},
};

/// Rounds of frames sent to each repointed client.
pub const REPEATS: u32 = 3;
/// Time between two rounds.
pub const REPEAT_INTERVAL: Duration = Duration::from_millis(10);

static GRATUITOUS: AtomicBool = AtomicBool::new(true);

/// Whether repoints also send the gratuitous form of the reply (default on; the agent's
/// `repoint_gratuitous`).
pub fn set_gratuitous(on: bool) {
    GRATUITOUS.store(on, Ordering::Relaxed);
}

/// A member about to be removed, as its repoint needs it: found before the removal (which
/// frees its indexes), used after.
#[derive(Clone, Copy, Debug)]
pub struct Leaving {
    anycast: Ipv4Addr,
    slot: u32,
    member: MemberRef,
}

/// The member `member` of `address` as [`after_removal`] needs it, if it is an IPv4 member in
/// place (direct mode is ARP's: IPv6 addresses have no clients to repoint).
pub fn leaving(maps: &Maps, address: IpAddr, member: IpAddr) -> Option<Leaving> {
    let IpAddr::V4(anycast) = address else {
        return None;
    };
    let Ok(Bucket::Found { entry, .. }) = maps.bucket(address) else {
        return None;
    };
    let host = maps
        .host_ids
        .get(&anycast_common::any_key(member), 0)
        .ok()?;
    let set = maps.member_set(&entry).ok()?;
    let member = *set.members().find(|m| m.host == host)?;
    Some(Leaving {
        anycast,
        slot: entry.slot,
        member,
    })
}

/// One client to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repoint {
    pub ifindex: u32,
    /// The router's MAC on `ifindex` (the Ethernet source).
    pub router_mac: [u8; 6],
    pub client_mac: [u8; 6],
    pub client_ip: Ipv4Addr,
    /// Where the client is to send: a member's MAC, or the router's.
    pub to_mac: [u8; 6],
    pub anycast: Ipv4Addr,
}

/// After `gone` was removed: repoints its clients (see the module doc). Never fails.
pub fn after_removal(maps: &mut Maps, gone: Option<Leaving>) {
    let Some(gone) = gone else {
        return;
    };
    forget_counter(maps, gone.member.counter);
    match plan(maps, &gone) {
        Ok(repoints) if repoints.is_empty() => {}
        Ok(repoints) => {
            if let Err(e) = send(&repoints) {
                tracing::warn!(error = %e, anycast = %gone.anycast, "sending repoints");
            }
            tracing::info!(anycast = %gone.anycast, clients = repoints.len(), "clients repointed");
        }
        Err(e) => tracing::warn!(error = %e, anycast = %gone.anycast, "planning repoints"),
    }
}

/// Drops the direct-mode counters of a member counter index (freed, or handed to a new member).
pub fn forget_counter(maps: &mut Maps, counter: u32) {
    let key = stat_key(StatOf::Member(counter));
    let _ = maps.direct_replies.remove(&key);
    let _ = maps.repoints.remove(&key);
}

/// The clients of `gone` and where each goes now; records the new choices in `REQUESTERS` and
/// counts them in `REPOINTS`.
pub fn plan(maps: &mut Maps, gone: &Leaving) -> Result<Vec<Repoint>> {
    let clients: Vec<(RequesterKey, Requester)> = maps
        .requesters
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(k, v)| k.slot == gone.slot && v.member == gone.member)
        .collect();
    if clients.is_empty() {
        return Ok(Vec::new());
    }
    let Bucket::Found { entry, .. } = maps.bucket(gone.anycast.into())? else {
        return Ok(Vec::new());
    };
    let set = maps.member_set(&entry)?;
    let down = maps.slot_state.down(entry.slot);
    let anycast = ip_key(gone.anycast.octets());
    let nets = ipv4_nets();
    let mut out = Vec::new();
    for (key, client) in clients {
        let Some(iface) = maps.iface(client.ifindex)? else {
            let _ = maps.requesters.remove(&key);
            continue;
        };
        let ip = Ipv4Addr::from(ip_octets(key.ip));
        let theirs: Vec<(Ipv4Addr, u8)> = (nets.iter())
            .filter(|(ifindex, ..)| *ifindex == client.ifindex)
            .map(|&(_, a, p)| (a, p))
            .collect();
        if !on_link(ip, &theirs) {
            let _ = maps.requesters.remove(&key);
            continue;
        }
        let hash = requester_hash(key.ip, anycast);
        let placed = place(maps, (&entry, &set, down), hash)?;
        let direct = match placed {
            Some((member, position)) => {
                let host: anycast_common::Host = (maps.hosts)
                    .get(&member.host, 0)
                    .map_err(|e| Error::map(names::HOSTS, e))?;
                (host.mac_known() && host.ifindex == client.ifindex)
                    .then_some((member, position, host.mac))
            }
            None => None,
        };
        let to_mac = match direct {
            Some((member, position, mac)) => {
                let moved = Requester {
                    member,
                    position,
                    ..client
                };
                (maps.requesters)
                    .insert(key, moved, 0)
                    .map_err(|e| Error::map(names::REQUESTERS, e))?;
                count(maps, StatOf::Member(member.counter));
                mac
            }
            None => {
                let _ = maps.requesters.remove(&key);
                if set.members().next().is_none() {
                    // No member left at all: nobody to point the client at.
                    continue;
                }
                iface.mac
            }
        };
        count(maps, StatOf::Addr(gone.slot));
        out.push(Repoint {
            ifindex: client.ifindex,
            router_mac: iface.mac,
            client_mac: client.mac,
            client_ip: Ipv4Addr::from(ip_octets(key.ip)),
            to_mac,
            anycast: gone.anycast,
        });
    }
    Ok(out)
}

/// Whether a client at `ip` can be on a link whose IPv4 addresses are `nets` (address, prefix
/// length): inside one of their subnets, not its network or broadcast address (below /31) and
/// not the address itself. True when the link has no IPv4 address (nothing to check against).
pub fn on_link(ip: Ipv4Addr, nets: &[(Ipv4Addr, u8)]) -> bool {
    nets.is_empty()
        || nets.iter().all(|&(own, _)| own != ip)
            && nets.iter().any(|&(own, prefix)| {
                let Ok(net) = ipnet::Ipv4Net::new(own, prefix) else {
                    return false;
                };
                net.contains(&ip)
                    && (prefix >= 31 || (ip != net.network() && ip != net.broadcast()))
            })
}

/// Every IPv4 address of this namespace's interfaces: (ifindex, address, prefix length).
/// Empty if they cannot be read (then no client is refused).
fn ipv4_nets() -> Vec<(u32, Ipv4Addr, u8)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "reading interface addresses");
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs;
        // an AF_INET address and netmask are sockaddr_in, and the name a C string.
        unsafe {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null()
                || ifa.ifa_netmask.is_null()
                || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET
            {
                continue;
            }
            let addr = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
            let mask = &*ifa.ifa_netmask.cast::<libc::sockaddr_in>();
            let ifindex = libc::if_nametoindex(ifa.ifa_name);
            let prefix = u32::from_be(mask.sin_addr.s_addr).leading_ones() as u8;
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            out.push((ifindex, ip, prefix));
        }
    }
    // SAFETY: the list getifaddrs allocated, freed once, not used after.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Adds one to a `REPOINTS` counter (user space alone writes it, under the writers' lock).
fn count(maps: &mut Maps, of: StatOf) {
    let key = stat_key(of);
    let n = maps.repoints.get(&key, 0).unwrap_or(0);
    let _ = maps.repoints.insert(key, n + 1, 0);
}

/// The member the live set `set` of `entry` (positions `down` out of service) gives a
/// direct-mode client with `hash`, and its position: the single member or the Maglev table's
/// (`select::table_pick` in the dataplane); `None` if that one is out of service.
pub fn place(
    maps: &Maps,
    (entry, set, down): (&AddrSlot, &MemberSet, u64),
    hash: u32,
) -> Result<Option<(MemberRef, u32)>> {
    let position = if set.single != 0 {
        set.single - 1
    } else if set.table_size == 0 {
        return Ok(None);
    } else {
        let index = anycast_common::member_set_index(entry.slot, entry.version);
        let table = maps
            .tables
            .get(&index, 0)
            .map_err(|e| Error::map(names::TABLES, e))?;
        let table: Array<MapData, u64> =
            Array::try_from(Map::Array(table)).map_err(|e| Error::map(names::TABLES, e))?;
        let (word, shift) = table_word_of(pick_index(hash, set.table_size));
        let packed = table
            .get(&word, 0)
            .map_err(|e| Error::map(names::TABLES, e))?;
        table_position(packed, shift)
    };
    Ok(set
        .members
        .get(position as usize)
        .filter(|m| m.host != NO_HOST && down & position_bit(position) == 0)
        .map(|m| (*m, position)))
}

/// Sends every repoint [`REPEATS`] times, [`REPEAT_INTERVAL`] apart (blocking meanwhile).
pub fn send(repoints: &[Repoint]) -> Result<()> {
    let socket = crate::frame::socket().map_err(|e| Error::io("opening an AF_PACKET socket", e))?;
    let gratuitous = GRATUITOUS.load(Ordering::Relaxed);
    let mut failed = None;
    for round in 0..REPEATS {
        if round > 0 {
            std::thread::sleep(REPEAT_INTERVAL);
        }
        for r in repoints {
            for garp in [false, true] {
                if garp && !gratuitous {
                    continue;
                }
                let frame = arp_reply(
                    r.router_mac,
                    (r.client_mac, r.client_ip.octets()),
                    (r.to_mac, r.anycast.octets()),
                    garp,
                );
                if let Err(e) = crate::frame::send(&socket, r.ifindex, &frame) {
                    failed = Some(e);
                }
            }
        }
    }
    match failed {
        Some(e) => Err(Error::io("sending an ARP reply", e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clients_that_can_be_on_the_link_are_told() {
        let lan = [(Ipv4Addr::new(203, 0, 113, 2), 24)];
        assert!(on_link(Ipv4Addr::new(203, 0, 113, 100), &lan));
        for forged in [
            Ipv4Addr::new(192, 0, 2, 7),     // another subnet
            Ipv4Addr::new(203, 0, 113, 0),   // the network address
            Ipv4Addr::new(203, 0, 113, 255), // its broadcast
            Ipv4Addr::new(203, 0, 113, 2),   // the router itself
            Ipv4Addr::BROADCAST,
        ] {
            assert!(!on_link(forged, &lan), "{forged}");
        }
        // A /31's two addresses are both hosts; a link without IPv4 limits nothing.
        let p2p = [(Ipv4Addr::new(198, 18, 0, 0), 31)];
        assert!(on_link(Ipv4Addr::new(198, 18, 0, 1), &p2p));
        assert!(on_link(Ipv4Addr::new(192, 0, 2, 7), &[]));
        // Any of the link's subnets will do.
        let two = [lan[0], (Ipv4Addr::new(198, 18, 1, 1), 24)];
        assert!(on_link(Ipv4Addr::new(198, 18, 1, 9), &two));
    }
}
