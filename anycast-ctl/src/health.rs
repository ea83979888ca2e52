//! Whether a member host still serves its anycast addresses, as `announce` checks it.
//!
//! A member serves while every announced address is on `lo` and every configured check passes:
//! a command that must exit 0 (`--check-cmd`), a TCP port on each address that must accept a
//! connection (`--check-tcp`), a UDP port on each address that must answer a datagram
//! (`--check-udp`). Checks run every `--check-interval`, each bounded by `--check-timeout`, in
//! a task of their own, so a slow check never delays an advertisement; an address removed from
//! `lo` is seen at once (rtnetlink notification). `announce` sends a leave on the first failure
//! and advertises again once everything passes.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use futures::StreamExt;
use tokio::sync::watch;

use crate::{Result, net::Netlink};

/// The health checks of `announce`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Checks {
    /// Shell command (`sh -c`) that must exit 0 while the service works.
    #[arg(long, value_name = "CMD")]
    pub check_cmd: Option<String>,
    /// TCP port that must accept a connection on each anycast address.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub check_tcp: Option<u16>,
    /// UDP port that must answer an empty datagram on each anycast address.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub check_udp: Option<u16>,
    /// Time between health checks (the addresses on lo are also followed as they change).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,
    /// How long one check may take before it counts as failed.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub check_timeout: Duration,
}

/// Starts the checks of `addresses` (on `lo`, ifindex `lo`) in a task; the receiver holds
/// `Ok(())` while the member serves, else why not.
pub fn watch(
    checks: Checks,
    addresses: Vec<IpAddr>,
    lo: u32,
) -> Result<watch::Receiver<std::result::Result<(), String>>> {
    let nl = Netlink::new()?;
    let mut changes = crate::net::events(
        rtnetlink::constants::RTMGRP_IPV4_IFADDR | rtnetlink::constants::RTMGRP_IPV6_IFADDR,
    )?;
    let (tx, rx) = watch::channel(Ok(()));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(checks.check_interval.max(Duration::from_millis(1)));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                Some(_) = changes.next() => {}
            }
            let state = check_all(&checks, &addresses, &nl, lo).await;
            tx.send_if_modified(|s| {
                let changed = *s != state;
                *s = state.clone();
                changed
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Runs every check once; the first failure, described.
pub async fn check_all(
    checks: &Checks,
    addresses: &[IpAddr],
    nl: &Netlink,
    lo: u32,
) -> std::result::Result<(), String> {
    for &address in addresses {
        if !nl.has_address(lo, address).await.unwrap_or(true) {
            return Err(format!("{address} is no longer on lo"));
        }
    }
    let timeout = checks.check_timeout;
    if let Some(cmd) = &checks.check_cmd {
        bounded(timeout, command(cmd))
            .await
            .map_err(|e| format!("--check-cmd: {e}"))?;
    }
    for &address in addresses {
        if let Some(port) = checks.check_tcp {
            let to = SocketAddr::new(address, port);
            bounded(timeout, async {
                tokio::net::TcpStream::connect(to).await.map(drop)
            })
            .await
            .map_err(|e| format!("--check-tcp {to}: {e}"))?;
        }
        if let Some(port) = checks.check_udp {
            let to = SocketAddr::new(address, port);
            bounded(timeout, udp(to))
                .await
                .map_err(|e| format!("--check-udp {to}: {e}"))?;
        }
    }
    Ok(())
}

async fn bounded(
    timeout: Duration,
    check: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| std::io::Error::other(format!("no answer within {timeout:?}")))?
}

/// Runs `cmd` with `sh -c`; killed if the check times out.
async fn command(cmd: &str) -> std::io::Result<()> {
    let status = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await?;
    if status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!("exited with {status}")))
}

/// Sends an empty datagram to `to` and waits for any answer (a port with no listener answers
/// with ICMP port unreachable, which fails the receive).
async fn udp(to: SocketAddr) -> std::io::Result<()> {
    let any: IpAddr = match to {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = tokio::net::UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(to).await?;
    socket.send(&[]).await?;
    let mut buf = [0u8; 1];
    socket.recv(&mut buf).await.map(drop)
}
