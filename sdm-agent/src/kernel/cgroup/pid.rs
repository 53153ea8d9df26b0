//! The cgroup a process is in, and the walk that finds it when
//! /proc/PID/cgroup cannot be taken as it is (cgroup namespaces).

use std::{
    fs,
    ops::ControlFlow,
    path::{Path, PathBuf},
};

use super::CgroupError;

/// The cgroup2 directory of process `pid`, from /proc/PID/cgroup (the
/// `0::/path` line).
pub fn pid_cgroup(mount: &Path, pid: u32) -> Result<PathBuf, CgroupError> {
    let target = format!("pid:{pid}");
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).map_err(|e| CgroupError::Missing {
        target: target.clone(),
        why: format!("cannot read {file} ({e}): no such process?"),
    })?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| CgroupError::Refused {
            target: target.clone(),
            why: format!("{file} has no cgroup2 entry (0::)"),
        })?;
    // The path is relative to the reader's cgroup namespace: in a
    // container (a sidecar) it can be "/" or "/../<sibling>" although the
    // process is elsewhere in the host's tree. Take it only when it is
    // plainly right; otherwise find the cgroup that lists the process.
    let joined = mount.join(rel.trim_start_matches('/'));
    let path = if rel != "/" && !rel.split('/').any(|c| c == "..") && lists_pid(&joined, pid) {
        joined
    } else {
        find_pid(mount, pid).ok_or_else(|| CgroupError::Missing {
            target: target.clone(),
            why: format!(
                "no cgroup under {} lists the process (it exited?)",
                mount.display()
            ),
        })?
    };
    if path == mount {
        return Err(CgroupError::Refused {
            target,
            why: "the process is in the root cgroup: a pid target would police the whole host; \
                  name the cgroup2 mount as a path if that is what you want"
                .into(),
        });
    }
    Ok(path)
}

fn lists_pid(dir: &Path, pid: u32) -> bool {
    fs::read_to_string(dir.join("cgroup.procs"))
        .is_ok_and(|t| t.lines().any(|l| l.trim().parse() == Ok(pid)))
}

/// The cgroup whose cgroup.procs lists `pid`, breadth first.
fn find_pid(mount: &Path, pid: u32) -> Option<PathBuf> {
    let mut found = None;
    walk_breadth_first(mount, 10, |dir| {
        if lists_pid(dir, pid) {
            found = Some(dir.to_owned());
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

/// Visits `root` and the cgroups below it, level by level, at most
/// `max_depth` levels down, until `visit` breaks.
pub fn walk_breadth_first(
    root: &Path,
    max_depth: usize,
    mut visit: impl FnMut(&Path) -> ControlFlow<()>,
) {
    let mut level = vec![root.to_owned()];
    for _ in 0..=max_depth {
        let mut next = Vec::new();
        for dir in &level {
            if visit(dir).is_break() {
                return;
            }
            if let Ok(rd) = fs::read_dir(dir) {
                next.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        if next.is_empty() {
            return;
        }
        level = next;
    }
}
