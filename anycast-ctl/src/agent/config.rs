//! The agent's configuration: a TOML file, overridden field by field by the command line.
//!
//! Everything is checked here, keys included, before the agent changes anything on the system;
//! SIGHUP runs the same [`Source::load`] again, so a reload is checked exactly like a start.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anycast_common::advert::{DEFAULT_GROUP, DEFAULT_GROUP6, DEFAULT_PORT, MAX_CLOCK_SKEW_MS};
use ipnet::IpNet;
use serde::Deserialize;

use crate::{Error, Result, advert_auth::Keys, attach::Mode};

/// Default `router_hello_ms`.
pub const DEFAULT_ROUTER_HELLO_MS: u64 = 1_000;
/// Largest `router_hello_ms`.
pub const MAX_ROUTER_HELLO_MS: u64 = 60_000;

/// Default `max_hold_ms`: one minute, twenty times the announcer's default hold.
pub const DEFAULT_MAX_HOLD_MS: u32 = 60_000;

/// Largest `export_hold_down_ms`: longer, and upstream would send a site's traffic into the
/// void for minutes after its last member went.
pub const MAX_EXPORT_HOLD_DOWN_MS: u64 = 60_000;

/// Largest `replay_window_ms`: clocks of routers and members that disagree by more than this
/// need fixing, not a wider window.
pub const MAX_REPLAY_WINDOW_MS: u64 = 3_600_000;

/// The file format. Every field is optional; see `Config::merge` for the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub dev: Option<Vec<String>>,
    pub anycast_prefix: Option<Vec<IpNet>>,
    pub key_file: Option<PathBuf>,
    pub insecure_no_auth: Option<bool>,
    pub group: Option<Ipv4Addr>,
    pub group6: Option<Ipv6Addr>,
    pub port: Option<u16>,
    pub mode: Option<String>,
    pub detach_on_exit: Option<bool>,
    pub replay_window_ms: Option<u64>,
    /// Longest hold time an advertisement may ask for (longer ones are cut to it).
    pub max_hold_ms: Option<u32>,
    /// Flap damping of route export: how long an address's route outlives its last member.
    pub export_hold_down_ms: Option<u64>,
    /// Where to serve Prometheus metrics (`"127.0.0.1:9446"`); none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// Direct mode: also send the gratuitous form of each repoint (default true; see
    /// `crate::repoint`).
    pub repoint_gratuitous: Option<bool>,
    /// Multicast mode: router hello interval in ms (default 1000; 0 = off: always forward).
    pub router_hello_ms: Option<u64>,
    /// Learned addresses in these prefixes track TCP only (`member track ADDR tcp`), set when
    /// an address gets its first member.
    pub track_tcp: Option<Vec<IpNet>>,
}

impl File {
    pub fn load(path: &Path) -> Result<Self> {
        let (_, text) = crate::textfile::read(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_string();
            Error::Usage(format!("{}: {msg}", path.display()))
        })
    }
}

/// The agent's effective settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub devs: Vec<String>,
    pub prefixes: Vec<IpNet>,
    pub key_file: Option<PathBuf>,
    pub insecure_no_auth: bool,
    pub group: Ipv4Addr,
    /// The IPv6 group, link-local scope; the same `port` serves both families.
    pub group6: Ipv6Addr,
    pub port: u16,
    pub mode: Mode,
    pub detach_on_exit: bool,
    pub replay_window: Duration,
    /// Hold times of advertisements are cut to this, so that a membership a revoked key made
    /// cannot outlive the revocation by much.
    pub max_hold_ms: u32,
    /// An exported route outlives its address's last member by this much (0: it goes at once);
    /// a member that comes back within it finds the route never withdrawn.
    pub export_hold_down: Duration,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Direct mode: repoints also send the gratuitous form of the ARP reply.
    pub repoint_gratuitous: bool,
    /// Multicast mode: how often the agent says hello to the other routers on its links
    /// (zero: never, and it always forwards itself). See `agent::routers`.
    pub router_hello: Duration,
    /// Learned addresses in these prefixes track TCP only (UDP placed by the Maglev table
    /// alone), set when an address gets its first member.
    pub track_tcp: Vec<IpNet>,
}

