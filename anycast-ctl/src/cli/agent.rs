//! `anycast-ctl agent`: run the router's daemon (see [`crate::agent`]).
use std::path::PathBuf;

use super::Router;
use crate::{
    Result,
    agent::config::{Overrides, Source},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML configuration file; command-line options override it. SIGHUP reads it again.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Runs until SIGINT or SIGTERM; the agent opens its own netlink handle.
pub async fn run(router: Router, args: Args) -> Result<String> {
    let Router { pin, nl } = router;
    drop(nl);
    let source = Source {
        path: args.config,
        overrides: args.overrides,
    };
    crate::agent::run(pin, source).await?;
    Ok(String::new())
}
