//! Attaching the dataplane to interfaces, detaching it, and reporting where it is attached.
//!
//! Each attachment is a bpf_link pinned at `PIN_DIR/links/<ifindex>`, so it outlives this
//! process. Attaching first records the interface in `IFACES` (its MAC: the Ethernet destination
//! the dataplane accepts, and the source of its ARP replies) and `TX_PORTS` (so other
//! interfaces can redirect to it); detaching removes them after the program is gone. Detaching
//! the last interface removes every pin anycast made (and only those: see `pin`).
//!
//! Invariant: an error means nothing changed. Every interface is looked up and checked first
//! (a repeated one counts once); a failure while attaching undoes this call's attachments, and a
//! dataplane created by the failed call is removed again.
use anycast_common::{Iface, MODE_NATIVE, MODE_SKB};
use aya::programs::{
    Xdp, XdpMode,
    links::{FdLink, PinnedLink},
};
use serde::Serialize;

use crate::{
    Error, Result, dataplane,
    dataplane::Maps,
    net::{Link, Netlink},
    pin::PinDir,
};

/// Attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Native on real NICs, skb on veth (see [`Mode::resolve`]).
    Auto,
    /// Driver mode: the program runs in the NIC driver (fast).
    Native,
    /// Generic mode: the program runs after skb allocation (works on any interface, slower).
    Skb,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Native => "native",
            Mode::Skb => "skb",
        }
    }

    /// The mode `link` gets: the one it is attached in already, else for `Auto` skb on a veth
    /// (native XDP on veth silently loses frames unless its peer is set up, see
    /// [`VETH_NEEDS`]) and native elsewhere.
    pub fn resolve(self, link: &Link, attached: Option<u32>) -> Mode {
        match (self, attached) {
            (Mode::Auto, Some(MODE_SKB)) => Mode::Skb,
            (Mode::Auto, Some(_)) => Mode::Native,
            (Mode::Auto, None) if link.veth => Mode::Skb,
            (Mode::Auto, None) => Mode::Native,
            (mode, _) => mode,
        }
    }

    fn xdp(self) -> XdpMode {
        match self {
            Mode::Native => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
            Mode::Auto => unreachable!("auto is resolved per interface before attaching"),
        }
    }

    fn code(self) -> u32 {
        match self {
            Mode::Native => MODE_NATIVE,
            Mode::Skb => MODE_SKB,
            Mode::Auto => unreachable!("auto is resolved per interface before attaching"),
        }
    }

    fn from_code(code: u32) -> &'static str {
        match code {
            MODE_NATIVE => "native",
            MODE_SKB => "skb",
            _ => "unknown",
        }
    }
}

/// What native XDP on a veth needs of its peers, or frames are lost without an error.
pub const VETH_NEEDS: &str = "an XDP program on the peer for XDP_TX (ARP replies, same-link \
     members), NAPI on the receiving peer for redirected frames (GRO on, or an XDP program), and \
     TX checksum offload off on senders (ethtool -K DEV tx off); --mode auto uses skb mode there";

/// The one warning for interfaces attached natively although they are veths.
pub fn veth_warning(names: &[String]) -> String {
    let (what, verb) = match names.len() {
        1 => ("a veth", "is"),
        _ => ("veths", "are"),
    };
    format!(
        "{} {verb} {what}: native XDP on veth needs {VETH_NEEDS}",
        names.join(", ")
    )
}

/// What `attach` did for one interface, in which mode, and whether it is a veth.
#[derive(Debug, PartialEq, Eq)]
pub struct Attached {
    pub new: bool,
    pub mode: Mode,
    pub veth: bool,
}

/// The interfaces of `done` this call attached natively although they are veths (see
/// [`veth_warning`]); an adopted attachment was warned about by the call that made it.
pub fn native_veths(done: &[(String, Attached)]) -> Vec<String> {
    (done.iter())
        .filter(|(_, a)| a.new && a.veth && a.mode == Mode::Native)
        .map(|(name, _)| name.clone())
        .collect()
}

/// Attaches the dataplane to each of `ifaces`. All interfaces are checked before anything is
/// attached; on a failure, attachments made by this call are undone.
pub async fn attach(
    pin: &PinDir,
    nl: &Netlink,
    ifaces: &[String],
    mode: Mode,
    flows: Option<u32>,
) -> Result<Vec<(String, Attached)>> {
    let mut links: Vec<Link> = Vec::new();
    for name in ifaces {
        let link = nl.link_by_name(name).await?;
        if !links.iter().any(|l| l.index == link.index) {
            links.push(link);
        }
    }
    let existed = pin.path().exists();
    let _lock = pin.lock(true)?;
    let fresh = dataplane::check_pins(pin)? == dataplane::Pins::Fresh;
    let result =
        resolve_modes(pin, &links, mode).and_then(|links| attach_locked(pin, &links, flows));
    if result.is_err() && fresh && pin.link_count() == 0 {
        // Leaves nothing new behind: `remove` also takes the directory if it is empty, so one
        // that was there before (made by the operator) is made again.
        let _ = pin.remove();
        if existed {
            let _ = std::fs::create_dir(pin.path());
        }
    }
    result
}