/// Command-line values; `None`/empty means "not given".
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Interfaces to attach to and listen on (repeatable) [config: dev].
    #[arg(long = "dev", value_name = "IFACE")]
    pub devs: Vec<String>,
    /// Anycast addresses hosts may claim, IPv4 or IPv6 (repeatable) [config: anycast_prefix].
    #[arg(long = "anycast-prefix", value_name = "CIDR")]
    pub prefixes: Vec<IpNet>,
    /// Keys that advertisements must be signed with (mode 0600) [config: key_file].
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Accept unsigned advertisements (anyone on the link can then volunteer).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Advertisement multicast group [default: 239.255.15.46].
    #[arg(long)]
    pub group: Option<Ipv4Addr>,
    /// IPv6 advertisement multicast group, link-local scope [default: ff12::1546].
    #[arg(long)]
    pub group6: Option<Ipv6Addr>,
    /// Advertisement UDP port [default: 5446].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Attach mode: auto (native on real NICs, skb on veth), native or skb [default: auto].
    #[arg(long, short, value_enum)]
    pub mode: Option<Mode>,
    /// Detach the dataplane when the agent exits (by default it keeps forwarding).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Serve Prometheus metrics at /metrics on ADDR:PORT [config: metrics_listen].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Multicast mode: router hello interval in ms, 0 = off [default: 1000; config:
    /// router_hello_ms].
    #[arg(long, value_name = "MS")]
    pub router_hello_ms: Option<u64>,
}

/// Where the configuration comes from; read again on SIGHUP.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// The TOML file, if any.
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl Source {
    /// Reads and checks the configuration and its key file.
    pub fn load(&self) -> Result<(Config, Option<Keys>)> {
        let file = match &self.path {
            Some(path) => File::load(path)?,
            None => File::default(),
        };
        let config = Config::merge(file, self.overrides.clone())?;
        let keys = match &config.key_file {
            Some(path) => Some(Keys::load(path)?),
            None => None,
        };
        Ok((config, keys))
    }
}

/// The attach mode: the command line's, else the file's, else auto.
fn merge_mode(cli: Option<Mode>, file: Option<&str>) -> Result<Mode> {
    match (cli, file) {
        (Some(m), _) => Ok(m),
        (None, None | Some("auto")) => Ok(Mode::Auto),
        (None, Some("native")) => Ok(Mode::Native),
        (None, Some("skb")) => Ok(Mode::Skb),
        (None, Some(other)) => Err(Error::Usage(format!(
            "mode {other:?} is none of auto, native and skb"
        ))),
    }
}

impl Config {
    /// Merges the file and the command line (the command line wins) and checks the result.
    pub fn merge(file: File, cli: Overrides) -> Result<Self> {
        let mode = merge_mode(cli.mode, file.mode.as_deref())?;
        let config = Config {
            devs: if cli.devs.is_empty() {
                file.dev.unwrap_or_default()
            } else {
                cli.devs
            },
            prefixes: if cli.prefixes.is_empty() {
                file.anycast_prefix.unwrap_or_default()
            } else {
                cli.prefixes
            },
            key_file: cli.key_file.or(file.key_file),
            insecure_no_auth: cli.insecure_no_auth || file.insecure_no_auth.unwrap_or(false),
            group: cli
                .group
                .or(file.group)
                .unwrap_or(Ipv4Addr::from(DEFAULT_GROUP)),
            group6: cli
                .group6
                .or(file.group6)
                .unwrap_or(Ipv6Addr::from(DEFAULT_GROUP6)),
            port: cli.port.or(file.port).unwrap_or(DEFAULT_PORT),
            mode,
            detach_on_exit: cli.detach_on_exit || file.detach_on_exit.unwrap_or(false),
            max_hold_ms: file.max_hold_ms.unwrap_or(DEFAULT_MAX_HOLD_MS),
            export_hold_down: Duration::from_millis(file.export_hold_down_ms.unwrap_or(0)),
            metrics_listen: cli.metrics_listen.or(file.metrics_listen),
            repoint_gratuitous: file.repoint_gratuitous.unwrap_or(true),
            router_hello: Duration::from_millis(
                cli.router_hello_ms
                    .or(file.router_hello_ms)
                    .unwrap_or(DEFAULT_ROUTER_HELLO_MS),
            ),
            replay_window: Duration::from_millis(
                file.replay_window_ms.unwrap_or(MAX_CLOCK_SKEW_MS),
            ),
            track_tcp: file.track_tcp.unwrap_or_default(),
        };
        config.check()?;
        Ok(config)
    }

