//! Link-level multicast mode (RFC 1546: "transmit anycast datagrams on a link-level multicast
//! address"): the group MAC of an anycast address, the one encoding the dataplane (which sends
//! to it) and `announce` (which joins it) share.
//!
//! The group of IPv4 anycast address `a.b.c.d` is `03:00:a:b:c:d`: the group bit (0x01) and
//! the locally administered bit (0x02) of the first octet set, then `00` and the address's four
//! octets. Distinct addresses never share a group (unlike the IPv4 multicast mapping
//! 01:00:5e + 23 bits, which folds 32 addresses onto one MAC), and no IEEE-assigned group and no
//! IPv4 (01:00:5e) or IPv6 (33:33) multicast mapping can collide with it.

/// The group MAC of the IPv4 anycast address with octets `anycast`.
pub const fn group_mac(anycast: [u8; 4]) -> [u8; 6] {
    [0x03, 0x00, anycast[0], anycast[1], anycast[2], anycast[3]]
}

#[cfg(test)]
mod tests {
    #[test]
    fn group_of_an_address_is_locally_administered_multicast() {
        let g = super::group_mac([198, 51, 100, 53]);
        assert_eq!(g, [0x03, 0x00, 198, 51, 100, 53]);
        assert_eq!(g[0] & 0x01, 0x01, "group bit");
        assert_eq!(g[0] & 0x02, 0x02, "locally administered bit");
    }
}
