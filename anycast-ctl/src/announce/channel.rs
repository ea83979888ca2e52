//! One advertisement channel per address family: the member address it speaks for, the
//! socket and the destination. Everything here is set up before `announce` changes the system.
//!
//! - IPv4: from the interface's first IPv4 address, to `--group` (or `--to`), TTL 255
//!   ([`sys::sender`]).
//! - IPv6: from the interface's first global IPv6 address (not link-local: the router keys a
//!   member by an address that is unique beyond the link; not tentative), to `--group6` out of
//!   the interface (IPV6_MULTICAST_IF), hop limit 255 ([`sys::sender6`]).
use std::{
    io,
    net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use socket2::Socket;

use super::Options;
use crate::{Error, Result, net::Netlink, sys};

/// Where one family's advertisements go.
pub struct Channel {
    /// The member address: the sender of every message of this channel.
    pub source: IpAddr,
    /// The anycast addresses of this family.
    pub anycast: Vec<IpAddr>,
    pub dest: SocketAddr,
    socket: Socket,
}

impl Channel {
    pub fn send(&self, msg: &[u8]) -> io::Result<usize> {
        self.socket.send_to(msg, &self.dest.into())
    }
}

/// The channels of the families `opts.anycast` has, IPv4 first.
pub async fn open(opts: &Options, nl: &Netlink, dev: u32) -> Result<Vec<Channel>> {
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = opts.anycast.iter().partition(|a| a.is_ipv4());
    let mut channels = Vec::new();
    if !v4.is_empty() {
        channels.push(ipv4(opts, nl, dev, v4).await?);
    }
    if !v6.is_empty() {
        channels.push(ipv6(opts, nl, dev, v6).await?);
    }
    Ok(channels)
}

async fn ipv4(opts: &Options, nl: &Netlink, dev: u32, anycast: Vec<IpAddr>) -> Result<Channel> {
    let source = nl.first_ipv4(dev).await?.ok_or_else(|| {
        Error::Usage(format!(
            "{} has no IPv4 address to advertise from",
            opts.dev
        ))
    })?;
    let socket =
        sys::sender(&opts.dev, source).map_err(|e| Error::io("advertisement socket", e))?;
    let dest = SocketAddrV4::new(opts.to.unwrap_or(opts.group), opts.port);
    Ok(Channel {
        source: source.into(),
        anycast,
        dest: dest.into(),
        socket,
    })
}

async fn ipv6(opts: &Options, nl: &Netlink, dev: u32, anycast: Vec<IpAddr>) -> Result<Channel> {
    for ifname in ["lo", opts.dev.as_str()] {
        let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
            return Err(Error::Usage(format!(
                "IPv6 is disabled on {ifname} (net.ipv6.conf.{ifname}.disable_ipv6 = 1)"
            )));
        }
    }
    let source = nl.first_ipv6(dev).await?.ok_or_else(|| {
        Error::Usage(format!(
            "{} has no usable global IPv6 address to advertise from",
            opts.dev
        ))
    })?;
    let socket = sys::sender6(&opts.dev, dev, source)
        .map_err(|e| Error::io("IPv6 advertisement socket", e))?;
    let dest = SocketAddrV6::new(opts.group6, opts.port, 0, dev);
    Ok(Channel {
        source: source.into(),
        anycast,
        dest: dest.into(),
        socket,
    })
}
