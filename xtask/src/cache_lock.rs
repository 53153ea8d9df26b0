//! The lock of a cache folder that parallel runs share (the Debian VM
//! image, the kernel matrix's kernels).

use std::{fs, path::Path};

use anyhow::{Context as _, Result};

/// An exclusive flock(2) on `<cache>/lock`, released when dropped (or when
/// the process dies: the kernel drops it with the descriptor).
pub struct CacheLock {
    /// Held only for its descriptor, which holds the lock.
    _file: fs::File,
}

impl CacheLock {
    /// Takes the lock of the cache folder `root`, waiting (and saying so)
    /// while another run holds it; `who` names the task in the message.
    pub fn take(who: &str, root: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd as _;
        let path = root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: flock on a descriptor this File owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            println!(
                "xtask: {who}: waiting for {}: another run holds it",
                path.display()
            );
            // SAFETY: as above.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        Ok(Self { _file: file })
    }
}
