//! rtnetlink look-ups of the router's own state: interfaces, routes and neighbours.
//!
//! This is how a member given only by its IP gets an egress interface and a MAC: the route
//! table says which interface reaches it (and whether it is on-link), the neighbour table gives
//! its MAC, and if the kernel does not know it yet we ask the kernel to resolve it (NTF_USE, as
//! `ip neigh replace ... use` does: ARP for IPv4, a neighbour solicitation for IPv6), so it
//! works with no prior traffic to the member.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use rtnetlink::{Handle, packet_core::NetlinkPayload};

use crate::{Error, Result};

/// An interface of this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    /// Administratively up with a carrier (IFF_UP and IFF_LOWER_UP).
    pub up: bool,
    /// A veth (IFLA_LINKINFO kind "veth"), where native XDP needs its peer set up.
    pub veth: bool,
}

/// Where the route table sends packets for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub oif: u32,
    pub gateway: Option<IpAddr>,
    /// Unicast (reachable) or not (local, unreachable, blackhole, ...).
    pub unicast: bool,
}

/// A host route (`/32` for IPv4, `/128` for IPv6) of one table and protocol, as
/// [`Netlink::host_routes`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostRoute {
    pub dst: IpAddr,
    /// The route's metric (`RTA_PRIORITY`).
    pub metric: u32,
}

/// An address of one of this host's interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
}

pub struct Netlink {
    handle: Handle,
}

/// The loopback interface's index in every network namespace (the kernel's
/// `LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

