//! Neighbour discovery: the router answers solicitations for IPv6 anycast addresses that have
//! members, as it answers ARP for IPv4 ones (proxy mode, with the receiving interface's MAC).
//!
//! A solicitation is first validated as RFC 4861 7.1.1 asks (hop limit 255, code 0, at least
//! 24 bytes, target not multicast, no option of length 0, from `::` only to a solicited-node
//! address and without a source link-layer option, correct ICMPv6 checksum); an invalid one is
//! counted `Stat::NdInvalid`. One whose target is not an anycast address with members is
//! counted `Stat::NdPassed`; one that is not ours to answer (group or zero source MAC, sent to
//! another host's MAC, or to an IPv6 destination other than the target or its solicited-node
//! address) `Stat::NdRefused`. All of those pass untouched, so the kernel sees them.
//!
//! Both multicast solicitations (address resolution) and unicast ones (the neighbour
//! unreachability probes a client sends to the router's MAC) are answered. The advertisement
//! (RFC 4861 4.4, 7.2.4) replaces the solicitation in place and goes back out with XDP_TX:
//! source the target, hop limit 255, Router and Override set (the router is the one node that
//! answers for the address, so its answer must replace any cached one), Solicited set, a target
//! link-layer address option, and the ICMPv6 checksum over the pseudo-header. A solicitation
//! from `::` (duplicate address detection) is answered to all-nodes (ff02::1) with Solicited
//! clear. The frame is resized to the advertisement's 86 bytes (`bpf_xdp_adjust_tail`): grown
//! when the solicitation had no source link-layer option, shrunk when it had more options.
//!
//! Invariant: as with ARP, a solicitation never changes the dataplane's state.
use core::mem::size_of;

use anycast_common::{
    Stat, ip6_key,
    proto::{
        ETH_HLEN, IPPROTO_ICMPV6, IPV6_HLEN, ND_HOP_LIMIT, ND_NA_OVERRIDE, ND_NA_ROUTER,
        ND_NA_SOLICITED, ND_NEIGHBOR_ADVERT, ND_OPT_SOURCE_LL, ND_OPT_TARGET_LL, XDP_PASS, XDP_TX,
    },
};
use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};

use crate::{
    check, maps,
    packet::{self, EthHdr, Ipv6Hdr, NaFrame, NdLinkOpt, NdMsg, add_words, copy, copy_mac, fold},
    stats,
};

/// Longest solicitation (ICMPv6 bytes) the dataplane checks and answers: the message and
/// up to 13 8-byte options. Longer ones pass, counted invalid.
const MAX_NS_LEN: usize = 128;
/// Options walked in a solicitation.
const MAX_OPTIONS: usize = 13;
/// ICMPv6 bytes of the advertisement: the message and the target link-layer option.
const NA_LEN: usize = size_of::<NdMsg>() + size_of::<NdLinkOpt>();
// They end the frame, contiguous: the checksum is summed over them in place.
const _: () = assert!(core::mem::offset_of!(NaFrame, na) + NA_LEN == size_of::<NaFrame>());

/// The all-nodes address ff02::1 and its MAC.
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// What the advertisement needs from the solicitation (read before the frame is resized,
/// which invalidates every pointer into it).
struct Solicitation {
    target: [u8; 16],
    requester: [u8; 16],
    requester_mac: [u8; 6],
    /// From `::`: answer to all-nodes, Solicited clear.
    dad: bool,
}

