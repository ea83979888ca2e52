//! What may be an anycast address, and what may be a member: checked the same way for
//! `member add`, `load` and the agent, before anything is written.
//!
//! An anycast address is a unicast address that nothing else on the router claims: not one of
//! its own addresses, not inside a subnet it is connected to (where a host, a member or a
//! client, may own it, or it is the subnet's broadcast), not a member's address, and not of a
//! class that is never unicast. A member is not an anycast address and not the router itself.
use std::net::Ipv4Addr;

use anycast_common::ip_key;

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

/// The router's own addresses, read once, against which addresses are checked.
pub struct Policy {
    /// Each IPv4 address of the router, with its interface's name.
    own: Vec<(IfAddr, String)>,
}

impl Policy {
    /// Reads the router's addresses through rtnetlink.
    pub async fn new(nl: &Netlink) -> Result<Self> {
        let mut own = Vec::new();
        for a in nl.ipv4_addresses().await? {
            let name = nl
                .link_by_index(a.ifindex)
                .await
                .map_or_else(|_| a.ifindex.to_string(), |l| l.name);
            own.push((a, name));
        }
        Ok(Self { own })
    }

    /// Checks that `address` may be an anycast address on this router.
    pub fn check_anycast(&self, maps: &Maps, address: Ipv4Addr) -> Result<()> {
        let refuse = |why: String| Error::NotAnycast { address, why };
        if let Some(why) = never_anycast(address) {
            return Err(refuse(why.into()));
        }
        if maps.host_ids.get(&ip_key(address.octets()), 0).is_ok() {
            return Err(refuse("it is the address of a member".into()));
        }
        for (a, iface) in &self.own {
            if a.ip == address {
                return Err(refuse(format!(
                    "it is an address of this router (on {iface})"
                )));
            }
            let Ok(net) = ipnet::Ipv4Net::new(a.ip, a.prefix_len) else {
                continue;
            };
            if a.prefix_len >= 32 || !net.contains(&address) {
                continue;
            }
            let net = net.trunc();
            if a.prefix_len < 31 && address == net.broadcast() {
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
    pub fn check_member(&self, maps: &Maps, member: Ipv4Addr) -> Result<()> {
        let refuse = |why: String| Error::BadMember { member, why };
        if maps.addr_keys.get(&ip_key(member.octets()), 0).is_ok() {
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
}
