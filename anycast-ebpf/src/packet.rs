//! Header layouts and bounds-checked access to the frame.
//!
//! Invariant: every header type here is `#[repr(C)]` of byte arrays only (alignment 1), so a
//! header may sit at any offset; [`header`] is the only place that turns a packet offset into a
//! reference, and only after checking it against `data_end`. Byte arrays are copied and
//! compared in the widest pieces that fit ([`copy`], [`pieces`], [`load`]).
use core::mem::size_of;

use anycast_common::proto::{ETH_HLEN, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

// The verdicts named in anycast-common are the kernel's.
const _: () = {
    assert!(XDP_ABORTED == xdp_action::XDP_ABORTED);
    assert!(XDP_DROP == xdp_action::XDP_DROP);
    assert!(XDP_PASS == xdp_action::XDP_PASS);
    assert!(XDP_TX == xdp_action::XDP_TX);
    assert!(XDP_REDIRECT == xdp_action::XDP_REDIRECT);
};

/// Returns the header of type `T` at `offset`, or `None` if the frame is too short.
#[inline(always)]
pub fn header<'a, T>(ctx: &XdpContext, offset: usize) -> Option<&'a mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    // SAFETY: the range [start + offset, start + offset + size_of::<T>()) lies inside the frame
    // (checked just above, which is also what the verifier checks); T has alignment 1 and every
    // bit pattern is valid for it; the frame is not otherwise referenced while the program runs.
    Some(unsafe { &mut *((start + offset) as *mut T) })
}

/// Copies a MAC address (see [`copy`]).
#[inline(always)]
pub fn copy_mac(dst: &mut [u8; 6], src: &[u8; 6]) {
    copy(dst, src);
}

/// Copies `N` bytes in as few loads and stores as [`pieces`] allows: a MAC is a 4-byte and a
/// 2-byte copy, an IPv6 address two 8-byte ones. `dst = *src` between packet and map memory
/// would instead compile to a call into an out-of-line `memmove` subprogram, several times
/// slower.
#[inline(always)]
pub fn copy<const N: usize>(dst: &mut [u8; N], src: &[u8; N]) {
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY: `pieces` stays inside the two arrays, which are valid and distinct (`dst` is
    // exclusive).
    pieces::<N>(|at, width| unsafe { store(d.add(at), width, load(s.add(at), width)) });
}

/// A value on an 8-byte boundary: a byte buffer on the stack that wide accesses write through
/// a pointer must be aligned (the verifier refuses misaligned stack accesses on every
/// architecture), where a `[u8; N]` alone may be placed at any offset.
#[repr(C, align(8))]
pub struct Aligned<T>(pub T);

/// Calls `f(offset, width)` for the pieces `N` bytes split into: 8-byte ones while they fit,
/// then at most one each of 4, 2 and 1 bytes. With `N` a constant this unrolls into straight
/// code; the eBPF build allows misaligned accesses (`anycast-ctl/build.rs`), so each piece is
/// one load or store at any offset of packet or map memory (stack memory must be aligned:
/// [`Aligned`]).
#[inline(always)]
pub fn pieces<const N: usize>(mut f: impl FnMut(usize, usize)) {
    let mut at = 0;
    while at + 8 <= N {
        f(at, 8);
        at += 8;
    }
    for width in [4, 2, 1] {
        if at + width <= N {
            f(at, width);
            at += width;
        }
    }
}

/// The native-endian word of `width` bytes (8, 4, 2 or 1) at `p`, widened.
///
/// # Safety
/// `p .. p + width` must be readable.
#[inline(always)]
pub unsafe fn load(p: *const u8, width: usize) -> u64 {
    // SAFETY: readable (the caller's promise); unaligned reads need no alignment and any bit
    // pattern is a valid integer.
    unsafe {
        match width {
            8 => (p as *const u64).read_unaligned(),
            4 => (p as *const u32).read_unaligned() as u64,
            2 => (p as *const u16).read_unaligned() as u64,
            _ => *p as u64,
        }
    }
}

/// Stores the low `width` bytes (8, 4, 2 or 1) of `v` at `p`, as [`load`] reads them.
///
/// # Safety
/// `p .. p + width` must be writable and not otherwise referenced.
#[inline(always)]
unsafe fn store(p: *mut u8, width: usize, v: u64) {
    // SAFETY: as promised by the caller; unaligned writes need no alignment.
    unsafe {
        match width {
            8 => (p as *mut u64).write_unaligned(v),
            4 => (p as *mut u32).write_unaligned(v as u32),
            2 => (p as *mut u16).write_unaligned(v as u16),
            _ => *p = v as u8,
        }
    }
}

/// The one's-complement sum, unfolded, of `bytes` (`N` a multiple of 4) in native-endian
/// 4-byte words: RFC 1071 lets the sum be taken in wider words and in either byte order, the
/// folded result ([`fold`]) coming out in the same order. Every checksum of the dataplane
/// (IPv4 header, ICMPv6) is summed with it.
#[inline(always)]
pub fn add_words<const N: usize>(bytes: &[u8; N]) -> u64 {
    const { assert!(N % 4 == 0) };
    let p = bytes.as_ptr();
    let mut sum = 0;
    let mut at = 0;
    while at < N {
        // SAFETY: `at + 4 <= N`: inside the array.
        sum += unsafe { load(p.add(at), 4) };
        at += 4;
    }
    sum
}

/// Folds a sum of at most 2^32 words to 16 bits, end-around carries included.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

impl EthHdr {
    #[inline(always)]
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes(self.proto)
    }
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    /// Offset of the L4 header from the start of the frame, or `None` for a header that is not
    /// IPv4 or claims fewer than 20 bytes.
    #[inline(always)]
    pub fn l4_offset(&self) -> Option<usize> {
        let ihl = (self.version_ihl & 0x0f) as usize;
        if self.version_ihl >> 4 != 4 || ihl < 5 {
            return None;
        }
        Some(ETH_HLEN + ihl * 4)
    }

    #[inline(always)]
    pub fn src(&self) -> u32 {
        u32::from_ne_bytes(self.src)
    }

    #[inline(always)]
    pub fn dst(&self) -> u32 {
        u32::from_ne_bytes(self.dst)
    }

    /// Fragment offset in 8-byte units (0 for an unfragmented datagram or a first fragment).
    #[inline(always)]
    pub fn frag_offset(&self) -> u16 {
        u16::from_be_bytes(self.frag_off) & 0x1fff
    }

    /// The "more fragments" flag.
    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        u16::from_be_bytes(self.frag_off) & 0x2000 != 0
    }
}

