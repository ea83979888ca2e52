//! `anycast-ctl export on|off`: route export to a routing daemon (see [`crate::export`]).
use clap::Subcommand;

use super::Router;
use crate::{
    Result,
    dataplane::Maps,
    export::{self, DEFAULT_PROTO, DEFAULT_TABLE, Settings},
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hold ADDR/32 in TABLE with protocol PROTO for each anycast address with a member (by
    /// every writer: CLI and agent), and reconcile the table now.
    On(OnArgs),
    /// Stop exporting and remove every route of the export protocol from the export table.
    Off,
}

#[derive(Debug, clap::Args)]
pub struct OnArgs {
    /// Kernel routing table of the exported routes (no rule points at it).
    #[arg(long, default_value_t = DEFAULT_TABLE, value_parser = clap::value_parser!(u32).range(1..=0xffff_fffe))]
    pub table: u32,
    /// Route protocol number of the exported routes; only routes with it are ever removed.
    #[arg(long, default_value_t = DEFAULT_PROTO, value_parser = clap::value_parser!(u8).range(5..=254))]
    pub proto: u8,
}

pub async fn run(router: &Router, command: Command) -> Result<String> {
    let _lock = router.pin.lock(false)?;
    let mut maps = Maps::open(&router.pin)?;
    match command {
        Command::On(OnArgs { table, proto }) => {
            let new = Settings { table, proto };
            if let Some(old) = export::settings(&maps)?
                && old != new
            {
                export::withdraw_all(&router.nl, old).await?;
            }
            export::store(&mut maps, Some(new))?;
            let done = export::reconcile(&maps, &router.nl, &mut export::Pending::new()).await?;
            Ok(format!(
                "export on: table {table}, proto {proto} ({} routes added, {} removed)\n",
                done.added, done.removed
            ))
        }
        Command::Off => {
            let removed = match export::settings(&maps)? {
                Some(old) => export::withdraw_all(&router.nl, old).await?,
                None => 0,
            };
            export::store(&mut maps, None)?;
            Ok(format!("export off ({removed} routes removed)\n"))
        }
    }
}
