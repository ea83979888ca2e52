//! The harness's own XDP programs, from the embedded object like the dataplane: `peer_pass` for
//! veth peers that must receive XDP_TX frames, and the benchmark programs.
//!
//! Measured on this kernel (6.18): a frame the router bounces back with XDP_TX (the ARP reply
//! out of r0) never reaches the veth peer c0 when c0 only has GRO on — veth's XDP_TX flush wakes
//! the peer only if the peer runs XDP. XDP_REDIRECT into a veth does work with GRO on the peer.
//! So the client's c0 gets `peer_pass`, attached natively through a bpf_link that the topology
//! holds. The attachment ends when the link is dropped or when the interface goes away with its
//! namespace, whichever comes first.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use anycast_common::{names, programs};
use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode, links::FdLink},
};

use crate::netns::Netns;

static OBJECTS: AtomicU32 = AtomicU32::new(0);

/// Loads the embedded object for the harness's programs (`peer_pass`, `bench_*`), none of which
/// uses the dataplane's maps: every map is created with one entry (at full size they take
/// about 100 MB of kernel memory). The loader needs a pin directory for the maps declared
/// pinned; it is a private one, removed as soon as the object is loaded (the maps live as long
/// as the returned `Ebpf`).
pub fn load_object() -> Result<Ebpf> {
    crate::ctl::ensure_bpffs();
    let pin = PathBuf::from(format!(
        "/sys/fs/bpf/anycast-test-{}-obj-{}",
        std::process::id(),
        OBJECTS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&pin).with_context(|| format!("create {}", pin.display()))?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&pin);
    for name in names::ALL {
        loader.map_max_entries(name, 1);
    }
    let ebpf = loader.load(anycast_ctl::EBPF_OBJECT);
    let removed = std::fs::remove_dir_all(&pin);
    let ebpf = ebpf.context("load the embedded eBPF object")?;
    removed.with_context(|| format!("remove {}", pin.display()))?;
    Ok(ebpf)
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