/// The mode of each interface ([`Mode::resolve`]); an interface already attached in another
/// mode than the one asked for is refused: that needs a detach first.
fn resolve_modes(pin: &PinDir, links: &[Link], mode: Mode) -> Result<Vec<(Link, Mode)>> {
    let maps = match links.iter().any(|l| pin.link(l.index).exists()) {
        true => Some(Maps::open(pin)?),
        false => None,
    };
    let mut resolved = Vec::new();
    for link in links {
        let have = match (&maps, pin.link(link.index).exists()) {
            (Some(maps), true) => Some(maps.iface(link.index)?.map_or(0, |i| i.mode)),
            _ => None,
        };
        let want = mode.resolve(link, have);
        if let Some(have) = have
            && have != want.code()
        {
            return Err(Error::Usage(format!(
                "{} is already attached in {} mode; detach it first to attach in {} mode",
                link.name,
                Mode::from_code(have),
                want.name()
            )));
        }
        resolved.push((link.clone(), want));
    }
    Ok(resolved)
}

fn attach_locked(
    pin: &PinDir,
    links: &[(Link, Mode)],
    flows: Option<u32>,
) -> Result<Vec<(String, Attached)>> {
    let mut ebpf = dataplane::load(pin, flows)?;
    let program = dataplane::verified(&mut ebpf)?;
    let mut maps = Maps::open(pin)?;
    let mut done: Vec<(String, Attached)> = Vec::new();
    let mut made: Vec<u32> = Vec::new();
    for &(ref link, mode) in links {
        let new = !pin.link(link.index).exists();
        if new && let Err(e) = attach_one(pin, &mut maps, program, link, mode) {
            forget_iface(&mut maps, link.index);
            for index in made {
                if let Ok(pinned) = PinnedLink::from_pin(pin.link(index)) {
                    let _ = detach_one(Some(&mut maps), index, pinned);
                }
            }
            return Err(e);
        }
        if new {
            made.push(link.index);
        }
        let veth = link.veth;
        done.push((link.name.clone(), Attached { new, mode, veth }));
    }
    Ok(done)
}

/// Registers `link` in the maps, attaches the program to it and pins the link.
fn attach_one(
    pin: &PinDir,
    maps: &mut Maps,
    program: &mut Xdp,
    link: &Link,
    mode: Mode,
) -> Result<()> {
    let iface = Iface {
        ifindex: link.index,
        mac: link.mac,
        _pad: [0; 2],
        mode: mode.code(),
    };
    maps.set_iface(iface)?;
    crate::mcast::join_all(maps, link.index)?;
    maps.tx_ports
        .insert(link.index, link.index, None, 0)
        .map_err(|e| Error::io("updating TX_PORTS", std::io::Error::other(e)))?;
    let id = program
        .attach_to_if_index(link.index, mode.xdp())
        .map_err(|e| attach_error(link, mode, e))?;
    let fd_link: FdLink =
        program
            .take_link(id)?
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| Error::Attach {
                iface: link.name.clone(),
                mode: mode.name(),
                reason: e.to_string(),
                hint: "",
            })?;
    fd_link.pin(pin.link(link.index)).map_err(|e| {
        Error::io(
            format!("pinning the link of {}", link.name),
            std::io::Error::other(e),
        )
    })?;
    Ok(())
}

fn attach_error(link: &Link, mode: Mode, e: aya::programs::ProgramError) -> Error {
    let hint = match mode {
        Mode::Native => " (the driver may not support native XDP; try --mode skb)",
        Mode::Skb | Mode::Auto => "",
    };
    let reason = match &e {
        aya::programs::ProgramError::SyscallError(s) => s.io_error.to_string(),
        other => other.to_string(),
    };
    Error::Attach {
        iface: link.name.clone(),
        mode: mode.name(),
        reason,
        hint,
    }
}

