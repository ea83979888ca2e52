//! `anycast-ctl upgrade`: put this binary's XDP program on every attached interface, keeping the
//! pinned state (see [`crate::upgrade`]).
//!
//! A verb of its own rather than a second `attach`: `attach` is idempotent and the agent runs it
//! at every start, so making it replace programs would swap the dataplane on every agent restart;
//! `upgrade` takes no interfaces (it acts on exactly those attached) and says what it replaced.
use super::{
    Router,
    output::{table, to_json},
};
use crate::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(router: &Router, args: Args) -> Result<String> {
    let done = crate::upgrade::upgrade(&router.pin, &router.nl).await?;
    if args.json {
        return Ok(to_json(&done));
    }
    let rows = done
        .interfaces
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.old_program_id.to_string(),
                i.new_program_id.to_string(),
            ]
        })
        .collect();
    Ok(format!(
        "upgraded: maps kept (layout version {})\n{}",
        done.layout_version,
        table(&["INTERFACE", "OLD PROG ID", "NEW PROG ID"], rows)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    #[test]
    fn parses_upgrade() {
        assert!(matches!(
            parse(&["upgrade", "--json"]).unwrap().command,
            Command::Upgrade(Args { json: true })
        ));
        assert!(
            parse(&["upgrade", "eth0"]).is_err(),
            "upgrade takes no interfaces"
        );
    }
}
