//! Processes of the policed cgroup that can get around the cgroup
//! programs: with CAP_NET_RAW a process opens raw and packet sockets
//! (AF_PACKET frames are not seen by cgroup_skb hooks at all), with
//! CAP_NET_ADMIN it can make tunnels, move interfaces, change routes or
//! detach programs of its own. `status` and `check` list them, so a
//! policed workload that kept these capabilities is noticed.

use std::{
    fs,
    ops::ControlFlow,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Bit numbers in the capability sets (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

/// How deep below the target cgroup processes are looked for, and how many
/// are listed at most (the root cgroup of a busy host has thousands).
const MAX_DEPTH: usize = 32;
pub const MAX_LISTED: usize = 1000;

/// The warning shown with a non-empty list.
pub const WARNING: &str = "these processes in the policed cgroup hold CAP_NET_RAW or CAP_NET_ADMIN: \
they can bypass the cgroup programs (raw and packet sockets, tunnels, interfaces); \
drop these capabilities from the policed workload (capabilities.drop: [\"NET_RAW\", \"NET_ADMIN\"], \
CapabilityBoundingSet=~CAP_NET_RAW CAP_NET_ADMIN)";

/// A process that holds CAP_NET_RAW or CAP_NET_ADMIN in its effective set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BypassCapable {
    pub pid: u32,
    pub comm: String,
    /// The cgroup it is in.
    pub cgroup: PathBuf,
    /// `CAP_NET_RAW`, `CAP_NET_ADMIN`.
    pub caps: Vec<String>,
}

/// The effective capability set from a /proc/PID/status text (`CapEff:`).
pub fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The names of the bypass capabilities set in `eff`.
pub fn bypass_caps(eff: u64) -> Vec<String> {
    [
        (CAP_NET_RAW, "CAP_NET_RAW"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| eff & (1u64 << bit) != 0)
    .map(|(_, name)| name.to_string())
    .collect()
}

/// The processes in `cgroup` and its descendants that hold CAP_NET_RAW or
/// CAP_NET_ADMIN, by pid; at most [`MAX_LISTED`]. Processes that exit
/// meanwhile, or whose files cannot be read, are skipped, and so are this
/// process and `except` (the agent: it needs CAP_NET_ADMIN to attach, and
/// with the whole host as target it is in the cgroup itself).
pub fn bypass_capable(cgroup: &Path, except: Option<u32>) -> Vec<BypassCapable> {
    let me = std::process::id();
    let mut out = Vec::new();
    crate::kernel::cgroup::walk_breadth_first(cgroup, MAX_DEPTH, |dir| {
        let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
            return ControlFlow::Continue(());
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            if pid == me || Some(pid) == except {
                continue;
            }
            let Ok(st) = fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            let caps = cap_eff(&st).map(bypass_caps).unwrap_or_default();
            if caps.is_empty() {
                continue;
            }
            let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_default();
            out.push(BypassCapable {
                pid,
                comm,
                cgroup: dir.to_owned(),
                caps,
            });
            if out.len() >= MAX_LISTED {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    out.sort_by_key(|p| p.pid);
    out
}

/// Human lines for a list: the warning, then one line per process.
pub fn render(list: &[BypassCapable]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    if list.is_empty() {
        return o;
    }
    /// More than this many are summed up (status --json lists them all).
    const SHOWN: usize = 20;
    let _ = writeln!(o, "warning: {WARNING}:");
    for p in list.iter().take(SHOWN) {
        let _ = writeln!(
            o,
            "  pid {:<8} {:<16} {:<28} {}",
            p.pid,
            p.comm,
            p.caps.join("+"),
            p.cgroup.display()
        );
    }
    if list.len() > SHOWN {
        let _ = writeln!(
            o,
            "  ... and {} more (status --json lists them all)",
            list.len() - SHOWN
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let st = "Name:\tsleep\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                  CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(cap_eff(st), Some(0x1ff_ffff_ffff));
        assert_eq!(
            bypass_caps(0x1ff_ffff_ffff),
            ["CAP_NET_RAW", "CAP_NET_ADMIN"]
        );
        assert_eq!(bypass_caps(1 << 13), ["CAP_NET_RAW"]);
        assert_eq!(bypass_caps(1 << 12), ["CAP_NET_ADMIN"]);
        // CAP_NET_BIND_SERVICE (10) and CAP_SYS_ADMIN (21) are not bypasses
        // of the cgroup programs by themselves.
        assert!(bypass_caps((1 << 10) | (1 << 21)).is_empty());
        assert_eq!(cap_eff("Name:\tx\n"), None);
        assert_eq!(cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn long_lists_are_summed_up_in_text() {
        let list: Vec<BypassCapable> = (1..=25)
            .map(|pid| BypassCapable {
                pid,
                comm: "x".into(),
                cgroup: "/sys/fs/cgroup/a".into(),
                caps: vec!["CAP_NET_RAW".into()],
            })
            .collect();
        let text = render(&list);
        assert!(text.starts_with("warning: "), "{text}");
        assert!(text.contains("pid 20 "), "{text}");
        assert!(!text.contains("pid 21 "), "{text}");
        assert!(text.contains("and 5 more"), "{text}");
    }

    /// `status` and `check` run as root inside the target when it is the
    /// whole host: they do not list themselves (nor the agent).
    #[test]
    fn this_process_and_the_excepted_one_are_not_listed() {
        let Ok(mount) = crate::kernel::cgroup::cgroup2_mount() else {
            return;
        };
        let me = std::process::id();
        let cg = crate::kernel::cgroup::pid_cgroup(&mount, me).unwrap_or(mount);
        let listed = bypass_capable(&cg, Some(1));
        assert!(
            listed.iter().all(|p| p.pid != me && p.pid != 1),
            "{listed:?}"
        );
    }

    #[test]
    fn a_missing_cgroup_lists_nothing() {
        assert!(bypass_capable(Path::new("/nonexistent/sdm-cgroup"), None).is_empty());
        assert_eq!(render(&[]), "");
    }
}