impl Netlink {
    /// Opens a netlink connection; must be called inside a tokio runtime.
    pub fn new() -> Result<Self> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("opening rtnetlink", e))?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Link> {
        let request = self.handle.link().get().match_name(name.to_string());
        first_link(request, || name.to_string()).await
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Link> {
        let request = self.handle.link().get().match_index(index);
        first_link(request, || format!("ifindex {index}")).await
    }

    /// Every interface.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut links = Vec::new();
        let mut stream = self.handle.link().get().execute();
        while let Some(msg) = stream.try_next().await? {
            links.push(link_from(msg));
        }
        Ok(links)
    }

    /// The addresses of interface `index`, both families, with the messages that delete them.
    async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, AddressMessage)>> {
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = stream.try_next().await? {
            // IPv4 reports the local address as IFA_LOCAL, IPv6 only as IFA_ADDRESS.
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                out.push((ip, msg));
            }
        }
        Ok(out)
    }

    /// Every address of every interface, both families.
    pub async fn if_addresses(&self) -> Result<Vec<IfAddr>> {
        let mut out = Vec::new();
        let mut stream = self.handle.address().get().execute();
        while let Some(msg) = stream.try_next().await? {
            // IPv4 names the local address IFA_LOCAL; IPv6 has only IFA_ADDRESS.
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(IpAddr::V4(*ip)),
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(IpAddr::V6(*ip)),
                _ => None,
            });
            if let Some(ip) = ip {
                out.push(IfAddr {
                    ifindex: msg.header.index,
                    ip,
                    prefix_len: msg.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    /// The first IPv4 address of interface `index`.
    pub async fn first_ipv4(&self, index: u32) -> Result<Option<Ipv4Addr>> {
        Ok(self.first_ipv4_net(index).await?.map(|(ip, _)| ip))
    }

    /// [`Self::first_ipv4`] with its prefix length.
    pub async fn first_ipv4_net(&self, index: u32) -> Result<Option<(Ipv4Addr, u8)>> {
        Ok(self
            .addresses(index)
            .await?
            .iter()
            .find_map(|(ip, msg)| match ip {
                IpAddr::V4(v4) => Some((*v4, msg.header.prefix_len)),
                IpAddr::V6(_) => None,
            }))
    }

    /// The first usable global IPv6 address of interface `index`: not link-local, not
    /// tentative (duplicate address detection still running), failed or deprecated.
    pub async fn first_ipv6(&self, index: u32) -> Result<Option<Ipv6Addr>> {
        let unusable = AddressFlags::Tentative | AddressFlags::Dadfailed | AddressFlags::Deprecated;
        Ok(self.addresses(index).await?.iter().find_map(|(ip, msg)| {
            let flags = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Flags(f) => Some(*f),
                _ => None,
            });
            match ip {
                IpAddr::V6(v6)
                    if !v6.is_unicast_link_local()
                        && !v6.is_loopback()
                        && !flags.is_some_and(|f| f.intersects(unusable)) =>
                {
                    Some(*v6)
                }
                _ => None,
            }
        }))
    }

    pub async fn has_address(&self, index: u32, address: IpAddr) -> Result<bool> {
        Ok(self
            .addresses(index)
            .await?
            .iter()
            .any(|(ip, _)| *ip == address))
    }

    /// `ip addr add ADDRESS/32 dev INDEX`, or for IPv6 `ip addr add ADDRESS/128 dev INDEX
    /// nodad` (an anycast address is shared by design: duplicate address detection would only
    /// hold it tentative, unusable, for a second).
    pub async fn add_host_address(&self, index: u32, address: IpAddr) -> Result<()> {
        let prefix_len = if address.is_ipv4() { 32 } else { 128 };
        let mut request = self.handle.address().add(index, address, prefix_len);
        if address.is_ipv6() {
            let msg = request.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        Ok(request.execute().await?)
    }

    pub async fn del_address(&self, index: u32, address: IpAddr) -> Result<()> {
        for (ip, msg) in self.addresses(index).await? {
            if ip == address {
                self.handle.address().del(msg).execute().await?;
            }
        }
        Ok(())
    }

    /// `ip route get DST [oif OIF]`.
    pub async fn route_to(&self, dst: IpAddr, oif: Option<u32>) -> Result<Option<Route>> {
        let mut msg = RouteMessage::default();
        let (family, len, dst) = match dst {
            IpAddr::V4(d) => (AddressFamily::Inet, 32, RouteAddress::Inet(d)),
            IpAddr::V6(d) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(d)),
        };
        msg.header.address_family = family;
        msg.header.destination_prefix_length = len;
        msg.attributes.push(RouteAttribute::Destination(dst));
        if let Some(oif) = oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        let reply = match self.handle.route().get(msg).execute().try_next().await {
            Ok(Some(reply)) => reply,
            // ENETUNREACH and friends: no route.
            Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut route = Route {
            oif: 0,
            gateway: None,
            unicast: reply.header.kind == RouteType::Unicast,
        };
        for attr in reply.attributes {
            match attr {
                RouteAttribute::Oif(i) => route.oif = i,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some(g.into()),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => route.gateway = Some(g.into()),
                _ => {}
            }
        }
        Ok(Some(route))
    }

    /// The host routes (IPv4 `/32`, IPv6 `/128`) of protocol `proto` in table `table`, one
    /// listing per family (only those: a route of any other protocol or table is never listed,
    /// so never deleted through this list).
    pub async fn host_routes(&self, table: u32, proto: u8) -> Result<Vec<HostRoute>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let mut stream = self.handle.route().get(msg).execute();
            loop {
                match stream.try_next().await {
                    Ok(Some(route)) => out.extend(host_route_of(&route, table, proto)),
                    Ok(None) => break,
                    // A kernel without IPv6 (ipv6.disable=1) has no IPv6 routes to list.
                    Err(rtnetlink::Error::NetlinkError(e))
                        if family == AddressFamily::Inet6
                            && e.raw_code().abs() == libc::EAFNOSUPPORT =>
                    {
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(out)
    }

    /// `ip route replace DST/32 dev lo proto PROTO table TABLE metric METRIC` (`ip -6 route
    /// replace DST/128 ...` for IPv6): one request (a route of that destination and metric is
    /// replaced, else one is created). IPv6 needs IPv6 on `lo` (not `disable_ipv6`).
    pub async fn add_host_route(&self, table: u32, proto: u8, route: HostRoute) -> Result<()> {
        let mut msg = host_route_message(table, proto, route);
        msg.attributes.push(RouteAttribute::Oif(LOOPBACK_IFINDEX));
        let added = self.handle.route().add(msg).replace().execute().await;
        added.map_err(|e| {
            // The kernel's answer when IPv6 is off on the route's device.
            let hint = match &e {
                rtnetlink::Error::NetlinkError(n)
                    if route.dst.is_ipv6() && n.raw_code().abs() == libc::EACCES =>
                {
                    " (IPv6 is disabled on lo: net.ipv6.conf.lo.disable_ipv6)"
                }
                _ => "",
            };
            let len = if route.dst.is_ipv4() { 32 } else { 128 };
            Error::Netlink(format!(
                "adding the route {}/{len} to table {table}: {e}{hint}",
                route.dst
            ))
        })
    }

    /// `ip route del DST/32 proto PROTO table TABLE metric METRIC` (or `ip -6 route del
    /// DST/128 ...`); one already gone is no error.
    pub async fn del_host_route(&self, table: u32, proto: u8, route: HostRoute) -> Result<()> {
        let mut msg = host_route_message(table, proto, route);
        // Scope "nowhere" matches a route of any scope, as `ip route del` asks.
        msg.header.scope = netlink_packet_route::route::RouteScope::NoWhere;
        match self.handle.route().del(msg).execute().await {
            Err(rtnetlink::Error::NetlinkError(e))
                if [libc::ESRCH, libc::ENOENT].contains(&e.raw_code().abs()) =>
            {
                Ok(())
            }
            other => Ok(other?),
        }
    }

    /// The MAC the kernel knows for `ip` on `ifindex`, if any.
    pub async fn neighbour(&self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>> {
        let mut neighbours = self.handle.neighbours().get().execute();
        while let Some(msg) = neighbours.try_next().await? {
            if msg.header.ifindex != ifindex {
                continue;
            }
            if let Some((dst, mac)) = neighbour_entry(&msg)
                && dst == ip
            {
                return Ok(Some(mac));
            }
        }
        Ok(None)
    }

    /// The MAC of `ip` on `ifindex`, asking the kernel to resolve it if unknown (again every
    /// 500 ms, when it also reads the table again) and waiting for the kernel's neighbour
    /// notification, up to `timeout`.
    pub async fn resolve(
        &self,
        ifindex: u32,
        ip: IpAddr,
        timeout: Duration,
    ) -> Result<Option<[u8; 6]>> {
        // Subscribed before the look-up, so an answer between the two is not missed.
        let mut answers = events(rtnetlink::constants::RTMGRP_NEIGH)?;
        if let Some(mac) = self.neighbour(ifindex, ip).await? {
            return Ok(Some(mac));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            // The table itself, in case a notification was lost (the socket can overflow).
            if let Some(mac) = self.neighbour(ifindex, ip).await? {
                return Ok(Some(mac));
            }
            self.handle
                .neighbours()
                .add(ifindex, ip)
                .state(NeighbourState::None)
                .flags(NeighbourFlags::Use)
                .replace()
                .execute()
                .await?;
            let until = deadline.min(tokio::time::Instant::now() + Duration::from_millis(500));
            let answer = async {
                while let Some(msg) = answers.next().await {
                    if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) =
                        msg.payload
                        && n.header.ifindex == ifindex
                        && let Some((dst, mac)) = neighbour_entry(&n)
                        && dst == ip
                    {
                        return Some(mac);
                    }
                }
                None
            };
            match tokio::time::timeout_at(until, answer).await {
                Ok(Some(mac)) => return Ok(Some(mac)),
                // No more notifications: fall back to reading the table every 500 ms.
                Ok(None) => tokio::time::sleep_until(until).await,
                Err(_) => {}
            }
        }
        Ok(None)
    }
}

/// A rtnetlink notification.
pub type Event = rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>;

/// A stream of the rtnetlink notifications of `groups` (`RTMGRP_*`).
pub fn events(groups: u32) -> Result<impl futures::Stream<Item = Event> + Unpin> {
    use rtnetlink::sys::{AsyncSocket, SocketAddr};
    let (mut connection, handle, messages) =
        rtnetlink::new_connection().map_err(|e| Error::io("opening rtnetlink", e))?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .map_err(|e| Error::io("subscribing to rtnetlink notifications", e))?;
    tokio::spawn(connection);
    // The connection runs while its handle lives: the stream keeps it.
    Ok(messages.map(move |(message, _)| {
        let _keep = &handle;
        message
    }))
}

/// The message naming `route` in `table` with protocol `proto` (no interface yet).
fn host_route_message(table: u32, proto: u8, route: HostRoute) -> RouteMessage {
    fn common<T>(
        b: rtnetlink::RouteMessageBuilder<T>,
        table: u32,
        proto: u8,
        metric: u32,
    ) -> RouteMessage {
        b.table_id(table)
            .protocol(proto.into())
            .priority(metric)
            .build()
    }
    match route.dst {
        IpAddr::V4(dst) => common(
            rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, 32),
            table,
            proto,
            route.metric,
        ),
        IpAddr::V6(dst) => common(
            rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(dst, 128),
            table,
            proto,
            route.metric,
        ),
    }
}

/// `route` as a [`HostRoute`], if it is a host route of its family in `table` with protocol
/// `proto`.
fn host_route_of(route: &RouteMessage, table: u32, proto: u8) -> Option<HostRoute> {
    let mut in_table = u32::from(route.header.table);
    let (mut dst, mut metric) = (None, 0);
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Table(t) => in_table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(IpAddr::V4(*d)),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = Some(IpAddr::V6(*d)),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    let dst = dst?;
    let host_len = if dst.is_ipv4() { 32 } else { 128 };
    (in_table == table
        && u8::from(route.header.protocol) == proto
        && route.header.destination_prefix_length == host_len)
        .then_some(HostRoute { dst, metric })
}

/// The first link a request returns. No such link is [`Error::UnknownInterface`]; any other
/// failure keeps its own message.
async fn first_link(
    request: rtnetlink::LinkGetRequest,
    name: impl FnOnce() -> String,
) -> Result<Link> {
    match request.execute().try_next().await {
        Ok(Some(msg)) => Ok(link_from(msg)),
        Ok(None) => Err(Error::UnknownInterface { name: name() }),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code().abs() == libc::ENODEV || e.raw_code().abs() == libc::EINVAL =>
        {
            Err(Error::UnknownInterface { name: name() })
        }
        Err(e) => Err(e.into()),
    }
}

/// The address and MAC of a usable neighbour entry (one the kernel itself would send to).
pub fn neighbour_entry(msg: &NeighbourMessage) -> Option<(IpAddr, [u8; 6])> {
    if !usable(msg.header.state) {
        return None;
    }
    let mut dst = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some((*a).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => dst = Some((*a).into()),
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                mac = Some([l[0], l[1], l[2], l[3], l[4], l[5]])
            }
            _ => {}
        }
    }
    Some((dst?, mac?))
}

fn usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

fn link_from(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: [0; 6],
        up: msg.header.flags.contains(
            netlink_packet_route::link::LinkFlags::Up
                | netlink_packet_route::link::LinkFlags::LowerUp,
        ),
        veth: false,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) if a.len() == 6 => {
                link.mac.copy_from_slice(&a);
            }
            LinkAttribute::LinkInfo(infos) => {
                link.veth = infos.contains(&LinkInfo::Kind(InfoKind::Veth));
            }
            _ => {}
        }
    }
    link
}
