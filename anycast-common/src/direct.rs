//! Direct ARP mode (RFC 1546's "ARP for the anycast address", done by the router): the
//! encodings the dataplane and user space share.
//!
//! - A client of a direct-mode address is given one member for all its traffic, chosen by
//!   [`requester_hash`] exactly as a new flow with that hash would be (the Maglev table of the
//!   live set, then the fallback for a member out of service). The choice depends only on the
//!   client, the address and the member set, so every router on the link gives the same answer,
//!   and user space re-derives it when it repoints a client.
//! - Counters are keyed by [`stat_key`]: an address's under its slot with [`STAT_ADDR`] set, a
//!   member's under its counter index (below `MAX_MEMBER_COUNTERS`, so the two never meet).
//! - [`arp_reply`] is the one encoding of the ARP replies user space sends when it repoints a
//!   client (the dataplane rewrites the request in place into the same bytes).
use crate::proto::{ARPHRD_ETHER, ARPOP_REPLY, ETH_P_ARP, ETH_P_IP};

/// [`stat_key`] bit of an address's counters.
pub const STAT_ADDR: u32 = 1 << 31;

/// Key of an address's (`Addr`) or a member's (`Member`) direct-mode counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatOf {
    /// An address slot.
    Addr(u32),
    /// A member counter index (`MemberRef::counter`).
    Member(u32),
}

/// The `DIRECT_REPLIES` / `REPOINTS` key of `of`.
#[inline(always)]
pub const fn stat_key(of: StatOf) -> u32 {
    match of {
        StatOf::Addr(slot) => STAT_ADDR | slot,
        StatOf::Member(counter) => counter & !STAT_ADDR,
    }
}

/// The hash that places a client (`requester`, an [`crate::ip_key`]) of the direct-mode
/// address `anycast` (likewise): the flow hash of a portless, protocol-0 flow between them.
#[inline(always)]
pub const fn requester_hash(requester: u32, anycast: u32) -> u32 {
    crate::flow_hash(requester, anycast, 0, 0)
}

/// Bytes of an Ethernet ARP frame (no padding).
pub const ARP_FRAME_LEN: usize = 42;

/// An ARP reply telling `client` (`client_mac`, `client_ip`) that `anycast` is at
/// `member_mac`, sent from `router_mac`. With `gratuitous`, the ARP target is the anycast
/// address itself (target IP = sender IP, target MAC = sender MAC): the form Linux applies even
/// within `locktime` of its last update of the entry (`arp_is_garp`); it still goes to the
/// client's MAC alone, so no other host's cache changes.
pub fn arp_reply(
    router_mac: [u8; 6],
    (client_mac, client_ip): ([u8; 6], [u8; 4]),
    (member_mac, anycast): ([u8; 6], [u8; 4]),
    gratuitous: bool,
) -> [u8; ARP_FRAME_LEN] {
    let (tha, tpa) = if gratuitous {
        (member_mac, anycast)
    } else {
        (client_mac, client_ip)
    };
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&client_mac);
    f[6..12].copy_from_slice(&router_mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&ARPOP_REPLY.to_be_bytes());
    f[22..28].copy_from_slice(&member_mac);
    f[28..32].copy_from_slice(&anycast);
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tpa);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTER: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const CLIENT: ([u8; 6], [u8; 4]) = ([2, 0xc0, 0, 0, 0, 0x10], [203, 0, 113, 100]);
    const MEMBER: ([u8; 6], [u8; 4]) = ([2, 0x10, 0, 0, 0, 2], [198, 51, 100, 53]);

    #[test]
    fn reply_bytes() {
        let f = arp_reply(ROUTER, CLIENT, MEMBER, false);
        let want: [u8; ARP_FRAME_LEN] = [
            2, 0xc0, 0, 0, 0, 0x10, 2, 0, 0, 0, 0, 1, 0x08, 0x06, // Ethernet
            0, 1, 0x08, 0, 6, 4, 0, 2, // ARP reply, Ethernet/IPv4
            2, 0x10, 0, 0, 0, 2, 198, 51, 100, 53, // sender: the member's MAC, anycast
            2, 0xc0, 0, 0, 0, 0x10, 203, 0, 113, 100, // target: the client
        ];
        assert_eq!(f, want);
    }

    #[test]
    fn gratuitous_reply_targets_the_anycast_address_and_the_client_alone() {
        let f = arp_reply(ROUTER, CLIENT, MEMBER, true);
        assert_eq!(f[0..6], CLIENT.0);
        assert_eq!(f[22..28], f[32..38]);
        assert_eq!(f[28..32], f[38..42]);
        assert_eq!(f[28..32], MEMBER.1);
    }

    #[test]
    fn stat_keys_of_addresses_and_members_never_meet() {
        assert_ne!(stat_key(StatOf::Addr(5)), stat_key(StatOf::Member(5)));
        assert_eq!(stat_key(StatOf::Member(5)), 5);
    }
}
