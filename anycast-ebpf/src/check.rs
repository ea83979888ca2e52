//! Frames a router must not forward or answer, found before anything is rewritten.
//!
//! A frame is this router's to forward only if its Ethernet destination is the receiving
//! interface's MAC, its IPv4 header checksum is right and its source could have sent it (RFC
//! 1812 5.3.7; RFC 4291 2.5 for IPv6). An ARP request is answered only if it comes from a
//! unicast sender that has an address, sent to broadcast or to the receiving interface. Every
//! check only reads the frame.
use anycast_common::{Ip6Key, proto::ETH_HLEN};

use crate::packet::{self, ArpHdr, EthHdr, Ipv4Hdr};

const BROADCAST: [u8; 6] = [0xff; 6];

/// Whether two MACs are equal (see [`same`]).
#[inline(always)]
pub fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    same(a, b)
}

/// Whether two byte arrays are equal, compared in `packet::pieces` (`==` on arrays may become
/// a `bcmp` call, which BPF cannot make).
#[inline(always)]
pub fn same<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let (x, y) = (a.as_ptr(), b.as_ptr());
    let mut diff = 0;
    // SAFETY: `pieces` stays inside both arrays.
    packet::pieces::<N>(|at, width| unsafe {
        diff |= packet::load(x.add(at), width) ^ packet::load(y.add(at), width);
    });
    diff == 0
}

/// Whether the frame is addressed to the receiving interface (whose MAC is `own`).
#[inline(always)]
pub fn for_router(eth: &EthHdr, own: &[u8; 6]) -> bool {
    same_mac(&eth.dst, own)
}

/// Whether the IPv4 header, options included (`l4_offset` is where it ends), sums to the
/// one's-complement zero (`packet::add_words`; all-ones reads the same in both byte orders).
/// The options are read in 4-byte words, at most ten of them.
#[inline(always)]
pub fn checksum_ok(ctx: &aya_ebpf::programs::XdpContext, ip: &Ipv4Hdr, l4_offset: usize) -> bool {
    const FIXED: usize = core::mem::size_of::<Ipv4Hdr>();
    // SAFETY: the header is FIXED bytes of alignment 1, which `packet::header` checked against
    // the frame's end.
    let fixed = unsafe { &*(ip as *const Ipv4Hdr).cast::<[u8; FIXED]>() };
    let mut sum = packet::add_words(fixed);
    let mut offset = ETH_HLEN + FIXED;
    for _ in 0..10 {
        if offset >= l4_offset {
            break;
        }
        let Some(word) = packet::header::<[u8; 4]>(ctx, offset) else {
            return false;
        };
        sum += packet::add_words(word);
        offset += 4;
    }
    packet::fold(sum) == 0xffff
}

/// Whether the source could have sent the datagram: not in 0.0.0.0/8, 127.0.0.0/8,
/// 169.254.0.0/16 (link-local, never forwarded: RFC 3927), 224.0.0.0/4 (multicast) or
/// 240.0.0.0/4 (255.255.255.255 included), and not the anycast address itself.
#[inline(always)]
pub fn source_ok(ip: &Ipv4Hdr) -> bool {
    let first = ip.src[0];
    let link_local = first == 169 && ip.src[1] == 254;
    first != 0 && first != 127 && first < 224 && !link_local && ip.src() != ip.dst()
}

/// Whether an ARP request may be answered: not a probe (sender IP 0.0.0.0), from a unicast,
/// nonzero sender MAC, to broadcast or to the receiving interface (whose MAC is `own`).
#[inline(always)]
pub fn arp_answerable(eth: &EthHdr, arp: &ArpHdr, own: &[u8; 6]) -> bool {
    let probe = u32::from_ne_bytes(arp.spa) == 0;
    let group = arp.sha[0] & 1 != 0;
    let zero = same_mac(&arp.sha, &[0; 6]);
    let to_us = same_mac(&eth.dst, &BROADCAST) || same_mac(&eth.dst, own);
    !probe && !group && !zero && to_us
}

/// Whether an IPv6 source could have sent a datagram to be forwarded: not `::`, `::1`,
/// multicast (ff00::/8), link-local (fe80::/10, never forwarded: RFC 4291 2.5.6), IPv4-mapped
/// (::ffff:0:0/96, never on the wire: RFC 4291 2.5.5.2), and not the anycast address itself.
/// Works on the addresses as [`anycast_common::ip6_key`] words, already read from the frame
/// once: a word test costs what a byte test would.
#[inline(always)]
pub fn source_ok6(src: &Ip6Key, dst: &Ip6Key) -> bool {
    let first = src[0].to_ne_bytes();
    let high_zero = src[0] | src[1] == 0;
    let unspecified_or_loopback =
        high_zero && src[2] == 0 && (src[3] == 0 || src[3] == u32::from_ne_bytes([0, 0, 0, 1]));
    let mapped = high_zero && src[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    let multicast = first[0] == 0xff;
    let link_local = first[0] == 0xfe && first[1] & 0xc0 == 0x80;
    let same = (src[0] ^ dst[0]) | (src[1] ^ dst[1]) | (src[2] ^ dst[2]) | (src[3] ^ dst[3]) == 0;
    !unspecified_or_loopback && !mapped && !multicast && !link_local && !same
}

/// Whether `ip` is `::`.
#[inline(always)]
pub fn unspecified6(ip: &[u8; 16]) -> bool {
    let mut any = 0u8;
    for b in ip {
        any |= *b;
    }
    any == 0
}
