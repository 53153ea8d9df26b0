//! Removes what earlier runs that were killed (SIGKILL, a crash of the
//! machine's session) left behind: their namespaces, cgroups, pins and
//! temporary folders, found by the owner pid in their names
//! ([`Naming::Owned`]). Only for processes with owned names (the benchmark).

use std::{
    fs,
    path::{Path, PathBuf},
};

use sdm_agent::kernel::dataplane::Layout;

use crate::{
    guards::{cgroup::remove_cgroup_tree, netns::NETNS_DIR, remove_pins, BPFFS},
    names::{naming, Naming},
    shell::try_sh,
    Error, Result,
};

/// Whether a process `program` with this pid is still running (a zombie
/// is not).
fn owner_alive(pid: u32, program: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("Z");
    comm.starts_with(program) && state != "Z" && state != "X"
}

/// Names in `dir` left by runs that are no longer running.
fn stale_in(dir: &Path, style: Naming, program: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            style
                .owner_pid(&name.to_string_lossy())
                .is_some_and(|pid| !owner_alive(pid, program))
        })
        .map(|e| e.path())
        .collect()
}

/// Sweeps the leftovers of this program's killed runs; returns how many
/// were removed.
pub fn sweep_stale() -> Result<usize> {
    let style = naming();
    let Naming::Owned { program, .. } = style else {
        return Err(Error::NotSweepable);
    };
    let mut n = 0;
    for ns in stale_in(Path::new(NETNS_DIR), style, program) {
        if let Some(name) = ns.file_name().and_then(|n| n.to_str()) {
            let _ = try_sh(&["ip", "netns", "del", name]);
            n += 1;
        }
    }
    if let Ok(root) = sdm_agent::kernel::cgroup::cgroup2_mount() {
        for cg in stale_in(&root, style, program) {
            remove_cgroup_tree(&cg);
            n += 1;
        }
    }
    for pins in stale_in(Path::new(BPFFS), style, program) {
        remove_pins(&Layout {
            pin_root: pins,
            run_dir: PathBuf::from("/nonexistent"),
        });
        n += 1;
    }
    for tmp in stale_in(&std::env::temp_dir(), style, program) {
        let _ = fs::remove_dir_all(&tmp);
        n += 1;
    }
    Ok(n)
}
