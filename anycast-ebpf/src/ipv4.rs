//! IPv4: a datagram to an anycast address gets a member and is sent on, or is passed to the
//! kernel untouched.
//!
//! In order: the headers are checked for length (`Stat::Malformed`), the destination is looked
//! up (`Stat::NotAnycast`) and the receiving interface (`Stat::IfaceUnknown`); from there the
//! frame is counted against its address if passed, against its member if forwarded
//! (`stats::Datagram`), and `check` decides whether the router may forward it at all. Then
//! `select` picks the member (for an address in multicast mode, only the LAN: `multicast` sends
//! the datagram to all of them), and `forward` rewrites the frame and gives the verdict.
//! Every pass is counted with its reason.
use core::mem::size_of;

use anycast_common::{
    ADDR_MODE_MULTICAST, PassReason, Stat,
    proto::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP},
};
use aya_ebpf::programs::XdpContext;

use crate::{
    check, forward, maps, multicast,
    packet::{self, EthHdr, Ipv4Hdr, Ports, TcpHead},
    select, stats,
};

/// `Err` carries an XDP_PASS verdict whose reason has already been counted.
#[inline(always)]
pub fn handle(ctx: &XdpContext, eth: &mut EthHdr) -> Result<u32, u32> {
    let ip: &mut Ipv4Hdr = packet::header(ctx, ETH_HLEN).ok_or_else(stats::malformed)?;
    let l4_offset = ip.l4_offset().ok_or_else(stats::malformed)?;
    let Some(addr) = maps::addr(ip.dst()) else {
        return Err(stats::pass_global(Stat::NotAnycast));
    };
    let frame_len = ctx.data_end() - ctx.data();
    // A datagram cut short, or whose ports are missing, goes to the kernel (which drops it).
    let ip_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ETH_HLEN + ip_len > frame_len || ETH_HLEN + ip_len < l4_offset {
        return Err(stats::malformed());
    }
    let (ports, tcp_flags) = l4(ctx, ip, ip_len, l4_offset)?;
    let iface = maps::iface(ctx.ingress_ifindex() as u32)
        .ok_or_else(|| stats::pass_global(Stat::IfaceUnknown))?;
    let counted = stats::Datagram {
        slot: addr.slot,
        bytes: frame_len as u64,
    };

    // Not this router's to forward: the kernel decides (and normally drops it).
    if !check::for_router(eth, &iface.mac) {
        return Err(counted.pass(PassReason::NotForRouter));
    }
    if !check::checksum_ok(ctx, ip, l4_offset) {
        return Err(counted.pass(PassReason::BadChecksum));
    }
    if !check::source_ok(ip) {
        return Err(counted.pass(PassReason::BadSource));
    }
    // The kernel sends ICMP time exceeded.
    if ip.ttl <= 1 {
        return Err(counted.pass(PassReason::TtlExceeded));
    }
    let Some(member) = select::member(ip, ports, tcp_flags, &addr) else {
        return Err(counted.pass(PassReason::NoMember));
    };
    let Some(host) = maps::host(member.host) else {
        return Err(counted.pass(PassReason::NoMember));
    };
    if !host.mac_known() {
        return Err(counted.pass(PassReason::MacUnknown));
    }
    let action = forward::verdict(ctx, host.ifindex)
        .ok_or_else(|| counted.pass(PassReason::EgressNotAttached))?;
    forward::rewrite(eth, ip, host);
    if addr.mode == ADDR_MODE_MULTICAST {
        multicast::retarget(eth, host.ifindex, ip.dst);
        counted.multicast();
        return Ok(action);
    }
    counted.forwarded(member.counter);
    Ok(action)
}

/// The ports (as on the wire) and TCP flags of a first fragment or whole datagram; zeros for
/// other protocols and later fragments. A TCP or UDP header cut short is malformed.
#[inline(always)]
fn l4(ctx: &XdpContext, ip: &Ipv4Hdr, ip_len: usize, l4_offset: usize) -> Result<(u32, u8), u32> {
    if ip.frag_offset() != 0 {
        return Ok((0, 0));
    }
    let need = match ip.proto {
        IPPROTO_TCP => size_of::<TcpHead>(),
        IPPROTO_UDP => size_of::<Ports>(),
        _ => return Ok((0, 0)),
    };
    if ETH_HLEN + ip_len < l4_offset + need {
        return Err(stats::malformed());
    }
    if ip.proto == IPPROTO_TCP {
        let tcp: &TcpHead = packet::header(ctx, l4_offset).ok_or_else(stats::malformed)?;
        return Ok((u32::from_ne_bytes(tcp.ports), tcp.flags));
    }
    let ports: &Ports = packet::header(ctx, l4_offset).ok_or_else(stats::malformed)?;
    Ok((u32::from_ne_bytes(ports.bytes), 0))
}
