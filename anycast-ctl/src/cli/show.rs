//! `anycast-ctl show`: anycast addresses and their members.
use std::collections::HashMap;

use super::{
    Router,
    output::{seconds, table, to_json},
};
use crate::{
    Result,
    dataplane::Maps,
    net::Netlink,
    report::{self, AddressInfo, Show, ShownMember},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub json: bool,
}

const HEADERS: [&str; 11] = [
    "ANYCAST",
    "MEMBER",
    "INTERFACE",
    "MAC",
    "SOURCE",
    "AGE",
    "EXPIRES IN",
    "PREF/WEIGHT",
    "NEW FLOWS",
    "MODE",
    "TRACK",
];

pub async fn run(router: &Router, args: Args) -> Result<String> {
    let maps = Maps::open(&router.pin)?;
    let names = interface_names(&router.nl).await;
    let mut show = report::show(&maps, &|i| {
        names.get(&i).cloned().unwrap_or_else(|| i.to_string())
    })?;
    let exported = crate::export::exported(&maps, &router.nl).await?;
    for a in &mut show.addresses {
        a.exported_metric = exported.get(&a.address).copied();
    }
    if args.json {
        return Ok(to_json(&show));
    }
    Ok(table(&HEADERS, rows(&show)))
}

async fn interface_names(nl: &Netlink) -> HashMap<u32, String> {
    nl.links()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect()
}

/// One row per member; an address without members gets a row of its own.
fn rows(show: &Show) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for a in &show.addresses {
        if a.members.is_empty() {
            rows.push(vec![
                a.address.to_string(),
                "-".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                a.mode.name().into(),
                a.track.name().into(),
            ]);
        }
        rows.extend(a.members.iter().map(|m| member_row(a, m)));
    }
    rows
}

fn member_row(a: &AddressInfo, m: &ShownMember) -> Vec<String> {
    let mac = match (m.mac_known, m.static_mac) {
        (false, _) => "unknown".to_string(),
        (true, true) => format!("{} (static)", m.mac),
        (true, false) => m.mac.clone(),
    };
    vec![
        a.address.to_string(),
        m.address.to_string(),
        m.interface.clone(),
        mac,
        m.source.to_string(),
        seconds(m.age_ms),
        m.expires_in_ms.map_or("never".into(), seconds),
        format!("{}/{}", m.preference, m.weight),
        format!("{:.1}%", m.share * 100.0),
        a.mode.name().into(),
        a.track.name().into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    #[test]
    fn parses_show() {
        assert!(matches!(
            parse(&["show"]).unwrap().command,
            Command::Show(Args { json: false })
        ));
    }
}
