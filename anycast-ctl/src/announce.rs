//! `anycast-ctl announce`: a member host joins anycast addresses and advertises them.
//!
//! On start it claims each address (one announcer per address per network namespace, held by
//! an abstract unix socket that dies with the process), puts the address on `lo` through
//! rtnetlink unless it is already there, and sets arp_ignore=1 / arp_announce=2 on the
//! advertising interface so the host never answers ARP for it (the router does). Then it sends
//! an advertisement every interval, multicast on the interface or unicast to `--to`, with TTL
//! 255. On SIGINT or SIGTERM it sends a leave (hold time 0), removes only the addresses it
//! added, and returns.
//!
//! Sequence numbers start from the wall clock in microseconds and increase by one per message,
//! so a restarted announcer continues above its previous run.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::linux::net::SocketAddrExt,
    os::unix::net::{SocketAddr as UnixAddr, UnixListener},
    path::PathBuf,
    time::Duration,
};

use anycast_common::advert::{Membership, Packet, Repr};
use tokio::signal::unix::{SignalKind, signal};

use crate::{Error, Result, advert_auth, members::now_ms, net::Netlink, sys};

/// What to announce and how.
#[derive(Clone, Debug)]
pub struct Options {
    pub anycast: Vec<Ipv4Addr>,
    pub dev: String,
    pub interval: Duration,
    pub hold: Duration,
    pub preference: u16,
    pub weight: u16,
    pub key_file: Option<PathBuf>,
    /// Unicast to this router instead of multicast (point-to-point links).
    pub to: Option<Ipv4Addr>,
    pub group: Ipv4Addr,
    pub port: u16,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(opts: Options) -> Result<()> {
    let hold_ms = u32::try_from(opts.hold.as_millis())
        .ok()
        .filter(|h| *h > 0)
        .ok_or_else(|| Error::Usage("--hold must be between 1 ms and 49 days".into()))?;
    if opts.interval.is_zero() || opts.interval >= opts.hold {
        return Err(Error::Usage(
            "--interval must be positive and shorter than --hold".into(),
        ));
    }
    let key = match &opts.key_file {
        Some(path) => {
            let keys = advert_auth::Keys::load(path)?;
            let (id, secret) = keys.signing();
            Some((id, secret.to_vec()))
        }
        None => None,
    };
    let _claims = opts
        .anycast
        .iter()
        .map(|a| claim(*a))
        .collect::<Result<Vec<_>>>()?;

    let nl = Netlink::new()?;
    let dev = nl.link_by_name(&opts.dev).await?.index;
    let source = nl.first_ipv4(dev).await?.ok_or_else(|| {
        Error::Usage(format!(
            "{} has no IPv4 address to advertise from",
            opts.dev
        ))
    })?;
    let lo = nl.link_by_name("lo").await?.index;
    set_arp_sysctls(&opts.dev)?;

    let mut added = Vec::new();
    for &address in &opts.anycast {
        if nl.has_address(lo, address).await? {
            continue;
        }
        nl.add_host_address(lo, address).await?;
        added.push(address);
    }

    let socket =
        sys::sender(&opts.dev, source).map_err(|e| Error::io("advertisement socket", e))?;
    let dest = SocketAddrV4::new(opts.to.unwrap_or(opts.group), opts.port);
    let mut seq = now_ms() * 1000;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut ticker = tokio::time::interval(opts.interval);
    tracing::info!(?opts.anycast, dev = %opts.dev, %source, %dest, "announcing");
    let result = loop {
        tokio::select! {
            _ = ticker.tick() => {
                seq += 1;
                let msg = message(&opts, source, seq, hold_ms, key.as_ref())?;
                if let Err(e) = socket.send_to(&msg, &dest.into()) {
                    tracing::warn!(error = %e, "sending the advertisement");
                }
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    // Leave: twice, in case one is lost; the router also expires us after the hold time.
    for _ in 0..2 {
        seq += 1;
        let msg = message(&opts, source, seq, 0, key.as_ref())?;
        let _ = socket.send_to(&msg, &dest.into());
    }
    for address in added {
        if let Err(e) = nl.del_address(lo, address).await {
            tracing::warn!(%address, error = %e, "removing the address from lo");
        }
    }
    result
}

/// Builds and signs one advertisement.
fn message(
    opts: &Options,
    source: Ipv4Addr,
    seq: u64,
    hold_ms: u32,
    key: Option<&(u32, Vec<u8>)>,
) -> Result<Vec<u8>> {
    let mut repr = Repr::new(source, seq, now_ms(), key.map_or(0, |k| k.0));
    for &anycast in &opts.anycast {
        repr.push(Membership {
            anycast,
            hold_ms,
            preference: opts.preference,
            weight: opts.weight,
        })
        .map_err(|_| Error::Usage("too many anycast addresses for one advertisement".into()))?;
    }
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    if let Some((id, secret)) = key {
        advert_auth::sign(&mut buf, *id, secret)
            .map_err(|e| Error::Usage(format!("signing the advertisement: {e:?}")))?;
    }
    Ok(buf)
}

/// Claims an anycast address for this process in this network namespace: the abstract unix
/// socket name is per namespace and is released when the process dies, however it dies.
fn claim(address: Ipv4Addr) -> Result<UnixListener> {
    let name = format!("anycast-announce-{address}");
    let addr = UnixAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| Error::io("abstract socket name", e))?;
    UnixListener::bind_addr(&addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::Usage(format!(
                "{address} is already announced by another anycast-ctl on this host"
            ))
        } else {
            Error::io("claiming the address", e)
        }
    })
}

fn set_arp_sysctls(dev: &str) -> Result<()> {
    for (key, value) in [("arp_ignore", "1"), ("arp_announce", "2")] {
        let path = format!("/proc/sys/net/ipv4/conf/{dev}/{key}");
        std::fs::write(&path, value).map_err(|e| Error::io(format!("writing {path}"), e))?;
    }
    Ok(())
}
