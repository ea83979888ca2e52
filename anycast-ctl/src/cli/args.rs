//! Value parsers of the command line, shared with the files that name the same things
//! (`load`'s TOML, the agent's configuration, `announce`'s options).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::mac::MacAddr;

/// A connection table size in flows (a power of two in range).
pub fn flows(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    crate::dataplane::check_flows(n)
}

/// A Maglev table size: a prime, large enough for every member.
pub fn table_size(s: &str) -> Result<u32, String> {
    let m: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if m > anycast_common::MAX_TABLE_SIZE || !crate::maglev::is_prime(m) {
        return Err(format!(
            "{m} is not a prime up to {}",
            anycast_common::MAX_TABLE_SIZE
        ));
    }
    if m < crate::maglev::MIN_SIZE_FACTOR * anycast_common::MAX_MEMBERS as u32 {
        return Err(format!(
            "{m} is too small: use at least {} (100 x {} members)",
            crate::maglev::MIN_SIZE_FACTOR * anycast_common::MAX_MEMBERS as u32,
            anycast_common::MAX_MEMBERS
        ));
    }
    Ok(m)
}

pub(crate) fn unicast_mac(s: &str) -> Result<MacAddr, String> {
    let mac: MacAddr = s
        .parse()
        .map_err(|e: crate::mac::ParseMacError| e.to_string())?;
    mac.check_unicast().map_err(|e| e.to_string())?;
    Ok(mac)
}

pub(crate) fn unicast_address(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(format!("{ip} is not a unicast address"));
    }
    Ok(ip)
}

/// Multicast with link-local scope (`ffX2::/16`): advertisements never leave the link, and
/// their hop limit 255 is checked on arrival.
pub fn is_link_local_multicast(group: Ipv6Addr) -> bool {
    group.is_multicast() && group.segments()[0] & 0x000f == 0x2
}

/// An IPv6 advertisement group: link-local scope multicast.
pub fn group6(s: &str) -> Result<Ipv6Addr, String> {
    let group: Ipv6Addr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv6 address"))?;
    if !is_link_local_multicast(group) {
        return Err(format!(
            "{group} is not a link-local scope multicast address (ff02::/16, ff12::/16)"
        ));
    }
    Ok(group)
}

pub fn anycast_address(s: &str) -> Result<Ipv4Addr, String> {
    let ip = unicast_address(s)?;
    match crate::policy::never_anycast(ip) {
        Some(why) => Err(format!("{ip} cannot be an anycast address: {why}")),
        None => Ok(ip),
    }
}

/// A unicast address of either family (a member). IPv6: not a class that no host on the link
/// is reached by (`policy::never_member6`).
pub(crate) fn unicast_ip(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address"))?;
    match ip {
        IpAddr::V4(_) => unicast_address(s).map(IpAddr::V4),
        IpAddr::V6(v6) => match crate::policy::never_member6(v6) {
            Some(why) => Err(format!("{ip} is not a member's unicast address: {why}")),
            None => Ok(ip),
        },
    }
}

/// An anycast address of either family (`policy::never_anycast_ip`).
pub fn anycast_ip(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address"))?;
    match ip {
        IpAddr::V4(_) => anycast_address(s).map(IpAddr::V4),
        IpAddr::V6(v6) => match crate::policy::never_anycast6(v6) {
            Some(why) => Err(format!("{ip} cannot be an anycast address: {why}")),
            None => Ok(ip),
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::parse;

    #[test]
    fn announce_takes_both_families_and_refuses_non_unicast_ipv6() {
        let ok = ["198.51.100.53", "2001:db8:53::53"];
        assert!(parse(&[&["announce"][..], &ok, &["--dev", "m1"]].concat()).is_ok());
        for bad in [
            "fe80::1",
            "ff02::1",
            "::",
            "::1",
            "::ffff:198.51.100.53",
            "2001:db8::/64",
        ] {
            assert!(
                parse(&["announce", bad, "--dev", "m1"]).is_err(),
                "{bad} accepted"
            );
        }
        let site = [
            "announce",
            "2001:db8:53::53",
            "--dev",
            "m1",
            "--group6",
            "ff05::1546",
        ];
        assert!(parse(&site).is_err());
    }

    #[test]
    fn member_commands_take_ipv6_and_refuse_its_special_classes() {
        assert!(parse(&["member", "add", "2001:db8:53::53", "2001:db8:1::2"]).is_ok());
        assert!(parse(&["member", "del", "2001:db8:53::53", "2001:db8:1::2"]).is_ok());
        assert!(parse(&["stats", "2001:db8:53::53"]).is_ok());
        for bad in [
            "fe80::53",
            "ff02::1:ff00:53",
            "::",
            "::1",
            "::ffff:198.51.100.53",
        ] {
            assert!(
                parse(&["member", "add", bad, "2001:db8:1::2"]).is_err(),
                "anycast {bad} accepted"
            );
            assert!(
                parse(&["member", "add", "2001:db8:53::53", bad]).is_err(),
                "member {bad} accepted"
            );
        }
    }

    /// Regression: anycast addresses of classes that are never unicast were accepted.
    #[test]
    fn never_anycast_classes_are_refused_while_parsing() {
        for bad in ["169.254.1.1", "240.0.0.1", "127.0.0.1", "0.1.2.3"] {
            assert!(
                parse(&["member", "add", bad, "203.0.113.2"]).is_err(),
                "{bad} accepted"
            );
        }
    }
}
