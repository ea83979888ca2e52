//! ARP: the router answers for anycast addresses that have members.
//!
//! A request for an anycast address with at least one member, on an attached interface, is
//! turned into a reply in place (proxy ARP with the ingress interface's MAC) and sent back with
//! XDP_TX, unless `check::arp_answerable` refuses it (probes, group or zero sender MACs, frames
//! unicast to another host): those are counted as refused. Every other ARP frame passes
//! untouched.
//!
//! For an address in direct mode the reply names a member's MAC instead of the router's
//! (`direct`); the Ethernet source stays the router's, so switches never learn a member's MAC
//! on the router's port.
//!
//! Invariant: ARP never changes the dataplane's state. Anyone on a link can send any ARP, so
//! member MACs are never learned here (that would let a host without the key take a member's
//! traffic); user space alone writes `HOSTS`.
use anycast_common::{
    ADDR_MODE_DIRECT, Stat,
    proto::{ARPHRD_ETHER, ARPOP_REPLY, ARPOP_REQUEST, ETH_HLEN, ETH_P_IP, XDP_PASS, XDP_TX},
};
use aya_ebpf::programs::XdpContext;

use crate::{
    check, direct, maps,
    packet::{self, ArpHdr, EthHdr, copy_mac},
    stats,
};

#[inline(always)]
pub fn handle(ctx: &XdpContext, eth: &mut EthHdr) -> Result<u32, u32> {
    let arp: &mut ArpHdr = packet::header(ctx, ETH_HLEN).ok_or_else(stats::malformed)?;
    if u16::from_be_bytes(arp.htype) != ARPHRD_ETHER
        || u16::from_be_bytes(arp.ptype) != ETH_P_IP
        || arp.hlen != 6
        || arp.plen != 4
    {
        return Err(stats::malformed());
    }
    let ingress = ctx.ingress_ifindex() as u32;

    // Gratuitous ARP (sender == target) announces, it asks nothing.
    if u16::from_be_bytes(arp.op) != ARPOP_REQUEST || arp.spa == arp.tpa {
        return Err(stats::pass_global(Stat::ArpPassed));
    }
    let target = u32::from_ne_bytes(arp.tpa);
    let Some(addr) = maps::addr(target) else {
        return Err(stats::pass_global(Stat::ArpPassed));
    };
    if addr.set.n_members == 0 {
        return Err(stats::pass_global(Stat::ArpPassed));
    }
    let Some(iface) = maps::iface(ingress) else {
        return Err(stats::pass_global(Stat::IfaceUnknown));
    };
    if !check::arp_answerable(eth, arp, &iface.mac) {
        return Err(stats::pass_global(Stat::ArpRefused));
    }
    let counters = stats::addr(addr.slot).ok_or(XDP_PASS)?;

    let requester = arp.sha;
    let requester_ip = arp.spa;
    // Written through a pointer by `direct`: aligned (see `packet::Aligned`).
    let mut answer = packet::Aligned(iface.mac);
    if addr.mode == ADDR_MODE_DIRECT {
        let ask = direct::Ask {
            anycast: target,
            requester: u32::from_ne_bytes(requester_ip),
            mac: requester,
            ingress,
        };
        direct::member_mac(&addr, &ask, &mut answer.0);
    }
    copy_mac(&mut eth.dst, &requester);
    copy_mac(&mut eth.src, &iface.mac);
    arp.op = ARPOP_REPLY.to_be_bytes();
    copy_mac(&mut arp.tha, &requester);
    arp.tpa = requester_ip;
    copy_mac(&mut arp.sha, &answer.0);
    arp.spa = target.to_ne_bytes();
    counters.arp_replies += 1;
    Ok(XDP_TX)
}
