//! The benchmarks of `cargo xtask bench` (driven by `src/bin/bench.rs`), apart from the test
//! harness they build on: end-to-end forwarding against Linux ECMP (`e2e`), membership by
//! advertisement (`membership`), failover: table swaps, link down and hard failure
//! (`failover`), the control plane at 65,536 addresses (`control`), route export (`export`),
//! site failover through BIRD (`sites`), the Prometheus scrape at 65,536 addresses (`metrics`),
//! upgrade under load (`upgrade`), direct ARP mode's repoint (`direct`), the agent under
//! 100,000 advertisements a second (`agent_load`) and announce's jitter (`jitter`).
pub mod agent_load;
pub mod control;
pub mod direct;
pub mod e2e;
pub mod export;
pub mod failover;
pub mod jitter;
pub mod membership;
pub mod metrics;
pub mod pipeline;
pub mod sites;
pub mod upgrade;

use anyhow::Result;

use crate::{Ctl, Topology, TopologyOptions};

/// The test topology with `members` members and the dataplane attached natively to every router
/// interface. Bind it as `let (topo, ctl) = ...`: the pins then go before the namespaces.
pub(crate) fn attached(members: usize) -> Result<(Topology, Ctl)> {
    let topo = Topology::new(TopologyOptions {
        members,
        ..Default::default()
    })?;
    let ctl = Ctl::new(&topo.router);
    let ifaces = topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    ctl.attach(&ifaces, "native")?;
    Ok((topo, ctl))
}
