//! Errors of anycast-ctl. Each message is one line that names the problem.
use std::{net::IpAddr, path::PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("permission denied: anycast-ctl needs root (CAP_BPF and CAP_NET_ADMIN)")]
    NotRoot,
    #[error(
        "pin directory {path} is not on a bpf filesystem (mount one with: mount -t bpf bpf DIR)"
    )]
    NotBpffs { path: PathBuf },
    #[error(
        "pin directory {path} is the root of a bpf filesystem; use a directory of its own, such as {path}/anycast"
    )]
    PinDirIsRoot { path: PathBuf },
    #[error("pin directory {path}: its parent {parent} does not exist")]
    PinDirParentMissing { path: PathBuf, parent: PathBuf },
    #[error("{}", agent_running(.path, *.pid))]
    AgentRunning { path: PathBuf, pid: Option<u32> },
    #[error("pin directory {path} is incomplete: {missing} is missing ({recover})")]
    PinsIncomplete {
        path: PathBuf,
        missing: &'static str,
        recover: &'static str,
    },
    #[error("pin directory {path} holds an incompatible dataplane: {what} ({recover})")]
    PinsIncompatible {
        path: PathBuf,
        what: String,
        recover: &'static str,
    },
    #[error(
        "the dataplane under {path} was replaced while this command ran (a detach and attach); nothing was written: run it again"
    )]
    StateReplaced { path: PathBuf },
    #[error("{address} cannot be an anycast address: {why}")]
    NotAnycast { address: IpAddr, why: String },
    #[error("{member} cannot be a member: {why}")]
    BadMember { member: IpAddr, why: String },
    #[error("nothing is attached under {path}; run `anycast-ctl attach IFACE` first")]
    NotAttached { path: PathBuf },
    #[error("no such interface: {name}")]
    UnknownInterface { name: String },
    #[error("{iface} is not attached")]
    IfaceNotAttached { iface: String },
    #[error("attaching to {iface} in {mode} mode failed: {reason}{hint}")]
    Attach {
        iface: String,
        mode: &'static str,
        reason: String,
        hint: &'static str,
    },
    #[error("member {member} has no route here")]
    NoRoute { member: IpAddr },
    #[error("member {member} is not on-link: the route to it goes via {gateway}")]
    NotOnLink { member: IpAddr, gateway: IpAddr },
    #[error("member {member} is not on-link on {iface}")]
    NotOnLinkDev { member: IpAddr, iface: String },
    #[error("member {member} is not reached through {iface}: the route to it uses {route_iface}")]
    RouteUsesOtherDev {
        member: IpAddr,
        iface: String,
        route_iface: String,
    },
    #[error("member {member} is reached through {iface}, which is not attached")]
    EgressNotAttached { member: IpAddr, iface: String },
    #[error(
        "could not resolve the MAC of {member} on {iface}: no {} reply within {millis} ms (give it with --mac)",
        if member.is_ipv4() { "ARP" } else { "neighbour discovery" }
    )]
    MacUnresolved {
        member: IpAddr,
        iface: String,
        millis: u64,
    },
    #[error(
        "{member} cannot serve {anycast}: an anycast address is served by members of its own family"
    )]
    MixedFamilies { anycast: IpAddr, member: IpAddr },
    #[error("{address} is not an anycast address here")]
    NoSuchAddress { address: IpAddr },
    #[error("{member} is not a member of {address}")]
    NotMember { address: IpAddr, member: IpAddr },
    #[error("{address} already has the maximum of {max} members")]
    TooManyMembers { address: IpAddr, max: usize },
    #[error(
        "{member} has the static MAC {current}, which its other addresses ({addresses}) share: a MAC belongs to the host; give {current}, or delete the host from those addresses before giving {mac}"
    )]
    MacConflict {
        member: IpAddr,
        mac: crate::mac::MacAddr,
        current: crate::mac::MacAddr,
        addresses: String,
    },
    #[error("no free {what} slot (all {max} in use)")]
    Full { what: &'static str, max: u32 },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("loading the eBPF object: {0}")]
    Load(String),
    #[error("BPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn agent_running(path: &std::path::Path, pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!(
            "another agent (pid {pid}) is running on {}; stop it first",
            path.display()
        ),
        None => format!(
            "another agent is running on {}; stop it first",
            path.display()
        ),
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            return Error::NotRoot;
        }
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A load error in one line: the verifier's log (many lines) is logged at debug level.
    pub fn load(e: &aya::EbpfError) -> Self {
        let text = e.to_string();
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("unknown error").to_string();
        let rest = lines.count();
        if rest > 0 {
            tracing::debug!(log = %text, "eBPF load error");
            return Error::Load(format!(
                "{first} (and {rest} more lines of verifier log: set ANYCAST_LOG=debug to see them)"
            ));
        }
        Error::Load(first)
    }

    /// A map error, with EPERM reported as missing privileges.
    pub fn map(name: &'static str, source: aya::maps::MapError) -> Self {
        if let aya::maps::MapError::SyscallError(e) = &source
            && e.io_error.kind() == std::io::ErrorKind::PermissionDenied
        {
            return Error::NotRoot;
        }
        Error::Map { name, source }
    }
}

impl From<crate::advert_auth::KeyFileError> for Error {
    fn from(e: crate::advert_auth::KeyFileError) -> Self {
        Error::Usage(e.to_string())
    }
}

impl From<rtnetlink::Error> for Error {
    fn from(e: rtnetlink::Error) -> Self {
        Error::Netlink(e.to_string())
    }
}
