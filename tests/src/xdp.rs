//! The harness's own XDP programs, from the benchmark object (`anycast_ctl::BENCH_OBJECT`):
//! `peer_pass` for veth peers that must receive XDP_TX frames, and the benchmark programs.
//!
//! Measured on this kernel (6.18): a frame the router bounces back with XDP_TX (the ARP reply
//! out of r0) never reaches the veth peer c0 when c0 only has GRO on — veth's XDP_TX flush wakes
//! the peer only if the peer runs XDP. XDP_REDIRECT into a veth does work with GRO on the peer.
//! So the client's c0 gets `peer_pass`, attached natively through a bpf_link that the topology
//! holds. The attachment ends when the link is dropped or when the interface goes away with its
//! namespace, whichever comes first.

use anycast_common::bench::programs;
use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, links::FdLink},
};

use crate::netns::Netns;

/// Loads the benchmark object for the harness's programs (`peer_pass`, `bench_*`). Its maps are
/// small and none is pinned, so it needs no pin directory; they live as long as the returned
/// `Ebpf`.
pub fn load_object() -> Result<Ebpf> {
    Ebpf::load(anycast_ctl::BENCH_OBJECT).context("load the benchmark eBPF object")
}

/// Loads program `name` of `ebpf` into the kernel.
pub fn load_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name}"))?
        .try_into()?;
    prog.load().with_context(|| format!("load {name}"))?;
    Ok(prog)
}

/// Attaches the loaded `prog` natively to `ifname` in `ns` (the name is resolved there). The
/// attachment lasts until the returned link is dropped or the interface is deleted.
pub fn attach(prog: &mut Xdp, ns: &Netns, ifname: &str) -> Result<FdLink> {
    ns.in_ns(|| -> Result<FdLink> {
        let id = prog.attach(ifname, XdpMode::Driver)?;
        // Taken and converted in the namespace: an attachment made through netlink (kernels
        // without XDP bpf_link) would detach itself by ifindex wherever it is dropped.
        let link = prog.take_link(id)?;
        Ok(FdLink::try_from(link)?)
    })
    .with_context(|| format!("attach XDP natively to {ifname} in {}", ns.name()))
}

/// Attaches `peer_pass` natively to `ifname` in `ns`, until the returned link is dropped or the
/// interface is deleted. The object is loaded for this alone and dropped on return: the link
/// keeps the program.
pub fn attach_peer_pass(ns: &Netns, ifname: &str) -> Result<FdLink> {
    let mut ebpf = load_object()?;
    let prog = load_program(&mut ebpf, programs::PEER_PASS)?;
    attach(prog, ns, ifname)
}
