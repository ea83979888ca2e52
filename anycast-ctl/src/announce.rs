//! `anycast-ctl announce`: a member host joins anycast addresses and advertises them.
//!
//! On start it claims each address (one announcer per address per network namespace, held by
//! an abstract unix socket that dies with the process), puts the address on `lo` through
//! rtnetlink unless it is already there (IPv6 as a /128 with `nodad`), and, for IPv4, sets
//! arp_ignore=1 / arp_announce=2 on the advertising interface so the host never answers ARP for
//! it (the router does; IPv6 needs no such setting: Linux answers a Neighbor Solicitation only
//! for addresses of the receiving interface). It joins, on the advertising interface, the
//! link-level group of each IPv4 address (`anycast_common::multicast`: what a router sends an
//! address in multicast mode to), and leaves them when it stops. Then it sends advertisements every interval, one
//! per family ([`channel`]): IPv4 multicast on the interface or unicast to `--to`, with TTL
//! 255; IPv6 multicast to a link-local group out of the interface, with hop limit 255. Each
//! advertisement carries the interface's MAC (read again for every message), so the router
//! binds the member's IP to its MAC only through signed messages, and a MAC change is announced
//! by the member itself. While the member stops serving (an address gone from `lo`, a failing
//! health check: [`crate::health`]) it sends a leave at once and then nothing, until it serves
//! again. On SIGINT or SIGTERM it sends a leave (hold time 0) per family, removes only the
//! addresses it added, and returns. Intervals go down to [`MIN_INTERVAL`] and hold times to
//! [`MIN_HOLD`] (BFD-class detection); the schedule is absolute, so a late tick does not shift
//! the ones after it.
//!
//! With `--identity-port` it also answers identity queries on the anycast addresses of both
//! families ([`crate::identity`]).
//!
//! One message per family, not one with both: each membership then travels over the family it
//! serves, so an IPv6 membership lives exactly as long as IPv6 works between member and router,
//! the sender field is checked against the IP source in both, and the IPv4 message stays a
//! version-1 message byte for byte, which IPv4-only routers take as before.
//!
//! Sequence numbers start from the wall clock in microseconds and increase by one per message
//! (of either family), so a restarted announcer continues above its previous run.
mod channel;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::linux::net::SocketAddrExt,
    os::unix::net::{SocketAddr as UnixAddr, UnixListener},
    path::PathBuf,
    time::Duration,
};

use anycast_common::advert::{Membership, Packet, Repr};
use tokio::signal::unix::{SignalKind, signal};

use crate::{Error, Result, advert_auth, health, members::now_ms, net::Netlink};
use channel::Channel;

/// Shortest `--interval`.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Shortest `--hold`.
pub const MIN_HOLD: Duration = Duration::from_millis(30);

/// What to announce and how.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Anycast addresses to serve, IPv4 and/or IPv6.
    #[arg(required = true, value_parser = crate::cli::args::anycast_ip, value_name = "ANYCAST_IP")]
    pub anycast: Vec<IpAddr>,
    /// Interface to advertise on (its first IPv4 address, and its first global IPv6 address,
    /// are the member addresses).
    #[arg(long, value_name = "IFACE")]
    pub dev: String,
    /// Time between advertisements (at least 10ms).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long the router keeps the membership without a refresh (at least 30ms).
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
    /// Send IPv4 advertisements unicast to this router instead of multicast (point-to-point
    /// links); IPv6 advertisements always go to --group6.
    #[arg(long, value_name = "ROUTER_IP")]
    pub to: Option<Ipv4Addr>,
    /// Advertisement multicast group.
    #[arg(long, default_value = "239.255.15.46")]
    pub group: Ipv4Addr,
    /// IPv6 advertisement multicast group (link-local scope).
    #[arg(long, default_value = "ff12::1546", value_parser = crate::cli::args::group6)]
    pub group6: Ipv6Addr,
    /// Advertisement UDP port.
    #[arg(long, default_value_t = anycast_common::advert::DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    #[command(flatten)]
    pub checks: health::Checks,
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
    let channels = channel::open(&opts, &nl, dev).await?;
    for c in &channels {
        // The largest message this channel sends fits, checked before anything changes.
        message(&opts, c, Some([0; 6]), 0, hold_ms, key.as_ref())?;
    }
    if opts.anycast.iter().any(IpAddr::is_ipv4) {
        set_arp_sysctls(&opts.dev)?;
    }
    let lo = nl.link_by_name("lo").await?.index;
    let _identity = identity(&opts, &channels)?;
    let added = add_to_lo(&nl, lo, &opts.anycast).await?;
    // Multicast mode: the router may send the addresses' datagrams to their link-level groups.
    let groups = match crate::mcast::join_anycast_groups(dev, &opts.anycast) {
        Ok(groups) => groups,
        Err(e) => {
            remove_from_lo(&nl, lo, &added).await;
            return Err(e);
        }
    };
    let advertised = match health::watch(opts.checks.clone(), opts.anycast.clone(), lo) {
        Ok(health) => advertise(&opts, (&nl, health), dev, &channels, hold_ms, key.as_ref()).await,
        Err(e) => Err(e),
    };
    crate::mcast::leave_groups(dev, &groups);
    remove_from_lo(&nl, lo, &added).await;
    advertised
}

