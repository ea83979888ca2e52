//! Locating a member: its egress interface and MACs, from the route and neighbour tables.
//!
//! A member must be on-link on an attached interface (the route to it has no gateway), and its
//! MAC must be unicast. The MAC comes from the operator, the member's signed advertisement, or
//! the kernel's neighbour table (resolved if unknown) — never from a frame the dataplane saw.
use std::{net::IpAddr, time::Duration};

use crate::{
    Error, Result,
    dataplane::Maps,
    net::{Link, Netlink},
    policy::Policy,
};

use super::{MacFrom, Placement};

/// Finds the egress interface and MACs of `member`, which must be on-link on an attached
/// interface (`dev`, if given). Resolves the MAC through the kernel for [`MacFrom::Neighbour`].
pub async fn locate(
    (maps, nl, policy): (&Maps, &Netlink, &Policy),
    member: IpAddr,
    dev: Option<&str>,
    mac_from: MacFrom,
    resolve_timeout: Duration,
) -> Result<Placement> {
    policy.check_member(maps, member)?;
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
    member: IpAddr,
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
    member: IpAddr,
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
    // Frames sent to it would come back in to the router, and round again until the TTL ends.
    if mac == egress.mac {
        return Err(Error::BadMember {
            member,
            why: format!("its MAC {} is the router's own", crate::mac::MacAddr(mac)),
        });
    }
    Ok(mac)
}
