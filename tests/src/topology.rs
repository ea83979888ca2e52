//! The test topology of DESIGN.md, built from namespaces and veth pairs:
//!
//! ```text
//!  client ns                router ns (XDP attached by the tests)      member ns x1..3
//!  c0 192.0.2.10/24 ---- r0 192.0.2.1/24
//!                        r1 203.0.113.1/30 ------------------ m1 203.0.113.2/30,  lo 198.51.100.53/32
//!                        r2 203.0.113.5/30 ------------------ m2 203.0.113.6/30,  lo 198.51.100.53/32
//!                        r3 203.0.113.9/30 ------------------ m3 203.0.113.10/30, lo 198.51.100.53/32
//! ```
//!
//! With IPv6 on the client's link ([`ClientStack::Ipv6`] or [`ClientStack::Dual`]) the client
//! has `2001:db8:192::10/64` (and no IPv4 address for `Ipv6`), `r0` has `2001:db8:192::1/64`,
//! the router forwards IPv6, and each member gets `2001:db8:203:<i>::2/64` on its link (the
//! router `::1`), its default IPv6 route through the router and `2001:db8:53::53/128` on `lo`.
//!
//! Invariants:
//! - veths are created directly inside their namespaces: nothing in the root namespace changes.
//! - The veth NAPI rule: every member's `m<i>` has GRO on, so frames the router redirects into
//!   `r<i>` are received; the client's `c0` also carries `peer_pass`, an XDP_PASS program,
//!   because an XDP_TX frame (the router's ARP reply) reaches a veth peer only if that peer runs
//!   XDP ([`crate::xdp`]).
//! - TX checksum offload is off on every veth: a veth passes partial checksums along with the skb,
//!   but an XDP-forwarded frame loses that state, so members would drop it as corrupt. With it
//!   off, frames carry full checksums, as on a real wire.
//! - Members own the anycast address on `lo` but never answer ARP for it (`arp_ignore=1`,
//!   `arp_announce=2`; IPv6 needs no such setting); `rp_filter` is off everywhere; IPv6 is off
//!   in every namespace so no background traffic reaches the router, unless the client's stack
//!   has IPv6 or a test turns it on for the member links ([`Topology::enable_member_ipv6`]).
//!   Where IPv6 is on, addresses are added without duplicate address detection (usable at
//!   once) and the client neither solicits nor accepts router advertisements.
//!
//! Dropping a [`Topology`] deletes its namespaces, which deletes the veths with them, and closes
//! the link of `c0`'s program.
//!
//! [`SharedLan`] is the other shape: several routers in front of one member LAN, behind an
//! upstream router (see its module).

mod shared_lan;

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, ensure};
use aya::programs::links::FdLink;

use crate::netns::Netns;

pub use shared_lan::{
    LAN_CLIENT_IP, LanMember, LanRouter, ROUTER_LAN, ROUTER_UPLINK, SharedLan, UPSTREAM_LAN_IP,
    lan_client_ip,
};

/// The anycast address the members serve.
pub const ANYCAST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// The prefix the client routes towards the anycast address.
pub const ANYCAST_PREFIX: &str = "198.51.100.0/24";
/// The client's address on `c0`.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The router's address on `r0`, the client's gateway.
pub const ROUTER_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The IPv6 anycast address the members serve (with IPv6 on the client's link).
pub const ANYCAST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x53);
/// The prefix the client routes towards [`ANYCAST6`].
pub const ANYCAST6_PREFIX: &str = "2001:db8:53::/48";
/// The client's IPv6 address on `c0`.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x192, 0, 0, 0, 0, 0x10);
/// The router's IPv6 address on `r0`.
pub const ROUTER_CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x192, 0, 0, 0, 0, 1);
/// The client's interface.
pub const CLIENT_IFACE: &str = "c0";
/// The router's interface towards the client.
pub const ROUTER_CLIENT_IFACE: &str = "r0";
/// How many members the topology can hold.
pub const MAX_MEMBERS: usize = 4;
/// Members of the default topology (DESIGN.md's three).
pub const DEFAULT_MEMBERS: usize = 3;

/// How the client reaches the anycast prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMode {
    /// `198.51.100.0/24 dev c0`: the client ARPs for the anycast address itself.
    OnLink,
    /// `198.51.100.0/24 via 192.0.2.1`: the client sends to its gateway's MAC.
    Routed,
}

/// The address families on the client's link (and so towards the members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStack {
    /// IPv4 only; IPv6 is off everywhere.
    Ipv4,
    /// IPv6 only on the client's link: `c0` and `r0` have no IPv4 address.
    Ipv6,
    /// Both families.
    Dual,
}

