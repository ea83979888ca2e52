//! Route export: a host route `ADDR/32` for each anycast address with members, in a kernel
//! routing table and with a route protocol number of its own, for a routing daemon (BIRD's
//! kernel protocol with `learn`) to pick up and tell neighbouring routers.
//!
//! Invariants:
//! - Off until `anycast-ctl export on`; the settings (on, table, protocol) live in the pinned
//!   `EXPORT` map, so every writer (CLI, agent) exports alike and a restart keeps them.
//! - Only routes of our protocol in our table are ever deleted: a route anycast did not make
//!   is never touched. No rule points at the table, so forwarding is unchanged.
//! - An address's route has the metric [`metric`] gives: the best preference among its members
//!   with a weight, or that plus [`DRAINED`] when every member is drained; no route without a
//!   member.
//! - IPv6 addresses are not exported yet: [`sync`] and [`reconcile`] skip them.
//! - Writers call [`sync`] for the addresses they changed (on an [`crate::members::Edge`], or
//!   when a preference or weight changed), under the writers' lock, after the maps changed.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use anycast_common::{EXPORT_ENABLED, EXPORT_PROTO, EXPORT_TABLE, NO_HOST, any_ip, names};
use serde::Serialize;

use crate::{
    Error, Result,
    dataplane::{Bucket, Maps},
    members::member_key,
    net::{HostRoute, Netlink},
};

/// Default table of the exported routes (no iproute2 name uses it).
pub const DEFAULT_TABLE: u32 = 201;
/// Default route protocol number (not in iproute2's `rt_protos`).
pub const DEFAULT_PROTO: u8 = 201;
/// Added to the metric of an address whose members are all drained (weight 0): still
/// exported, but worse than any address with a member taking new flows.
pub const DRAINED: u32 = 1 << 16;

/// Where the exported routes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub table: u32,
    pub proto: u8,
}

/// The export settings, `None` when export is off.
pub fn settings(maps: &Maps) -> Result<Option<Settings>> {
    let get = |i| {
        maps.export
            .get(&i, 0)
            .map_err(|e| Error::map(names::EXPORT, e))
    };
    if get(EXPORT_ENABLED)? == 0 {
        return Ok(None);
    }
    Ok(Some(Settings {
        table: get(EXPORT_TABLE)?,
        proto: get(EXPORT_PROTO)? as u8,
    }))
}

/// Records the export settings (`None`: off).
pub fn store(maps: &mut Maps, settings: Option<Settings>) -> Result<()> {
    let (on, table, proto) = settings.map_or((0, 0, 0), |s| (1, s.table, u32::from(s.proto)));
    for (i, v) in [
        (EXPORT_TABLE, table),
        (EXPORT_PROTO, proto),
        (EXPORT_ENABLED, on),
    ] {
        maps.export
            .set(i, v, 0)
            .map_err(|e| Error::map(names::EXPORT, e))?;
    }
    Ok(())
}

/// The metric `address`'s route should have, `None` if it should have none (no member).
pub fn metric(maps: &Maps, address: IpAddr) -> Result<Option<u32>> {
    let Bucket::Found { entry, .. } = maps.bucket(address)? else {
        return Ok(None);
    };
    let set = maps.member_set(&entry)?;
    let (mut best, mut best_drained) = (None::<u16>, None::<u16>);
    for m in set.positions().iter().filter(|m| m.host != NO_HOST) {
        let host = maps
            .hosts
            .get(&m.host, 0)
            .map_err(|e| Error::map(names::HOSTS, e))?;
        let member = any_ip(host.ip);
        let info = maps
            .member_info
            .get(&member_key(address, member), 0)
            .unwrap_or_default();
        let slot = if info.weight > 0 {
            &mut best
        } else {
            &mut best_drained
        };
        *slot = Some(slot.map_or(info.preference, |p| p.min(info.preference)));
    }
    Ok(match (best, best_drained) {
        (Some(p), _) => Some(u32::from(p)),
        (None, Some(p)) => Some(u32::from(p) + DRAINED),
        (None, None) => None,
    })
}

/// What every writer does after changing the memberships of `addresses`: the solicited-node
/// groups of their IPv6 addresses ([`crate::mcast::sync`]), and their routes if export is on.
pub async fn sync(maps: &Maps, nl: &Netlink, addresses: &[IpAddr]) -> Result<()> {
    crate::mcast::sync(maps, addresses)?;
    sync_routes(maps, nl, addresses).await
}

/// Brings the routes of `addresses` in line with their members, if export is on.
async fn sync_routes(maps: &Maps, nl: &Netlink, addresses: &[IpAddr]) -> Result<()> {
    let Some(settings) = settings(maps)? else {
        return Ok(());
    };
    let mut wanted = BTreeMap::new();
    for &address in addresses {
        if let IpAddr::V4(v4) = address {
            wanted.insert(v4, metric(maps, address)?);
        }
    }
    let have = nl.host_routes(settings.table, settings.proto).await?;
    apply(nl, settings, &have, &wanted).await?;
    Ok(())
}

/// What [`reconcile`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
}

/// Makes the export table hold exactly the routes the addresses with members justify: adds
/// the missing ones, removes the others of our protocol. Nothing when export is off.
pub async fn reconcile(maps: &Maps, nl: &Netlink) -> Result<Changes> {
    let Some(settings) = settings(maps)? else {
        return Ok(Changes::default());
    };
    let have = nl.host_routes(settings.table, settings.proto).await?;
    let mut wanted: BTreeMap<Ipv4Addr, Option<u32>> = have.iter().map(|r| (r.dst, None)).collect();
    for (address, _) in maps.addresses()? {
        if let IpAddr::V4(v4) = address {
            wanted.insert(v4, metric(maps, address)?);
        }
    }
    apply(nl, settings, &have, &wanted).await
}

/// Removes every route of our protocol from our table.
pub async fn withdraw_all(nl: &Netlink, settings: Settings) -> Result<usize> {
    let have = nl.host_routes(settings.table, settings.proto).await?;
    for route in &have {
        nl.del_host_route(settings.table, settings.proto, *route)
            .await?;
    }
    Ok(have.len())
}

/// Adds the wanted routes missing from `have`, then removes those of `have` for the addresses
/// of `wanted` that are no longer wanted (another metric, or none).
async fn apply(
    nl: &Netlink,
    s: Settings,
    have: &[HostRoute],
    wanted: &BTreeMap<Ipv4Addr, Option<u32>>,
) -> Result<Changes> {
    let mut changes = Changes::default();
    for (&dst, metric) in wanted {
        if let Some(metric) = *metric {
            let route = HostRoute { dst, metric };
            if !have.contains(&route) {
                nl.add_host_route(s.table, s.proto, route).await?;
                changes.added += 1;
            }
        }
    }
    for route in have {
        if let Some(metric) = wanted.get(&route.dst)
            && *metric != Some(route.metric)
        {
            nl.del_host_route(s.table, s.proto, *route).await?;
            changes.removed += 1;
        }
    }
    Ok(changes)
}

/// The routes of our protocol in our table by address, for `show`; empty when export is off.
pub async fn exported(maps: &Maps, nl: &Netlink) -> Result<BTreeMap<Ipv4Addr, u32>> {
    let Some(s) = settings(maps)? else {
        return Ok(BTreeMap::new());
    };
    let routes = nl.host_routes(s.table, s.proto).await?;
    Ok(routes.into_iter().map(|r| (r.dst, r.metric)).collect())
}
