//! Several anycast routers in front of one member LAN, behind an upstream router U:
//!
//! ```text
//!  client ns          upstream ns U                  router ns R1, R2 (XDP)       LAN ns (bridge br0)
//!  c0 192.0.2.10/24 -- u0 192.0.2.1/24
//!                      u1 198.18.1.1/30 ------------- up0 198.18.1.2/30
//!                                                     lan0 203.0.113.2/24 ------- p-r1 ┐
//!                      u2 198.18.2.1/30 ------------- up0 198.18.2.2/30              │
//!                                                     lan0 203.0.113.3/24 ------- p-r2 ┤
//!                      ulan 203.0.113.1/24 ------------------------------------- p-u  ┤
//!  member ns m1..m3: m<i> 203.0.113.(10+i)/24, default via 203.0.113.1 ----------- p-m<i> ┘
//! ```
//!
//! - U reaches the anycast address by ECMP over both routers: `198.51.100.53/32` with one
//!   nexthop per router, hashed on the 5-tuple (`fib_multipath_hash_policy=1`), and a nexthop
//!   whose link has lost carrier is skipped (`ignore_routes_with_linkdown=1`), so taking a
//!   router's uplink down moves its flows to the other router. [`SharedLan::steer`] pins one
//!   destination port to a preferred router, with the other as backup.
//! - The return path is direct server return to U: members reply straight to the client
//!   through U's leg on the member LAN, never through R1 or R2, so it does not depend on
//!   which anycast router carried the request or whether it is up (no VRRP, no shared gateway
//!   address between the routers).
//! - Members start without the anycast address: `anycast-ctl announce` adds it to `lo`.
//! - [`SharedLan::lan_client`] adds a client on the member LAN itself (on-link to the anycast
//!   prefix, so it ARPs for the anycast address and both routers answer).
//! - The veth rules of the parent module: GRO on every bridge port (the routers redirect into
//!   `lan0`, whose peer `p-r<i>` then needs NAPI), `peer_pass` on each router's port (frames a
//!   router sends back out of `lan0` with XDP_TX, ARP replies and on-link clients' traffic to
//!   members, reach the bridge only if that port runs XDP), TX checksum offload off on every
//!   veth. The bridge floods multicast (snooping off), so both routers hear every
//!   advertisement.
//!
//! Dropping a [`SharedLan`] deletes its namespaces and with them every veth and the bridge.

use std::net::Ipv4Addr;

use anyhow::{Result, ensure};
use aya::programs::links::FdLink;

use super::{CLIENT_IFACE, base_sysctls, configure, member_link, member_namespace, offloads, veth};
use crate::netns::Netns;

/// Each router's interface towards U.
pub const ROUTER_UPLINK: &str = "up0";
/// Each router's interface on the member LAN.
pub const ROUTER_LAN: &str = "lan0";
/// U's address on the member LAN: the members' default gateway.
pub const UPSTREAM_LAN_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The address of [`SharedLan::lan_client`].
pub const LAN_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
/// The address of client `i` of [`SharedLan::lan_clients`].
pub fn lan_client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 100 + i as u8)
}
/// Routing table on U that [`SharedLan::steer`] fills.
const STEER_TABLE: &str = "100";

/// One anycast router of the shared LAN.
#[derive(Debug)]
pub struct LanRouter {
    pub ns: Netns,
    /// 1-based, as in `R1`.
    pub index: usize,
    /// The router's address on its uplink, U's nexthop for it: `198.18.<i>.2`.
    pub uplink_ip: Ipv4Addr,
    /// U's interface towards this router (`u<i>`).
    pub upstream_iface: String,
}

/// One member host on the shared LAN.
#[derive(Debug)]
pub struct LanMember {
    pub ns: Netns,
    /// The member's address, `203.0.113.(10+i)`.
    pub ip: Ipv4Addr,
    /// The member's interface (`m<i>`).
    pub iface: String,
}

/// The whole network; dropping it removes every namespace it made.
#[derive(Debug)]
pub struct SharedLan {
    pub client: Netns,
    pub upstream: Netns,
    pub lan: Netns,
    pub routers: Vec<LanRouter>,
    pub members: Vec<LanMember>,
    /// The links of `peer_pass` on the routers' bridge ports, held, never read.
    _port_xdp: Vec<FdLink>,
}

