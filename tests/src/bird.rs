//! BIRD 2 inside a namespace, as a guard: [`Bird::start`] writes the configuration into a
//! directory of its own and runs `bird -f` there through nsenter; dropping it kills BIRD and
//! removes the directory.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result};

use crate::netns::Netns;

pub struct Bird {
    child: Child,
    dir: PathBuf,
}

impl Bird {
    /// Starts BIRD in `ns` with the configuration `config`.
    pub fn start(ns: &Netns, config: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("anycast-bird-{}", ns.name()));
        std::fs::create_dir_all(&dir).context("creating the BIRD directory")?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).context("writing bird.conf")?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg("bird")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bird (is bird2 installed? cargo xtask setup)")?;
        Ok(Self { child, dir })
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The router's BIRD: learns the anycast routes (protocol 201, `/32`) from kernel table 201
/// and exports them by BGP to `neighbor`, with the route's metric as MED.
pub fn router_config(local: &str, neighbor: &str) -> String {
    format!(
        r#"router id {local};
protocol device {{}}
filter anycast_routes {{
  if krt_source = 201 && net.len = 32 then {{ bgp_med = krt_metric; accept; }}
  reject;
}}
protocol kernel anycast {{
  kernel table 201;
  learn;
  ipv4 {{ import filter anycast_routes; export none; }};
}}
protocol bgp upstream {{
  local {local} as 64512;
  neighbor {neighbor} as 64513;
  ipv4 {{ import none; export where proto = "anycast"; }};
}}
"#
    )
}

/// The upstream router's BIRD: learns routes by BGP from `neighbor` and puts them into its
/// kernel's main table.
pub fn upstream_config(local: &str, neighbor: &str) -> String {
    format!(
        r#"router id {local};
protocol device {{}}
protocol kernel {{
  ipv4 {{ import none; export all; }};
}}
protocol bgp site {{
  local {local} as 64513;
  neighbor {neighbor} as 64512;
  ipv4 {{ import all; export none; }};
}}
"#
    )
}
