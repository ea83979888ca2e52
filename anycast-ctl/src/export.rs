//! Route export: a host route (`ADDR/32`, or `ADDR/128` for IPv6) for each anycast address
//! with members, in a kernel routing table and with a route protocol number of its own, for a
//! routing daemon (BIRD's kernel protocol with `learn`) to pick up and tell neighbouring
//! routers. Both families are exported alike, into the same table with the same protocol.
//!
//! Invariants:
//! - Off until `anycast-ctl export on`; the settings (on, table, protocol) live in the pinned
//!   `EXPORT` map, so every writer (CLI, agent) exports alike and a restart keeps them.
//! - Only routes of our protocol in our table are ever deleted: a route anycast did not make
//!   is never touched. No rule points at the table, so forwarding is unchanged.
//! - An address's route has the metric [`metric`] gives: the best preference among its members
//!   with a weight, or that plus [`DRAINED`] when every member is drained; no route without a
//!   member.
//! - [`sync`] also brings the solicited-node groups of the IPv6 addresses it is given in line
//!   ([`crate::mcast::sync`]), whether export is on or off.
//! - Writers [`Pending::note`] the addresses they change (on an [`crate::members::Edge`], or
//!   when a preference or weight changes), under the writers' lock, before the maps change,
//!   and [`sync`] them after: each writer leaves every address's route at the metric the maps
//!   give (or held down, in the agent), so the maps before a change name the route to replace
//!   and a sync costs O(1) netlink requests per address whatever the table holds. Only
//!   [`reconcile`] (`export on`, the agent at start and on SIGHUP) and [`withdraw_all`] (`export
//!   off`, the last detach) list the table.
//! - Flap damping (the agent's `export_hold_down_ms`, default 0): an address that loses its
//!   last member keeps its route that long; a member back within it finds it never withdrawn.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
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

/// The metric the kernel gives an IPv6 route added with metric 0 (`IP6_RT_PRIO_USER`): IPv6
/// routes have no metric 0.
pub const IPV6_METRIC_ZERO: u32 = 1024;

/// The metric `address`'s route should have, `None` if it should have none (no member). An
/// IPv6 address whose best preference is 0 gets [`IPV6_METRIC_ZERO`], as the kernel would.
pub fn metric(maps: &Maps, address: IpAddr) -> Result<Option<u32>> {
    let metric = preference_metric(maps, address)?;
    Ok(match metric {
        Some(0) if address.is_ipv6() => Some(IPV6_METRIC_ZERO),
        other => other,
    })
}

