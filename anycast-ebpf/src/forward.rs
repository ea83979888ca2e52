//! Forwarding: the L2 rewrite towards the chosen member, and the verdict that sends it.
//!
//! The IP destination stays the anycast address (the member owns it on its loopback and answers
//! the client directly); only the Ethernet addresses, the TTL and the IPv4 checksum change (for
//! IPv6, the hop limit: it has no header checksum).
use anycast_common::{Host, proto::XDP_TX};
use aya_ebpf::programs::XdpContext;

use crate::{
    maps::TX_PORTS,
    packet::{self, EthHdr, Ipv4Hdr, Ipv6Hdr},
};

/// XDP_TX back out of the ingress interface, or XDP_REDIRECT to another attached interface;
/// `None` if the egress interface is not in `TX_PORTS`.
#[inline(always)]
pub fn verdict(ctx: &XdpContext, egress: u32) -> Option<u32> {
    if egress == ctx.ingress_ifindex() as u32 {
        return Some(XDP_TX);
    }
    TX_PORTS.redirect(egress, 0).ok()
}

#[inline(always)]
pub fn rewrite(eth: &mut EthHdr, ip: &mut Ipv4Hdr, host: &Host) {
    packet::copy_mac(&mut eth.dst, &host.mac);
    packet::copy_mac(&mut eth.src, &host.smac);
    decrement_ttl(ip);
}

#[inline(always)]
pub fn rewrite6(eth: &mut EthHdr, ip: &mut Ipv6Hdr, host: &Host) {
    packet::copy_mac(&mut eth.dst, &host.mac);
    packet::copy_mac(&mut eth.src, &host.smac);
    ip.hop_limit -= 1;
}

/// Decrements the TTL and patches the checksum incrementally (RFC 1624, eqn. 3).
#[inline(always)]
fn decrement_ttl(ip: &mut Ipv4Hdr) {
    let old = u16::from_be_bytes([ip.ttl, ip.proto]);
    ip.ttl -= 1;
    let new = u16::from_be_bytes([ip.ttl, ip.proto]);
    let mut sum = !u16::from_be_bytes(ip.check) as u32 + !old as u32 + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    ip.check = (!(sum as u16)).to_be_bytes();
}
