//! The agent's advertisement sockets, one per family, set up before anything else changes.
//!
//! IPv4 joins `group` and IPv6 joins `group6` (link-local scope) on every agent interface, both
//! on the same UDP port. A kernel without IPv6 (`ipv6.disable=1`: no AF_INET6 sockets at all)
//! runs the agent IPv4-only, with a warning; any other failure to open either socket stops the
//! start with an error.
use std::io;

use socket2::Socket;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

use super::config::Config;
use crate::{Error, Result, sys};

/// The opened sockets, not yet registered with the runtime.
pub struct Listeners {
    v4: Socket,
    /// None only on a kernel without IPv6.
    v6: Option<Socket>,
}

/// A socket registered with the runtime.
pub type Registered = AsyncFd<Socket>;

impl Listeners {
    /// Opens both listeners on `ifindexes`.
    pub fn open(config: &Config, ifindexes: &[u32]) -> Result<Self> {
        let v4 = sys::listener(config.port, config.group, ifindexes)
            .map_err(|e| Error::io("opening the advertisement socket", e))?;
        let v6 = match sys::listener6(config.port, config.group6, ifindexes) {
            Ok(socket) => Some(socket),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                tracing::warn!("this kernel has no IPv6: listening for IPv4 advertisements only");
                None
            }
            Err(e) => return Err(Error::io("opening the IPv6 advertisement socket", e)),
        };
        Ok(Self { v4, v6 })
    }

    /// Registers the sockets with the runtime (inside it).
    pub fn register(self) -> Result<(Registered, Option<Registered>)> {
        let v6 = match self.v6 {
            Some(socket) => Some(register(socket)?),
            None => None,
        };
        Ok((register(self.v4)?, v6))
    }
}

fn register(socket: Socket) -> Result<Registered> {
    // SAFETY: the Socket owns its fd and the AsyncFd owns the Socket, so the fd stays open
    // and is not registered elsewhere until the AsyncFd is dropped.
    unsafe { AsyncFd::register(socket) }.map_err(|e| {
        Error::io(
            "registering the advertisement socket",
            io::Error::other(e.to_string()),
        )
    })
}

/// Waits until `socket` is readable; never, if there is none.
pub async fn readable(
    socket: Option<&Registered>,
) -> (&Registered, io::Result<AsyncFdReadyGuard<'_, Socket>>) {
    match socket {
        Some(socket) => (socket, socket.readable().await),
        None => std::future::pending().await,
    }
}
