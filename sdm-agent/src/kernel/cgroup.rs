//! Finding and checking cgroup2 directories: what a `cgroup =` target
//! names ([`CgroupTarget`], in `target`), where systemd puts a unit
//! (`systemd`), which cgroup a process is in (`pid`), and the cgroup2
//! mount and its directories (`mount`). Here: the error type, cgroup ids,
//! and resolving a target to a checked directory.

mod mount;
mod pid;
mod systemd;
mod target;

#[cfg(test)]
mod tests;

use std::{
    fs,
    path::{Path, PathBuf},
};

pub use self::{
    mount::{cgroup2_mount, cgroup2_mount_in, check_cgroup2_dir},
    pid::{pid_cgroup, walk_breadth_first},
    systemd::{find_unit, set_unit_root, slice_path, unit_root},
    target::CgroupTarget,
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cgroup2 file system is mounted (none in /proc/mounts)")]
    NoCgroup2Mount,
    #[error("{path} is not a directory of a cgroup2 file system")]
    NotCgroup2 { path: PathBuf },
    /// The target does not exist (yet): a unit that has not started, a
    /// process that is gone. The agent waits for it.
    #[error("{target}: {why}")]
    Missing { target: String, why: String },
    #[error("{target}: {why}")]
    Refused { target: String, why: String },
}

impl CgroupError {
    /// Whether waiting could help (the target may appear later).
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing { .. })
    }
}

/// The cgroup id of a cgroup2 directory: its inode number (kernfs node id,
/// what bpf_get_current_cgroup_id returns on 64-bit). A re-created cgroup
/// (a restarted service) has the same path and a new id.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Io {
            op: "stat",
            path: path.to_owned(),
            source,
        })
}

/// Resolves a target to its cgroup2 directory, checked.
pub fn resolve_target(target: Option<&CgroupTarget>) -> Result<PathBuf, CgroupError> {
    let mount = cgroup2_mount()?;
    let path = match target {
        None => mount,
        Some(CgroupTarget::Path(p)) => p.clone(),
        Some(CgroupTarget::Unit(u)) => {
            let root = unit_root()?;
            find_unit(&root, u).ok_or_else(|| CgroupError::Missing {
                target: format!("unit:{u}"),
                why: format!(
                    "no cgroup for {u} where systemd puts it under {} (a slice's child; \
                     is the unit running?)",
                    root.display()
                ),
            })?
        }
        Some(CgroupTarget::Pid(pid)) => pid_cgroup(&mount, *pid)?,
    };
    check_cgroup2_dir(&path)?;
    Ok(path)
}

/// The cgroup to attach to: the configured one, or the root of the
/// cgroup2 mount; checked to be a cgroup2 directory.
pub fn resolve(configured: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let path = match configured {
        Some(p) => p.to_owned(),
        None => cgroup2_mount()?,
    };
    check_cgroup2_dir(&path)?;
    Ok(path)
}