/// ARP for IPv4 over Ethernet.
#[repr(C)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub op: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// The first 14 bytes of a TCP header (through the flags).
#[repr(C)]
pub struct TcpHead {
    pub ports: [u8; 4],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub offset: u8,
    pub flags: u8,
}

/// The first four bytes of a TCP or UDP header.
#[repr(C)]
pub struct Ports {
    pub bytes: [u8; 4],
}

/// The fixed IPv6 header.
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

impl Ipv6Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.vtc_flow[0] >> 4
    }
}

/// The first two bytes of a hop-by-hop, routing or destination options header: the next
/// header and the length in 8-byte units, not counting the first 8 bytes.
#[repr(C)]
pub struct ExtHdr {
    pub next_hdr: u8,
    pub len: u8,
}

/// The IPv6 fragment header.
#[repr(C)]
pub struct FragHdr {
    pub next_hdr: u8,
    pub reserved: u8,
    /// Offset in 8-byte units (13 bits), 2 reserved bits, the "more fragments" bit.
    pub offset_m: [u8; 2],
    pub id: [u8; 4],
}

/// A neighbour solicitation or advertisement, without options (RFC 4861 4.3, 4.4).
#[repr(C)]
pub struct NdMsg {
    pub icmp_type: u8,
    pub code: u8,
    pub checksum: [u8; 2],
    /// Reserved in a solicitation; the R, S, O flags and reserved bits in an advertisement.
    pub flags: [u8; 4],
    pub target: [u8; 16],
}

/// A link-layer address option for Ethernet (8 bytes).
#[repr(C)]
pub struct NdLinkOpt {
    pub opt_type: u8,
    /// In 8-byte units.
    pub len: u8,
    pub mac: [u8; 6],
}

/// A whole neighbour advertisement frame as the dataplane sends it: Ethernet, IPv6, the
/// advertisement and its target link-layer address option.
#[repr(C)]
pub struct NaFrame {
    pub eth: EthHdr,
    pub ip: Ipv6Hdr,
    pub na: NdMsg,
    pub opt: NdLinkOpt,
}
