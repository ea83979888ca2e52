//! IPv6: a datagram to an anycast address gets a member and is sent on, or is passed to the
//! kernel untouched; a neighbour solicitation goes to `ndp`.
//!
//! In order, as for IPv4: the fixed header is checked for length (`Stat::Malformed`); an ICMPv6
//! neighbour solicitation right after it is `ndp`'s; the destination is looked up
//! (`Stat::NotAnycast`), the extension headers walked to the upper layer ([`walk`]), the
//! receiving interface looked up (`Stat::IfaceUnknown`); from there the frame is counted
//! against its address if passed, against its member if forwarded. Then the router checks
//! (`check`; IPv6 has no header checksum), the hop limit (1 or 0 passes: the kernel sends
//! ICMPv6 time exceeded), `select` with the IPv6 flow key and fragment table, and `forward`.
//! Every pass is counted with its reason.
//!
//! Extension headers: hop-by-hop, routing, destination options and fragment headers are
//! walked, at most [`MAX_EXT_HEADERS`] of them; a datagram with more is passed
//! (`PassReason::ExtHeaders`). Any other next header is the upper layer: TCP and UDP give
//! ports, others are placed by their 3-tuple. A later fragment has no upper-layer header and
//! follows its first fragment (`FRAGS6`, keyed by source, destination and identification).
use core::mem::size_of;

use anycast_common::{
    FragKey6, PassReason, Stat, compress6, flow_hash, ip6_key,
    proto::{
        ETH_HLEN, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMPV6,
        IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN, ND_NEIGHBOR_SOLICIT,
    },
};
use aya_ebpf::programs::XdpContext;

use crate::{
    check,
    flows::Flow,
    forward, maps,
    maps::FRAGS6,
    ndp,
    packet::{self, EthHdr, ExtHdr, FragHdr, Ipv6Hdr, Ports, TcpHead},
    select::{self, Datagram},
    stats,
};

/// Extension headers walked before the upper layer.
pub const MAX_EXT_HEADERS: usize = 6;

/// Where the upper layer of a datagram is, as [`walk`] found it.
struct Upper {
    /// The upper-layer protocol (the last next-header value).
    proto: u8,
    /// Offset of the upper-layer header from the start of the frame.
    offset: usize,
    /// The fragment header's identification, if the datagram is a fragment.
    frag_id: Option<u32>,
    /// A fragment other than the first: no upper-layer header follows.
    later_fragment: bool,
    /// The first of several fragments.
    first_fragment: bool,
}