impl ClientStack {
    pub fn has_ipv4(self) -> bool {
        self != ClientStack::Ipv6
    }

    pub fn has_ipv6(self) -> bool {
        self != ClientStack::Ipv4
    }
}

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct TopologyOptions {
    /// Number of members, 1..=3.
    pub members: usize,
    pub client_mode: ClientMode,
    pub client_stack: ClientStack,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            members: DEFAULT_MEMBERS,
            client_mode: ClientMode::OnLink,
            client_stack: ClientStack::Ipv4,
        }
    }
}

/// One member host, on its own /30 towards the router.
#[derive(Debug)]
pub struct Member {
    pub ns: Netns,
    /// 1-based, as in `m1`, `r1`.
    pub index: usize,
    /// The member's unicast address, `203.0.113.(4i-2)`.
    pub ip: Ipv4Addr,
    /// The router's address on the member's link, the member's default gateway.
    pub gateway: Ipv4Addr,
    /// The member's interface (`m<i>`).
    pub iface: String,
    /// The router's interface towards this member (`r<i>`).
    pub router_iface: String,
}

/// The whole test network; dropping it removes every namespace it made.
#[derive(Debug)]
pub struct Topology {
    pub client: Netns,
    pub router: Netns,
    pub members: Vec<Member>,
    pub options: TopologyOptions,
    /// The link of `peer_pass` on the client's `c0` (see the module doc), held, never read;
    /// none on [`Topology::with_default_veths`].
    _client_xdp: Option<FdLink>,
}

impl Topology {
    /// The topology with the veth rules of the module doc applied, for native XDP.
    pub fn new(options: TopologyOptions) -> Result<Self> {
        Self::build(options, true)
    }

    /// The topology with veths as the kernel makes them: no XDP program on any peer, GRO and
    /// checksum offloads left at their defaults. A newcomer's first lab.
    pub fn with_default_veths(options: TopologyOptions) -> Result<Self> {
        Self::build(options, false)
    }

    fn build(options: TopologyOptions, native_veths: bool) -> Result<Self> {
        ensure!(
            (1..=MAX_MEMBERS).contains(&options.members),
            "members must be 1..={MAX_MEMBERS}, not {}",
            options.members
        );
        let client = Netns::new("c")?;
        let router = Netns::new("r")?;
        base_sysctls(&client)?;
        base_sysctls(&router)?;
        router.sysctl("net.ipv4.ip_forward", "1")?;

        veth(&client, CLIENT_IFACE, &router, ROUTER_CLIENT_IFACE)?;
        if options.client_stack.has_ipv6() {
            client_link_ipv6(&client, &router, ROUTER_CLIENT_IFACE, options.client_mode)?;
        }
        if options.client_stack.has_ipv4() {
            configure(&client, CLIENT_IFACE, "192.0.2.10/24")?;
            configure(&router, ROUTER_CLIENT_IFACE, "192.0.2.1/24")?;
            let via = match options.client_mode {
                ClientMode::OnLink => vec!["route", "add", ANYCAST_PREFIX, "dev", CLIENT_IFACE],
                ClientMode::Routed => vec!["route", "add", ANYCAST_PREFIX, "via", "192.0.2.1"],
            };
            client.ip(&via)?;
        } else {
            client.ip(&["link", "set", CLIENT_IFACE, "up"])?;
            router.ip(&["link", "set", ROUTER_CLIENT_IFACE, "up"])?;
        }

        let mut members = Vec::with_capacity(options.members);
        for index in 1..=options.members {
            members.push(build_member(&router, index)?);
        }

        let mut topology = Topology {
            client,
            router,
            members,
            options,
            _client_xdp: None,
        };
        if native_veths {
            topology.set_up_for_native_xdp()?;
        }
        if options.client_stack.has_ipv6() {
            topology.enable_member_ipv6()?;
            topology.members.iter().try_for_each(member_serves_ipv6)?;
        }
        Ok(topology)
    }

    /// The veth NAPI rule (see the module doc): XDP_REDIRECT into r<i> lands on m<i>, which
    /// needs NAPI (GRO); XDP_TX out of r0 lands on c0, which needs an XDP program.
    fn set_up_for_native_xdp(&mut self) -> Result<()> {
        offloads(&self.client, CLIENT_IFACE)?;
        self._client_xdp = Some(crate::xdp::attach_peer_pass(&self.client, CLIENT_IFACE)?);
        for member in &self.members {
            offloads(&member.ns, &member.iface)?;
        }
        for iface in self.router_ifaces() {
            offloads(&self.router, &iface)?;
        }
        Ok(())
    }

