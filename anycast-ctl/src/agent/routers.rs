//! Multicast mode's forwarder election: which router puts an address's group frames on a
//! member LAN (RFC 1546: "routers should take care not to forward a datagram if they believe
//! that another router will also be forwarding it").
//!
//! - Every agent sends a router hello on each of its interfaces every `router_hello_ms`: an
//!   advertisement (docs/advert-format.md) with the `FLAG_ROUTER` flag, no membership, and the
//!   router's MAC on that link, signed and checked like every advertisement (TTL 255, key,
//!   sender = IP source, replay window, sequence number), so no host without the key can take
//!   or refuse the role.
//! - The rule: on each LAN, the router with the lowest IPv4 address among itself and the
//!   routers heard there within [`HOLD_HELLOS`] hello intervals forwards. Every other router
//!   relays its multicast-mode datagrams for that LAN to the forwarder's MAC (`MCAST_LANS`),
//!   so each datagram reaches the LAN once, whichever router it came to.
//! - A hello counts only from inside the LAN's IPv4 subnet and with a MAC other than this
//!   router's own there: a genuine hello copied from another LAN (its signature, TTL and
//!   sequence number all still good where that router was never heard) would otherwise make
//!   this router relay to a MAC that is not on the LAN.
//! - A router that hears no other router (or runs no agent) forwards itself: the dataplane's
//!   default is an absent `MCAST_LANS` entry. The agent is `MCAST_LANS`'s only writer.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anycast_common::{
    McastLan,
    advert::{FLAG_ROUTER, Packet, Repr},
};
use socket2::Socket;

use crate::{Error, Result, advert_auth, dataplane::Maps, members::now_ms, net::Netlink, sys};

/// A router not heard for this many hello intervals is gone.
pub const HOLD_HELLOS: u32 = 3;

/// One LAN (agent interface) this router says hello on.
struct Lan {
    ifindex: u32,
    addr: Ipv4Addr,
    prefix: u8,
    mac: [u8; 6],
    socket: Socket,
}

/// Another router heard on a LAN.
#[derive(Clone, Copy, Debug)]
struct Heard {
    mac: [u8; 6],
    until: Instant,
}

pub struct Routers {
    lans: Vec<Lan>,
    heard: HashMap<(u32, Ipv4Addr), Heard>,
    interval: Duration,
    group: SocketAddrV4,
    key: Option<(u32, Vec<u8>)>,
    seq: u64,
    /// What `MCAST_LANS` holds for each LAN, as this agent last wrote it.
    written: HashMap<u32, Option<[u8; 6]>>,
}

impl Routers {
    /// The election on `devs` (name, ifindex); `interval` zero turns hellos off (this router
    /// then always forwards itself). Interfaces without an IPv4 address take no part.
    pub async fn new(
        nl: &Netlink,
        devs: &HashMap<u32, String>,
        (interval, group, port): (Duration, Ipv4Addr, u16),
        key: Option<(u32, Vec<u8>)>,
    ) -> Result<Self> {
        let mut lans = Vec::new();
        if !interval.is_zero() {
            for (&ifindex, name) in devs {
                let Some((addr, prefix)) = nl.first_ipv4_net(ifindex).await? else {
                    continue;
                };
                let mac = nl.link_by_index(ifindex).await?.mac;
                let socket = sys::sender(name, addr)
                    .map_err(|e| Error::io(format!("router hello socket on {name}"), e))?;
                lans.push(Lan {
                    ifindex,
                    addr,
                    prefix,
                    mac,
                    socket,
                });
            }
        }
        Ok(Self {
            lans,
            heard: HashMap::new(),
            interval,
            group: SocketAddrV4::new(group, port),
            key,
            // As announce: from the wall clock in microseconds, so a restart continues above.
            seq: now_ms().saturating_mul(1000),
            written: HashMap::new(),
        })
    }

