//! Protocol numbers the dataplane and its tests speak: EtherTypes, IP protocols, TCP flags,
//! ARP fields and XDP verdicts, each named once.

/// Length of an Ethernet header (no VLAN tag).
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers the dataplane walks (RFC 8200 4.1), and ICMPv6.
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;

/// ICMPv6 types of neighbour discovery (RFC 4861).
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// Neighbour discovery options: source and target link-layer address.
pub const ND_OPT_SOURCE_LL: u8 = 1;
pub const ND_OPT_TARGET_LL: u8 = 2;
/// Neighbour advertisement flags (first byte after the checksum).
pub const ND_NA_ROUTER: u8 = 0x80;
pub const ND_NA_SOLICITED: u8 = 0x40;
pub const ND_NA_OVERRIDE: u8 = 0x20;
/// Hop limit of every neighbour discovery message (RFC 4861 7.1).
pub const ND_HOP_LIMIT: u8 = 255;

/// TCP flags (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// ARP hardware type of Ethernet.
pub const ARPHRD_ETHER: u16 = 1;
/// ARP operations.
pub const ARPOP_REQUEST: u16 = 1;
pub const ARPOP_REPLY: u16 = 2;

/// XDP verdicts (`enum xdp_action` of the kernel UAPI).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
