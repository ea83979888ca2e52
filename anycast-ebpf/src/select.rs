//! Member choice: where a datagram to an anycast address gets its member.
//!
//! `ports` are the TCP/UDP ports (0 for other protocols and later fragments). The flow hash covers the 5-tuple for TCP and UDP, and source, destination and protocol
//! otherwise, and indexes the address's member set. A first fragment records its member in
//! `FRAGS`, so the later fragments of the datagram (which carry no ports) follow it; a later
//! fragment whose first fragment was not seen is placed by its 3-tuple and counted.
use crate::{maps::FRAGS, packet::Ipv4Hdr, stats};
use anycast_common::{
    FragKey, MAX_MEMBERS, MemberRef, MemberSet, STAT_FRAG_ORPHAN, flow_hash, pick_index,
};

#[inline(always)]
pub fn member(ip: &Ipv4Hdr, ports: u32, set: &MemberSet) -> Option<MemberRef> {
    let n = set.n_members;
    if n == 0 {
        return None;
    }
    let fragmented = ip.more_fragments() || ip.frag_offset() != 0;
    let frag_key = FragKey {
        src: ip.src(),
        dst: ip.dst(),
        id: u16::from_ne_bytes(ip.id),
        proto: ip.proto,
        _pad: 0,
    };
    if ip.frag_offset() != 0 {
        if let Some(member) = FRAGS.get_ptr(&frag_key) {
            // SAFETY: LRU values are plain Copy data; a concurrent eviction can at worst make
            // this read a recycled entry, which still names some member.
            return Some(unsafe { *member });
        }
        stats::global(STAT_FRAG_ORPHAN);
    }

    let hash = flow_hash(ip.src(), ip.dst(), ports, ip.proto);
    let index = pick_index(hash, n) as usize;
    if index >= MAX_MEMBERS {
        return None;
    }
    let member = set.members[index];
    if fragmented && ip.frag_offset() == 0 {
        let _ = FRAGS.insert(&frag_key, &member, 0);
    }
    Some(member)
}
