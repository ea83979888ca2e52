//! Whole Ethernet frames sent from user space: one send-only AF_PACKET socket and a send out
//! of an interface. Direct mode's repoints use it, and the tests' raw frames too.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A send-only AF_PACKET socket (protocol 0: it receives nothing).
pub fn socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `frame`, a whole Ethernet frame (at least its 14-byte header), out of `ifindex`.
pub fn send(socket: &OwnedFd, ifindex: u32, frame: &[u8]) -> std::io::Result<()> {
    if frame.len() < 14 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a frame of {} bytes has no Ethernet header", frame.len()),
        ));
    }
    // SAFETY: sockaddr_ll is plain data; zero is a valid initial value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` and `addr` are valid for the lengths passed, for the whole call.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent != frame.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
