//! A packet capture on one interface of a namespace, as a guard: an AF_PACKET socket (all
//! protocols) bound to the interface records every frame it sees, in both directions, until
//! stopped; dropping it stops it. Bounded in frames ([`MAX_FRAMES`]) and in time
//! ([`LIFETIME`]). [`Nd::parse`] reads the Neighbor Discovery messages of a capture, so tests
//! can tell who solicited and who advertised what, at which MAC.
//!
//! Frames the kernel receives through an XDP program (`XDP_PASS`, on a veth peer) are seen
//! like any others: the socket taps the stack after XDP.

use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anycast_common::proto::{ETH_P_IPV6, IPPROTO_ICMPV6, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT};
use anyhow::{Result, bail};

use crate::netns::Netns;

/// Frames one capture keeps at most.
pub const MAX_FRAMES: usize = 100_000;
/// Bound on the life of one capture.
pub const LIFETIME: Duration = Duration::from_secs(60);

/// One frame as the capture saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Sent by this host (`PACKET_OUTGOING`), else received.
    pub outgoing: bool,
    pub bytes: Vec<u8>,
}

/// A running capture.
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Frame>>>,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns`; the socket is bound before this returns, so every
    /// frame after it is seen.
    pub fn start(ns: &Netns, ifname: &str) -> Result<Self> {
        let ifindex = ns.ifindex(ifname)?;
        let fd = ns.in_ns(|| open(ifindex))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("capture-{ifname}"))
            .spawn(move || record(&fd, &flag))?;
        Ok(Capture {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops and returns every frame seen, in order.
    pub fn stop(mut self) -> Vec<Frame> {
        self.finish()
    }

    fn finish(&mut self) -> Vec<Frame> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("capture thread panicked"))
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.finish();
    }
}

/// An AF_PACKET socket for every protocol, bound to `ifindex`, with a 20 ms receive timeout.
fn open(ifindex: u32) -> Result<OwnedFd> {
    let all = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, all) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid initial value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll for the length passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("bind AF_PACKET: {}", std::io::Error::last_os_error());
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: the option value is a timeval that lives across the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Frames until `stop`, then those still queued on the socket (a capture thread that ran late
/// loses none of what the kernel saw before the stop).
fn record(fd: &OwnedFd, stop: &AtomicBool) -> Vec<Frame> {
    let deadline = Instant::now() + LIFETIME;
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && frames.len() < MAX_FRAMES {
        let stopping = stop.load(Ordering::Relaxed);
        let flags = if stopping { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: sockaddr_ll is plain data; zero is a valid initial value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for the lengths passed, for the whole call.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock if stopping => break,
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
                _ => panic!("capture receive failed: {e}"),
            }
        }
        frames.push(Frame {
            outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
            bytes: buf[..n as usize].to_vec(),
        });
    }
    frames
}

/// The kind of a Neighbor Discovery message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdKind {
    Solicitation,
    Advertisement,
}

/// A Neighbor Solicitation or Advertisement read from a frame (no extension headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nd {
    pub outgoing: bool,
    pub kind: NdKind,
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub ip_src: Ipv6Addr,
    pub ip_dst: Ipv6Addr,
    pub hop_limit: u8,
    pub target: Ipv6Addr,
    /// The advertisement's flags byte (`ND_NA_ROUTER`, `_SOLICITED`, `_OVERRIDE` of
    /// `anycast_common::proto`); 0 in a solicitation.
    pub flags: u8,
}

impl Nd {
    /// The message in `frame`, if it is an NS or NA right after the IPv6 header.
    pub fn parse(frame: &Frame) -> Option<Nd> {
        let b = &frame.bytes;
        let ipv6 = b.len() >= 14 + 40 + 24 && b[12..14] == ETH_P_IPV6.to_be_bytes();
        if !ipv6 || b[14 + 6] != IPPROTO_ICMPV6 {
            return None;
        }
        let ip = &b[14..];
        let icmp = &ip[40..];
        let kind = match icmp[0] {
            ND_NEIGHBOR_SOLICIT => NdKind::Solicitation,
            ND_NEIGHBOR_ADVERT => NdKind::Advertisement,
            _ => return None,
        };
        let addr = |s: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(&s[..16]).unwrap());
        Some(Nd {
            outgoing: frame.outgoing,
            kind,
            eth_dst: b[..6].try_into().unwrap(),
            eth_src: b[6..12].try_into().unwrap(),
            ip_src: addr(&ip[8..]),
            ip_dst: addr(&ip[24..]),
            hop_limit: ip[7],
            target: addr(&icmp[8..]),
            flags: if kind == NdKind::Advertisement {
                icmp[4]
            } else {
                0
            },
        })
    }

    /// Every NS and NA of `frames` about `target`.
    pub fn about(frames: &[Frame], target: Ipv6Addr) -> Vec<Nd> {
        (frames.iter())
            .filter_map(Nd::parse)
            .filter(|nd| nd.target == target)
            .collect()
    }
}
