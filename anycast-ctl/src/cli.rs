//! The command line: argument definitions, and each command as a call into the library plus
//! output formatting (aligned tables for people, `--json` for programs).
use std::{fmt::Write as _, net::Ipv4Addr, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::{
    Error, Result,
    attach::{self, Attached, Mode},
    dataplane::Maps,
    mac::MacAddr,
    members,
    net::Netlink,
    pin::{DEFAULT_PIN_DIR, PinDir},
    report,
};

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
    Attach {
        #[arg(required = true, value_name = "IFACE")]
        ifaces: Vec<String>,
        /// Attach mode [default: native; use skb where the driver lacks native XDP].
        #[arg(long, short, value_enum, default_value_t = Mode::Native, hide_default_value = true)]
        mode: Mode,
        /// Connection table size in flows, a power of two [default: 1048576]; applies when the
        /// dataplane is first loaded.
        #[arg(long, value_parser = flows)]
        flows: Option<u32>,
    },
    /// Detach the dataplane from interfaces; the last detach removes all state.
    Detach {
        #[arg(required = true, value_name = "IFACE")]
        ifaces: Vec<String>,
    },
    /// Show where the dataplane is attached.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Add or remove members of anycast addresses.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Add many static memberships from a TOML file of `[[member]]` tables (anycast, member,
    /// and optional dev, mac, preference, weight), all or none: every entry is checked and
    /// every member located before anything is written.
    Load {
        /// The file, or `-` for stdin.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show anycast addresses and their members.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Run the router daemon: learn members from host advertisements.
    Agent(AgentArgs),
    /// On a member host: serve anycast addresses and advertise them to the router.
    Announce(crate::announce::Options),
    /// Show counters per anycast address and per member.
    Stats {
        /// Only this anycast address.
        #[arg(value_parser = anycast_address)]
        address: Option<Ipv4Addr>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// TOML configuration file; command-line options override it. SIGHUP reads it again.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: crate::agent::config::Overrides,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Make MEMBER_IP serve ANYCAST_IP. The member must be on-link on an attached interface;
    /// its MAC is resolved through the neighbour table unless given.
    Add {
        #[arg(value_parser = anycast_address)]
        anycast_ip: Ipv4Addr,
        #[arg(value_parser = unicast_address)]
        member_ip: Ipv4Addr,
        /// Interface the member is on [default: from the route table].
        #[arg(long, value_name = "IFACE")]
        dev: Option<String>,
        /// The member's MAC [default: resolved]; a given MAC is never relearned. A MAC belongs
        /// to the host: it is refused if the host already has another static MAC for other
        /// addresses.
        #[arg(long, value_parser = unicast_mac)]
        mac: Option<MacAddr>,
        #[command(flatten)]
        weight: WeightArgs,
        /// Maglev table size for the address (prime, >= 6,400) [default: 16381, or the
        /// address's current size].
        #[arg(long, value_parser = table_size)]
        table_size: Option<u32>,
    },
    /// Change a member's preference or weight (weight 0 drains it: existing flows stay, new
    /// flows go elsewhere).
    Set {
        #[arg(value_parser = anycast_address)]
        anycast_ip: Ipv4Addr,
        #[arg(value_parser = unicast_address)]
        member_ip: Ipv4Addr,
        #[command(flatten)]
        weight: WeightArgs,
        /// Maglev table size for the address (prime, >= 6,400) [default: 16381, or the
        /// address's current size].
        #[arg(long, value_parser = table_size)]
        table_size: Option<u32>,
    },
    /// Stop MEMBER_IP serving ANYCAST_IP.
    Del {
        #[arg(value_parser = anycast_address)]
        anycast_ip: Ipv4Addr,
        #[arg(value_parser = unicast_address)]
        member_ip: Ipv4Addr,
    },
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

fn flows(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    crate::dataplane::check_flows(n)
}

fn table_size(s: &str) -> Result<u32, String> {
    let m: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if m > anycast_common::MAX_TABLE_SIZE || !crate::maglev::is_prime(m) {
        return Err(format!(
            "{m} is not a prime up to {}",
            anycast_common::MAX_TABLE_SIZE
        ));
    }
    if m < crate::maglev::MIN_SIZE_FACTOR * anycast_common::MAX_MEMBERS as u32 {
        return Err(format!(
            "{m} is too small: use at least {} (100 x {} members)",
            crate::maglev::MIN_SIZE_FACTOR * anycast_common::MAX_MEMBERS as u32,
            anycast_common::MAX_MEMBERS
        ));
    }
    Ok(m)
}

pub(crate) fn unicast_mac(s: &str) -> Result<MacAddr, String> {
    let mac: MacAddr = s
        .parse()
        .map_err(|e: crate::mac::ParseMacError| e.to_string())?;
    mac.check_unicast().map_err(|e| e.to_string())?;
    Ok(mac)
}

pub(crate) fn unicast_address(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(format!("{ip} is not a unicast address"));
    }
    Ok(ip)
}

pub fn anycast_address(s: &str) -> Result<Ipv4Addr, String> {
    let ip = unicast_address(s)?;
    match crate::policy::never_anycast(ip) {
        Some(why) => Err(format!("{ip} cannot be an anycast address: {why}")),
        None => Ok(ip),
    }
}

/// Runs one command and returns what to print on stdout.
pub async fn run(cli: Cli) -> Result<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    let pin = PinDir::new(&cli.pin_dir);
    let command = match cli.command {
        Command::Announce(options) => {
            crate::announce::run(options).await?;
            return Ok(String::new());
        }
        other => other,
    };
    pin.check()?;
    let nl = Netlink::new()?;
    match command {
        Command::Announce(_) => Ok(String::new()),
        Command::Agent(a) => {
            let source = crate::agent::config::Source {
                path: a.config,
                overrides: a.overrides,
            };
            drop(nl);
            crate::agent::run(pin, source).await?;
            Ok(String::new())
        }
        Command::Attach {
            ifaces,
            mode,
            flows,
        } => {
            let done = attach::attach(&pin, &nl, &ifaces, mode, flows).await?;
            let mut out = String::new();
            for (name, what) in done {
                match what {
                    Attached::New => writeln!(out, "attached to {name} ({} mode)", mode.name()),
                    Attached::Already => writeln!(out, "{name}: already attached"),
                }
                .expect("writing to a String");
            }
            Ok(out)
        }
        Command::Detach { ifaces } => {
            attach::detach(&pin, &nl, &ifaces).await?;
            Ok(format!("detached from {}\n", ifaces.join(" ")))
        }
        Command::Status { json } => {
            let status = attach::status(&pin, &nl).await?;
            if json {
                return Ok(to_json(&status));
            }
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
            let rejected: Vec<String> = status
                .agent
                .rejected
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            Ok(format!(
                "pin dir: {}\nanycast addresses: {}\nadvertisements: accepted {}, rejected {}\n{}",
                status.pin_dir,
                status.addresses,
                status.agent.accepted,
                if rejected.is_empty() {
                    "0".to_string()
                } else {
                    rejected.join(" ")
                },
                table(&["INTERFACE", "IFINDEX", "MODE", "PROG ID", "MAC"], rows)
            ))
        }
        Command::Member(MemberCommand::Add {
            anycast_ip,
            member_ip,
            dev,
            mac,
            weight: WeightArgs { preference, weight },
            table_size,
        }) => {
            // Resolving the member may wait for ARP: do it before taking the writers' lock,
            // then make sure the maps are still the live ones.
            let mut maps = Maps::open(&pin)?;
            crate::policy::Policy::new(&nl)
                .await?
                .check_anycast(&maps, anycast_ip)?;
            let mac_from = mac.map_or(members::MacFrom::Neighbour, |m| {
                members::MacFrom::Operator(m.0)
            });
            let placement = members::locate(
                &maps,
                &nl,
                member_ip,
                dev.as_deref(),
                mac_from,
                members::RESOLVE_TIMEOUT,
            )
            .await?;
            let _lock = pin.lock(false)?;
            maps.ensure_live(&pin)?;
            maps.table_size = table_size;
            let info = members::static_info(members::now_ms(), preference, weight);
            let done = members::add(&mut maps, anycast_ip, &placement, info)?;
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
            Ok(format!(
                "{what} member {member_ip} of {anycast_ip} (mac {mac}{kind}, ifindex {})\n",
                done.host.ifindex
            ))
        }
        Command::Member(MemberCommand::Set {
            anycast_ip,
            member_ip,
            weight: WeightArgs { preference, weight },
            table_size,
        }) => {
            let _lock = pin.lock(false)?;
            let mut maps = Maps::open(&pin)?;
            maps.table_size = table_size;
            members::set_weight(&mut maps, anycast_ip, member_ip, preference, weight)?;
            Ok(format!(
                "member {member_ip} of {anycast_ip}: preference {preference}, weight {weight}\n"
            ))
        }
        Command::Member(MemberCommand::Del {
            anycast_ip,
            member_ip,
        }) => {
            let _lock = pin.lock(false)?;
            let mut maps = Maps::open(&pin)?;
            members::del(&mut maps, anycast_ip, member_ip)?;
            Ok(format!("deleted member {member_ip} of {anycast_ip}\n"))
        }
        Command::Load { file } => {
            let (name, text) = read_input(&file)?;
            let list = crate::load::parse(&name, &text)?;
            let mut maps = Maps::open(&pin)?;
            let placements = crate::load::locate_all(&maps, &nl, &list).await?;
            let _lock = pin.lock(false)?;
            let done = crate::load::apply(&mut maps, &list, &placements)?;
            Ok(format!(
                "loaded {} memberships ({} added, {} updated)\n",
                list.len(),
                done.added,
                done.updated
            ))
        }
        Command::Show { json } => {
            let maps = Maps::open(&pin)?;
            let names = interface_names(&nl).await;
            let show = report::show(&maps, &|i| {
                names.get(&i).cloned().unwrap_or_else(|| i.to_string())
            })?;
            if json {
                return Ok(to_json(&show));
            }
            let mut rows = Vec::new();
            for a in &show.addresses {
                if a.members.is_empty() {
                    rows.push(vec![
                        a.address.to_string(),
                        "-".into(),
                        String::new(),
                        String::new(),
                    ]);
                }
                for m in &a.members {
                    let mac = match (m.mac_known, m.static_mac) {
                        (false, _) => "unknown".to_string(),
                        (true, true) => format!("{} (static)", m.mac),
                        (true, false) => m.mac.clone(),
                    };
                    rows.push(vec![
                        a.address.to_string(),
                        m.address.to_string(),
                        m.interface.clone(),
                        mac,
                        m.source.to_string(),
                        seconds(m.age_ms),
                        m.expires_in_ms.map_or("never".into(), seconds),
                        format!("{}/{}", m.preference, m.weight),
                        format!("{:.1}%", m.share * 100.0),
                    ]);
                }
            }
            Ok(table(
                &[
                    "ANYCAST",
                    "MEMBER",
                    "INTERFACE",
                    "MAC",
                    "SOURCE",
                    "AGE",
                    "EXPIRES IN",
                    "PREF/WEIGHT",
                    "NEW FLOWS",
                ],
                rows,
            ))
        }
        Command::Stats { address, json } => {
            let maps = Maps::open(&pin)?;
            let stats = report::stats(&maps, address)?;
            if json {
                return Ok(to_json(&stats));
            }
            let mut rows = Vec::new();
            for a in &stats.addresses {
                let passed: u64 = a.passed.values().sum();
                rows.push(vec![
                    a.address.to_string(),
                    String::new(),
                    a.rx_packets.to_string(),
                    a.rx_bytes.to_string(),
                    a.forwarded_packets.to_string(),
                    a.forwarded_bytes.to_string(),
                    passed.to_string(),
                    a.arp_replies.to_string(),
                ]);
                for m in &a.members {
                    rows.push(vec![
                        String::new(),
                        m.address.to_string(),
                        String::new(),
                        String::new(),
                        m.packets.to_string(),
                        m.bytes.to_string(),
                        String::new(),
                        String::new(),
                    ]);
                }
            }
            let mut out = table(
                &[
                    "ANYCAST",
                    "MEMBER",
                    "RX PKTS",
                    "RX BYTES",
                    "FWD PKTS",
                    "FWD BYTES",
                    "PASSED",
                    "ARP REPLIES",
                ],
                rows,
            );
            for a in &stats.addresses {
                let reasons: Vec<String> = a
                    .passed
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(r, n)| format!("{r}={n}"))
                    .collect();
                if !reasons.is_empty() {
                    writeln!(
                        out,
                        "{} passed to the kernel: {}",
                        a.address,
                        reasons.join(" ")
                    )
                    .expect("writing to a String");
                }
            }
            Ok(out)
        }
    }
}

