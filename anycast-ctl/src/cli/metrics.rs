//! `anycast-ctl metrics`: serve Prometheus metrics at `/metrics` (see [`crate::metrics`]), for
//! routers with static members only; the agent serves the same with `--metrics-listen`.
use std::net::SocketAddr;

use tokio::signal::unix::{SignalKind, signal};

use super::Router;
use crate::{Error, Result, metrics::http};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address and port to serve /metrics on, such as 127.0.0.1:9446 or [::]:9446.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(router: Router, args: Args) -> Result<String> {
    let listener = http::bind(args.listen)?;
    let Router { pin, nl } = router;
    let signal = |kind, name| signal(kind).map_err(|e| Error::io(name, e));
    let mut sigint = signal(SignalKind::interrupt(), "SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate(), "SIGTERM handler")?;
    tracing::info!(listen = %args.listen, "serving metrics");
    tokio::select! {
        served = http::serve(listener, pin, nl) => served?,
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    #[test]
    fn parses_metrics() {
        assert!(matches!(
            parse(&["metrics", "--listen", "127.0.0.1:9446"]).unwrap().command,
            Command::Metrics(Args { listen }) if listen.port() == 9446
        ));
        assert!(parse(&["metrics"]).is_err());
        assert!(parse(&["metrics", "--listen", "127.0.0.1"]).is_err());
    }
}
