//! `anycast-ctl status`: where the dataplane is attached, and the agent's counters.
use super::{
    Router,
    output::{nonzero, table, to_json},
};
use crate::{Result, attach::Status};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub json: bool,
}

pub async fn run(router: &Router, args: Args) -> Result<String> {
    let status = crate::attach::status(&router.pin, &router.nl).await?;
    if args.json {
        return Ok(to_json(&status));
    }
    Ok(render(&status))
}

fn render(status: &Status) -> String {
    let rows = status
        .interfaces
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.ifindex.to_string(),
                i.mode.to_string(),
                i.program_id.to_string(),
                i.mac.clone(),
            ]
        })
        .collect();
    let rejected = nonzero(&status.agent.rejected);
    let export = match (status.export, status.exported) {
        (Some(s), Some(n)) => format!(
            "table {} proto {}: {} IPv4, {} IPv6 routes",
            s.table, s.proto, n.ipv4, n.ipv6
        ),
        _ => "off".to_string(),
    };
    format!(
        "pin dir: {}\nanycast addresses: {}\nroute export: {export}\nadvertisements: accepted {}, \
         rejected {}\n{}",
        status.pin_dir,
        status.addresses,
        status.agent.accepted,
        if rejected.is_empty() {
            "0".to_string()
        } else {
            rejected.join(" ")
        },
        table(&["INTERFACE", "IFINDEX", "MODE", "PROG ID", "MAC"], rows)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    #[test]
    fn parses_status() {
        assert!(matches!(
            parse(&["status", "--json"]).unwrap().command,
            Command::Status(Args { json: true })
        ));
    }
}
