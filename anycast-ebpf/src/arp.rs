//! ARP: the router answers for anycast addresses that have members, and learns member MACs.
//!
//! A request for an anycast address with at least one member, on an attached interface, is
//! turned into a reply in place (proxy ARP with the ingress interface's MAC) and sent back with
//! XDP_TX. Any ARP whose sender is a member host on its own interface refreshes that host's MAC,
//! so a member whose MAC changes is followed. Every other ARP frame passes untouched.
use anycast_common::{
    HOST_MAC_KNOWN, HOST_MAC_STATIC, STAT_ARP_PASSED, STAT_IFACE_UNKNOWN, STAT_MAC_LEARNED,
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::{
    maps::{self, HOST_IDS, HOSTS, IFACES},
    packet::{self, ArpHdr, ETH_HLEN, EthHdr, copy_mac},
    stats,
};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

#[inline(always)]
pub fn handle(ctx: &XdpContext, eth: &mut EthHdr) -> Result<u32, u32> {
    let arp: &mut ArpHdr = packet::header(ctx, ETH_HLEN).ok_or_else(stats::malformed)?;
    if u16::from_be_bytes(arp.htype) != 1
        || u16::from_be_bytes(arp.ptype) != 0x0800
        || arp.hlen != 6
        || arp.plen != 4
    {
        return Err(stats::malformed());
    }
    let ingress = ctx.ingress_ifindex() as u32;
    learn(arp, ingress);

    // Gratuitous ARP (sender == target) announces, it asks nothing.
    if u16::from_be_bytes(arp.op) != ARP_REQUEST || arp.spa == arp.tpa {
        return Err(stats::pass_global(STAT_ARP_PASSED));
    }
    let target = u32::from_ne_bytes(arp.tpa);
    let Some(addr) = maps::addr(target) else {
        return Err(stats::pass_global(STAT_ARP_PASSED));
    };
    if addr.set.n_members == 0 {
        return Err(stats::pass_global(STAT_ARP_PASSED));
    }
    // SAFETY: IFACES values are written whole by user space only at attach time.
    let Some(iface) = (unsafe { IFACES.get(ingress) }) else {
        return Err(stats::pass_global(STAT_IFACE_UNKNOWN));
    };
    let counters = stats::addr(addr.slot).ok_or(xdp_action::XDP_PASS)?;

    let requester = arp.sha;
    let requester_ip = arp.spa;
    copy_mac(&mut eth.dst, &requester);
    copy_mac(&mut eth.src, &iface.mac);
    arp.op = ARP_REPLY.to_be_bytes();
    copy_mac(&mut arp.tha, &requester);
    arp.tpa = requester_ip;
    copy_mac(&mut arp.sha, &iface.mac);
    arp.spa = target.to_ne_bytes();
    counters.arp_replies += 1;
    Ok(xdp_action::XDP_TX)
}

/// Refreshes the MAC of a member host from an ARP it sent on its own interface.
#[inline(always)]
fn learn(arp: &ArpHdr, ingress: u32) {
    // SAFETY: HOST_IDS values are plain u32s.
    let Some(&index) = (unsafe { HOST_IDS.get(u32::from_ne_bytes(arp.spa)) }) else {
        return;
    };
    let Some(host) = HOSTS.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: HOSTS is an array: the element is always valid memory. The only writes are this
    // one and user space's, each of the same host's fields; a racing reader can at worst see a
    // torn MAC for one frame.
    let host = unsafe { &mut *host };
    if host.ifindex != ingress || host.flags & HOST_MAC_STATIC != 0 {
        return;
    }
    if host.mac != arp.sha || host.flags & HOST_MAC_KNOWN == 0 {
        copy_mac(&mut host.mac, &arp.sha);
        host.flags |= HOST_MAC_KNOWN;
        stats::global(STAT_MAC_LEARNED);
    }
}
