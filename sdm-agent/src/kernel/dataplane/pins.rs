//! Where things are pinned ([`Layout`]), bpffs itself, and taking it all
//! down again ([`detach`]).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{io_err, AttachRecord, DataplaneError, ATTACHMENTS};
use crate::kernel::bpf_syscall;

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/sdm";
pub const DEFAULT_RUN_DIR: &str = "/run/sdm-agent";

/// Where things are pinned and recorded.
#[derive(Clone, Debug)]
pub struct Layout {
    pub pin_root: PathBuf,
    pub run_dir: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            pin_root: DEFAULT_PIN_ROOT.into(),
            run_dir: DEFAULT_RUN_DIR.into(),
        }
    }
}

impl Layout {
    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.pin_root.join("maps").join(name)
    }
    pub fn link_pin(&self, which: &str) -> PathBuf {
        self.pin_root.join("links").join(which)
    }
    pub fn attach_record(&self) -> PathBuf {
        self.run_dir.join("attach.json")
    }
    pub fn is_attached(&self) -> bool {
        ATTACHMENTS.iter().any(|a| self.link_pin(a.pin).exists())
    }
}

/// Detaches the bpf_link pinned at `pin` from its cgroup now
/// (BPF_LINK_DETACH, Linux 5.9: `cgroup_bpf_link_detach` runs under the
/// cgroup mutex before the call returns); the pin stays for the caller.
/// aya 0.14 can open a pinned link (`PinnedLink::from_pin`) but has no
/// BPF_LINK_DETACH, hence the raw commands.
pub(crate) fn detach_link_now(pin: &Path) -> io::Result<()> {
    let link = bpf_syscall::obj_get(pin)?;
    bpf_syscall::link_detach(&link)
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted yet.
pub fn ensure_bpffs() -> Result<(), DataplaneError> {
    let mounts =
        fs::read_to_string("/proc/mounts").map_err(io_err("read", Path::new("/proc/mounts")))?;
    if bpffs_mounted(&mounts) {
        return Ok(());
    }
    let dir = Path::new("/sys/fs/bpf");
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .map_err(io_err("mount bpffs at", dir))?;
    if !ok.success() {
        return Err(DataplaneError::Io {
            op: "mount bpffs at",
            path: dir.into(),
            source: io::Error::other(format!("mount exited with {ok}")),
        });
    }
    Ok(())
}

/// Whether `mounts` (the text of /proc/mounts) has bpffs at /sys/fs/bpf.
pub(super) fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    })
}

/// Removes every link and map the agent pinned: the programs are detached
/// once no process holds them any more. Returns what was removed.
pub fn detach(layout: &Layout) -> Result<Vec<PathBuf>, DataplaneError> {
    let mut removed = Vec::new();
    // The backstop's tc filters, recorded by name: they are not pinned.
    // Found in the network namespace this runs in (the agent's).
    for name in AttachRecord::read(layout)
        .map(|r| r.backstop)
        .unwrap_or_default()
    {
        crate::kernel::backstop::detach_filter(&name)?;
        removed.push(PathBuf::from(format!("tc egress filter on {name}")));
    }
    // Links first, detached at once: unpinning alone drops the last
    // reference, and the kernel releases a link in a work item some time
    // later (bpf_link_put, kernel/bpf/syscall.c), so traffic right after
    // `detach` could still meet the programs.
    if let Ok(entries) = fs::read_dir(layout.pin_root.join("links")) {
        for e in entries.flatten() {
            let p = e.path();
            detach_link_now(&p).map_err(io_err("detach the link pinned at", &p))?;
        }
    }
    for sub in ["links", "maps"] {
        let dir = layout.pin_root.join(sub);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            fs::remove_file(&p).map_err(io_err("unpin", &p))?;
            removed.push(p);
        }
        fs::remove_dir(&dir).map_err(io_err("remove", &dir))?;
    }
    if layout.pin_root.exists() {
        fs::remove_dir(&layout.pin_root).map_err(io_err("remove", &layout.pin_root))?;
    }
    let rec = layout.attach_record();
    if rec.exists() {
        fs::remove_file(&rec).map_err(io_err("remove", &rec))?;
        removed.push(rec);
    }
    // The run state too: its DNS answers would otherwise become the "last
    // good" answers of the next run, whatever its config.
    let state = crate::api::status::StateFile::path(layout);
    if crate::api::status::StateFile::remove(layout).map_err(io_err("remove", &state))? {
        removed.push(state);
    }
    Ok(removed)
}
