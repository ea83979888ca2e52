//! What may be an anycast address, and what may be a member: checked the same way for
//! `member add`, `load` and the agent, before anything is written.
//!
//! An anycast address is a unicast address that nothing else on the router claims: not one of
//! its own addresses, not inside a subnet it is connected to (where a host, a member or a
//! client, may own it, or it is the subnet's broadcast), not a member's address, and not of a
//! class that is never unicast. A member is not an anycast address and not the router itself;
//! an IPv6 member is also not of a class that cannot be a host on the link ([`never_member6`]).
//! IPv6 addresses follow the same rules as IPv4 ones, with IPv6's classes ([`never_anycast6`]).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anycast_common::any_key;

use crate::{
    Error, Result,
    dataplane::Maps,
    net::{IfAddr, Netlink},
};

/// Why `ip` can never be an anycast address, by its class alone (the CLI checks this while
/// parsing arguments).
pub fn never_anycast(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    match (a, b) {
        _ if ip.is_broadcast() => Some("it is the limited broadcast address"),
        (0, _) => Some("0.0.0.0/8 is \"this network\", not a destination"),
        (127, _) => Some("it is a loopback address"),
        (169, 254) => Some("it is a link-local address"),
        (224..=239, _) => Some("it is a multicast address"),
        (240..=255, _) => Some("240.0.0.0/4 is reserved"),
        _ => None,
    }
}

/// Why `ip` can never be an IPv6 anycast address, by its class alone.
pub fn never_anycast6(ip: Ipv6Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.segments();
    match a {
        _ if ip.is_unspecified() => Some("it is the unspecified address"),
        _ if ip.is_loopback() => Some("it is the loopback address"),
        _ if ip.to_ipv4_mapped().is_some() => Some("it is an IPv4-mapped address"),
        0 if b == 0 => Some("::/32 holds no global unicast addresses (IPv4-compatible, reserved)"),
        0xff00..=0xffff => Some("it is a multicast address"),
        0xfe80..=0xfebf => Some("it is a link-local address"),
        0xfec0..=0xfeff => Some("fec0::/10 (site-local) is deprecated"),
        _ => None,
    }
}

/// Why `ip` can never be an anycast address of either family, by its class alone.
pub fn never_anycast_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => never_anycast(v4),
        IpAddr::V6(v6) => never_anycast6(v6),
    }
}

/// Why `ip` can never be an IPv6 member: a class that no host on the link is reached by (a
/// link-local member would be ambiguous across interfaces; an anycast address's members need
/// global addresses).
pub fn never_member6(ip: Ipv6Addr) -> Option<&'static str> {
    never_anycast6(ip)
}

/// The router's own addresses, read once, against which addresses are checked.
pub struct Policy {
    /// Each address of the router (both families), with its interface's name.
    own: Vec<(IfAddr, String)>,
}

impl Policy {
    /// Reads the router's addresses through rtnetlink.
    pub async fn new(nl: &Netlink) -> Result<Self> {
        let mut own = Vec::new();
        for a in nl.if_addresses().await? {
            let name = nl
                .link_by_index(a.ifindex)
                .await
                .map_or_else(|_| a.ifindex.to_string(), |l| l.name);
            own.push((a, name));
        }
        Ok(Self { own })
    }

    /// Checks that `address` may be an anycast address on this router.
    pub fn check_anycast(&self, maps: &Maps, address: IpAddr) -> Result<()> {
        let refuse = |why: String| Error::NotAnycast { address, why };
        if let Some(why) = never_anycast_ip(address) {
            return Err(refuse(why.into()));
        }
        if maps.host_ids.get(&any_key(address), 0).is_ok() {
            return Err(refuse("it is the address of a member".into()));
        }
        for (a, iface) in &self.own {
            if a.ip == address {
                return Err(refuse(format!(
                    "it is an address of this router (on {iface})"
                )));
            }
            let Ok(net) = ipnet::IpNet::new(a.ip, a.prefix_len) else {
                continue;
            };
            if a.prefix_len >= net.max_prefix_len() || !net.contains(&address) {
                continue;
            }
            let net = net.trunc();
            if a.ip.is_ipv4() && a.prefix_len < 31 && address == net.broadcast() {
                return Err(refuse(format!(
                    "it is the broadcast address of {net} on {iface}"
                )));
            }
            return Err(refuse(format!(
                "it is inside {net}, a subnet connected to {iface}, where a host may own it"
            )));
        }
        Ok(())
    }

    /// Checks that `member` may be a member: not an anycast address, not the router itself.
    pub fn check_member(&self, maps: &Maps, member: IpAddr) -> Result<()> {
        let refuse = |why: String| Error::BadMember { member, why };
        if let IpAddr::V6(v6) = member
            && let Some(why) = never_member6(v6)
        {
            return Err(refuse(why.into()));
        }
        if maps.addr_keys.get(&any_key(member), 0).is_ok() {
            return Err(refuse("it is an anycast address here".into()));
        }
        if self.own.iter().any(|(a, _)| a.ip == member) {
            return Err(refuse("it is an address of this router".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_that_are_never_anycast() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "239.255.15.46",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(never_anycast(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["198.51.100.53", "192.0.2.1", "203.0.113.7", "198.18.0.1"] {
            assert_eq!(never_anycast(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_classes_that_are_never_anycast_or_members() {
        for ip in [
            "::",
            "::1",
            "::ffff:198.51.100.53",
            "::198.51.100.53",
            "ff02::1",
            "ff05::1:3",
            "fe80::1",
            "febf::1",
            "fec0::1",
        ] {
            let ip: Ipv6Addr = ip.parse().unwrap();
            assert!(never_anycast6(ip).is_some(), "{ip}");
            assert!(never_member6(ip).is_some(), "{ip}");
        }
        for ip in ["2001:db8:53::53", "2001:db8:1::2", "fd00::53", "64:ff9b::1"] {
            let ip: Ipv6Addr = ip.parse().unwrap();
            assert_eq!(never_anycast6(ip), None, "{ip}");
        }
    }
}
