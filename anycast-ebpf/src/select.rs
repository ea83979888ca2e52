//! Member choice: where a datagram to an anycast address gets its member.
//!
//! In order:
//! 1. A later fragment (no ports) follows its first fragment (`FRAGS`); an orphan is placed by
//!    its 3-tuple and counted.
//! 2. A flow in the connection table (`flows`) stays on its member while that member is in the
//!    set, whatever the Maglev table says now. A TCP SYN without ACK starts a new connection and
//!    skips this step; a TCP RST ends one.
//! 3. Otherwise the address's only member taking new flows (`MemberSet::single`), if it has
//!    one, or else the flow hash indexes the address's Maglev table (`TABLES`), which names a
//!    member position; the choice is recorded in the connection table.
//!
//! The flow hash covers the 5-tuple for TCP and UDP (`ports` is 0 for other protocols and later
//! fragments), and source, destination and protocol otherwise. Both families go through
//! [`choose`]; only the fragment table, the flow key and the hash differ ([`member`] for IPv4,
//! `ipv6` for IPv6).
use anycast_common::{
    FragKey, MAX_MEMBERS, MemberRef, MemberSet, NO_HOST, Stat, flow_hash, pick_index,
    proto::{IPPROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN},
    table_position, table_word_of,
};
use aya_ebpf::maps::LruHashMap;

use crate::{
    flows::{self, Flow},
    maps::{Addr, FRAGS, TABLES},
    packet::Ipv4Hdr,
    stats,
};

/// A datagram as member choice sees it, whatever its family.
pub struct Datagram<K> {
    /// Its key in the family's fragment table.
    pub frag_key: K,
    /// A fragment other than the first (it has no ports).
    pub later_fragment: bool,
    /// The first of several fragments.
    pub first_fragment: bool,
    pub flow: Flow,
    pub hash: u32,
    pub tcp_flags: u8,
}

#[inline(always)]
pub fn member(ip: &Ipv4Hdr, ports: u32, tcp_flags: u8, addr: &Addr) -> Option<MemberRef> {
    let flow = Flow {
        src: ip.src(),
        dst: ip.dst(),
        ports,
        proto: ip.proto as u32,
    };
    let datagram = Datagram {
        frag_key: FragKey {
            src: ip.src(),
            dst: ip.dst(),
            id: u16::from_ne_bytes(ip.id),
            proto: ip.proto,
            _pad: 0,
        },
        later_fragment: ip.frag_offset() != 0,
        first_fragment: ip.more_fragments() && ip.frag_offset() == 0,
        hash: flow_hash(flow.src, flow.dst, ports, ip.proto),
        flow,
        tcp_flags,
    };
    choose(&FRAGS, datagram, addr)
}

/// The member of a datagram of either family, `frags` being its family's fragment table.
#[inline(always)]
pub fn choose<K>(
    frags: &LruHashMap<K, MemberRef>,
    d: Datagram<K>,
    addr: &Addr,
) -> Option<MemberRef> {
    let frag_key = d.frag_key;
    if d.later_fragment {
        if let Some(member) = frags.get_ptr(&frag_key) {
            // SAFETY: LRU values are plain Copy data; a concurrent eviction can at worst make
            // this read a recycled entry, which the membership check below rejects or accepts
            // as a live member.
            let member = unsafe { *member };
            if addr
                .set
                .members
                .iter()
                .any(|m| *m == member && m.host != NO_HOST)
            {
                return Some(member);
            }
        }
        stats::global(Stat::FragOrphan);
    }

    let (flow, hash, tcp_flags) = (d.flow, d.hash, d.tcp_flags);
    let tcp = flow.proto & 0xff == IPPROTO_TCP as u32;
    let new_connection = tcp && tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0;
    let known = if new_connection {
        None
    } else {
        flows::lookup(hash, &flow, addr.set)
    };
    let member = match known {
        Some((member, _)) => member,
        None => {
            let (member, position) = new_flow(addr, hash)?;
            flows::insert(hash, &flow, member, position);
            member
        }
    };
    if tcp && tcp_flags & TCP_RST != 0 {
        flows::forget(hash, &flow);
    }
    if d.first_fragment {
        let _ = frags.insert(&frag_key, &member, 0);
    }
    Some(member)
}

/// The member that new flows with `hash` go to, and its position: the set's single member, or
/// the one the address's Maglev table gives `hash`.
#[inline(always)]
fn new_flow(addr: &Addr, hash: u32) -> Option<(MemberRef, u32)> {
    let set: &MemberSet = addr.set;
    let position = if set.single != 0 {
        (set.single - 1) as usize
    } else {
        if set.table_size == 0 {
            return None;
        }
        let index = pick_index(hash, set.table_size);
        let (word, shift) = table_word_of(index);
        let packed = TABLES.get_value(addr.slot, &word)?;
        table_position(*packed, shift) as usize
    };
    if position >= MAX_MEMBERS {
        return None;
    }
    let member = set.members[position];
    if member.host == NO_HOST {
        return None;
    }
    Some((member, position as u32))
}
