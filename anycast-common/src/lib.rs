//! Types shared across the kernel/user boundary of anycast.
//!
//! Everything here is `#![no_std]`, `#[repr(C)]` and `Copy`, holds only integers and byte
//! arrays, and has its size asserted at compile time, so the eBPF program and user space agree
//! on every map layout without a hand-kept copy. `aya::Pod` impls sit behind the `user` feature.
//!
//! IPv4 addresses in map keys and values are stored exactly as they appear on the wire: the four
//! octets read as a native-endian `u32` (see [`ip_key`]); IPv6 addresses likewise as four such
//! words ([`ip6_key`]). User space's directories, which hold both families, key an IPv4 address
//! by its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`, [`any_key`]).
//!
//! docs/architecture.md lists every map with its writers and readers, and the encodings defined
//! here once for both sides.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod advert;
pub mod bench;
pub mod counters;
pub mod direct;
pub mod flow;
pub mod identity;
pub mod maps;
pub mod multicast;
pub mod proto;

pub use counters::{AGENT_COUNTERS, AgentCounter, PassReason, Stat};
pub use flow::{compress6, fallback_score, flow_hash, flow_hash6, fold6, pick_index};
pub use maps::*;

/// The map representation of an IPv4 address: its wire octets read as a native `u32`.
pub const fn ip_key(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The octets of an IPv4 address stored with [`ip_key`].
pub const fn ip_octets(key: u32) -> [u8; 4] {
    key.to_ne_bytes()
}

/// The map representation of an IPv6 address: its 16 wire octets read as four native `u32`s.
pub type Ip6Key = [u32; 4];

/// The [`Ip6Key`] of an IPv6 address's octets.
pub const fn ip6_key(o: [u8; 16]) -> Ip6Key {
    let mut key = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        key[i] = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
        i += 1;
    }
    key
}

/// The octets of an IPv6 address stored with [`ip6_key`].
pub const fn ip6_octets(key: Ip6Key) -> [u8; 16] {
    let mut o = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = key[i].to_ne_bytes();
        o[4 * i] = b[0];
        o[4 * i + 1] = b[1];
        o[4 * i + 2] = b[2];
        o[4 * i + 3] = b[3];
        i += 1;
    }
    o
}

/// The key of an address of either family in user space's directories (`ADDR_KEYS`,
/// `HOST_IDS`, `MEMBER_INFO`, `Host::ip`): IPv6 as [`ip6_key`], IPv4 as the [`ip6_key`] of its
/// IPv4-mapped form. (Policy refuses IPv4-mapped IPv6 addresses, so the two never meet.)
pub const fn any_key(ip: core::net::IpAddr) -> Ip6Key {
    match ip {
        core::net::IpAddr::V4(v4) => ip6_key(v4.to_ipv6_mapped().octets()),
        core::net::IpAddr::V6(v6) => ip6_key(v6.octets()),
    }
}

/// A member's identity in the dataplane's fallback ([`fallback_score`]), from its
/// [`any_key`]: an IPv4 member's [`ip_key`], an IPv6 member's [`fold6`] (as its Maglev
/// identity). It depends on the address alone, so every router agrees on it.
pub const fn member_identity(key: Ip6Key) -> u32 {
    let mapped = ip6_key([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]);
    if key[0] == mapped[0] && key[1] == mapped[1] && key[2] == mapped[2] {
        key[3]
    } else {
        fold6(key)
    }
}

/// The address of an [`any_key`].
pub const fn any_ip(key: Ip6Key) -> core::net::IpAddr {
    core::net::Ipv6Addr::from_octets(ip6_octets(key)).to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_identity_is_the_ip_key_or_the_fold() {
        let v4 = core::net::Ipv4Addr::new(203, 0, 113, 2);
        assert_eq!(member_identity(any_key(v4.into())), ip_key(v4.octets()));
        let v6: core::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
        assert_eq!(
            member_identity(any_key(v6.into())),
            fold6(ip6_key(v6.octets()))
        );
    }

    #[test]
    fn any_key_round_trips_both_families() {
        for ip in ["198.51.100.53", "2001:db8:53::53", "::", "0.0.0.0"] {
            let ip: core::net::IpAddr = ip.parse().unwrap();
            assert_eq!(any_ip(any_key(ip)), ip);
        }
        let v6: core::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip6_octets(ip6_key(v6.octets())), v6.octets());
        assert_ne!(
            any_key("198.51.100.53".parse().unwrap()),
            any_key("::c633:6435".parse().unwrap())
        );
    }
}