/// The identity responder on every anycast address (`--identity-port`), each answered with the
/// member address of its family (its channel's source), bound before `lo` changes.
fn identity(opts: &Options, channels: &[Channel]) -> Result<Option<crate::identity::Responder>> {
    let Some(port) = opts.identity_port else {
        return Ok(None);
    };
    let served: Vec<(IpAddr, IpAddr)> = (channels.iter())
        .flat_map(|c| c.anycast.iter().map(|&a| (a, c.source)))
        .collect();
    crate::identity::serve(&served, port).map(Some)
}

/// Puts each address on `lo` unless it is there already; returns those it added. On an error
/// it removes them again, so a failed start leaves `lo` as it was.
async fn add_to_lo(nl: &Netlink, lo: u32, addresses: &[IpAddr]) -> Result<Vec<IpAddr>> {
    let mut added = Vec::new();
    for &address in addresses {
        let done = match nl.has_address(lo, address).await {
            Ok(true) => continue,
            Ok(false) => nl.add_host_address(lo, address).await,
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            remove_from_lo(nl, lo, &added).await;
            return Err(e);
        }
        added.push(address);
    }
    Ok(added)
}

/// Removes the addresses this announcer added (never one it found there).
async fn remove_from_lo(nl: &Netlink, lo: u32, added: &[IpAddr]) {
    for &address in added {
        if let Err(e) = nl.del_address(lo, address).await {
            tracing::warn!(%address, error = %e, "removing the address from lo");
        }
    }
}

/// `--hold` in milliseconds, checked against `--interval`.
fn hold_ms(opts: &Options) -> Result<u32> {
    let hold_ms = u32::try_from(opts.hold.as_millis())
        .ok()
        .filter(|_| opts.hold >= MIN_HOLD)
        .ok_or_else(|| Error::Usage("--hold must be between 30 ms and 49 days".into()))?;
    if opts.interval < MIN_INTERVAL || opts.interval >= opts.hold {
        return Err(Error::Usage(
            "--interval must be at least 10 ms and shorter than --hold".into(),
        ));
    }
    Ok(hold_ms)
}

/// Advertises every interval while the member serves, until SIGINT or SIGTERM, then sends the
/// leave; each tick sends one message per channel (family). A member that stops serving sends
/// the leave at once.
async fn advertise(
    opts: &Options,
    (nl, mut health): (
        &Netlink,
        tokio::sync::watch::Receiver<std::result::Result<(), String>>,
    ),
    dev: u32,
    channels: &[Channel],
    hold_ms: u32,
    key: Option<&(u32, Vec<u8>)>,
) -> Result<()> {
    let mut seq = now_ms() * 1000;
    let mut send = |mac, hold| -> Result<()> {
        for c in channels {
            seq += 1;
            let msg = message(opts, c, mac, seq, hold, key)?;
            if let Err(e) = c.send(&msg) {
                tracing::warn!(dest = %c.dest, error = %e, "sending the advertisement");
            }
        }
        Ok(())
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut ticker = tokio::time::interval(opts.interval);
    let mut serving = true;
    for c in channels {
        tracing::info!(anycast = ?c.anycast, dev = %opts.dev, source = %c.source, dest = %c.dest, "announcing");
    }
    loop {
        tokio::select! {
            biased;
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            Ok(()) = health.changed() => {
                let state = health.borrow_and_update().clone();
                serving = state.is_ok();
                match state {
                    // Leave at once; the router also expires us after the hold time.
                    Err(why) => {
                        tracing::warn!(%why, "not serving: leaving");
                        send(None, 0)?;
                        send(None, 0)?;
                    }
                    Ok(()) => tracing::info!("serving again"),
                }
                if serving {
                    ticker.reset_immediately();
                }
            }
            _ = ticker.tick(), if serving => {
                let mac = nl.link_by_index(dev).await.map(|l| l.mac).ok();
                send(mac, hold_ms)?;
            }
        }
    }
    // Leave: twice, in case one is lost; the router also expires us after the hold time.
    send(None, 0)?;
    send(None, 0)
}

/// Builds and signs one advertisement of `channel`'s family.
fn message(
    opts: &Options,
    channel: &Channel,
    mac: Option<[u8; 6]>,
    seq: u64,
    hold_ms: u32,
    key: Option<&(u32, Vec<u8>)>,
) -> Result<Vec<u8>> {
    let too_many = |_| {
        Error::Usage(format!(
            "too many {} anycast addresses for one advertisement (IPv4: 63, IPv6: 42)",
            if channel.source.is_ipv4() {
                "IPv4"
            } else {
                "IPv6"
            }
        ))
    };
    let mut repr = Repr::new(channel.source, seq, now_ms(), key.map_or(0, |k| k.0));
    for &anycast in &channel.anycast {
        repr.push(Membership {
            anycast,
            hold_ms,
            preference: opts.preference,
            weight: opts.weight,
        })
        .map_err(too_many)?;
    }
    if let Some(mac) = mac {
        repr.set_link_addr(mac).map_err(too_many)?;
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
fn claim(address: IpAddr) -> Result<UnixListener> {
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