    /// The router's interfaces: `r0` (client side) then `r1..` (member side).
    pub fn router_ifaces(&self) -> Vec<String> {
        std::iter::once(ROUTER_CLIENT_IFACE.to_string())
            .chain(self.members.iter().map(|m| m.router_iface.clone()))
            .collect()
    }

    /// The members' namespaces, in member order.
    pub fn member_namespaces(&self) -> Vec<&Netns> {
        self.members.iter().map(|m| &m.ns).collect()
    }

    /// The members' unicast addresses, in member order.
    pub fn member_ips(&self) -> Vec<Ipv4Addr> {
        self.members.iter().map(|m| m.ip).collect()
    }

    /// Turns IPv6 on for the member links only: the router's `r<i>`, and the member's `m<i>`
    /// and `lo`, with [`member_ip6`] and [`member_gateway6`] as /64s (nodad, usable at once).
    /// The client side keeps its stack ([`ClientStack`]; a topology with IPv6 on the client's
    /// link has done this already).
    pub fn enable_member_ipv6(&self) -> Result<()> {
        (self.members.iter()).try_for_each(|m| member_ipv6(&self.router, m))
    }

    /// The member with unicast address `ip`.
    pub fn member(&self, ip: impl Into<std::net::IpAddr>) -> &Member {
        let ip = ip.into();
        self.members
            .iter()
            .find(|m| ip == m.ip || ip == member_ip6(m.index))
            .unwrap_or_else(|| panic!("{ip} is not a member of this topology"))
    }
}

/// IPv6 on the client's link: the client's and the router's addresses (nodad) on `c0` and
/// `router_iface` (`r0` here), no router solicitations or advertisements, the route to
/// [`ANYCAST6_PREFIX`] on-link or through the router, and IPv6 forwarding on the router.
pub(crate) fn client_link_ipv6(
    client: &Netns,
    router: &Netns,
    router_iface: &str,
    mode: ClientMode,
) -> Result<()> {
    for (ns, iface) in [(client, CLIENT_IFACE), (router, router_iface)] {
        // No DAD on the link-local either (see `member_ipv6`).
        ns.sysctl(&format!("net.ipv6.conf.{iface}.accept_dad"), "0")?;
        ns.sysctl(&format!("net.ipv6.conf.{iface}.disable_ipv6"), "0")?;
        ns.sysctl(&format!("net.ipv6.conf.{iface}.accept_ra"), "0")?;
        ns.sysctl(&format!("net.ipv6.conf.{iface}.router_solicitations"), "0")?;
    }
    client.sysctl("net.ipv6.conf.lo.disable_ipv6", "0")?;
    router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let own = format!("{CLIENT_IP6}/64");
    client.ip(&["addr", "add", &own, "dev", CLIENT_IFACE, "nodad"])?;
    let gateway = format!("{ROUTER_CLIENT_IP6}/64");
    router.ip(&["addr", "add", &gateway, "dev", router_iface, "nodad"])?;
    client.ip(&["link", "set", CLIENT_IFACE, "up"])?;
    router.ip(&["link", "set", router_iface, "up"])?;
    let gateway = ROUTER_CLIENT_IP6.to_string();
    let via = match mode {
        ClientMode::OnLink => ["-6", "route", "add", ANYCAST6_PREFIX, "dev", CLIENT_IFACE],
        ClientMode::Routed => [
            "-6",
            "route",
            "add",
            ANYCAST6_PREFIX,
            "via",
            gateway.as_str(),
        ],
    };
    client.ip(&via)?;
    Ok(())
}

/// IPv6 on member `m`'s link to `router`: on the router's `r<i>`, and the member's `m<i>` and
/// `lo`, with [`member_ip6`] and [`member_gateway6`] as /64s (nodad, usable at once).
pub(crate) fn member_ipv6(router: &Netns, m: &Member) -> Result<()> {
    // Without DAD the link-local address is usable at once: a neighbour solicitation is sent
    // from it, and while it is tentative the kernel sends none (the first reply of a member
    // to the router then waits a RetransTimer, 1 s).
    for (ns, iface) in [(&m.ns, m.iface.as_str()), (router, m.router_iface.as_str())] {
        ns.sysctl(&format!("net.ipv6.conf.{iface}.accept_dad"), "0")?;
    }
    for iface in ["lo", m.iface.as_str()] {
        m.ns.sysctl(&format!("net.ipv6.conf.{iface}.disable_ipv6"), "0")?;
    }
    router.sysctl(
        &format!("net.ipv6.conf.{}.disable_ipv6", m.router_iface),
        "0",
    )?;
    let own = format!("{}/64", member_ip6(m.index));
    m.ns.ip(&["addr", "add", &own, "dev", &m.iface, "nodad"])?;
    let gateway = format!("{}/64", member_gateway6(m.index));
    router.ip(&["addr", "add", &gateway, "dev", &m.router_iface, "nodad"])?;
    Ok(())
}

