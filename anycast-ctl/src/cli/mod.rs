//! The command line: the top-level arguments and the dispatch to one module per verb.
//!
//! Each verb module owns its arguments and a `run` that calls into the library and formats the
//! result (aligned tables for people, `--json` for programs, see [`output`]). `announce` runs
//! on a member host and `probe` on a client, and need nothing of the router (`probe` not even
//! root); every other verb gets a [`Router`]: the checked pin directory and a netlink handle.
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::{
    Error, Result,
    net::Netlink,
    pin::{DEFAULT_PIN_DIR, PinDir},
};

pub mod agent;
pub mod announce;
pub mod args;
pub mod assets;
pub mod attach;
pub mod detach;
pub mod export;
pub mod live;
pub mod load;
pub mod member;
pub mod metrics;
pub mod output;
pub mod probe;
pub mod show;
pub mod stats;
pub mod status;
pub mod upgrade;

#[derive(Debug, Parser)]
#[command(
    name = "anycast-ctl",
    version,
    about = "RFC 1546 anycast on a Linux router: control the XDP dataplane"
)]
pub struct Cli {
    /// Directory on bpffs that holds the dataplane's maps and links.
    #[arg(long, global = true, env = "ANYCAST_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the dataplane to interfaces (idempotent).
    Attach(attach::Args),
    /// Detach the dataplane from interfaces; the last detach removes all state.
    Detach(detach::Args),
    /// Show where the dataplane is attached.
    Status(status::Args),
    /// Replace the XDP program on every attached interface with this binary's, in place,
    /// keeping memberships, counters and the connection table (same layout version only).
    Upgrade(upgrade::Args),
    /// Add or remove members of anycast addresses.
    #[command(subcommand)]
    Member(member::Command),
    /// Add many static memberships from a TOML file of `[[member]]` tables (anycast, member,
    /// and optional dev, mac, preference, weight), all or none: every entry is checked and
    /// every member located before anything is written.
    Load(load::Args),
    /// Show anycast addresses and their members.
    Show(show::Args),
    /// Run the router daemon: learn members from host advertisements.
    Agent(agent::Args),
    /// On a member host: serve anycast addresses and advertise them to the router.
    Announce(crate::announce::Options),
    /// Ask an anycast address who serves it: each member that answers gives its unicast
    /// address and hostname (members run `announce --identity-port`).
    Probe(probe::Args),
    /// Show counters per anycast address and per member.
    Stats(stats::Args),
    /// Serve Prometheus metrics at /metrics (routers with static members; the agent has
    /// --metrics-listen).
    Metrics(metrics::Args),
    /// Export a host route per anycast address with members, for a routing daemon (BIRD).
    #[command(subcommand)]
    Export(export::Command),
}

/// What the router's verbs work on.
pub struct Router {
    pub pin: PinDir,
    pub nl: Netlink,
}

impl Router {
    /// Checks the pin directory and opens netlink.
    fn open(pin_dir: &Path) -> Result<Self> {
        let pin = PinDir::new(pin_dir);
        pin.check()?;
        let nl = Netlink::new()?;
        Ok(Self { pin, nl })
    }
}

/// Runs one command and returns what to print on stdout.
pub async fn run(cli: Cli) -> Result<String> {
    let command = match cli.command {
        // A client's verb: no router state, no privileges.
        Command::Probe(args) => return probe::run(args).await,
        command => command,
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    let router = || Router::open(&cli.pin_dir);
    match command {
        Command::Announce(options) => announce::run(options).await,
        Command::Agent(args) => agent::run(router()?, args).await,
        Command::Attach(args) => attach::run(&router()?, args).await,
        Command::Detach(args) => detach::run(&router()?, args).await,
        Command::Status(args) => status::run(&router()?, args).await,
        Command::Upgrade(args) => upgrade::run(&router()?, args).await,
        Command::Member(command) => member::run(&router()?, command).await,
        Command::Load(args) => load::run(&router()?, args).await,
        Command::Show(args) => show::run(&router()?, args).await,
        Command::Stats(args) => stats::run(&router()?, args).await,
        Command::Metrics(args) => metrics::run(router()?, args).await,
        Command::Export(command) => export::run(&router()?, command).await,
        Command::Probe(_) => unreachable!("handled above"),
    }
}

/// Parses a command line as the binary does, for the verbs' tests.
#[cfg(test)]
fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("anycast-ctl").chain(args.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_arguments() {
        for bad in [
            &["attach"][..],
            &["attach", "eth0", "--mode", "turbo"],
            &["member", "add", "1.2.3", "203.0.113.2"],
            &["member", "add", "198.51.100.53", "224.0.0.1"],
            &["member", "add", "0.0.0.0", "203.0.113.2"],
            &[
                "member",
                "add",
                "198.51.100.53",
                "203.0.113.2",
                "--mac",
                "zz",
            ],
            &["member", "del", "198.51.100.53"],
            &["stats", "not-an-ip"],
            &["frobnicate"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn command_tree_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
