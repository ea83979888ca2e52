//! Link-level multicast mode: a datagram to an address in this mode goes once onto its
//! members' LAN, to the address's group MAC (`anycast_common::multicast::group_mac`), so every
//! member on the LAN gets it and every other host discards it (the address is not theirs).
//!
//! - The LAN is the one of the member `select` picks for the datagram, as in proxy mode (the
//!   members of an address in this mode are on one LAN; were they on several, each flow's
//!   datagrams would go to the LAN of its member). Only the Ethernet destination differs:
//!   [`retarget`] replaces the member's MAC by the group's. This costs the verifier one branch,
//!   where a path of its own (finding the LAN anew) cost more than the program's budget.
//! - One router per LAN puts the group frames on it (RFC 1546: "routers should take care not
//!   to forward a datagram if they believe that another router will also be forwarding it").
//!   When the agent's election chose another router for the LAN (`MCAST_LANS`), this one
//!   relays the datagram to that router's MAC, unicast, and that router sends it to the group:
//!   each datagram reaches the LAN once, whichever router it came to.
//! - Every forward decrements the TTL (a relay too), so routers that disagree for a moment
//!   about who forwards cannot keep a datagram between them.
use anycast_common::multicast::group_mac;

use crate::{
    maps::MCAST_LANS,
    packet::{self, EthHdr},
};

/// Points a frame rewritten for a member on `egress` at the group of `anycast` (wire octets),
/// or at the router elected for that LAN. Not inlined, so that the forward path's states do
/// not split on it.
#[inline(never)]
pub fn retarget(eth: &mut EthHdr, egress: u32, anycast: [u8; 4]) {
    match MCAST_LANS.get_ptr(&egress) {
        // SAFETY: a map value of plain bytes; user space replaces it with one update.
        Some(lan) => packet::copy_mac(&mut eth.dst, unsafe { &(*lan).relay_mac }),
        None => packet::copy_mac(&mut eth.dst, &group_mac(anycast)),
    }
}
