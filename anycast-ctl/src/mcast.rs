//! Solicited-node groups: the multicast MACs the attached interfaces must accept so that
//! neighbour solicitations for IPv6 anycast addresses reach the dataplane at all. And on the
//! member's side, the link-level groups of multicast mode ([`join_anycast_groups`]).
//!
//! A NIC drops multicast frames whose group it was not told to accept, before XDP runs. For
//! each IPv6 anycast address with members, every attached interface joins the address's
//! solicited-node group MAC (33:33:ff and the address's last 24 bits), as `ip maddr add`
//! does (SIOCADDMULTI: the driver programs its filter; `ip maddr show` lists it). Interfaces
//! leave a group when no address with members needs it any more, and when they are detached.
//!
//! Invariants:
//! - Joins are the device's "global" multicast entries, which the kernel keeps apart from its
//!   own joins (for the router's own addresses): joining twice is one join, and leaving never
//!   removes a group the kernel itself joined.
//! - Several addresses can share one group (the same last 24 bits): a group is left only when
//!   none of them has members. [`sync`] recomputes the wanted set from the maps each time.
use std::{collections::BTreeSet, net::IpAddr};

use anycast_common::NO_HOST;

use crate::{Error, Result, dataplane::Maps};

/// The solicited-node group MAC of an IPv6 address.
pub fn group_mac(ip: std::net::Ipv6Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x33, 0x33, 0xff, o[13], o[14], o[15]]
}

/// The groups the IPv6 anycast addresses with members need.
pub fn wanted(maps: &Maps) -> Result<BTreeSet<[u8; 6]>> {
    let mut groups = BTreeSet::new();
    for (address, entry) in maps.addresses()? {
        if let IpAddr::V6(v6) = address
            && maps
                .member_set(&entry)?
                .members()
                .any(|m| m.host != NO_HOST)
        {
            groups.insert(group_mac(v6));
        }
    }
    Ok(groups)
}

/// The attached interfaces (`IFACES`).
fn attached(maps: &Maps) -> Vec<u32> {
    (0..anycast_common::IFACE_SLOTS)
        .filter_map(|slot| maps.ifaces.get(&slot, 0).ok())
        .map(|iface| iface.ifindex)
        .filter(|&ifindex| ifindex != 0)
        .collect()
}

/// Brings the groups of `addresses` in line with the maps on every attached interface: each
/// group one of them needs is joined, each that no address with members needs is left.
pub fn sync(maps: &Maps, addresses: &[IpAddr]) -> Result<()> {
    let groups: BTreeSet<[u8; 6]> = addresses
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(v6) => Some(group_mac(*v6)),
            IpAddr::V4(_) => None,
        })
        .collect();
    if groups.is_empty() {
        return Ok(());
    }
    let wanted = wanted(maps)?;
    for ifindex in attached(maps) {
        for group in &groups {
            member_of(ifindex, *group, wanted.contains(group))?;
        }
    }
    Ok(())
}

/// Joins every wanted group on a newly attached interface.
pub fn join_all(maps: &Maps, ifindex: u32) -> Result<()> {
    for group in wanted(maps)? {
        member_of(ifindex, group, true)?;
    }
    Ok(())
}

/// Leaves every wanted group on an interface being detached (one already gone is no error).
pub fn leave_all(maps: &Maps, ifindex: u32) -> Result<()> {
    for group in wanted(maps)? {
        member_of(ifindex, group, false)?;
    }
    Ok(())
}

/// Joins, on the member's interface `ifindex`, the multicast-mode group of each IPv4 address
/// in `addresses` (`anycast_common::multicast::group_mac`); returns the groups joined. On an
/// error it leaves them again.
pub fn join_anycast_groups(ifindex: u32, addresses: &[IpAddr]) -> Result<Vec<[u8; 6]>> {
    let mut joined = Vec::new();
    for address in addresses {
        let IpAddr::V4(v4) = address else {
            continue;
        };
        let group = anycast_common::multicast::group_mac(v4.octets());
        if let Err(e) = member_of(ifindex, group, true) {
            leave_groups(ifindex, &joined);
            return Err(e);
        }
        joined.push(group);
    }
    Ok(joined)
}

/// Leaves groups joined by [`join_anycast_groups`] (best effort: a failure is logged).
pub fn leave_groups(ifindex: u32, groups: &[[u8; 6]]) {
    for group in groups {
        if let Err(e) = member_of(ifindex, *group, false) {
            tracing::warn!(error = %e, "leaving a multicast group");
        }
    }
}

/// SIOCADDMULTI (`join`) or SIOCDELMULTI on `ifindex`. Leaving a group not joined, or an
/// interface that is gone, is no error.
fn member_of(ifindex: u32, group: [u8; 6], join: bool) -> Result<()> {
    let what = || {
        format!(
            "{} multicast group {} on ifindex {ifindex}",
            if join { "joining" } else { "leaving" },
            crate::mac::MacAddr(group)
        )
    };
    let mut req: libc::ifreq = unsafe_zeroed_ifreq();
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes (ifr_name's size) and a NUL.
    if unsafe { libc::if_indextoname(ifindex, req.ifr_name.as_mut_ptr()) }.is_null() {
        return if join {
            Err(Error::io(what(), std::io::Error::last_os_error()))
        } else {
            Ok(())
        };
    }
    // SAFETY: writing the hwaddr member of the request's union, which the ioctl reads.
    let hw = unsafe { &mut req.ifr_ifru.ifru_hwaddr };
    hw.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    for (d, s) in hw.sa_data.iter_mut().zip(group) {
        *d = s as libc::c_char;
    }
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)
        .map_err(|e| Error::io(what(), e))?;
    let request = if join {
        libc::SIOCADDMULTI
    } else {
        libc::SIOCDELMULTI
    };
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCADDMULTI/SIOCDELMULTI read ifr_name and ifr_hwaddr of a valid ifreq.
    if unsafe { libc::ioctl(socket.as_raw_fd(), request, &req) } != 0 {
        let e = std::io::Error::last_os_error();
        let gone = matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV));
        if join || !gone {
            return Err(Error::io(what(), e));
        }
    }
    Ok(())
}

fn unsafe_zeroed_ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    #[test]
    fn group_mac_is_the_solicited_node_group() {
        let ip = "2001:db8:53::1:2:3".parse().unwrap();
        assert_eq!(super::group_mac(ip), [0x33, 0x33, 0xff, 0x02, 0x00, 0x03]);
    }
}