impl SharedLan {
    /// `routers` anycast routers (1..=9) and `members` members (1..=9) on one bridge.
    pub fn new(routers: usize, members: usize) -> Result<Self> {
        ensure!((1..=9).contains(&routers), "routers must be 1..=9");
        ensure!((1..=9).contains(&members), "members must be 1..=9");
        let client = Netns::new("c")?;
        let upstream = Netns::new("u")?;
        let lan = Netns::new("lan")?;
        for ns in [&client, &upstream, &lan] {
            base_sysctls(ns)?;
        }
        upstream.sysctl("net.ipv4.ip_forward", "1")?;
        upstream.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        for scope in ["all", "default"] {
            upstream.sysctl(
                &format!("net.ipv4.conf.{scope}.ignore_routes_with_linkdown"),
                "1",
            )?;
        }
        lan.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        lan.ip(&["link", "set", "br0", "up"])?;

        veth(&client, CLIENT_IFACE, &upstream, "u0")?;
        configure(&client, CLIENT_IFACE, "192.0.2.10/24")?;
        configure(&upstream, "u0", "192.0.2.1/24")?;
        client.ip(&["route", "add", "default", "via", "192.0.2.1"])?;
        offloads(&client, CLIENT_IFACE)?;
        offloads(&upstream, "u0")?;
        bridge_port(&lan, "p-u", &upstream, "ulan")?;
        configure(&upstream, "ulan", &format!("{UPSTREAM_LAN_IP}/24"))?;

        let routers = (1..=routers)
            .map(|i| build_router(&upstream, &lan, i))
            .collect::<Result<Vec<_>>>()?;
        let members = (1..=members)
            .map(|i| build_member(&lan, i))
            .collect::<Result<Vec<_>>>()?;
        let port_xdp = (routers.iter())
            .map(|r| crate::xdp::attach_peer_pass(&lan, &format!("p-r{}", r.index)))
            .collect::<Result<Vec<_>>>()?;
        let topology = SharedLan {
            client,
            upstream,
            lan,
            routers,
            members,
            _port_xdp: port_xdp,
        };
        let ecmp = topology.nexthops(None);
        let mut route = vec!["route", "add", "198.51.100.53/32"];
        route.extend(ecmp.iter().map(String::as_str));
        topology.upstream.ip(&route)?;
        Ok(topology)
    }

    /// `nexthop via R<i> dev u<i>` for every router except `except` (1-based).
    fn nexthops(&self, except: Option<usize>) -> Vec<String> {
        (self.routers.iter())
            .filter(|r| Some(r.index) != except)
            .flat_map(|r| {
                let via = ["nexthop", "via", &r.uplink_ip.to_string(), "dev"].map(String::from);
                via.into_iter().chain([r.upstream_iface.clone()])
            })
            .collect()
    }

    /// Makes U send TCP to destination port `port` through router `preferred` (1-based), and
    /// through the other routers (ECMP) only while its uplink is down: a policy rule to a
    /// table with a route via `preferred` and a worse one via the others.
    pub fn steer(&self, port: u16, preferred: usize) -> Result<()> {
        let r = &self.routers[preferred - 1];
        let via = r.uplink_ip.to_string();
        let table = ["table", STEER_TABLE];
        let mut first = vec!["route", "add", "198.51.100.53/32", "via", &via];
        first.extend(["dev", &r.upstream_iface, "metric", "10"]);
        first.extend(table);
        self.upstream.ip(&first)?;
        let others = self.nexthops(Some(preferred));
        let mut backup = vec!["route", "add", "198.51.100.53/32", "metric", "20"];
        backup.extend(table);
        backup.extend(others.iter().map(String::as_str));
        self.upstream.ip(&backup)?;
        let port = port.to_string();
        self.upstream.ip(&[
            "rule",
            "add",
            "ipproto",
            "tcp",
            "dport",
            &port,
            "lookup",
            STEER_TABLE,
        ])?;
        Ok(())
    }

    /// Sets router `index`'s (1-based) uplink down or up, on the router's side: U sees the
    /// carrier go and come back.
    pub fn set_uplink(&self, index: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.routers[index - 1]
            .ns
            .ip(&["link", "set", ROUTER_UPLINK, state])?;
        Ok(())
    }

    /// The router U's forwarding picks for TCP from the client to `port` of the anycast
    /// address (1-based), if any.
    pub fn upstream_choice(&self, port: u16) -> Option<usize> {
        let port = port.to_string();
        let out = (self.upstream)
            .ip(&[
                "route",
                "get",
                "198.51.100.53",
                "from",
                "192.0.2.10",
                "iif",
                "u0",
                "ipproto",
                "tcp",
                "dport",
                &port,
                "sport",
                "40000",
            ])
            .ok()?;
        (self.routers.iter())
            .find(|r| out.contains(&format!("via {} ", r.uplink_ip)))
            .map(|r| r.index)
    }

