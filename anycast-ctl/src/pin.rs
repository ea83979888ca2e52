//! The pin directory: where the dataplane's maps and links live on bpffs, so that they outlive
//! every process, and the lock that serialises the processes writing them.
//!
//! Layout: `DIR/<MAP NAME>` for every pinned map of `anycast_common::names`,
//! `DIR/links/<ifindex>` for each attachment (a pinned bpf_link) and `DIR/agent`, the directory
//! a running agent holds locked. The dataplane is attached iff `DIR/links` has an entry.
//!
//! Invariants:
//! - anycast removes only what it creates: [`PinDir::remove`] unlinks the names above, one by
//!   one, and the directories only once they are empty; another tool's pins survive a detach.
//! - The pin directory is never the root of a bpf filesystem (where removing "our" pins could
//!   meet every other program's).
use std::{
    ffi::CString,
    fs::File,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use crate::{Error, Result};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/anycast";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

#[derive(Clone, Debug)]
pub struct PinDir {
    path: PathBuf,
}

/// An exclusive lock on the pin directory, held until dropped.
#[derive(Debug)]
pub struct Lock {
    _dir: File,
}

/// An open handle on the pin directory for a long-running writer (the agent), whose lock costs
/// one flock call instead of a path walk.
#[derive(Debug)]
pub struct DirLock {
    dir: File,
}

/// The lock of a [`DirLock`], held until dropped. It holds a duplicate of the directory fd
/// (the same open file, so the same flock), and so borrows nothing.
#[derive(Debug)]
pub struct DirLockGuard {
    dir: File,
}

impl DirLock {
    pub fn lock(&self) -> Result<DirLockGuard> {
        let dir = self
            .dir
            .try_clone()
            .map_err(|e| Error::io("duplicating the pin directory fd", e))?;
        dir.lock()
            .map_err(|e| Error::io("locking the pin directory", e))?;
        Ok(DirLockGuard { dir })
    }
}

impl DirLockGuard {
    /// Device and inode of the pin `name` in the locked directory, looked up relative to the
    /// held directory (one `fstatat`, no walk from `/`); `None` if it is not there, as in a
    /// directory a detach removed.
    pub fn pin_id(&self, name: &str) -> Option<(u64, u64)> {
        use std::os::fd::AsRawFd;
        let name = CString::new(name).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: the fd is open for the guard's life, `name` is NUL-terminated, and `st` is a
        // writable stat buffer.
        let rc = unsafe { libc::fstatat(self.dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), 0) };
        if rc != 0 {
            return None;
        }
        // SAFETY: fstatat returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        Some((st.st_dev, st.st_ino))
    }
}

impl Drop for DirLockGuard {
    fn drop(&mut self) {
        let _ = self.dir.unlock();
    }
}