    /// The hello interval (zero: off).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Sends one hello on each LAN (a failure is logged; the next interval tries again).
    pub fn hello(&mut self) {
        for lan in &self.lans {
            self.seq += 1;
            match hello_message(lan, self.seq, self.key.as_ref()) {
                Ok(msg) => {
                    if let Err(e) = lan.socket.send_to(&msg, &self.group.into()) {
                        tracing::warn!(error = %e, ifindex = lan.ifindex, "sending a router hello");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "building a router hello"),
            }
        }
    }

    /// Records an accepted hello from `sender` on `ifindex` (with its MAC, if it sent one).
    pub fn heard(&mut self, ifindex: u32, sender: Ipv4Addr, mac: Option<[u8; 6]>, now: Instant) {
        let Some(mac) = mac else {
            return;
        };
        if self.lans.iter().any(|l| l.addr == sender) {
            return;
        }
        let Some(lan) = self.lans.iter().find(|l| l.ifindex == ifindex) else {
            return;
        };
        if !plausible(lan, sender, mac) {
            tracing::debug!(%sender, ifindex, "router hello from off the LAN ignored");
            return;
        }
        let until = now + self.interval * HOLD_HELLOS;
        self.heard.insert((ifindex, sender), Heard { mac, until });
    }

    /// Forgets routers not heard for [`HOLD_HELLOS`] intervals and writes each LAN's outcome
    /// into `MCAST_LANS` where it changed.
    pub fn elect(&mut self, maps: &mut Maps, now: Instant) {
        self.heard.retain(|_, h| h.until > now);
        for lan in &self.lans {
            let forwarder = (self.heard.iter())
                .filter(|((ifindex, ip), _)| *ifindex == lan.ifindex && *ip < lan.addr)
                .min_by_key(|((_, ip), _)| *ip)
                .map(|(_, h)| h.mac);
            if self.written.get(&lan.ifindex) == Some(&forwarder) {
                continue;
            }
            let done = match forwarder {
                Some(relay_mac) => {
                    let entry = McastLan {
                        relay_mac,
                        _pad: [0; 2],
                    };
                    maps.mcast_lans.insert(lan.ifindex, entry, 0)
                }
                None if maps.mcast_lans.get(&lan.ifindex, 0).is_err() => Ok(()),
                None => maps.mcast_lans.remove(&lan.ifindex),
            };
            match done {
                Ok(()) => {
                    tracing::info!(ifindex = lan.ifindex, relay_to = ?forwarder.map(crate::mac::MacAddr), "multicast forwarder elected");
                    self.written.insert(lan.ifindex, forwarder);
                }
                Err(e) => tracing::warn!(error = %e, "writing MCAST_LANS"),
            }
        }
    }
}

impl Routers {
    /// Removes what this agent wrote into `MCAST_LANS` (on exit: without an election running,
    /// this router forwards onto its LANs itself rather than relay to a router that may go).
    pub fn clear(&mut self, maps: &mut Maps) {
        for (ifindex, relay) in self.written.drain() {
            if relay.is_some() {
                let _ = maps.mcast_lans.remove(&ifindex);
            }
        }
    }
}

/// Whether a hello from `sender` with `mac` can come from a router on `lan`: the sender inside
/// the LAN's subnet, the MAC not this router's own.
fn plausible(lan: &Lan, sender: Ipv4Addr, mac: [u8; 6]) -> bool {
    ipnet::Ipv4Net::new(lan.addr, lan.prefix).is_ok_and(|net| net.contains(&sender))
        && mac != lan.mac
}

/// A signed router hello from `lan`.
fn hello_message(lan: &Lan, seq: u64, key: Option<&(u32, Vec<u8>)>) -> Result<Vec<u8>> {
    let mut repr = Repr::new(lan.addr, seq, now_ms(), key.map_or(0, |k| k.0));
    repr.set_link_addr(lan.mac)
        .map_err(|e| Error::Usage(format!("router hello: {e}")))?;
    let mut buf = vec![0u8; repr.buffer_len()];
    let mut packet = Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut packet);
    packet.set_flags(FLAG_ROUTER);
    if let Some((id, secret)) = key {
        advert_auth::sign(&mut buf, *id, secret)
            .map_err(|e| Error::Usage(format!("signing a router hello: {e:?}")))?;
    }
    Ok(buf)
}

/// Whether an accepted advertisement is a router hello.
pub fn is_hello(datagram: &[u8]) -> bool {
    Packet::new_checked(datagram).is_ok_and(|p| p.flags() & FLAG_ROUTER != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_count_only_from_the_lan() {
        let lan = Lan {
            ifindex: 3,
            addr: Ipv4Addr::new(203, 0, 113, 3),
            prefix: 24,
            mac: [2, 0, 0, 0, 0, 3],
            socket: Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap(),
        };
        let other = [2, 0, 0, 0, 0, 2];
        assert!(plausible(&lan, Ipv4Addr::new(203, 0, 113, 2), other));
        // A hello copied from another LAN, or naming this router's own MAC.
        assert!(!plausible(&lan, Ipv4Addr::new(192, 0, 2, 1), other));
        assert!(!plausible(&lan, Ipv4Addr::new(203, 0, 113, 2), lan.mac));

        let mut routers = Routers {
            lans: vec![lan],
            heard: HashMap::new(),
            interval: Duration::from_millis(100),
            group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 15, 46), 5400),
            key: None,
            seq: 0,
            written: HashMap::new(),
        };
        let now = Instant::now();
        routers.heard(3, Ipv4Addr::new(192, 0, 2, 1), Some(other), now);
        routers.heard(4, Ipv4Addr::new(203, 0, 113, 1), Some(other), now);
        assert!(routers.heard.is_empty(), "{:?}", routers.heard);
        routers.heard(3, Ipv4Addr::new(203, 0, 113, 2), Some(other), now);
        assert_eq!(routers.heard.len(), 1);
    }
}
