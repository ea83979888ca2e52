//! An anycast address's options in its bucket's mode word (`AddrBucket::mode`): the delivery
//! mode, how its datagrams reach its members (proxy, direct ARP, link-level multicast), and
//! which flows the connection table keeps (`Track`). Set by the operator alone; kept by every
//! other change of the address.
use std::net::IpAddr;

use anycast_common::{
    ADDR_MODE_DIRECT, ADDR_MODE_MASK, ADDR_MODE_MULTICAST, ADDR_MODE_PROXY, ADDR_TRACK_TCP_ONLY,
};
use serde::Serialize;

use crate::{
    Error, Result,
    dataplane::{Bucket, Maps},
    pin::PinDir,
};

/// `member add --mode`, `member mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The router answers ARP with its own MAC and forwards every datagram to a member chosen
    /// per flow.
    Proxy,
    /// The router answers a client's ARP with the MAC of one member on the client's link,
    /// chosen per client; the client's datagrams then go to it directly, and move when it goes.
    Direct,
    /// The router sends each datagram once onto the members' LAN, to the address's link-level
    /// group MAC, which every member joins: every member gets every datagram.
    Multicast,
}

impl Mode {
    /// The mode of a bucket's mode word (its `ADDR_MODE_*` byte).
    pub fn from_word(word: u32) -> Self {
        match word & ADDR_MODE_MASK {
            ADDR_MODE_DIRECT => Mode::Direct,
            ADDR_MODE_MULTICAST => Mode::Multicast,
            _ => Mode::Proxy,
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            Mode::Proxy => ADDR_MODE_PROXY,
            Mode::Direct => ADDR_MODE_DIRECT,
            Mode::Multicast => ADDR_MODE_MULTICAST,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Proxy => "proxy",
            Mode::Direct => "direct",
            Mode::Multicast => "multicast",
        }
    }
}

/// Whether `mode` can serve `address`: direct mode is ARP's, and multicast mode's group
/// MAC is defined for IPv4 addresses; both are IPv4 only.
pub fn check(address: IpAddr, mode: Mode) -> Result<()> {
    if mode != Mode::Proxy && address.is_ipv6() {
        return Err(Error::Usage(format!(
            "{address}: {} mode is for IPv4 addresses only",
            mode.name()
        )));
    }
    Ok(())
}

/// `member add --track`, `member track`: which flows of an address the connection table keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    /// Every flow: TCP connections and UDP flows stay on their member through member-set
    /// changes (the default).
    All,
    /// TCP connections only: UDP datagrams are placed by the Maglev table alone (no
    /// connection-table memory or lookup per datagram), so a member-set change moves some UDP
    /// flows of surviving members. For stateless services such as DNS.
    Tcp,
}

impl Track {
    pub fn from_word(word: u32) -> Self {
        match word & ADDR_TRACK_TCP_ONLY {
            0 => Track::All,
            _ => Track::Tcp,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Track::All => "all",
            Track::Tcp => "tcp",
        }
    }

    /// `all` or `tcp`, as the command line spells them.
    pub fn parse(word: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::from_str(word, false).ok()
    }

    fn apply(self, word: u32) -> u32 {
        match self {
            Track::All => word & !ADDR_TRACK_TCP_ONLY,
            Track::Tcp => word | ADDR_TRACK_TCP_ONLY,
        }
    }
}

/// The mode word of `address`'s bucket (0, the defaults, for an address not in the maps).
pub fn word(maps: &Maps, address: IpAddr) -> Result<u32> {
    Ok(maps.bucket_and_word(address)?.1)
}

/// The mode of `address` (proxy for an address not in the maps).
pub fn get(maps: &Maps, address: IpAddr) -> Result<Mode> {
    Ok(Mode::from_word(word(maps, address)?))
}

/// Sets the mode of an address already in the maps (the low byte of its bucket's mode word).
pub fn set(maps: &mut Maps, address: IpAddr, mode: Mode) -> Result<()> {
    check(address, mode)?;
    update(maps, address, |word| (word & !ADDR_MODE_MASK) | mode.raw()).map(|_| ())
}

/// Sets which flows of an address already in the maps the connection table keeps; returns
/// the setting it had.
pub fn set_track(maps: &mut Maps, address: IpAddr, track: Track) -> Result<Track> {
    Ok(Track::from_word(update(maps, address, |word| {
        track.apply(word)
    })?))
}

/// Whether a change of `track` from `was` to `now` leaves connection-table entries for
/// [`forget_untracked`]: only when an address that was in the maps before (`existed`; a new
/// one has no entries, slots are never reused) turns from tracking everything to TCP only.
pub fn leaves_entries(existed: bool, was: Track, now: Track) -> bool {
    existed && (was, now) == (Track::All, Track::Tcp)
}

/// After `member track ADDR tcp` of addresses that tracked everything ([`leaves_entries`]):
/// forgets their connection-table entries other than TCP's, in one pass over the table;
/// returns how many. None of them is read while an address tracks TCP only, and kept, they
/// would send their flows back to their old members after a later `member track ADDR all`.
/// Not part of a transaction: an entry only holds a flow's affinity.
pub fn forget_untracked(maps: &Maps, pin: &PinDir, addresses: &[IpAddr]) -> Result<u64> {
    use std::os::fd::AsFd;
    let mut slots = std::collections::HashSet::new();
    for &address in addresses {
        let Bucket::Found { entry, .. } = maps.bucket(address)? else {
            return Err(Error::NoSuchAddress { address });
        };
        slots.insert(entry.slot);
    }
    if slots.is_empty() {
        return Ok(0);
    }
    let name = anycast_common::names::FLOWS;
    let sets = aya::maps::MapInfo::from_pin(pin.map(name))
        .map_err(|e| Error::map(name, e))?
        .max_entries();
    let data = aya::maps::MapData::from_pin(pin.map(name)).map_err(|e| Error::map(name, e))?;
    let tcp = u32::from(anycast_common::proto::IPPROTO_TCP);
    crate::mapped::forget_flows(data.fd().as_fd(), sets, |key| {
        key & 0xff != tcp && slots.contains(&(key >> 8))
    })
    .map_err(|e| Error::io("forgetting connection-table entries", e))
}

/// [`forget_untracked`] as the last step of a command whose changes are already written: a
/// failure is a warning (the setting holds; old entries cost at most some flows' affinity).
pub fn forget_untracked_or_warn(maps: &Maps, pin: &PinDir, addresses: &[IpAddr]) {
    if let Err(e) = forget_untracked(maps, pin, addresses) {
        tracing::warn!(error = %e, "UDP entries of the addresses now tracking TCP only stay until evicted");
    }
}

/// Rewrites the mode word of an address already in the maps; returns the word it had.
fn update(maps: &mut Maps, address: IpAddr, change: impl FnOnce(u32) -> u32) -> Result<u32> {
    let (Bucket::Found { index, .. }, word) = maps.bucket_and_word(address)? else {
        return Err(Error::NoSuchAddress { address });
    };
    maps.set_addr_mode(address, index, change(word))?;
    Ok(word)
}
