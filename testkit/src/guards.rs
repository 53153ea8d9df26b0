//! RAII guards: whatever a test or the benchmark creates is removed when
//! its guard drops, also when the owner panics or fails.
//!
//! Safety rules the guards hold: cgroups are made only below the cgroup2
//! root (programs are attached to those, never to the root itself), and
//! every name comes from [`crate::names`], so nothing of another process or
//! of the host is touched.

pub(crate) mod cgroup;
pub(crate) mod netns;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Child,
};

use sdm_agent::kernel::dataplane::{self, Layout};

pub use self::{
    cgroup::Cgroup,
    netns::{Netns, NetnsEntered},
};
use crate::{io_err, must, names::path_name, Error, Result};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// A pin root under /sys/fs/bpf and a run folder under /tmp of the owner's
/// own; detached and removed on drop.
pub struct Pins {
    pub layout: Layout,
}

impl Pins {
    pub fn try_new(tag: &str) -> Result<Self> {
        dataplane::ensure_bpffs().map_err(|e| Error::Agent(format!("mount bpffs: {e:#}")))?;
        let name = path_name(tag);
        Ok(Self {
            layout: Layout {
                pin_root: Path::new(BPFFS).join(&name),
                run_dir: std::env::temp_dir().join(format!("{name}-run")),
            },
        })
    }

    pub fn new(tag: &str) -> Self {
        must(Self::try_new(tag))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        remove_pins(&self.layout);
    }
}

/// Detaches what is pinned under `layout` and removes its folders.
pub(crate) fn remove_pins(layout: &Layout) {
    let _ = dataplane::detach(layout);
    let _ = fs::remove_dir_all(&layout.pin_root);
    let _ = fs::remove_dir_all(&layout.run_dir);
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temporary folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn try_new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(path_name(tag));
        fs::create_dir_all(&p).map_err(io_err(format!("mkdir {}", p.display())))?;
        Ok(Self(p))
    }

    pub fn new(tag: &str) -> Self {
        must(Self::try_new(tag))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
