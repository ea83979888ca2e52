//! The anycast XDP dataplane.
//!
//! One entry point, [`anycast`], runs on every attached interface and dispatches by EtherType:
//! ARP for an anycast address is answered (`arp`), and so is an IPv6 neighbour solicitation
//! (`ndp`); an IPv4 or IPv6 datagram to an anycast address (`ipv4`, `ipv6`) gets a member
//! (`select`), is rewritten for it (`forward`) and sent on; every other frame is passed to the
//! kernel untouched. Frames a router must not forward or answer are found
//! first (`check`). Every outcome is counted (`stats`). Maps live in `maps`, packet access in
//! `packet`. docs/architecture.md has the whole data flow and who writes each map.
//!
//! Invariants:
//! - A frame is modified only once its verdict is XDP_TX or XDP_REDIRECT; every XDP_PASS leaves
//!   it byte for byte as received.
//! - The dataplane writes only counters and its flow and fragment tables; the maps that say
//!   where to send (addresses, members, hosts, interfaces) are written by user space alone.
#![no_std]
#![no_main]

mod arp;
mod check;
mod direct;
mod flows;
mod forward;
mod ipv4;
mod ipv6;
mod maps;
mod multicast;
mod ndp;
mod packet;
mod select;
mod stats;

use anycast_common::{
    Stat,
    proto::{ETH_P_ARP, ETH_P_IP, ETH_P_IPV6},
};
use aya_ebpf::{macros::xdp, programs::XdpContext};

use crate::packet::EthHdr;

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
        ETH_P_IP => ipv4::handle(ctx, eth),
        ETH_P_ARP => arp::handle(ctx, eth),
        ETH_P_IPV6 => ipv6::handle(ctx, eth),
        _ => Err(stats::pass_global(Stat::OtherEthertype)),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