/// A file's name and text, or stdin's for `-`.
fn read_input(path: &std::path::Path) -> Result<(String, String)> {
    if path.as_os_str() == "-" {
        let text =
            std::io::read_to_string(std::io::stdin()).map_err(|e| Error::io("reading stdin", e))?;
        return Ok(("stdin".into(), text));
    }
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {name}"), e))?;
    Ok((name, text))
}

async fn interface_names(nl: &Netlink) -> std::collections::HashMap<u32, String> {
    nl.links()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect()
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("report types serialize");
    s.push('\n');
    s
}

/// Formats rows as a left-aligned table with a header.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end()).expect("writing to a String");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("anycast-ctl").chain(args.iter().copied()))
    }

    #[test]
    fn parses_the_contract() {
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
            matches!(cli.command, Command::Attach { ref ifaces, mode: Mode::Skb, .. } if ifaces.len() == 2)
        );
        let cli = parse(&["attach", "eth0"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Attach {
                mode: Mode::Native,
                ..
            }
        ));
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
            Command::Member(MemberCommand::Add {
                anycast_ip,
                member_ip,
                dev,
                mac,
                ..
            }) => {
                assert_eq!(anycast_ip, Ipv4Addr::new(198, 51, 100, 53));
                assert_eq!(member_ip, Ipv4Addr::new(203, 0, 113, 2));
                assert_eq!(dev.as_deref(), Some("r1"));
                assert_eq!(mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["stats", "198.51.100.53", "--json"])
                .unwrap()
                .command,
            Command::Stats {
                address: Some(_),
                json: true
            }
        ));
        assert!(matches!(
            parse(&["status", "--json"]).unwrap().command,
            Command::Status { json: true }
        ));
        assert!(matches!(
            parse(&["show"]).unwrap().command,
            Command::Show { json: false }
        ));
        assert!(matches!(
            parse(&["member", "del", "198.51.100.53", "203.0.113.2"])
                .unwrap()
                .command,
            Command::Member(MemberCommand::Del { .. })
        ));
    }

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

    /// Regression: `announce --help` said the highest key id signs; the first key signs.
    #[test]
    fn announce_help_says_the_first_key_signs() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let announce = cmd.find_subcommand_mut("announce").unwrap();
        let help = announce.render_long_help().to_string();
        assert!(help.contains("first key"), "{help}");
        assert!(!help.contains("highest"), "{help}");
    }

    /// Regression: anycast addresses of classes that are never unicast were accepted.
    #[test]
    fn never_anycast_classes_are_refused_while_parsing() {
        for bad in ["169.254.1.1", "240.0.0.1", "127.0.0.1", "0.1.2.3"] {
            assert!(
                parse(&["member", "add", bad, "203.0.113.2"]).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONGER"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }
}