    /// Refuses a merged configuration the agent cannot run with.
    fn check(&self) -> Result<()> {
        if self.max_hold_ms == 0 {
            return Err(Error::Usage(
                "max_hold_ms = 0: it must be at least 1".into(),
            ));
        }
        let hello = self.router_hello.as_millis() as u64;
        if hello > MAX_ROUTER_HELLO_MS || (hello > 0 && hello < 10) {
            return Err(Error::Usage(format!(
                "router_hello_ms = {hello}: it must be 0 (off) or 10..={MAX_ROUTER_HELLO_MS}"
            )));
        }
        let hold_down = self.export_hold_down.as_millis() as u64;
        if hold_down > MAX_EXPORT_HOLD_DOWN_MS {
            return Err(Error::Usage(format!(
                "export_hold_down_ms = {hold_down}: it must be at most {MAX_EXPORT_HOLD_DOWN_MS}"
            )));
        }
        if self.port == 0 {
            return Err(Error::Usage("port 0 is not a UDP port to listen on".into()));
        }
        let window = self.replay_window.as_millis() as u64;
        if window == 0 || window > MAX_REPLAY_WINDOW_MS {
            return Err(Error::Usage(format!(
                "replay_window_ms = {window}: it must be 1 to {MAX_REPLAY_WINDOW_MS}"
            )));
        }
        if self.devs.is_empty() {
            return Err(Error::Usage("the agent needs at least one --dev".into()));
        }
        if self.prefixes.is_empty() {
            return Err(Error::Usage(
                "the agent needs at least one --anycast-prefix: the addresses hosts may claim"
                    .into(),
            ));
        }
        if self.key_file.is_none() && !self.insecure_no_auth {
            return Err(Error::Usage(
                "no --key-file: refusing to accept unauthenticated advertisements \
                 (pass --insecure-no-auth to allow them)"
                    .into(),
            ));
        }
        if !self.group.is_multicast() {
            return Err(Error::Usage(format!(
                "group {} is not a multicast address",
                self.group
            )));
        }
        if !crate::cli::args::is_link_local_multicast(self.group6) {
            return Err(Error::Usage(format!(
                "group6 {} is not a link-local scope multicast address (ff02::/16, ff12::/16)",
                self.group6
            )));
        }
        Ok(())
    }

