//! A cgroup of the owner's own, below the cgroup2 root.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use crate::{io_err, must, names::unique, Error, Result};

/// A child cgroup of the cgroup2 root (or of another such cgroup); its
/// processes are killed and it is removed, with its descendants, on drop.
/// Programs are only ever attached to cgroups made here, never to the root.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    /// A new cgroup directly under the cgroup2 mount.
    pub fn try_new(tag: &str) -> Result<Self> {
        let root = sdm_agent::kernel::cgroup::cgroup2_mount()
            .map_err(|e| Error::Agent(format!("find the cgroup2 mount: {e:#}")))?;
        Self::create(root.join(unique(tag)))
    }

    pub fn new(tag: &str) -> Self {
        must(Self::try_new(tag))
    }

    /// A child cgroup named exactly `name` (a unit's name, say), removed on
    /// drop like any other.
    pub fn try_child(&self, name: &str) -> Result<Self> {
        Self::create(self.path.join(name))
    }

    /// [`Self::try_child`] for a test; drop it before its parent.
    pub fn child(&self, name: &str) -> Self {
        must(self.try_child(name))
    }

    fn create(path: PathBuf) -> Result<Self> {
        fs::create_dir(&path).map_err(io_err(format!("mkdir {}", path.display())))?;
        Ok(Self { path })
    }

    /// Moves a process into this cgroup.
    pub fn add(&self, pid: u32) {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", procs.display()));
    }

    /// How many programs are attached to this cgroup itself (not inherited
    /// from its parents) at `attach_type` (`BPF_CGROUP_INET_EGRESS`, ...):
    /// `BPF_PROG_QUERY` without flags or an id buffer returns just the
    /// count (`__cgroup_bpf_query`, kernel/bpf/cgroup.c:
    /// <https://github.com/torvalds/linux/blob/v6.1/kernel/bpf/cgroup.c>).
    pub fn programs_attached(&self, attach_type: u32) -> u32 {
        const BPF_PROG_QUERY: libc::c_long = 16;
        let dir = fs::File::open(&self.path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path.display()));
        // union bpf_attr's query member: target_fd, attach_type,
        // query_flags, attach_flags (u32 each), prog_ids (u64), prog_cnt
        // (u32); the rest stays zero, as the kernel requires.
        let mut attr = [0u32; 16];
        attr[0] = dir.as_raw_fd() as u32;
        attr[1] = attach_type;
        // SAFETY: bpf(2) reads and writes at most the attr given, whose
        // size is passed; prog_ids is null, so nothing else is written.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as libc::c_uint,
            )
        };
        assert_eq!(
            rc,
            0,
            "BPF_PROG_QUERY {} type {attach_type}: {}",
            self.path.display(),
            std::io::Error::last_os_error()
        );
        attr[6]
    }

    /// The processes in this cgroup itself.
    pub fn pids(&self) -> Vec<u32> {
        cgroup_pids(&self.path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
    }
}

fn cgroup_pids(path: &Path) -> Vec<u32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in the cgroup and its descendants, then removes them
/// bottom-up (a cgroup with processes or children cannot be removed).
pub(crate) fn remove_cgroup_tree(path: &Path) {
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..100 {
        let pids = cgroup_pids(path);
        if pids.is_empty() {
            break;
        }
        for p in pids {
            // SAFETY: sending a signal to a process of our own cgroup.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..50 {
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
