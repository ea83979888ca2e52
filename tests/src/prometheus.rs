//! A Prometheus server (Debian's `prometheus`) inside a namespace, as a guard, and the small
//! HTTP client the tests use to talk to it and to `/metrics`.
//!
//! [`Prometheus::start`] writes its configuration and keeps its storage in a directory of its
//! own, listens on 127.0.0.1 of the namespace only, and scrapes the given targets every second;
//! dropping it kills it and removes the directory.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::netns::Netns;

/// Where Prometheus listens, inside its namespace.
pub const LISTEN: &str = "127.0.0.1:9090";
/// What Prometheus asks a target for (as Prometheus 2.42 sends it).
pub const OPENMETRICS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

pub struct Prometheus {
    child: Child,
    dir: PathBuf,
}

/// One series of an instant query: its labels (`__name__` included) and its value.
pub type Series = BTreeMap<BTreeMap<String, String>, f64>;

impl Prometheus {
    /// Starts Prometheus in `ns`, scraping `targets` (`host:port`, path `/metrics`) as job
    /// `anycast` every second, and waits until it answers (at most 30 s).
    pub fn start(ns: &Netns, targets: &[&str]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("anycast-prometheus-{}", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).context("creating the Prometheus directory")?;
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: anycast\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).context("writing prometheus.yml")?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus (is it installed? cargo xtask setup)")?;
        let server = Self { child, dir };
        let ready = crate::wait_until(Duration::from_secs(30), || {
            ns.in_ns(|| http_get(LISTEN, "/-/ready", "*/*"))
                .is_ok_and(|r| r.status == 200)
        });
        ensure!(ready, "prometheus did not become ready within 30 s");
        Ok(server)
    }

    /// An instant query through the HTTP API (`/api/v1/query`), from inside `ns`.
    pub fn query(&self, ns: &Netns, promql: &str) -> Result<Series> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let reply = ns.in_ns(|| http_get(LISTEN, &path, "application/json"))?;
        ensure!(
            reply.status == 200,
            "query {promql}: {} {}",
            reply.status,
            reply.body
        );
        let json: Value = serde_json::from_str(&reply.body).context("query reply")?;
        let mut series = Series::new();
        for s in json["data"]["result"].as_array().context("no result")? {
            let labels = serde_json::from_value(s["metric"].clone())?;
            let value = s["value"][1].as_str().context("no value")?.parse()?;
            series.insert(labels, value);
        }
        Ok(series)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `GET path` (HTTP/1.0, so no chunked reply) from `addr` (in the caller's namespace), with
/// `Accept: accept` and `Connection: close`; 10 s at most.
pub fn http_get(addr: &str, path: &str, accept: &str) -> Result<Reply> {
    Ok(http_get_timed(addr, path, accept)?.0)
}

/// Sends `request` as it is and reads the whole response (the server closes the connection).
pub fn raw_request(addr: &str, request: &[u8]) -> Result<Reply> {
    Ok(timed_request(addr, request)?.0)
}

/// [`http_get`], and the time from the connect to the last byte of the response (before the
/// response is parsed).
pub fn http_get_timed(addr: &str, path: &str, accept: &str) -> Result<(Reply, Duration)> {
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    timed_request(addr, request.as_bytes())
}

fn timed_request(addr: &str, request: &[u8]) -> Result<(Reply, Duration)> {
    let start = std::time::Instant::now();
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request)?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    let took = start.elapsed();
    Ok((parse_reply(bytes)?, took))
}

fn parse_reply(bytes: Vec<u8>) -> Result<Reply> {
    let text = String::from_utf8(bytes).context("response is not UTF-8")?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no end of headers in {text:?}");
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
