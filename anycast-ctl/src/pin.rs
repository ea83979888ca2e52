//! The pin directory: where the dataplane's maps and links live on bpffs, so that they outlive
//! every process, and the lock that serialises the processes writing them.
//!
//! Layout: `DIR/<MAP NAME>` for every map of `anycast_common::names`, and `DIR/links/<ifindex>`
//! for each attachment (a pinned bpf_link). The dataplane is attached iff `DIR/links` has an
//! entry; the last detach removes `DIR` entirely.
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

    /// Whether the maps are pinned here.
    pub fn has_maps(&self) -> bool {
        self.map(anycast_common::names::ADDRS).exists()
    }

    /// Makes sure bpffs is mounted and that the directory (or, if it does not exist yet, its
    /// parent) is on bpffs.
    pub fn check(&self) -> Result<()> {
        ensure_bpffs_mounted(&self.path)?;
        let parent = self.path.parent().unwrap_or(Path::new("/"));
        let probe = if self.path.exists() {
            &self.path
        } else {
            parent
        };
        if !is_bpffs(probe) {
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
                std::fs::create_dir_all(self.links())
                    .map_err(|e| Error::io(format!("creating {}", self.path.display()), e))?;
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

    /// Removes every pin and the directory itself.
    pub fn remove(&self) -> Result<()> {
        std::fs::remove_dir_all(&self.path)
            .map_err(|e| Error::io(format!("removing {}", self.path.display()), e))
    }
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
