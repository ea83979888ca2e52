//! Reading the small text files an operator gives (agent configuration, key files, membership
//! lists): regular files only, of bounded size, so a path like `/dev/zero`, a FIFO or a huge file
//! fails at once with bounded memory instead of hanging or exhausting it.
use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

/// Largest file read: far above any sane configuration, far below trouble.
pub const MAX_BYTES: u64 = 4 << 20;

/// Opens `path` without blocking (a FIFO would otherwise wait for a writer), checks that it is
/// a regular file of at most [`MAX_BYTES`], and returns it with its contents.
pub fn read(path: &Path) -> io::Result<(File, String)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("larger than {MAX_BYTES} bytes"),
        ));
    }
    let mut text = String::new();
    (&file).take(MAX_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("larger than {MAX_BYTES} bytes"),
        ));
    }
    Ok((file, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_fifos_and_directories() {
        for path in ["/dev/zero", "/dev/null", "/"] {
            let err = read(Path::new(path)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{path}");
        }
        let dir = std::env::temp_dir().join(format!("anycast-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read(&dir).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn reads_a_regular_file() {
        let path = std::env::temp_dir().join(format!("anycast-text-{}", std::process::id()));
        std::fs::write(&path, "port = 5446\n").unwrap();
        let (_, text) = read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(text, "port = 5446\n");
    }
}
