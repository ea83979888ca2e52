//! `anycast-ctl upgrade`: replaces the XDP program on every attached interface with this
//! binary's, keeping the pinned state (counters, memberships, the connection table, fragments).
//!
//! Each attachment is a pinned bpf_link; `BPF_LINK_UPDATE` swaps the program a link runs in one
//! step, so the interface is never without a program and no frame meets a gap. The new program
//! is loaded over the pinned maps ([`dataplane::load`] reuses them by pin path), so the state is
//! the same maps, not a copy.
//!
//! Invariants:
//! - Nothing changes until everything that can be checked is: the pins are compatible (same
//!   layout version and map sizes, else refused naming both versions), every link is an XDP
//!   link on an interface that still exists, and the new program passed the verifier.
//! - Every swap names the program it expects to replace (`BPF_F_REPLACE`), so a link changed
//!   behind our back fails instead of being overwritten.
//! - If one swap fails, the links already swapped are put back on their old programs (held
//!   open for that until the end), so an error leaves every interface on the old program.
//! - It holds the writers' lock: no attach, detach or member change interleaves.
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use aya::programs::links::{FdLink, LinkType, PinnedLink};
use serde::Serialize;

use crate::{Error, Result, dataplane, net::Netlink, pin::PinDir};

/// One interface's swap.
#[derive(Debug, Serialize)]
pub struct Swapped {
    pub name: String,
    pub ifindex: u32,
    pub old_program_id: u32,
    pub new_program_id: u32,
}

/// What `upgrade` did.
#[derive(Debug, Serialize)]
pub struct Upgrade {
    /// The layout version of the reused maps.
    pub layout_version: u32,
    pub interfaces: Vec<Swapped>,
}

/// One attachment, opened and checked, ready to swap.
struct Target {
    name: String,
    ifindex: u32,
    link: OwnedFd,
    old_id: u32,
    old_program: OwnedFd,
}

/// Replaces the program on every attached interface (see the module doc).
pub async fn upgrade(pin: &PinDir, nl: &Netlink) -> Result<Upgrade> {
    let _lock = pin.lock(false)?;
    let targets = targets(pin, nl).await?;
    let mut ebpf = dataplane::load(pin, None)?;
    let program = dataplane::verified(&mut ebpf)?;
    let new_id = program.info()?.id();
    let new = program.fd()?.as_fd();
    swap_all(&targets, new)?;
    Ok(Upgrade {
        layout_version: dataplane::layout_version(),
        interfaces: targets
            .into_iter()
            .map(|t| Swapped {
                name: t.name,
                ifindex: t.ifindex,
                old_program_id: t.old_id,
                new_program_id: new_id,
            })
            .collect(),
    })
}

/// Opens every pinned link and the program it runs; refuses links that cannot be swapped.
async fn targets(pin: &PinDir, nl: &Netlink) -> Result<Vec<Target>> {
    let indexes = pin.link_indexes();
    if indexes.is_empty() {
        return Err(Error::NotAttached {
            path: pin.path().to_path_buf(),
        });
    }
    let mut targets = Vec::new();
    for ifindex in indexes {
        targets.push(target(pin, nl, ifindex).await?);
    }
    Ok(targets)
}

async fn target(pin: &PinDir, nl: &Netlink, ifindex: u32) -> Result<Target> {
    let gone = |_| {
        Error::Usage(format!(
            "the interface of link {ifindex} is gone; detach it first \
             (`anycast-ctl detach {ifindex}`)"
        ))
    };
    let name = nl.link_by_index(ifindex).await.map_err(gone)?.name;
    let path = pin.link(ifindex);
    let link_error = |e: aya::programs::links::LinkError| {
        Error::io(
            format!("reading the link of {name}"),
            std::io::Error::other(e),
        )
    };
    let info = FdLink::from(PinnedLink::from_pin(&path).map_err(link_error)?)
        .info()
        .map_err(link_error)?;
    if !matches!(info.link_type(), Ok(LinkType::Xdp)) {
        return Err(Error::Usage(format!(
            "the link pinned for {name} is not an XDP link; detach it first"
        )));
    }
    let old_id = info.program_id();
    Ok(Target {
        link: bpf::obj_get(&path)
            .map_err(|e| Error::io(format!("opening the link of {name}"), e))?,
        old_program: bpf::prog_by_id(old_id)
            .map_err(|e| Error::io(format!("opening program {old_id} of {name}"), e))?,
        name,
        ifindex,
        old_id,
    })
}

/// Swaps every link to `new`; on a failure, swaps the done ones back and returns the error.
fn swap_all(targets: &[Target], new: BorrowedFd<'_>) -> Result<()> {
    for (done, target) in targets.iter().enumerate() {
        let expected = match injected_failure(&target.name) {
            // The kernel refuses a swap whose expected program is not the running one.
            Some(()) => new,
            None => target.old_program.as_fd(),
        };
        let Err(e) = bpf::link_update(target.link.as_fd(), new, expected) else {
            continue;
        };
        let mut rollback = Vec::new();
        for back in &targets[..done] {
            if let Err(e) = bpf::link_update(back.link.as_fd(), back.old_program.as_fd(), new) {
                rollback.push(format!("{} ({e})", back.name));
            }
        }
        let undone = if rollback.is_empty() {
            "every interface is on its old program".to_string()
        } else {
            format!("could not put back: {}", rollback.join(", "))
        };
        return Err(Error::Usage(format!(
            "replacing the program on {} failed: {e}; {undone}",
            target.name
        )));
    }
    Ok(())
}

/// Test-only knob: a debug build (what the tests run; never a release or the package) makes the
/// swap of the interface named by `ANYCAST_TEST_FAIL_SWAP` fail in the kernel, to prove the
/// rollback.
fn injected_failure(name: &str) -> Option<()> {
    #[cfg(debug_assertions)]
    if std::env::var("ANYCAST_TEST_FAIL_SWAP").is_ok_and(|v| v == name) {
        return Some(());
    }
    let _ = name;
    None
}

/// The three bpf(2) commands aya 0.14 does not expose for a pinned link: open it by path, open
/// a program by id, and update a link with an expected old program.
mod bpf {
    use std::{
        ffi::CString,
        io,
        os::{
            fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
            unix::ffi::OsStrExt,
        },
        path::Path,
    };

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    const BPF_F_REPLACE: u32 = 4;

    /// `union bpf_attr` for BPF_OBJ_GET.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }

    /// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
    #[repr(C)]
    struct GetFdById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }

    /// `union bpf_attr` for BPF_LINK_UPDATE.
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a live, initialised `repr(C)` prefix of `union bpf_attr` for `cmd`,
        // and its size is passed, so the kernel reads (and zero-extends) only those bytes.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc)
    }

    fn owned(fd: libc::c_long) -> OwnedFd {
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
        let path = CString::new(path.as_os_str().as_bytes())?;
        let mut attr = ObjGet {
            pathname: path.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
        };
        bpf(BPF_OBJ_GET, &mut attr).map(owned)
    }

    pub fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
        let mut attr = GetFdById {
            id,
            next_id: 0,
            open_flags: 0,
        };
        bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)
    }

    /// Makes `link` run `new` if it still runs `expected`.
    pub fn link_update(
        link: BorrowedFd<'_>,
        new: BorrowedFd<'_>,
        expected: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let mut attr = LinkUpdate {
            link_fd: link.as_raw_fd() as u32,
            new_prog_fd: new.as_raw_fd() as u32,
            flags: BPF_F_REPLACE,
            old_prog_fd: expected.as_raw_fd() as u32,
        };
        bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
    }
}
