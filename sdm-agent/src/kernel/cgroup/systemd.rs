//! systemd's cgroup layout: the root of its tree, where a slice is, and
//! where a unit's cgroup is (never inside a delegated subtree).

use std::{
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use super::{cgroup2_mount, CgroupError};

/// Where systemd's cgroup tree starts: the root of the cgroup2 mount,
/// unless set otherwise (`--unit-root`: a host's tree mounted elsewhere, or
/// a test's own tree). Set once, before any target is resolved.
static UNIT_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Sets the root of systemd's cgroup tree for `unit:` targets; `false` if
/// it was set already (to another path).
pub fn set_unit_root(root: PathBuf) -> bool {
    UNIT_ROOT.set(root.clone()).is_ok() || UNIT_ROOT.get() == Some(&root)
}

/// The root `unit:` targets are resolved under.
pub fn unit_root() -> Result<PathBuf, CgroupError> {
    match UNIT_ROOT.get() {
        Some(p) => Ok(p.clone()),
        None => cgroup2_mount(),
    }
}

/// The cgroup path of slice `name` relative to the root, as systemd lays
/// slices out: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`. `None`
/// for a name that is not a valid slice (empty parts, `-.slice`, the root
/// slice, which is the root itself).
pub fn slice_path(name: &str) -> Option<PathBuf> {
    let stem = name.strip_suffix(".slice")?;
    if stem.is_empty() || stem.split('-').any(str::is_empty) {
        return None;
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

/// Whether `child` is a slice directory that systemd would put directly
/// under the slice `parent` (`None`: the root slice, `-.slice`).
pub(super) fn is_child_slice(parent: Option<&str>, child: &str) -> bool {
    let Some(stem) = child.strip_suffix(".slice") else {
        return false;
    };
    match parent.and_then(|p| p.strip_suffix(".slice")) {
        None => !stem.is_empty() && !stem.contains('-'),
        Some(p) => stem
            .strip_prefix(p)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|part| !part.is_empty() && !part.contains('-')),
    }
}

/// Finds the cgroup of unit `name` under `root` (systemd's tree) by
/// systemd's own layout, never by a name found just anywhere: a directory
/// named like the unit inside a delegated subtree (below `user@1000.service`,
/// a container's scope, any other unit's cgroup) is created by whoever
/// that subtree is delegated to, and must not capture the target.
///
/// - `a-b.slice`: exactly `a.slice/a-b.slice` ([`slice_path`]);
/// - `NAME.service` or `NAME.scope`: a direct child of a slice, looked for
///   in `system.slice` first (the default), then in every other slice of
///   the tree (the root, `-.slice`, included), breadth first (`Slice=` puts a unit in any slice; a
///   template's instances default to `system.slice/system-NAME.slice`).
///   Only slice directories at their layout place are descended into, so
///   nothing below a service or scope is ever looked at.
pub fn find_unit(root: &Path, name: &str) -> Option<PathBuf> {
    const MAX_SLICE_DEPTH: usize = 8;
    if name.ends_with(".slice") {
        let p = root.join(slice_path(name)?);
        return p.is_dir().then_some(p);
    }
    let system = root.join("system.slice").join(name);
    if system.is_dir() {
        return Some(system);
    }
    // (the slice's directory, its name; None for the root slice)
    let mut level: Vec<(PathBuf, Option<String>)> = vec![(root.to_owned(), None)];
    for _ in 0..MAX_SLICE_DEPTH {
        let mut next = Vec::new();
        // A stable order, so two runs pick the same match.
        level.sort();
        for (dir, slice) in &level {
            // The root is a slice too (`-.slice`: `init.scope`, units with
            // `Slice=-.slice`); only root creates cgroups there.
            let p = dir.join(name);
            if p.is_dir() {
                return Some(p);
            }
            let Ok(rd) = fs::read_dir(dir) else { continue };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(child) = e.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if is_child_slice(slice.as_deref(), &child) {
                    next.push((e.path(), Some(child)));
                }
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    None
}
