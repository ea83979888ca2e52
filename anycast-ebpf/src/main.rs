//! The anycast XDP dataplane.
//!
//! One entry point, [`anycast`], runs on every attached interface. Per frame it either answers
//! ARP for an anycast address (`arp`), or picks a member for a datagram to an anycast address
//! (`select`), rewrites the frame for it (`forward`) and sends it on, or passes the frame to the
//! kernel untouched. Frames a router must not forward or answer are found first (`check`).
//! Every outcome is counted (`stats`). Maps live in `maps`, packet access in `packet`.
//!
//! Invariants:
//! - A frame is modified only once its verdict is XDP_TX or XDP_REDIRECT; every XDP_PASS leaves
//!   it byte for byte as received.
//! - The dataplane writes only counters and its flow and fragment tables; the maps that say
//!   where to send (addresses, members, hosts, interfaces) are written by user space alone.
#![no_std]
#![no_main]

mod arp;
mod bench;
mod check;
mod flows;
mod forward;
mod maps;
mod packet;
mod select;
mod stats;

use core::mem::size_of;

use anycast_common::{
    PASS_BAD_CHECKSUM, PASS_BAD_SOURCE, PASS_MAC_UNKNOWN, PASS_NO_MEMBER, PASS_NO_PORT,
    PASS_NOT_FOR_ROUTER, PASS_TTL, STAT_IFACE_UNKNOWN,
};
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::packet::{
    ETH_HLEN, ETH_P_ARP, ETH_P_IP, EthHdr, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, Ports, TcpHead,
};

#[xdp]
pub fn anycast(ctx: XdpContext) -> u32 {
    match try_anycast(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// `Err` carries an XDP_PASS verdict whose reason has already been counted.
#[inline(always)]
fn try_anycast(ctx: &XdpContext) -> Result<u32, u32> {
    let eth: &mut EthHdr = packet::header(ctx, 0).ok_or_else(stats::malformed)?;
    match eth.ethertype() {
        ETH_P_IP => ipv4(ctx, eth),
        ETH_P_ARP => arp::handle(ctx, eth),
        _ => Err(stats::pass_global(anycast_common::STAT_OTHER_ETHERTYPE)),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, eth: &mut EthHdr) -> Result<u32, u32> {
    let ip: &mut Ipv4Hdr = packet::header(ctx, ETH_HLEN).ok_or_else(stats::malformed)?;
    let l4_offset = ip.l4_offset().ok_or_else(stats::malformed)?;
    let Some(addr) = maps::addr(ip.dst()) else {
        return Err(stats::pass_global(anycast_common::STAT_NOT_ANYCAST));
    };
    let frame_len = ctx.data_end() - ctx.data();
    // A datagram cut short, or whose ports are missing, goes to the kernel (which drops it).
    let ip_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ETH_HLEN + ip_len > frame_len || ETH_HLEN + ip_len < l4_offset {
        return Err(stats::malformed());
    }
    let (ports, tcp_flags) = l4(ctx, ip, ip_len, l4_offset)?;
    let iface = maps::iface(ctx.ingress_ifindex() as u32)
        .ok_or_else(|| stats::pass_global(STAT_IFACE_UNKNOWN))?;
    let frame_len = frame_len as u64;
    let counters = stats::addr(addr.slot).ok_or(xdp_action::XDP_PASS)?;
    counters.rx_packets += 1;
    counters.rx_bytes += frame_len;

    // Not this router's to forward: the kernel decides (and normally drops it).
    if !check::for_router(eth, &iface.mac) {
        return Err(stats::pass(counters, PASS_NOT_FOR_ROUTER));
    }
    if !check::checksum_ok(ctx, ip, l4_offset) {
        return Err(stats::pass(counters, PASS_BAD_CHECKSUM));
    }
    if !check::source_ok(ip) {
        return Err(stats::pass(counters, PASS_BAD_SOURCE));
    }
    // The kernel sends ICMP time exceeded.
    if ip.ttl <= 1 {
        return Err(stats::pass(counters, PASS_TTL));
    }
    let Some(member) = select::member(ip, ports, tcp_flags, &addr) else {
        return Err(stats::pass(counters, PASS_NO_MEMBER));
    };
    let Some(host) = maps::host(member.host) else {
        return Err(stats::pass(counters, PASS_NO_MEMBER));
    };
    if !host.mac_known() {
        return Err(stats::pass(counters, PASS_MAC_UNKNOWN));
    }
    let action =
        forward::verdict(ctx, host.ifindex).ok_or_else(|| stats::pass(counters, PASS_NO_PORT))?;
    forward::rewrite(eth, ip, host);

    counters.fwd_packets += 1;
    counters.fwd_bytes += frame_len;
    stats::member(member.counter, frame_len);
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