impl PinDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn links(&self) -> PathBuf {
        self.path.join("links")
    }

    pub fn link(&self, ifindex: u32) -> PathBuf {
        self.links().join(ifindex.to_string())
    }

    /// The ifindexes of the links anycast pinned here, sorted (entries of `links/` named by an
    /// ifindex; anything else there is not ours).
    pub fn link_indexes(&self) -> Vec<u32> {
        let mut indexes: Vec<u32> = std::fs::read_dir(self.links())
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        indexes.sort_unstable();
        indexes
    }

    /// How many links anycast pinned here (see [`PinDir::link_indexes`]).
    pub fn link_count(&self) -> usize {
        self.link_indexes().len()
    }

    /// The directory a running agent holds locked (see [`PinDir::agent_lock`]).
    pub fn agent_dir(&self) -> PathBuf {
        self.path.join("agent")
    }

    /// Whether any map of the dataplane is pinned here (see `dataplane::check_pins` for
    /// whether they all are).
    pub fn has_maps(&self) -> bool {
        anycast_common::names::PINNED
            .iter()
            .any(|name| self.map(name).exists())
    }

    /// Makes sure bpffs is mounted, that the directory (or, if it does not exist yet, its
    /// parent) is on bpffs, and that it is not the root of a bpf filesystem.
    pub fn check(&self) -> Result<()> {
        ensure_bpffs_mounted(&self.path)?;
        let parent = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("/"),
        };
        if self.path.exists() {
            if !is_bpffs(&self.path) {
                return Err(Error::NotBpffs {
                    path: self.path.clone(),
                });
            }
            let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
            if self.path.parent().is_none() || dev(&self.path) != dev(parent) {
                return Err(Error::PinDirIsRoot {
                    path: self.path.clone(),
                });
            }
            return Ok(());
        }
        if !parent.is_dir() {
            return Err(Error::PinDirParentMissing {
                path: self.path.clone(),
                parent: parent.to_path_buf(),
            });
        }
        if !is_bpffs(parent) {
            return Err(Error::NotBpffs {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Makes sure the directory is usable: mounts bpffs at /sys/fs/bpf if it is missing there,
    /// checks that the directory (or, if `create`, its parent) is on bpffs, creates it if asked,
    /// and takes the lock.
    pub fn lock(&self, create: bool) -> Result<Lock> {
        self.check()?;
        if !create && !self.path.exists() {
            return Err(Error::NotAttached {
                path: self.path.clone(),
            });
        }
        loop {
            if create {
                for dir in [self.path.clone(), self.links()] {
                    match std::fs::create_dir(&dir) {
                        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                            return Err(Error::io(format!("creating {}", dir.display()), e));
                        }
                        _ => {}
                    }
                }
            }
            let dir = File::open(&self.path)
                .map_err(|e| Error::io(format!("opening {}", self.path.display()), e))?;
            dir.lock()
                .map_err(|e| Error::io(format!("locking {}", self.path.display()), e))?;
            // A process that held the lock may have removed the directory (last detach);
            // then our lock is on a dead inode: start over on the new one.
            let same = std::fs::metadata(&self.path)
                .map(|m| m.ino() == dir.metadata().map(|d| d.ino()).unwrap_or(0))
                .unwrap_or(false);
            if same {
                return Ok(Lock { _dir: dir });
            }
            if !create {
                return Err(Error::NotAttached {
                    path: self.path.clone(),
                });
            }
        }
    }

    /// Opens the directory once for repeated locking (see [`DirLock`]).
    pub fn dir_lock(&self) -> Result<DirLock> {
        self.check()?;
        let dir = File::open(&self.path)
            .map_err(|e| Error::io(format!("opening {}", self.path.display()), e))?;
        Ok(DirLock { dir })
    }

    /// Removes what anycast pinned here: the maps, the links directory (with any links left
    /// in it, which are anycast's own by name) and the agent's lock directory, then the pin
    /// directory itself if nothing else is left in it. Pins of other tools are never touched.
    pub fn remove(&self) -> Result<()> {
        let io = |what: &Path, e| Error::io(format!("removing {}", what.display()), e);
        for name in anycast_common::names::PINNED {
            let path = self.map(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path, e)),
                _ => {}
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.links()) {
            for entry in entries.flatten() {
                let ours = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok());
                if ours {
                    std::fs::remove_file(entry.path()).map_err(|e| io(&entry.path(), e))?;
                }
            }
        }
        for dir in [self.links(), self.agent_dir(), self.path.clone()] {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Someone else's pins are still there: leave them, and the directory.
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
                Err(e) => return Err(io(&dir, e)),
            }
        }
        Ok(())
    }

    /// Takes the agent's lock: a directory `DIR/agent` held with a non-blocking flock for the
    /// agent's life. A second agent on the same pin directory fails, naming the first one's pid.
    pub fn agent_lock(&self) -> Result<File> {
        let dir = self.agent_dir();
        for d in [&self.path, &dir] {
            match std::fs::create_dir(d) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::io(format!("creating {}", d.display()), e));
                }
                _ => {}
            }
        }
        let file =
            File::open(&dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::AgentRunning {
                path: self.path.clone(),
                pid: lock_holder(&file),
            }),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("locking {}", dir.display()), e))
            }
        }
    }
}

/// The pid holding a flock on `file`, from /proc/locks (`1: FLOCK ADVISORY WRITE PID MAJ:MIN:INO`).
fn lock_holder(file: &File) -> Option<u32> {
    let ino = file.metadata().ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (pid, id) = (fields.get(4)?, fields.get(5)?);
        (fields.get(1) == Some(&"FLOCK") && id.rsplit(':').next()? == ino.to_string())
            .then(|| pid.parse().ok())?
    })
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a writable statfs buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: statfs returned 0, so it filled `st`.
    let fs_type = unsafe { st.assume_init() }.f_type;
    // f_type is i64 on x86_64 but narrower on some architectures.
    #[allow(clippy::unnecessary_cast)]
    let fs_type = fs_type as i64;
    fs_type == BPF_FS_MAGIC
}

/// bpffs is not mounted by default on some systems; mount it where everybody expects it.
fn ensure_bpffs_mounted(pin_dir: &Path) -> Result<()> {
    let root = Path::new(BPFFS_MOUNT);
    if !pin_dir.starts_with(root) || is_bpffs(root) {
        return Ok(());
    }
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; no mount data is passed.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "mounting bpffs on /sys/fs/bpf",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
