//! The cost of a Prometheus scrape at 65,536 addresses (`metrics_scrape_65536_ms`): the
//! addresses are installed by `load` (one member each) on the two-member topology, the real
//! `anycast-ctl metrics` serves them in the router namespace, and each figure is the wall time
//! of one `GET /metrics` as Prometheus sends it (OpenMetrics), from connect to the last byte.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::control::{ADDRESSES, load_file, median, ms, operator, tempdir};
use crate::{
    daemon::Daemon,
    prometheus::{OPENMETRICS_ACCEPT, http_get, http_get_timed},
};

const LISTEN: &str = "127.0.0.1:9446";
const TARGET_MS: f64 = 1_000.0;
const RUNS: usize = 5;

/// Runs the measurement; prints it and returns it as JSON.
pub fn run() -> Result<Value> {
    crate::require_root();
    let (topo, ctl) = super::attached(2)?;
    let dir = tempdir()?;
    let file = dir.join("memberships.toml");
    std::fs::write(&file, load_file(ADDRESSES, topo.members[0].ip))?;
    operator(
        &topo,
        &ctl,
        &["load", file.to_str().context("UTF-8 temp path")?],
    )?;
    std::fs::remove_dir_all(&dir)?;
    let pin = ctl.pin_dir().display().to_string();
    let mut server = Daemon::spawn(
        &topo.router,
        "metrics",
        &["--pin-dir", &pin, "metrics", "--listen", LISTEN],
    )?;
    let get = || {
        topo.router
            .in_ns(|| http_get(LISTEN, "/metrics", OPENMETRICS_ACCEPT))
    };
    let ready = crate::wait_until(std::time::Duration::from_secs(10), || get().is_ok());
    ensure!(ready, "the metrics server did not answer: {}", server.log());
    let (mut times, mut body) = (Vec::new(), String::new());
    for _ in 0..RUNS {
        let (reply, took) = topo
            .router
            .in_ns(|| http_get_timed(LISTEN, "/metrics", OPENMETRICS_ACCEPT))?;
        times.push(ms(took));
        ensure!(
            reply.status == 200,
            "scrape: {} {}",
            reply.status,
            reply.body
        );
        body = reply.body;
    }
    ensure!(
        server.running(),
        "the metrics server exited: {}",
        server.log()
    );
    server.kill();
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    let value = median(&mut times);
    println!(
        "metrics scrape at {ADDRESSES} addresses: {value:.0} ms (median of {RUNS}; target < {TARGET_MS:.0}), \
         {series} series, {:.1} MB",
        body.len() as f64 / 1e6
    );
    Ok(json!({
        "metrics_scrape_65536_ms": {
            "value": value,
            "target_below": TARGET_MS,
            "series": series,
            "bytes": body.len(),
            "method": format!("GET /metrics (OpenMetrics, as Prometheus asks) of the real `anycast-ctl metrics` in the router namespace, with {ADDRESSES} addresses (198.18.0.0/15) installed by `load`, one member each; wall time from connect to the last byte, median of {RUNS}"),
        }
    }))
}