    /// A client on the member LAN, `lc0` 203.0.113.100/24, that reaches the anycast prefix
    /// on-link (it ARPs for the anycast address itself). Dropping it removes it.
    pub fn lan_client(&self) -> Result<Netns> {
        let ns = Netns::new("lc")?;
        base_sysctls(&ns)?;
        bridge_port(&self.lan, "p-lc", &ns, "lc0")?;
        configure(&ns, "lc0", &format!("{LAN_CLIENT_IP}/24"))?;
        ns.ip(&["route", "add", "198.51.100.0/24", "dev", "lc0"])?;
        Ok(ns)
    }

    /// `n` clients on the member LAN (1..=100), each in a namespace of its own: `lc0`
    /// 203.0.113.(100+i)/24 (i from 0) on bridge port `p-lc<i>`, on-link to the anycast prefix
    /// like [`SharedLan::lan_client`]. Dropping one removes it.
    pub fn lan_clients(&self, n: usize) -> Result<Vec<Netns>> {
        ensure!((1..=100).contains(&n), "clients must be 1..=100");
        (0..n)
            .map(|i| {
                let ns = Netns::new("lc")?;
                base_sysctls(&ns)?;
                bridge_port(&self.lan, &format!("p-lc{i}"), &ns, "lc0")?;
                configure(&ns, "lc0", &format!("{}/24", lan_client_ip(i)))?;
                ns.ip(&["route", "add", "198.51.100.0/24", "dev", "lc0"])?;
                Ok(ns)
            })
            .collect()
    }

    /// The members' unicast addresses, in member order.
    pub fn member_ips(&self) -> Vec<Ipv4Addr> {
        self.members.iter().map(|m| m.ip).collect()
    }

    /// The members' namespaces, in member order.
    pub fn member_namespaces(&self) -> Vec<&Netns> {
        self.members.iter().map(|m| &m.ns).collect()
    }
}

/// A veth from the bridge (port `port` in `lan`) to `iface` in `ns`, both up; GRO on the port
/// (frames redirected into `iface` by XDP arrive on it), TX checksum offload off on both.
fn bridge_port(lan: &Netns, port: &str, ns: &Netns, iface: &str) -> Result<()> {
    veth(lan, port, ns, iface)?;
    lan.ip(&["link", "set", port, "master", "br0"])?;
    lan.ip(&["link", "set", port, "up"])?;
    offloads(lan, port)?;
    offloads(ns, iface)?;
    Ok(())
}

fn build_router(upstream: &Netns, lan: &Netns, index: usize) -> Result<LanRouter> {
    let ns = Netns::new(&format!("r{index}"))?;
    base_sysctls(&ns)?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    let router = LanRouter {
        ns,
        index,
        uplink_ip: Ipv4Addr::new(198, 18, index as u8, 2),
        upstream_iface: format!("u{index}"),
    };
    veth(&router.ns, ROUTER_UPLINK, upstream, &router.upstream_iface)?;
    configure(
        &router.ns,
        ROUTER_UPLINK,
        &format!("{}/30", router.uplink_ip),
    )?;
    let upstream_ip = Ipv4Addr::new(198, 18, index as u8, 1);
    configure(
        upstream,
        &router.upstream_iface,
        &format!("{upstream_ip}/30"),
    )?;
    offloads(&router.ns, ROUTER_UPLINK)?;
    offloads(upstream, &router.upstream_iface)?;
    bridge_port(lan, &format!("p-r{index}"), &router.ns, ROUTER_LAN)?;
    let lan_ip = Ipv4Addr::new(203, 0, 113, 1 + index as u8);
    configure(&router.ns, ROUTER_LAN, &format!("{lan_ip}/24"))?;
    let gateway = upstream_ip.to_string();
    router
        .ns
        .ip(&["route", "add", "default", "via", &gateway])?;
    Ok(router)
}

fn build_member(lan: &Netns, index: usize) -> Result<LanMember> {
    let ns = member_namespace(&format!("m{index}"))?;
    let member = LanMember {
        ns,
        ip: Ipv4Addr::new(203, 0, 113, 10 + index as u8),
        iface: format!("m{index}"),
    };
    bridge_port(lan, &format!("p-m{index}"), &member.ns, &member.iface)?;
    let cidr = format!("{}/24", member.ip);
    member_link(&member.ns, &member.iface, &cidr, UPSTREAM_LAN_IP)?;
    Ok(member)
}