/// `end` is where the IPv6 payload ends. `Err` carries an XDP_PASS verdict whose reason has
/// been counted.
#[inline(always)]
pub fn handle(ctx: &XdpContext, end: usize) -> Result<u32, u32> {
    let eth: &EthHdr = packet::header(ctx, 0).ok_or_else(stats::malformed)?;
    let ip: &Ipv6Hdr = packet::header(ctx, ETH_HLEN).ok_or_else(stats::malformed)?;
    let ns: &NdMsg = packet::header(ctx, ETH_HLEN + IPV6_HLEN).ok_or_else(stats::malformed)?;
    let len = end - ETH_HLEN - IPV6_HLEN;
    let dad = check::unspecified6(&ip.src);
    if ip.hop_limit != ND_HOP_LIMIT
        || ns.code != 0
        || len < size_of::<NdMsg>()
        || len > MAX_NS_LEN
        || ns.target[0] == 0xff
    {
        return Err(stats::pass_global(Stat::NdInvalid));
    }
    let has_source_ll = options(ctx, end)?;
    if dad && (has_source_ll || !solicited_node(&ip.dst, &ns.target)) {
        return Err(stats::pass_global(Stat::NdInvalid));
    }
    let Some(addr) = maps::addr6(&ip6_key(ns.target)) else {
        return Err(stats::pass_global(Stat::NdPassed));
    };
    if addr.set.n_members == 0 {
        return Err(stats::pass_global(Stat::NdPassed));
    }
    let iface = maps::iface(ctx.ingress_ifindex() as u32)
        .ok_or_else(|| stats::pass_global(Stat::IfaceUnknown))?;
    if !checksum_ok(ctx, ip, len) {
        return Err(stats::pass_global(Stat::NdInvalid));
    }
    if !answerable(eth, ip, &ns.target, &iface.mac) {
        return Err(stats::pass_global(Stat::NdRefused));
    }
    let counters = stats::addr(addr.slot).ok_or(XDP_PASS)?;
    let mut s = Solicitation {
        target: [0; 16],
        requester: [0; 16],
        requester_mac: [0; 6],
        dad,
    };
    copy(&mut s.target, &ns.target);
    copy(&mut s.requester, &ip.src);
    copy_mac(&mut s.requester_mac, &eth.src);
    let own_mac = iface.mac;

    let delta = size_of::<NaFrame>() as i32 - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: the helper only moves data_end within the frame's buffer (or fails); every
    // pointer into the frame is taken again below.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(stats::malformed());
    }
    let na: &mut NaFrame = packet::header(ctx, 0).ok_or_else(stats::malformed)?;
    advertise(na, &s, &own_mac);
    counters.arp_replies += 1;
    Ok(XDP_TX)
}

/// Walks the options of the solicitation (from after the message to `end`): `Ok(true)` if one
/// is a source link-layer address option. An option of length 0, one running past `end`, or
/// more than [`MAX_OPTIONS`] is invalid.
#[inline(always)]
fn options(ctx: &XdpContext, end: usize) -> Result<bool, u32> {
    let mut offset = ETH_HLEN + IPV6_HLEN + size_of::<NdMsg>();
    let mut source_ll = false;
    for _ in 0..MAX_OPTIONS {
        if offset >= end {
            break;
        }
        let opt: &[u8; 2] = packet::header(ctx, offset).ok_or_else(stats::malformed)?;
        if opt[1] == 0 {
            return Err(stats::pass_global(Stat::NdInvalid));
        }
        source_ll |= opt[0] == ND_OPT_SOURCE_LL;
        offset += opt[1] as usize * 8;
    }
    if offset != end {
        return Err(stats::pass_global(Stat::NdInvalid));
    }
    Ok(source_ll)
}

/// Whether `dst` is the solicited-node address of `target` (ff02::1:ffXX:XXXX).
#[inline(always)]
fn solicited_node(dst: &[u8; 16], target: &[u8; 16]) -> bool {
    let prefix = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff];
    let mut diff = 0;
    for i in 0..13 {
        diff |= dst[i] ^ prefix[i];
    }
    diff |= (dst[13] ^ target[13]) | (dst[14] ^ target[14]) | (dst[15] ^ target[15]);
    diff == 0
}

