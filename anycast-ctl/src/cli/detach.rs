//! `anycast-ctl detach`: detach the dataplane from interfaces.
use super::Router;
use crate::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(required = true, value_name = "IFACE")]
    pub ifaces: Vec<String>,
}

pub async fn run(router: &Router, args: Args) -> Result<String> {
    crate::attach::detach(&router.pin, &router.nl, &args.ifaces).await?;
    Ok(format!("detached from {}\n", args.ifaces.join(" ")))
}
