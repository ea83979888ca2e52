//! Member choice: where a datagram to an anycast address gets its member.
//!
//! In order:
//! 1. A later fragment (no ports) follows its first fragment (`FRAGS`); an orphan is placed by
//!    its 3-tuple and counted.
//! 2. A flow in the connection table (`flows`) stays on its member while that member is in the
//!    set, whatever the Maglev table says now. A TCP SYN without ACK starts a new connection and
//!    skips this step; a TCP RST ends one. An address that tracks TCP only
//!    (`ADDR_TRACK_TCP_ONLY`) skips this step, and the next one's record, for everything else:
//!    its UDP datagrams cost no connection-table line.
//! 3. Otherwise the address's only member taking new flows (`MemberSet::single`), if it has
//!    one, or else the flow hash indexes the live set's Maglev table (`TABLES`), which names a
//!    member position; the choice is recorded in the connection table.
//!
//!    Steps 2 and 3 read the set's `SetHead` in the slot's `SlotState` line for the single
//!    member, and the set only for a member the table or the connection table names at
//!    another position: whole datagrams of a single-member address do not read its
//!    `MemberSet`.
//! 4. A member out of service (`SlotState::down`: left, expired, link down or deleted, while
//!    its rebuilt set and table follow) is never chosen in any step: its flows go to the
//!    fallback, the eligible member in service with the highest `fallback_score` for the flow
//!    (or, with none left, the best standby member). The fallback depends only on the flow and
//!    the members' addresses, so every CPU and every router with the same members agrees, and
//!    no flow of a member in service moves.
//!
//! The flow hash covers the 5-tuple for TCP and UDP (`ports` is 0 for other protocols and later
//! fragments), and source, destination and protocol otherwise. Both families go through
//! [`choose`]; only the fragment table, the flow key and the hash differ ([`member`] for IPv4,
//! `ipv6` for IPv6).
use anycast_common::{
    FragKey, FragKey6, Ip6Key, MAX_MEMBERS, MemberRef, NO_HOST, Stat, fallback_score, flow_hash,
    fold6, pick_index, position_bit,
    proto::{IPPROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN},
    table_position, table_word_of,
};
use aya_ebpf::maps::LruHashMap;

use crate::{
    flows::{self, Flow},
    maps::{self, Addr, FRAGS, TABLES},
    packet::Ipv4Hdr,
    stats,
};

/// A family's side of member choice, named by its fragment key: a member's identity in the
/// fallback (`anycast_common::member_identity`), specialised per family so that the fallback's
/// loop over the members has no branch on the family (the verifier walks every iteration).
pub trait Family {
    fn identity(member: &Ip6Key) -> u32;
}

impl Family for FragKey {
    /// An IPv4 member's `any_key` is `::ffff:a.b.c.d`: its last word is its `ip_key`.
    #[inline(always)]
    fn identity(member: &Ip6Key) -> u32 {
        member[3]
    }
}

impl Family for FragKey6 {
    #[inline(always)]
    fn identity(member: &Ip6Key) -> u32 {
        fold6(*member)
    }
}

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
    let flow = Flow::new(ip.src(), ports, ip.proto, addr);
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
        hash: flow_hash(ip.src(), ip.dst(), ports, ip.proto),
        flow,
        tcp_flags,
    };
    choose(&FRAGS, datagram, addr)
}

/// The member of a datagram of either family, `frags` being its family's fragment table.
#[inline(always)]
pub fn choose<K: Family>(
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
            if (0..MAX_MEMBERS as u32).any(|p| addr.serves(p, &member)) {
                return Some(member);
            }
        }
        stats::global(Stat::FragOrphan);
    }

    let (flow, hash, tcp_flags) = (d.flow, d.hash, d.tcp_flags);
    let tcp = flow.proto() == IPPROTO_TCP;
    let new_connection = tcp && tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0;
    // An untracked datagram has no set: the lookup and the insert find none (`flows::Index`).
    let untracked = if tcp { 0 } else { addr.tcp_only };
    let index = flows::Index::new(hash, untracked);
    let known = if new_connection {
        None
    } else {
        flows::lookup(index, &flow, addr)
    };
    let member = match known {
        Some((member, _)) => member,
        None => {
            let (member, position) = new_flow::<K>(addr, hash)?;
            flows::insert(index, &flow, member, position);
            member
        }
    };
    if tcp && tcp_flags & TCP_RST != 0 {
        flows::forget(index, &flow);
    }
    if d.first_fragment {
        let _ = frags.insert(&frag_key, &member, 0);
    }
    Some(member)
}

/// The member that new flows with `hash` go to, and its position: [`table_pick`]'s, or the
/// fallback if that one is out of service.
#[inline(always)]
fn new_flow<K: Family>(addr: &Addr, hash: u32) -> Option<(MemberRef, u32)> {
    if let Some(picked) = table_pick(addr, hash) {
        return Some(picked);
    }
    fallback::<K>(addr, hash)
}

/// The set's single member, or the one the live set's Maglev table gives `hash`, with its
/// position; `None` if that one is out of service. Direct mode places its clients with it
/// (`direct`).
#[inline(always)]
pub fn table_pick(addr: &Addr, hash: u32) -> Option<(MemberRef, u32)> {
    let head = &addr.head;
    let position = if head.single != 0 {
        head.single - 1
    } else {
        if head.table_size == 0 {
            return None;
        }
        let index = pick_index(hash, head.table_size);
        let (word, shift) = table_word_of(index);
        let packed = TABLES.get_value(addr.set_index, &word)?;
        table_position(*packed, shift)
    };
    Some((addr.serving_fast(position)?, position))
}

/// The fallback for a flow whose member is out of service: among the eligible members in
/// service (else the standby ones), the one with the highest `fallback_score`, ties to the
/// higher address.
#[inline(always)]
fn fallback<K: Family>(addr: &Addr, hash: u32) -> Option<(MemberRef, u32)> {
    let set = addr.set;
    let eligible = set.eligible & !addr.down;
    let pool = if eligible != 0 {
        eligible
    } else {
        set.standby & !addr.down
    };
    let mut best = None;
    let mut best_score = (0, 0);
    for (position, member) in set.members.iter().enumerate() {
        let position = position as u32;
        if pool & position_bit(position) == 0 || member.host == NO_HOST {
            continue;
        }
        let Some(host) = maps::host(member.host) else {
            continue;
        };
        let id = K::identity(&host.ip);
        let score = (fallback_score(hash, id), id);
        if best.is_none() || score > best_score {
            best = Some((*member, position));
            best_score = score;
        }
    }
    best
}
