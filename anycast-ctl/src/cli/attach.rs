//! `anycast-ctl attach`: attach the dataplane to interfaces.
use std::fmt::Write as _;

use super::{Router, args::flows};
use crate::{
    Result,
    attach::{Mode, native_veths, veth_warning},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(required = true, value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// Attach mode: auto is native on real NICs and skb (generic) on veth, where native XDP
    /// needs its peers set up (see the README's veth section); an interface already attached
    /// keeps its mode [default: auto].
    #[arg(long, short, value_enum, default_value_t = Mode::Auto, hide_default_value = true)]
    pub mode: Mode,
    /// Connection table size in flows, a power of two [default: 1048576]; applies when the
    /// dataplane is first loaded.
    #[arg(long, value_parser = flows)]
    pub flows: Option<u32>,
}

pub async fn run(router: &Router, args: Args) -> Result<String> {
    let Args {
        ifaces,
        mode,
        flows,
    } = args;
    let done = crate::attach::attach(&router.pin, &router.nl, &ifaces, mode, flows).await?;
    let veths = native_veths(&done);
    if !veths.is_empty() {
        eprintln!("anycast-ctl: warning: {}", veth_warning(&veths));
    }
    let mut out = String::new();
    for (name, a) in done {
        let why = match (mode, a.veth) {
            (Mode::Auto, true) => ": a veth, see --mode",
            _ => "",
        };
        match a.new {
            true => writeln!(out, "attached to {name} ({} mode{why})", a.mode.name()),
            false => writeln!(out, "{name}: already attached ({} mode)", a.mode.name()),
        }
        .expect("writing to a String");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::cli::{Command, parse};

    #[test]
    fn parses_attach() {
        let cli = parse(&[
            "--pin-dir",
            "/sys/fs/bpf/x",
            "attach",
            "eth0",
            "eth1",
            "--mode",
            "skb",
        ])
        .unwrap();
        assert_eq!(cli.pin_dir, PathBuf::from("/sys/fs/bpf/x"));
        assert!(
            matches!(cli.command, Command::Attach(Args { ref ifaces, mode: Mode::Skb, .. }) if ifaces.len() == 2)
        );
        let cli = parse(&["attach", "eth0"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Attach(Args {
                mode: Mode::Auto,
                ..
            })
        ));
    }
}