/// `Err` carries an XDP_PASS verdict whose reason has already been counted.
#[inline(always)]
pub fn handle(ctx: &XdpContext, eth: &mut EthHdr) -> Result<u32, u32> {
    let ip: &mut Ipv6Hdr = packet::header(ctx, ETH_HLEN).ok_or_else(stats::malformed)?;
    let frame_len = ctx.data_end() - ctx.data();
    let end = ETH_HLEN + IPV6_HLEN + u16::from_be_bytes(ip.payload_len) as usize;
    // A datagram cut short (or a jumbogram, payload length 0) goes to the kernel.
    if ip.version() != 6 || end > frame_len {
        return Err(stats::malformed());
    }
    if ip.next_hdr == IPPROTO_ICMPV6 {
        let icmp_type: &u8 =
            packet::header(ctx, ETH_HLEN + IPV6_HLEN).ok_or_else(stats::malformed)?;
        if *icmp_type == ND_NEIGHBOR_SOLICIT {
            return ndp::handle(ctx, end);
        }
    }
    let dst = ip6_key(ip.dst);
    let Some(addr) = maps::addr6(&dst) else {
        return Err(stats::pass_global(Stat::NotAnycast));
    };
    let upper = walk(ctx, ip.next_hdr, end)?;
    let (ports, tcp_flags) = l4(ctx, &upper, end)?;
    let iface = maps::iface(ctx.ingress_ifindex() as u32)
        .ok_or_else(|| stats::pass_global(Stat::IfaceUnknown))?;
    let counted = stats::Datagram {
        slot: addr.slot,
        bytes: frame_len as u64,
    };

    let Some(upper) = upper else {
        return Err(counted.pass(PassReason::ExtHeaders));
    };
    if !check::for_router(eth, &iface.mac) {
        return Err(counted.pass(PassReason::NotForRouter));
    }
    let src = ip6_key(ip.src);
    if !check::source_ok6(&src, &dst) {
        return Err(counted.pass(PassReason::BadSource));
    }
    if ip.hop_limit <= 1 {
        return Err(counted.pass(PassReason::TtlExceeded));
    }
    let src_fold = compress6(src);
    let flow = Flow::new(src_fold, ports, upper.proto, &addr);
    let datagram = Datagram {
        frag_key: FragKey6 {
            src,
            dst,
            id: upper.frag_id.unwrap_or(0),
        },
        later_fragment: upper.later_fragment,
        first_fragment: upper.first_fragment,
        // flow_hash6 of the addresses, from the compressions already made.
        hash: flow_hash(src_fold, compress6(dst), ports, upper.proto),
        flow,
        tcp_flags,
    };
    let Some(member) = select::choose(&FRAGS6, datagram, &addr) else {
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
    forward::rewrite6(eth, ip, host);
    counted.forwarded(member.counter);
    Ok(action)
}

/// Walks the extension headers from the fixed header's next header `next` to the upper layer,
/// within the datagram (which ends at `end`). `Ok(None)`: more than [`MAX_EXT_HEADERS`]. A
/// header cut short is malformed.
#[inline(always)]
fn walk(ctx: &XdpContext, mut next: u8, end: usize) -> Result<Option<Upper>, u32> {
    let mut offset = ETH_HLEN + IPV6_HLEN;
    let mut frag_id = None;
    let mut first_fragment = false;
    // One more round than headers: the last may only find the upper layer.
    for _ in 0..MAX_EXT_HEADERS + 1 {
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext: &ExtHdr = packet::header(ctx, offset).ok_or_else(stats::malformed)?;
                next = ext.next_hdr;
                (ext.len as usize + 1) * 8
            }
            IPPROTO_FRAGMENT => {
                let frag: &FragHdr = packet::header(ctx, offset).ok_or_else(stats::malformed)?;
                next = frag.next_hdr;
                let offset_m = u16::from_be_bytes(frag.offset_m);
                frag_id = Some(u32::from_ne_bytes(frag.id));
                if offset_m >> 3 != 0 {
                    if offset + size_of::<FragHdr>() > end {
                        return Err(stats::malformed());
                    }
                    return Ok(Some(Upper {
                        proto: next,
                        offset: offset + size_of::<FragHdr>(),
                        frag_id,
                        later_fragment: true,
                        first_fragment: false,
                    }));
                }
                first_fragment = offset_m & 1 != 0;
                size_of::<FragHdr>()
            }
            _ => {
                return Ok(Some(Upper {
                    proto: next,
                    offset,
                    frag_id,
                    later_fragment: false,
                    first_fragment,
                }));
            }
        };
        offset += len;
        if offset > end {
            return Err(stats::malformed());
        }
    }
    Ok(None)
}

/// The ports (as on the wire) and TCP flags of a whole datagram or first fragment; zeros for
/// other protocols, later fragments and datagrams whose headers were not all walked. A TCP or
/// UDP header cut short is malformed.
#[inline(always)]
fn l4(ctx: &XdpContext, upper: &Option<Upper>, end: usize) -> Result<(u32, u8), u32> {
    let Some(upper) = upper else {
        return Ok((0, 0));
    };
    if upper.later_fragment {
        return Ok((0, 0));
    }
    let need = match upper.proto {
        IPPROTO_TCP => size_of::<TcpHead>(),
        IPPROTO_UDP => size_of::<Ports>(),
        _ => return Ok((0, 0)),
    };
    if end < upper.offset + need {
        return Err(stats::malformed());
    }
    if upper.proto == IPPROTO_TCP {
        let tcp: &TcpHead = packet::header(ctx, upper.offset).ok_or_else(stats::malformed)?;
        return Ok((u32::from_ne_bytes(tcp.ports), tcp.flags));
    }
    let ports: &Ports = packet::header(ctx, upper.offset).ok_or_else(stats::malformed)?;
    Ok((u32::from_ne_bytes(ports.bytes), 0))
}
