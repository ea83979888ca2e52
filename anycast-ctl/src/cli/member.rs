//! `anycast-ctl member add|set|del`: static memberships, one at a time.
use std::net::IpAddr;

use clap::Subcommand;

use super::{
    Router,
    args::{anycast_ip, table_size, unicast_ip, unicast_mac},
};
use crate::{
    Result,
    dataplane::Maps,
    export::{self, Pending},
    mac::MacAddr,
    members::{
        self,
        mode::{Mode, Track},
    },
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make MEMBER_IP serve ANYCAST_IP (both IPv4 or both IPv6). The member must be on-link on
    /// an attached interface; its MAC is resolved through the neighbour table unless given.
    Add(AddArgs),
    /// Change a member's preference or weight (weight 0 drains it: existing flows stay, new
    /// flows go elsewhere).
    Set(SetArgs),
    /// Stop MEMBER_IP serving ANYCAST_IP.
    Del(DelArgs),
    /// Set how datagrams to ANYCAST_IP reach its members (an address already in the maps,
    /// static or learned): proxy, direct or multicast.
    Mode(ModeArgs),
    /// Set which flows of ANYCAST_IP the connection table keeps (an address already in the
    /// maps, static or learned): all, or tcp (UDP placed by the Maglev table alone).
    Track(TrackArgs),
}

#[derive(Debug, clap::Args)]
pub struct TrackArgs {
    #[arg(value_parser = anycast_ip)]
    pub anycast_ip: IpAddr,
    #[arg(value_enum)]
    pub track: Track,
}