    /// Whether hosts may claim `anycast`: inside one of the prefixes (of its family).
    pub fn allows(&self, anycast: impl Into<IpAddr>) -> bool {
        let anycast = anycast.into();
        self.prefixes.iter().any(|p| p.contains(&anycast))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Overrides {
        Overrides {
            devs: vec!["r1".into()],
            prefixes: vec!["198.51.100.0/24".parse().unwrap()],
            insecure_no_auth: true,
            ..Default::default()
        }
    }

    #[test]
    fn command_line_overrides_the_file() {
        let file: File = toml::from_str(
            r#"
            dev = ["eth1", "eth2"]
            anycast_prefix = ["203.0.113.0/24"]
            port = 6000
            mode = "skb"
            "#,
        )
        .unwrap();
        let c = Config::merge(file, cli()).unwrap();
        assert_eq!(c.devs, vec!["r1"]);
        assert!(c.allows("198.51.100.53".parse::<Ipv4Addr>().unwrap()));
        assert!(!c.allows("203.0.113.7".parse::<Ipv4Addr>().unwrap()));
        assert_eq!(c.port, 6000);
        assert_eq!(c.mode, Mode::Skb);
        assert_eq!(c.group, Ipv4Addr::from(DEFAULT_GROUP));
    }

    #[test]
    fn refuses_incomplete_or_unsafe_settings() {
        let no_auth = Overrides {
            insecure_no_auth: false,
            ..cli()
        };
        assert!(Config::merge(File::default(), no_auth).is_err());
        let no_dev = Overrides {
            devs: vec![],
            ..cli()
        };
        assert!(Config::merge(File::default(), no_dev).is_err());
        let no_prefix = Overrides {
            prefixes: vec![],
            ..cli()
        };
        assert!(Config::merge(File::default(), no_prefix).is_err());
        let bad_group = Overrides {
            group: Some(Ipv4Addr::new(192, 0, 2, 1)),
            ..cli()
        };
        assert!(Config::merge(File::default(), bad_group).is_err());
        assert!(toml::from_str::<File>("devv = [\"x\"]").is_err());
        assert!(toml::from_str::<File>("port = \"x\"").is_err());
        for group6 in ["ff05::1546", "2001:db8::1"] {
            let bad_group6 = Overrides {
                group6: Some(group6.parse().unwrap()),
                ..cli()
            };
            let err = Config::merge(File::default(), bad_group6).unwrap_err();
            assert!(err.to_string().contains("link-local scope"), "{err}");
        }
        let bad_mode: File = toml::from_str("mode = \"turbo\"").unwrap();
        assert!(Config::merge(bad_mode, cli()).is_err());
        assert!(toml::from_str::<File>("track_tcp = [\"198.51.100.300/32\"]").is_err());
        assert!(toml::from_str::<File>("track_tcp = \"198.51.100.53/32\"").is_err());
        let track: File =
            toml::from_str("track_tcp = [\"198.51.100.53/32\", \"2001:db8::/32\"]").unwrap();
        let track = Config::merge(track, cli()).unwrap().track_tcp;
        assert_eq!(track.len(), 2);
        assert!(
            Config::merge(File::default(), cli())
                .unwrap()
                .track_tcp
                .is_empty()
        );
    }

    /// Regression: `replay_window_ms = 0` (every advertisement stale) and `port = 0` were
    /// accepted.
    #[test]
    fn zero_replay_window_and_port_are_refused() {
        for text in [
            "replay_window_ms = 0",
            "replay_window_ms = 3600001",
            "port = 0",
            "max_hold_ms = 0",
            "export_hold_down_ms = 60001",
        ] {
            let file: File = toml::from_str(text).unwrap();
            let err = Config::merge(file, cli()).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{text}: {err}");
        }
        let ok: File = toml::from_str("replay_window_ms = 1000").unwrap();
        assert!(Config::merge(ok, cli()).is_ok());
    }

    #[test]
    fn ipv6_prefixes_and_group_are_accepted() {
        let file: File = toml::from_str(
            r#"
            anycast_prefix = ["198.51.100.0/24", "2001:db8:53::/48"]
            group6 = "ff02::1546"
            "#,
        )
        .unwrap();
        let overrides = Overrides {
            prefixes: vec![],
            ..cli()
        };
        let c = Config::merge(file, overrides).unwrap();
        assert!(c.allows("2001:db8:53::53".parse::<IpAddr>().unwrap()));
        assert!(!c.allows("2001:db8:54::53".parse::<IpAddr>().unwrap()));
        assert!(c.allows(Ipv4Addr::new(198, 51, 100, 53)));
        assert_eq!(c.group6, "ff02::1546".parse::<Ipv6Addr>().unwrap());
        let c = Config::merge(File::default(), cli()).unwrap();
        assert_eq!(c.group6, Ipv6Addr::from(DEFAULT_GROUP6));
    }

    /// The shipped example configuration parses, IPv6 prefix and group included.
    #[test]
    fn contrib_example_parses() {
        let file: File = toml::from_str(include_str!("../../../contrib/agent.toml")).unwrap();
        assert_eq!(file.group6, Some(Ipv6Addr::from(DEFAULT_GROUP6)));
        assert!(
            file.anycast_prefix
                .unwrap()
                .iter()
                .any(|p| p.addr().is_ipv6())
        );
    }

    /// Regression: a config path of /dev/zero read forever.
    #[test]
    fn config_that_is_a_device_fails_fast() {
        let err = File::load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
