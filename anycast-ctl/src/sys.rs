//! Advertisement sockets: the one corner with raw socket calls.
//!
//! The router's listeners, one per family, join the advertisement group on each agent
//! interface and ask the kernel for every datagram's TTL or hop limit (IP_RECVTTL,
//! IPV6_RECVHOPLIMIT) and arrival interface (IP_PKTINFO, IPV6_RECVPKTINFO), which the agent
//! needs for GTSM and to know where a member lives; one [`recv`] reads both. The member's
//! senders are bound to its interface and send with TTL (hop limit) 255, multicast (IPv6:
//! IPV6_MULTICAST_IF on that interface) or unicast.
use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

/// The TTL every advertisement is sent with, and the only one accepted (RFC 5082).
pub const GTSM_TTL: u32 = 255;

/// One received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub src: IpAddr,
    /// IP TTL or IPv6 hop limit, if the kernel reported it.
    pub ttl: Option<u8>,
    /// Arrival interface (0 if unknown).
    pub ifindex: u32,
}

/// A non-blocking UDP socket on `port` that has joined `group` on each of `ifindexes`.
pub fn listener(port: u16, group: Ipv4Addr, ifindexes: &[u32]) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    for &index in ifindexes {
        socket.join_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(index))?;
    }
    set_flag(&socket, libc::IPPROTO_IP, libc::IP_PKTINFO)?;
    set_flag(&socket, libc::IPPROTO_IP, libc::IP_RECVTTL)?;
    deep_receive_queue(&socket)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The IPv6 listener: a non-blocking, IPv6-only UDP socket on `port` that has joined `group`
/// on each of `ifindexes`.
pub fn listener6(port: u16, group: Ipv6Addr, ifindexes: &[u32]) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0).into())?;
    for &index in ifindexes {
        socket.join_multicast_v6(&group, index)?;
    }
    set_flag(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)?;
    set_flag(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT)?;
    deep_receive_queue(&socket)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Receives one datagram, of either family, with its TTL (hop limit) and arrival interface.
pub fn recv(socket: &Socket, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: all-zero is a valid sockaddr_storage, msghdr and cmsg buffer.
    let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // SAFETY: every pointer in `msg` points to a live buffer of the stated length.
    let len = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = Received {
        len: len as usize,
        src: source(&addr),
        ttl: None,
        ifindex: 0,
    };
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // msg_controllen; each payload is read unaligned with the type the kernel wrote for it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_TTL) => {
                    let ttl = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    received.ttl = u8::try_from(ttl).ok();
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    received.ifindex = info.ipi_ifindex as u32;
                }
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let hops = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    received.ttl = u8::try_from(hops).ok();
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    received.ifindex = info.ipi6_ifindex;
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(received)
}

/// The source address the kernel wrote into `addr` (`::` for an unknown family, which a
/// sender field never equals).
fn source(addr: &libc::sockaddr_storage) -> IpAddr {
    let storage = (addr as *const libc::sockaddr_storage).cast::<u8>();
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) into the storage, which
            // is larger and aligned for it.
            let v4 = unsafe { std::ptr::read_unaligned(storage.cast::<libc::sockaddr_in>()) };
            IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, a sockaddr_in6 (family AF_INET6).
            let v6 = unsafe { std::ptr::read_unaligned(storage.cast::<libc::sockaddr_in6>()) };
            IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr))
        }
        _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// A UDP socket that sends from `addr` on interface `iface` with TTL 255.
pub fn sender(iface: &str, addr: Ipv4Addr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind_device(Some(iface.as_bytes()))?;
    socket.bind(&SocketAddrV4::new(addr, 0).into())?;
    socket.set_multicast_if_v4(&addr)?;
    socket.set_multicast_ttl_v4(GTSM_TTL)?;
    socket.set_multicast_loop_v4(false)?;
    socket.set_ttl_v4(GTSM_TTL)?;
    Ok(socket)
}

/// The IPv6 sender: sends from `addr` on interface `iface` (index `ifindex`: multicast leaves
/// through it, IPV6_MULTICAST_IF) with hop limit 255, never looped back.
pub fn sender6(iface: &str, ifindex: u32, addr: Ipv6Addr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(true)?;
    socket.bind_device(Some(iface.as_bytes()))?;
    socket.bind(&SocketAddrV6::new(addr, 0, 0, 0).into())?;
    socket.set_multicast_if_v6(ifindex)?;
    socket.set_multicast_hops_v6(GTSM_TTL)?;
    socket.set_multicast_loop_v6(false)?;
    socket.set_unicast_hops_v6(GTSM_TTL)?;
    Ok(socket)
}

/// Receive buffer of a listener: at 100,000 advertisements per second (1,000 members every
/// 10 ms) the default (`net.core.rmem_default`, about 200 datagrams) overflows whenever the
/// agent is off the CPU for 2 ms. 8 MiB holds about 8,000 (80 ms of that load). Beyond
/// `net.core.rmem_max` with CAP_NET_ADMIN (SO_RCVBUFFORCE), else as far as that allows.
const RECEIVE_BUFFER: libc::c_int = 8 << 20;

fn deep_receive_queue(socket: &Socket) -> io::Result<()> {
    let set = |option: libc::c_int| {
        // SAFETY: a valid fd and a c_int option value of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&RECEIVE_BUFFER as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF))
}

fn set_flag(socket: &Socket, level: libc::c_int, option: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
