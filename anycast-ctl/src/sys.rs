//! Advertisement sockets: the one corner with raw socket calls.
//!
//! The router's listener joins the advertisement group on each agent interface and asks the
//! kernel for every datagram's TTL (IP_RECVTTL) and arrival interface (IP_PKTINFO), which the
//! agent needs for GTSM and to know where a member lives. The member's sender is bound to its
//! interface and sends with TTL 255, multicast or unicast.
use std::{
    io,
    mem::{size_of, zeroed},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

/// The TTL every advertisement is sent with, and the only one accepted (RFC 5082).
pub const GTSM_TTL: u32 = 255;

/// One received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub src: Ipv4Addr,
    /// IP TTL, if the kernel reported it.
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
    set_flag(&socket, libc::IP_PKTINFO)?;
    set_flag(&socket, libc::IP_RECVTTL)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Receives one datagram with its TTL and arrival interface.
pub fn recv(socket: &Socket, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: all-zero is a valid sockaddr_in, msghdr and cmsg buffer.
    let mut addr: libc::sockaddr_in = unsafe { zeroed() };
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
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
        src: Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
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
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(received)
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

fn set_flag(socket: &Socket, option: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
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
