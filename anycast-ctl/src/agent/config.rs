//! The agent's configuration: a TOML file, overridden field by field by the command line.
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anycast_common::advert::{DEFAULT_GROUP, DEFAULT_PORT, MAX_CLOCK_SKEW_MS};
use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::{Error, Result, attach::Mode};

/// The file format. Every field is optional; see `Config::merge` for the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub dev: Option<Vec<String>>,
    pub anycast_prefix: Option<Vec<Ipv4Net>>,
    pub key_file: Option<PathBuf>,
    pub insecure_no_auth: Option<bool>,
    pub group: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub mode: Option<String>,
    pub detach_on_exit: Option<bool>,
    pub replay_window_ms: Option<u64>,
}

impl File {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
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
    pub prefixes: Vec<Ipv4Net>,
    pub key_file: Option<PathBuf>,
    pub insecure_no_auth: bool,
    pub group: Ipv4Addr,
    pub port: u16,
    pub mode: Mode,
    pub detach_on_exit: bool,
    pub replay_window: Duration,
}

/// Command-line values; `None`/empty means "not given".
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub devs: Vec<String>,
    pub prefixes: Vec<Ipv4Net>,
    pub key_file: Option<PathBuf>,
    pub insecure_no_auth: bool,
    pub group: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub mode: Option<Mode>,
    pub detach_on_exit: bool,
}

impl Config {
    /// Merges the file and the command line (the command line wins) and checks the result.
    pub fn merge(file: File, cli: Overrides) -> Result<Self> {
        let mode = match (cli.mode, file.mode.as_deref()) {
            (Some(m), _) => m,
            (None, None | Some("native")) => Mode::Native,
            (None, Some("skb")) => Mode::Skb,
            (None, Some(other)) => {
                return Err(Error::Usage(format!(
                    "mode {other:?} is neither native nor skb"
                )));
            }
        };
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
            port: cli.port.or(file.port).unwrap_or(DEFAULT_PORT),
            mode,
            detach_on_exit: cli.detach_on_exit || file.detach_on_exit.unwrap_or(false),
            replay_window: Duration::from_millis(
                file.replay_window_ms.unwrap_or(MAX_CLOCK_SKEW_MS),
            ),
        };
        if config.devs.is_empty() {
            return Err(Error::Usage("the agent needs at least one --dev".into()));
        }
        if config.prefixes.is_empty() {
            return Err(Error::Usage(
                "the agent needs at least one --anycast-prefix: the addresses hosts may claim"
                    .into(),
            ));
        }
        if config.key_file.is_none() && !config.insecure_no_auth {
            return Err(Error::Usage(
                "no --key-file: refusing to accept unauthenticated advertisements \
                 (pass --insecure-no-auth to allow them)"
                    .into(),
            ));
        }
        if !config.group.is_multicast() {
            return Err(Error::Usage(format!(
                "group {} is not a multicast address",
                config.group
            )));
        }
        Ok(config)
    }

    pub fn allows(&self, anycast: Ipv4Addr) -> bool {
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
        assert!(c.allows("198.51.100.53".parse().unwrap()));
        assert!(!c.allows("203.0.113.7".parse().unwrap()));
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
        let bad_mode: File = toml::from_str("mode = \"turbo\"").unwrap();
        assert!(Config::merge(bad_mode, cli()).is_err());
    }
}