/// Whether the solicitation is this router's to answer: from a unicast, nonzero MAC, sent to
/// the receiving interface's MAC (`own`) or the target's solicited-node group, and to the
/// target itself or its solicited-node address.
#[inline(always)]
fn answerable(eth: &EthHdr, ip: &Ipv6Hdr, target: &[u8; 16], own: &[u8; 6]) -> bool {
    let group = eth.src[0] & 1 != 0;
    let zero = check::same_mac(&eth.src, &[0; 6]);
    let group_mac = [0x33, 0x33, 0xff, target[13], target[14], target[15]];
    let to_us = check::same_mac(&eth.dst, own) || check::same_mac(&eth.dst, &group_mac);
    let to_target = check::same(&ip.dst, target) || solicited_node(&ip.dst, target);
    !group && !zero && to_us && to_target
}

/// Whether the ICMPv6 checksum of the `len`-byte message is right: the one's-complement sum
/// of the pseudo-header (source, destination, length, next header) and the message is 0xffff.
/// The message is read in 8-byte words, at most [`MAX_NS_LEN`] bytes (`len` is a multiple of
/// 8, checked by the option walk).
/// Sums are in native order ([`add_words`]): the folded sum is compared (all-ones reads the
/// same both ways) or stored as it is.
#[inline(always)]
fn checksum_ok(ctx: &XdpContext, ip: &Ipv6Hdr, len: usize) -> bool {
    let mut sum = pseudo_header(&ip.src, &ip.dst, len as u32);
    let mut offset = ETH_HLEN + IPV6_HLEN;
    for _ in 0..MAX_NS_LEN / 8 {
        if offset >= ETH_HLEN + IPV6_HLEN + len {
            break;
        }
        let Some(word) = packet::header::<[u8; 8]>(ctx, offset) else {
            return false;
        };
        sum += add_words(word);
        offset += 8;
    }
    fold(sum) == 0xffff
}

/// The one's-complement sum (unfolded, native order) of the ICMPv6 pseudo-header.
#[inline(always)]
fn pseudo_header(src: &[u8; 16], dst: &[u8; 16], len: u32) -> u64 {
    let length = u32::from_ne_bytes(len.to_be_bytes());
    let next_header = u32::from_ne_bytes([0, 0, 0, IPPROTO_ICMPV6]);
    add_words(src) + add_words(dst) + length as u64 + next_header as u64
}

/// Writes the advertisement over the (resized) frame.
#[inline(always)]
fn advertise(f: &mut NaFrame, s: &Solicitation, own_mac: &[u8; 6]) {
    if s.dad {
        copy_mac(&mut f.eth.dst, &ALL_NODES_MAC);
        copy(&mut f.ip.dst, &ALL_NODES);
    } else {
        copy_mac(&mut f.eth.dst, &s.requester_mac);
        copy(&mut f.ip.dst, &s.requester);
    }
    copy_mac(&mut f.eth.src, own_mac);
    f.eth.proto = anycast_common::proto::ETH_P_IPV6.to_be_bytes();
    f.ip.vtc_flow = [0x60, 0, 0, 0];
    f.ip.payload_len = (NA_LEN as u16).to_be_bytes();
    f.ip.next_hdr = IPPROTO_ICMPV6;
    f.ip.hop_limit = ND_HOP_LIMIT;
    copy(&mut f.ip.src, &s.target);
    let solicited = if s.dad { 0 } else { ND_NA_SOLICITED };
    f.na.icmp_type = ND_NEIGHBOR_ADVERT;
    f.na.code = 0;
    f.na.checksum = [0; 2];
    f.na.flags = [ND_NA_ROUTER | solicited | ND_NA_OVERRIDE, 0, 0, 0];
    copy(&mut f.na.target, &s.target);
    f.opt.opt_type = ND_OPT_TARGET_LL;
    f.opt.len = 1;
    copy_mac(&mut f.opt.mac, own_mac);
    // SAFETY: the advertisement and its option are the frame's last NA_LEN bytes, in it.
    let message = unsafe {
        &*(f as *const NaFrame)
            .cast::<u8>()
            .add(core::mem::offset_of!(NaFrame, na))
            .cast::<[u8; NA_LEN]>()
    };
    let sum = pseudo_header(&f.ip.src, &f.ip.dst, NA_LEN as u32) + add_words(message);
    f.na.checksum = (!fold(sum)).to_ne_bytes();
}