/// The best preference among `address`'s members with a weight, or that of the drained ones
/// plus [`DRAINED`]; `None` without members.
fn preference_metric(maps: &Maps, address: IpAddr) -> Result<Option<u32>> {
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

/// The routes due for a [`sync`]: for each address whose maps changed, the route it had
/// before ([`Pending::note`], taken under the writers' lock before the change), so that a sync
/// touches only those routes, by name, and never lists the table. It also holds the flap
/// damping of the agent: routes kept for a while after their address lost its last member.
#[derive(Debug, Default)]
pub struct Pending {
    /// Address -> the metric of its route before the change (`None`: no route).
    due: BTreeMap<IpAddr, Option<u32>>,
    /// IPv6 addresses whose solicited-node groups may be out of date (export on or off).
    groups: Vec<IpAddr>,
    /// How long a route outlives its address's last member (zero: not at all).
    hold_down: Duration,
    /// Routes kept by the hold-down: their metric and when they go.
    held: BTreeMap<IpAddr, (u32, Instant)>,
}

impl Pending {
    /// No damping: a route goes with its address's last member (what the CLI does).
    pub fn new() -> Self {
        Self::default()
    }

    /// With flap damping: an address that loses its last member keeps its route for
    /// `hold_down`, and a member that comes back within it finds the route never withdrawn.
    pub fn with_hold_down(hold_down: Duration) -> Self {
        Self {
            hold_down,
            ..Self::default()
        }
    }

    pub fn set_hold_down(&mut self, hold_down: Duration) {
        self.hold_down = hold_down;
    }

    /// Records the routes `addresses` have now, before the caller changes their members (an
    /// address already due keeps its first record; no route when export is off), and the IPv6
    /// ones as due for a group sync.
    pub fn note(&mut self, maps: &Maps, addresses: impl IntoIterator<Item = IpAddr>) -> Result<()> {
        let export = settings(maps)?.is_some();
        for address in addresses {
            if address.is_ipv6() && !self.groups.contains(&address) {
                self.groups.push(address);
            }
            if !export || self.due.contains_key(&address) {
                continue;
            }
            let before = match self.held.get(&address) {
                Some(&(metric, _)) => Some(metric),
                None => metric(maps, address)?,
            };
            self.due.insert(address, before);
        }
        Ok(())
    }

    /// Whether a [`sync`] at `now` has nothing to do.
    pub fn idle(&self, now: Instant) -> bool {
        self.due.is_empty()
            && self.groups.is_empty()
            && self.held.values().all(|&(_, until)| until > now)
    }
}

/// What every writer does after changing the memberships of the noted addresses: the
/// solicited-node groups of the IPv6 ones ([`crate::mcast::sync`]), then [`sync_routes`].
pub async fn sync(maps: &Maps, nl: &Netlink, pending: &mut Pending) -> Result<()> {
    crate::mcast::sync(maps, &pending.groups)?;
    pending.groups.clear();
    sync_routes(maps, nl, pending).await
}

/// Brings the routes of the due addresses (and of held ones whose hold-down is over) in line
/// with their members, if export is on: O(1) netlink requests per address. A wanted route is
/// added with NLM_F_REPLACE, which also restores one someone else deleted; a route with an
/// old metric is deleted by its metric, and one already gone is no error. On an error the
/// addresses not yet done stay due.
async fn sync_routes(maps: &Maps, nl: &Netlink, pending: &mut Pending) -> Result<()> {
    let Some(settings) = settings(maps)? else {
        pending.due.clear();
        pending.held.clear();
        return Ok(());
    };
    let now = Instant::now();
    let over: Vec<IpAddr> = (pending.held.iter())
        .filter(|(_, (_, until))| *until <= now)
        .map(|(a, _)| *a)
        .collect();
    for address in &over {
        let (metric, _) = pending.held.remove(address).expect("listed above");
        pending.due.entry(*address).or_insert(Some(metric));
    }
    while let Some((&address, &before)) = pending.due.first_key_value() {
        let wanted = metric(maps, address)?;
        let hold = (pending.hold_down > Duration::ZERO && !over.contains(&address))
            .then_some(now + pending.hold_down);
        match (before, wanted, hold) {
            (Some(old), None, Some(until)) => {
                pending.held.insert(address, (old, until));
            }
            _ => {
                move_route(nl, settings, address, (before, wanted)).await?;
                pending.held.remove(&address);
            }
        }
        pending.due.remove(&address);
    }
    Ok(())
}

/// Moves `address`'s route from the metric `before` to `wanted`: the new route first (so the
/// address is never without one while it has members), then the old one by its metric.
async fn move_route(
    nl: &Netlink,
    s: Settings,
    dst: IpAddr,
    (before, wanted): (Option<u32>, Option<u32>),
) -> Result<()> {
    if let Some(metric) = wanted {
        nl.add_host_route(s.table, s.proto, HostRoute { dst, metric })
            .await?;
    }
    if let Some(metric) = before
        && before != wanted
    {
        nl.del_host_route(s.table, s.proto, HostRoute { dst, metric })
            .await?;
    }
    Ok(())
}

/// What [`reconcile`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
}

/// Makes the export table hold exactly the routes the addresses with members justify (and the
/// routes `pending` holds down): adds the missing ones, removes the others of our protocol,
/// from one listing of the table. Nothing is due afterwards. Nothing when export is off.
pub async fn reconcile(maps: &Maps, nl: &Netlink, pending: &mut Pending) -> Result<Changes> {
    let Some(settings) = settings(maps)? else {
        return Ok(Changes::default());
    };
    let have = nl.host_routes(settings.table, settings.proto).await?;
    let mut wanted: BTreeMap<IpAddr, Option<u32>> = have.iter().map(|r| (r.dst, None)).collect();
    for (address, _) in maps.addresses()? {
        wanted.insert(address, metric(maps, address)?);
    }
    pending.held.retain(|a, _| wanted.get(a) == Some(&None));
    for (address, &(metric, _)) in &pending.held {
        wanted.insert(*address, Some(metric));
    }
    let changes = apply(nl, settings, &have, &wanted).await?;
    pending.due.clear();
    Ok(changes)
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
    wanted: &BTreeMap<IpAddr, Option<u32>>,
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

/// How many routes of our protocol our table holds, per family (for `status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RouteCounts {
    pub ipv4: usize,
    pub ipv6: usize,
}

/// The [`RouteCounts`] of our table, `None` when export is off.
pub async fn counts(maps: &Maps, nl: &Netlink) -> Result<Option<RouteCounts>> {
    if settings(maps)?.is_none() {
        return Ok(None);
    }
    let routes = exported(maps, nl).await?;
    let ipv4 = routes.keys().filter(|a| a.is_ipv4()).count();
    Ok(Some(RouteCounts {
        ipv4,
        ipv6: routes.len() - ipv4,
    }))
}

/// The routes of our protocol in our table by address, for `show`; empty when export is off.
pub async fn exported(maps: &Maps, nl: &Netlink) -> Result<BTreeMap<IpAddr, u32>> {
    let Some(s) = settings(maps)? else {
        return Ok(BTreeMap::new());
    };
    let routes = nl.host_routes(s.table, s.proto).await?;
    Ok(routes.into_iter().map(|r| (r.dst, r.metric)).collect())
}