/// Detaches the dataplane from each of `ifaces` (a repeated one counts once); the last one
/// removes every pin anycast made. It works on an incomplete pin directory too, so that
/// detaching is always the way to recover from one.
pub async fn detach(pin: &PinDir, nl: &Netlink, ifaces: &[String]) -> Result<()> {
    let _lock = pin.lock(false)?;
    let mut targets = Vec::new();
    for name in ifaces {
        // An interface that is gone (its namespace deleted) can still be detached by index.
        let index = match nl.link_by_name(name).await {
            Ok(link) => link.index,
            Err(_) => name
                .parse()
                .map_err(|_| Error::UnknownInterface { name: name.clone() })?,
        };
        if !pin.link(index).exists() {
            return Err(Error::IfaceNotAttached {
                iface: name.clone(),
            });
        }
        if !targets.contains(&index) {
            targets.push(index);
        }
    }
    // Opened before any change, so a failure here changes nothing; absent in an incomplete
    // pin directory, where there is nothing to forget.
    let mut maps = Maps::open(pin).ok();
    let mut opened = Vec::new();
    for &index in &targets {
        let link = PinnedLink::from_pin(pin.link(index))
            .map_err(|e| Error::io("opening a pinned link", std::io::Error::other(e)))?;
        opened.push((index, link));
    }
    for (index, link) in opened {
        detach_one(maps.as_mut(), index, link)?;
    }
    if pin.link_count() == 0 {
        // The exported routes go with the state that justified them; the pins go even if
        // withdrawing fails, so that detaching always recovers.
        let settings = maps
            .as_ref()
            .and_then(|m| crate::export::settings(m).ok().flatten());
        let withdrawn = match settings {
            Some(s) => crate::export::withdraw_all(nl, s).await.map(drop),
            None => Ok(()),
        };
        drop(maps);
        pin.remove()?;
        withdrawn?;
    }
    Ok(())
}

fn detach_one(maps: Option<&mut Maps>, ifindex: u32, link: PinnedLink) -> Result<()> {
    let fd_link = link.unpin().map_err(|e| Error::io("unpinning a link", e))?;
    // Dropping the last reference to the bpf_link detaches the program.
    drop(fd_link);
    if let Some(maps) = maps {
        let _ = crate::mcast::leave_all(maps, ifindex);
        forget_iface(maps, ifindex);
    }
    Ok(())
}

fn forget_iface(maps: &mut Maps, ifindex: u32) {
    let _ = maps.remove_iface(ifindex);
    let _ = maps.tx_ports.remove(ifindex);
}

/// One attached interface, as `status` shows it.
#[derive(Debug, Serialize)]
pub struct IfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub mode: &'static str,
    pub program_id: u32,
    pub mac: String,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub interfaces: Vec<IfaceStatus>,
    pub addresses: usize,
    /// The route export settings; absent when export is off.
    pub export: Option<crate::export::Settings>,
    /// The exported routes in the kernel, per family; absent when export is off.
    pub exported: Option<crate::export::RouteCounts>,
    /// Advertisement counters of the agent (zero if no agent ever ran here).
    pub agent: crate::report::AgentCounters,
}

pub async fn status(pin: &PinDir, nl: &Netlink) -> Result<Status> {
    let mut status = Status {
        pin_dir: pin.path().display().to_string(),
        interfaces: Vec::new(),
        addresses: 0,
        export: None,
        exported: None,
        agent: Default::default(),
    };
    if !pin.has_maps() {
        return Ok(status);
    }
    let maps = Maps::open(pin)?;
    status.addresses = maps.addr_keys.keys().filter_map(|k| k.ok()).count();
    status.export = crate::export::settings(&maps)?;
    status.exported = crate::export::counts(&maps, nl).await?;
    status.agent = crate::report::agent_counters(&maps);
    for ifindex in pin.link_indexes() {
        let program_id = PinnedLink::from_pin(pin.link(ifindex))
            .ok()
            .and_then(|l| FdLink::from(l).info().ok())
            .map_or(0, |i| i.program_id());
        let iface = maps.iface(ifindex).ok().flatten().unwrap_or_default();
        let name = match nl.link_by_index(ifindex).await {
            Ok(link) => link.name,
            Err(_) => format!("(gone: ifindex {ifindex})"),
        };
        status.interfaces.push(IfaceStatus {
            name,
            ifindex,
            mode: Mode::from_code(iface.mode),
            program_id,
            mac: crate::mac::MacAddr(iface.mac).to_string(),
        });
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(veth: bool) -> Link {
        Link {
            index: 2,
            name: "x".into(),
            mac: [2, 0, 0, 0, 0, 1],
            up: true,
            veth,
        }
    }

    #[test]
    fn auto_is_skb_on_veth_native_elsewhere_and_keeps_an_attached_mode() {
        assert_eq!(Mode::Auto.resolve(&link(true), None), Mode::Skb);
        assert_eq!(Mode::Auto.resolve(&link(false), None), Mode::Native);
        assert_eq!(
            Mode::Auto.resolve(&link(true), Some(MODE_NATIVE)),
            Mode::Native
        );
        assert_eq!(Mode::Auto.resolve(&link(false), Some(MODE_SKB)), Mode::Skb);
        assert_eq!(Mode::Native.resolve(&link(true), None), Mode::Native);
        assert_eq!(
            Mode::Skb.resolve(&link(false), Some(MODE_NATIVE)),
            Mode::Skb
        );
    }

    #[test]
    fn the_veth_warning_names_every_requirement() {
        let w = veth_warning(&["r0".into()]);
        assert!(w.starts_with("r0 is a veth: "), "{w}");
        for needed in ["XDP program on the peer", "NAPI", "GRO", "tx off"] {
            assert!(w.contains(needed), "{needed}: {w}");
        }
        assert!(!w.contains('\n'));
    }
}