#[derive(Debug, clap::Args)]
pub struct ModeArgs {
    #[arg(value_parser = anycast_ip)]
    pub anycast_ip: IpAddr,
    #[arg(value_enum)]
    pub mode: Mode,
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    #[arg(value_parser = anycast_ip)]
    pub anycast_ip: IpAddr,
    #[arg(value_parser = unicast_ip)]
    pub member_ip: IpAddr,
    /// Interface the member is on [default: from the route table].
    #[arg(long, value_name = "IFACE")]
    pub dev: Option<String>,
    /// The member's MAC [default: resolved]; a given MAC is never relearned. A MAC belongs
    /// to the host: it is refused if the host already has another static MAC for other
    /// addresses.
    #[arg(long, value_parser = unicast_mac)]
    pub mac: Option<MacAddr>,
    #[command(flatten)]
    pub weight: WeightArgs,
    /// Maglev table size for the address (prime, >= 6,400) [default: 16381, or the
    /// address's current size].
    #[arg(long, value_parser = table_size)]
    pub table_size: Option<u32>,
    /// How datagrams reach the members: proxy (the router answers ARP and forwards each to one
    /// member), direct (ARP answered with one member's MAC per client) or multicast (each
    /// datagram to every member, on the address's group MAC); direct and multicast are IPv4
    /// only [default: proxy for a new address, else its current mode].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Which flows the connection table keeps: all (TCP connections and UDP flows stay on
    /// their member through member-set changes) or tcp (UDP datagrams are placed by the Maglev
    /// table alone: no connection-table lookup or memory per UDP flow, and a member-set change
    /// moves some UDP flows; for stateless services like DNS) [default: all for a new address,
    /// else its current setting].
    #[arg(long, value_enum)]
    pub track: Option<Track>,
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    #[arg(value_parser = anycast_ip)]
    pub anycast_ip: IpAddr,
    #[arg(value_parser = unicast_ip)]
    pub member_ip: IpAddr,
    #[command(flatten)]
    pub weight: WeightArgs,
    /// Maglev table size for the address (prime, >= 6,400) [default: 16381, or the
    /// address's current size].
    #[arg(long, value_parser = table_size)]
    pub table_size: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct DelArgs {
    #[arg(value_parser = anycast_ip)]
    pub anycast_ip: IpAddr,
    #[arg(value_parser = unicast_ip)]
    pub member_ip: IpAddr,
}

#[derive(Debug, clap::Args)]
pub struct WeightArgs {
    /// Lower is better: only members of the best preference get new flows; the others are hot
    /// standby.
    #[arg(long, default_value_t = members::DEFAULT_PREFERENCE)]
    pub preference: u16,
    /// Share of new flows among members of equal preference; 0 drains.
    #[arg(long, default_value_t = members::DEFAULT_WEIGHT)]
    pub weight: u16,
}

pub async fn run(router: &Router, command: Command) -> Result<String> {
    match command {
        Command::Add(args) => add(router, args).await,
        Command::Set(args) => set(router, args).await,
        Command::Del(args) => del(router, args).await,
        Command::Mode(args) => mode(router, args),
        Command::Track(args) => track(router, args),
    }
}

async fn add(router: &Router, args: AddArgs) -> Result<String> {
    let AddArgs {
        anycast_ip,
        member_ip,
        dev,
        mac,
        weight: WeightArgs { preference, weight },
        table_size,
        mode,
        track,
    } = args;
    if let Some(mode) = mode {
        members::mode::check(anycast_ip, mode)?;
    }
    let Router { pin, nl } = router;
    // Resolving the member may wait for ARP: do it before taking the writers' lock, then make
    // sure the maps are still the live ones.
    let mut maps = Maps::open(pin)?;
    let policy = crate::policy::Policy::new(nl).await?;
    let join = members::Join {
        anycast: anycast_ip,
        member: member_ip,
        dev: dev.as_deref(),
        mac: mac.map_or(members::MacFrom::Neighbour, |m| {
            members::MacFrom::Operator(m.0)
        }),
    };
    let placement = members::prepare((&maps, nl, &policy), join, members::RESOLVE_TIMEOUT).await?;
    let _lock = pin.lock(false)?;
    maps.ensure_live(pin)?;
    let info = members::static_info(members::now_ms(), preference, weight);
    // Any change may move the route's metric, not only the first member: sync every time.
    let mut export = Pending::new();
    export.note(&maps, [anycast_ip])?;
    let existed = maps.bucket(anycast_ip)?.is_found();
    let (done, was) = maps.transaction(|maps| {
        let done = members::add(maps, anycast_ip, &placement, info, table_size)?;
        if let Some(mode) = mode {
            members::mode::set(maps, anycast_ip, mode)?;
        }
        let was = match track {
            Some(track) => Some(members::mode::set_track(maps, anycast_ip, track)?),
            None => None,
        };
        Ok((done, was))
    })?;
    export::sync(&maps, nl, &mut export).await?;
    if let (Some(was), Some(now)) = (was, track)
        && members::mode::leaves_entries(existed, was, now)
    {
        members::mode::forget_untracked_or_warn(&maps, pin, &[anycast_ip]);
    }
    Ok(added(anycast_ip, member_ip, &done))
}

fn mode(router: &Router, args: ModeArgs) -> Result<String> {
    let ModeArgs { anycast_ip, mode } = args;
    members::mode::check(anycast_ip, mode)?;
    let _lock = router.pin.lock(false)?;
    let mut maps = Maps::open(&router.pin)?;
    members::mode::set(&mut maps, anycast_ip, mode)?;
    Ok(format!("{anycast_ip}: mode {}\n", mode.name()))
}

fn track(router: &Router, args: TrackArgs) -> Result<String> {
    let TrackArgs { anycast_ip, track } = args;
    let _lock = router.pin.lock(false)?;
    let mut maps = Maps::open(&router.pin)?;
    let was = members::mode::set_track(&mut maps, anycast_ip, track)?;
    if members::mode::leaves_entries(true, was, track) {
        members::mode::forget_untracked_or_warn(&maps, &router.pin, &[anycast_ip]);
    }
    Ok(format!("{anycast_ip}: track {}\n", track.name()))
}

/// The line `member add` prints.
fn added(anycast_ip: IpAddr, member_ip: IpAddr, done: &members::AddOutcome) -> String {
    let what = match done.added {
        members::Added::New => "added",
        members::Added::Updated => "updated",
    };
    let mac = MacAddr(done.host.mac);
    let kind = if done.host.flags & anycast_common::HOST_MAC_STATIC != 0 {
        " static"
    } else {
        ""
    };
    format!(
        "{what} member {member_ip} of {anycast_ip} (mac {mac}{kind}, ifindex {})\n",
        done.host.ifindex
    )
}

async fn set(router: &Router, args: SetArgs) -> Result<String> {
    let SetArgs {
        anycast_ip,
        member_ip,
        weight: WeightArgs { preference, weight },
        table_size,
    } = args;
    let _lock = router.pin.lock(false)?;
    let mut maps = Maps::open(&router.pin)?;
    let mut export = Pending::new();
    export.note(&maps, [anycast_ip])?;
    members::set_weight(
        &mut maps,
        (anycast_ip, member_ip),
        preference,
        weight,
        table_size,
    )?;
    export::sync(&maps, &router.nl, &mut export).await?;
    Ok(format!(
        "member {member_ip} of {anycast_ip}: preference {preference}, weight {weight}\n"
    ))
}

async fn del(router: &Router, args: DelArgs) -> Result<String> {
    let DelArgs {
        anycast_ip,
        member_ip,
    } = args;
    let _lock = router.pin.lock(false)?;
    let mut maps = Maps::open(&router.pin)?;
    let mut export = Pending::new();
    export.note(&maps, [anycast_ip])?;
    members::del(&mut maps, anycast_ip, member_ip)?;
    export::sync(&maps, &router.nl, &mut export).await?;
    Ok(format!("deleted member {member_ip} of {anycast_ip}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse;

    #[test]
    fn parses_member_add_and_del() {
        let cli = parse(&[
            "member",
            "add",
            "198.51.100.53",
            "203.0.113.2",
            "--dev",
            "r1",
            "--mac",
            "02:00:00:00:00:01",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Member(Command::Add(AddArgs {
                anycast_ip,
                member_ip,
                dev,
                mac,
                ..
            })) => {
                assert_eq!(anycast_ip, IpAddr::from([198, 51, 100, 53]));
                assert_eq!(member_ip, IpAddr::from([203, 0, 113, 2]));
                assert_eq!(dev.as_deref(), Some("r1"));
                assert_eq!(mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["member", "del", "198.51.100.53", "203.0.113.2"])
                .unwrap()
                .command,
            crate::cli::Command::Member(Command::Del(..))
        ));
    }

    #[test]
    fn parses_track() {
        let add = ["member", "add", "198.51.100.53", "203.0.113.2"];
        assert!(matches!(
            parse(&add).unwrap().command,
            crate::cli::Command::Member(Command::Add(AddArgs { track: None, .. }))
        ));
        for (word, want) in [("all", Track::All), ("tcp", Track::Tcp)] {
            let args = [&add[..], &["--track", word]].concat();
            match parse(&args).unwrap().command {
                crate::cli::Command::Member(Command::Add(AddArgs { track, .. })) => {
                    assert_eq!(track, Some(want))
                }
                other => panic!("{other:?}"),
            }
            match parse(&["member", "track", "2001:db8:53::53", word])
                .unwrap()
                .command
            {
                crate::cli::Command::Member(Command::Track(TrackArgs { track, .. })) => {
                    assert_eq!(track, want)
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(parse(&["member", "track", "198.51.100.53", "udp"]).is_err());
        assert!(parse(&["member", "track", "198.51.100.53"]).is_err());
    }

    #[test]
    fn parses_modes() {
        let add = parse(&["member", "add", "198.51.100.53", "203.0.113.2"]).unwrap();
        assert!(matches!(
            add.command,
            crate::cli::Command::Member(Command::Add(AddArgs { mode: None, .. }))
        ));
        for (word, want) in [
            ("proxy", Mode::Proxy),
            ("direct", Mode::Direct),
            ("multicast", Mode::Multicast),
        ] {
            let args = [
                "member",
                "add",
                "198.51.100.53",
                "203.0.113.2",
                "--mode",
                word,
            ];
            match parse(&args).unwrap().command {
                crate::cli::Command::Member(Command::Add(AddArgs { mode, .. })) => {
                    assert_eq!(mode, Some(want))
                }
                other => panic!("{other:?}"),
            }
            match parse(&["member", "mode", "198.51.100.53", word])
                .unwrap()
                .command
            {
                crate::cli::Command::Member(Command::Mode(ModeArgs { mode, .. })) => {
                    assert_eq!(mode, want)
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(parse(&["member", "mode", "198.51.100.53", "anycast"]).is_err());
        let v6 = "2001:db8::53".parse().unwrap();
        assert!(members::mode::check(v6, Mode::Direct).is_err());
        assert!(members::mode::check(v6, Mode::Proxy).is_ok());
    }
}
