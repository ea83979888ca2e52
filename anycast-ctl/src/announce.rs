//! `anycast-ctl announce`: a member host joins anycast addresses and advertises them.
//!
//! On start it claims each address (one announcer per address per network namespace, held by
//! an abstract unix socket that dies with the process), puts the address on `lo` through
//! rtnetlink unless it is already there, and sets arp_ignore=1 / arp_announce=2 on the
//! advertising interface so the host never answers ARP for it (the router does). Then it sends
//! an advertisement every interval, multicast on the interface or unicast to `--to`, with TTL
//! 255. Each advertisement carries the interface's MAC (read again for every message), so the
//! router binds the member's IP to its MAC only through signed messages, and a MAC change is
//! announced by the member itself. On SIGINT or SIGTERM it sends a leave (hold time 0), removes only the addresses it
//! added, and returns.
//!
//! With `--identity-port` it also answers identity queries on the anycast addresses
//! ([`crate::identity`]).
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
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Anycast addresses to serve.
    #[arg(required = true, value_parser = crate::cli::args::anycast_address, value_name = "ANYCAST_IP")]
    pub anycast: Vec<Ipv4Addr>,
    /// Interface to advertise on (its first IPv4 address is the member address).
    #[arg(long, value_name = "IFACE")]
    pub dev: String,
    /// Time between advertisements.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long the router keeps the membership without a refresh.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Lower is better: only the best-preference members get new flows.
    #[arg(long, default_value_t = 100)]
    pub preference: u16,
    /// Share of new flows among equal-preference members; 0 drains.
    #[arg(long, default_value_t = 100)]
    pub weight: u16,
    /// Key file to sign with (the first key of the file signs; mode 0600).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Send unicast to this router instead of multicast (point-to-point links).
    #[arg(long, value_name = "ROUTER_IP")]
    pub to: Option<Ipv4Addr>,
    /// Advertisement multicast group.
    #[arg(long, default_value = "239.255.15.46")]
    pub group: Ipv4Addr,
    /// Advertisement UDP port.
    #[arg(long, default_value_t = anycast_common::advert::DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Answer identity queries (`anycast-ctl probe`, docs/identity-format.md) sent to the
    /// anycast addresses on this UDP port with this host's unicast address and hostname
    /// [default: off; without PORT: 5447].
    #[arg(long, value_name = "PORT", num_args = 0..=1,
          default_missing_value = "5447", value_parser = clap::value_parser!(u16).range(1..))]
    pub identity_port: Option<u16>,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(opts: Options) -> Result<()> {
    let hold_ms = hold_ms(&opts)?;
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
    if opts.anycast.len() >= anycast_common::advert::MAX_ENTRIES {
        return Err(Error::Usage(format!(
            "at most {} anycast addresses per announcer",
            anycast_common::advert::MAX_ENTRIES - 1
        )));
    }
    let source = nl.first_ipv4(dev).await?.ok_or_else(|| {
        Error::Usage(format!(
            "{} has no IPv4 address to advertise from",
            opts.dev
        ))
    })?;
    let lo = nl.link_by_name("lo").await?.index;
    let _identity = (opts.identity_port)
        .map(|port| crate::identity::serve(&opts.anycast, port, source))
        .transpose()?;
    set_arp_sysctls(&opts.dev)?;

    let mut added = Vec::new();
    for &address in &opts.anycast {
        if nl.has_address(lo, address).await? {
            continue;
        }
        nl.add_host_address(lo, address).await?;
        added.push(address);
    }
    advertise(&opts, &nl, dev, source, hold_ms, key.as_ref()).await?;
    for address in added {
        if let Err(e) = nl.del_address(lo, address).await {
            tracing::warn!(%address, error = %e, "removing the address from lo");
        }
    }
    Ok(())
}

/// `--hold` in milliseconds, checked against `--interval`.
fn hold_ms(opts: &Options) -> Result<u32> {
    let hold_ms = u32::try_from(opts.hold.as_millis())
        .ok()
        .filter(|h| *h > 0)
        .ok_or_else(|| Error::Usage("--hold must be between 1 ms and 49 days".into()))?;
    if opts.interval.is_zero() || opts.interval >= opts.hold {
        return Err(Error::Usage(
            "--interval must be positive and shorter than --hold".into(),
        ));
    }
    Ok(hold_ms)
}

/// Advertises every interval until SIGINT or SIGTERM, then sends the leave.
async fn advertise(
    opts: &Options,
    nl: &Netlink,
    dev: u32,
    source: Ipv4Addr,
    hold_ms: u32,
    key: Option<&(u32, Vec<u8>)>,
) -> Result<()> {
    let socket =
        sys::sender(&opts.dev, source).map_err(|e| Error::io("advertisement socket", e))?;
    let dest = SocketAddrV4::new(opts.to.unwrap_or(opts.group), opts.port);
    let mut seq = now_ms() * 1000;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut ticker = tokio::time::interval(opts.interval);
    tracing::info!(?opts.anycast, dev = %opts.dev, %source, %dest, "announcing");
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                seq += 1;
                let mac = nl.link_by_index(dev).await.map(|l| l.mac).ok();
                let msg = message(opts, source, mac, seq, hold_ms, key)?;
                if let Err(e) = socket.send_to(&msg, &dest.into()) {
                    tracing::warn!(error = %e, "sending the advertisement");
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Leave: twice, in case one is lost; the router also expires us after the hold time.
    for _ in 0..2 {
        seq += 1;
        let msg = message(opts, source, None, seq, 0, key)?;
        let _ = socket.send_to(&msg, &dest.into());
    }
    Ok(())
}

/// Builds and signs one advertisement.
fn message(
    opts: &Options,
    source: Ipv4Addr,
    mac: Option<[u8; 6]>,
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
    if let Some(mac) = mac {
        repr.set_link_addr(mac)
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
