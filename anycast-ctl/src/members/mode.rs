//! An anycast address's delivery mode (`AddrBucket::mode`): how its datagrams reach its
//! members (proxy, direct ARP, link-level multicast). Set by the operator alone; kept by every other change of the address.
use std::net::IpAddr;

use anycast_common::{ADDR_MODE_DIRECT, ADDR_MODE_MULTICAST, ADDR_MODE_PROXY};
use serde::Serialize;

use crate::{
    Error, Result,
    dataplane::{Bucket, Maps},
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
    pub fn from_raw(raw: u32) -> Self {
        match raw {
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

/// The mode of `address` (proxy for an address not in the maps).
pub fn get(maps: &Maps, address: IpAddr) -> Result<Mode> {
    let (IpAddr::V4(_), Bucket::Found { index, .. }) = (address, maps.bucket(address)?) else {
        return Ok(Mode::Proxy);
    };
    let bucket = maps
        .addrs
        .get(&index, 0)
        .map_err(|e| Error::map("ADDRS", e))?;
    Ok(Mode::from_raw(bucket.mode))
}

/// Sets the mode of an address already in the maps (one field of its bucket).
pub fn set(maps: &mut Maps, address: IpAddr, mode: Mode) -> Result<()> {
    check(address, mode)?;
    let Bucket::Found { index, .. } = maps.bucket(address)? else {
        return Err(Error::NoSuchAddress { address });
    };
    if address.is_ipv6() {
        return Ok(());
    }
    maps.set_addr_mode(index, mode.raw())
}
