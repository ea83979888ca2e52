//! Direct ARP mode: a client's ARP request for a direct-mode address is answered with the MAC
//! of one member, so the client sends to that member itself and the router carries none of its
//! data.
//!
//! - The member is the one the live set's Maglev table (or single member) gives
//!   `requester_hash(client, address)` (`select::table_pick`), so clients spread by weight and
//!   every router with the same members gives a client the same member.
//! - Only a member in service, on the link the request came in on, with a known MAC, can be
//!   given: otherwise `arp` answers as in proxy mode (the router's MAC) and the router forwards
//!   that client's datagrams, with the proxy path's fallback. (A table member is out of service
//!   only between a removal's first store and its rebuilt table, milliseconds; the fallback's
//!   loop over every member is left to the proxy path: here it cost the verifier about 175,000
//!   of its 1,000,000 instructions; the whole direct path costs about 3,000.)
//! - The choice is recorded in `REQUESTERS` (client -> member, interface, client MAC), which
//!   user space walks to repoint the clients of a member that goes (`anycast-ctl`'s `repoint`).
//!   Nothing here is learned for forwarding: the record only says whom to tell.
use anycast_common::{
    Requester, RequesterKey,
    direct::{StatOf, requester_hash, stat_key},
};
use aya_ebpf::bindings::BPF_NOEXIST;

use crate::{
    maps::{self, Addr, DIRECT_REPLIES, REQUESTERS},
    select,
};

/// A client's ARP request for a direct-mode address.
pub struct Ask {
    /// The address asked for (`ip_key`).
    pub anycast: u32,
    /// The client's address (`ip_key`) and MAC.
    pub requester: u32,
    pub mac: [u8; 6],
    /// The interface the request came in on.
    pub ingress: u32,
}

/// Writes into `answer` the MAC of the member the client of `ask` is given, recorded and
/// counted; returns false (leaving `answer` alone) if no member on the client's link can take
/// it.
///
/// A function of its own (BPF calls take at most five arguments, hence [`Ask`]), with the MAC
/// written through a pointer: returned by value, the MAC shared a register with a map pointer
/// on one path, which the verifier refuses.
#[inline(never)]
pub fn member_mac(addr: &Addr, ask: &Ask, answer: &mut [u8; 6]) -> bool {
    let Ask {
        anycast,
        requester,
        ref mac,
        ingress,
    } = *ask;
    let Some((member, position)) = select::table_pick(addr, requester_hash(requester, anycast))
    else {
        return false;
    };
    let Some(host) = maps::host(member.host) else {
        return false;
    };
    if !host.mac_known() || host.ifindex != ingress {
        return false;
    }
    let key = RequesterKey {
        slot: addr.slot,
        ip: requester,
    };
    let value = Requester {
        member,
        position,
        ifindex: ingress,
        mac: *mac,
        _pad: [0; 2],
    };
    let _ = REQUESTERS.insert(&key, &value, 0);
    count(StatOf::Addr(addr.slot));
    count(StatOf::Member(member.counter));
    crate::packet::copy_mac(answer, &host.mac);
    true
}

/// Adds one to a `DIRECT_REPLIES` counter (per CPU; user space sums them).
#[inline(always)]
fn count(of: StatOf) {
    let key = stat_key(of);
    match DIRECT_REPLIES.get_ptr_mut(&key) {
        // SAFETY: this CPU's copy of the value; XDP runs with migration disabled, so nothing
        // else touches it now.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = DIRECT_REPLIES.insert(&key, &1, BPF_NOEXIST as u64);
        }
    }
}