/// Member `m` (its link's IPv6 on, [`member_ipv6`]) serves [`ANYCAST6`]: the address on
/// `lo` and its default IPv6 route through the router.
pub(crate) fn member_serves_ipv6(m: &Member) -> Result<()> {
    let gateway = member_gateway6(m.index).to_string();
    m.ns.ip(&["-6", "route", "add", "default", "via", &gateway])?;
    let anycast = format!("{ANYCAST6}/128");
    m.ns.ip(&["addr", "add", &anycast, "dev", "lo", "nodad"])?;
    Ok(())
}

/// The member's IPv6 address on its link (after [`Topology::enable_member_ipv6`]):
/// `2001:db8:203:<i>::2`.
pub fn member_ip6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x203, index as u16, 0, 0, 0, 2)
}

/// The router's IPv6 address towards member `index`: `2001:db8:203:<i>::1`.
pub fn member_gateway6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x203, index as u16, 0, 0, 0, 1)
}

/// The member's unicast address: `203.0.113.2`, `.6`, `.10`.
pub fn member_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, (4 * index - 2) as u8)
}

/// The router's address towards member `index`: `203.0.113.1`, `.5`, `.9`.
pub fn member_gateway(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, (4 * index - 3) as u8)
}

pub(crate) fn build_member(router: &Netns, index: usize) -> Result<Member> {
    let ns = member_namespace(&format!("m{index}"))?;
    let member = Member {
        ns,
        index,
        ip: member_ip(index),
        gateway: member_gateway(index),
        iface: format!("m{index}"),
        router_iface: format!("r{index}"),
    };
    veth(&member.ns, &member.iface, router, &member.router_iface)?;
    member_link(
        &member.ns,
        &member.iface,
        &format!("{}/30", member.ip),
        member.gateway,
    )?;
    configure(
        router,
        &member.router_iface,
        &format!("{}/30", member.gateway),
    )?;
    member
        .ns
        .ip(&["addr", "add", &format!("{ANYCAST}/32"), "dev", "lo"])?;
    Ok(member)
}

/// A member host's namespace: it never answers ARP for addresses on `lo` (the anycast address).
fn member_namespace(role: &str) -> Result<Netns> {
    let ns = Netns::new(role)?;
    base_sysctls(&ns)?;
    ns.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
    ns.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
    Ok(ns)
}

/// A member's interface `iface` (already in `ns`): no ARP answers for `lo`'s addresses, address
/// `cidr`, up, and the default route via `gateway`.
fn member_link(ns: &Netns, iface: &str, cidr: &str, gateway: Ipv4Addr) -> Result<()> {
    ns.sysctl(&format!("net.ipv4.conf.{iface}.arp_ignore"), "1")?;
    ns.sysctl(&format!("net.ipv4.conf.{iface}.arp_announce"), "2")?;
    configure(ns, iface, cidr)?;
    ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
    Ok(())
}

/// Settings every namespace gets before its interfaces exist (they inherit `default`).
pub(crate) fn base_sysctls(ns: &Netns) -> Result<()> {
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
        ns.sysctl(&format!("net.ipv6.conf.{scope}.disable_ipv6"), "1")?;
    }
    Ok(())
}

/// A veth pair created directly across two namespaces.
pub(crate) fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    crate::cmd::run(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )
    .with_context(|| format!("veth {a_if}@{} <-> {b_if}@{}", a.name(), b.name()))?;
    Ok(())
}

/// rp_filter off, address on, link up.
pub(crate) fn configure(ns: &Netns, iface: &str, cidr: &str) -> Result<()> {
    ns.sysctl(&format!("net.ipv4.conf.{iface}.rp_filter"), "0")?;
    ns.ip(&["addr", "add", cidr, "dev", iface])?;
    ns.ip(&["link", "set", iface, "up"])?;
    Ok(())
}

/// GRO on (NAPI for redirected frames), TX checksum offload off (full checksums on the wire).
pub(crate) fn offloads(ns: &Netns, iface: &str) -> Result<()> {
    ns.run(&["ethtool", "-K", iface, "gro", "on", "tx", "off"])?;
    Ok(())
}
