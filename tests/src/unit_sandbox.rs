//! The agent run as the Debian unit (deploy/debian/sdm-agent.service)
//! runs it, without systemd: as root with exactly the capabilities the
//! unit names (bounding set from `CapabilityBoundingSet=`, inheritable and
//! ambient sets from `AmbientCapabilities=`, no new privileges), through
//! `setpriv`; in a mount namespace of its own (`unshare`) where `/`,
//! `/sys`, the cgroup2 mount and `/sys/fs/bpf` are read-only and only the
//! directories given stay writable, as `ProtectSystem=strict`,
//! `ProtectKernelTunables=`, `ProtectControlGroups=` and
//! `ReadWritePaths=`/`StateDirectory=`/`RuntimeDirectory=` leave them.
//! Set [`wrapper`] as [`crate::lab::Lab::agent_wrapper`].

use std::{
    collections::BTreeSet,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The unit file, as packaged.
pub const UNIT_FILE: &str = include_str!("../../deploy/debian/sdm-agent.service");

/// The capabilities a `[Service]` directive of the unit names (`CAP_BPF`,
/// ...), in the unit's order.
pub fn unit_capabilities(key: &str) -> Vec<String> {
    let mut section = "";
    let mut values = Vec::new();
    for line in UNIT_FILE.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" {
            if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                values.push(v);
            }
        }
    }
    let [value] = values.as_slice() else {
        panic!("[Service] {key}= should be set once in the unit, found {values:?}")
    };
    let caps: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
    assert!(
        !caps.is_empty() && caps.iter().all(|c| c.starts_with("CAP_")),
        "{key}={value}: expected a list of capabilities to keep (no `~`)"
    );
    caps
}

/// The mounts the sandbox makes read-only: `/`, `/sys`, the cgroup2 mount
/// (found in /proc/mounts) and `/sys/fs/bpf`.
pub fn read_only_mounts() -> Vec<PathBuf> {
    let cgroup2 = sdm_agent::kernel::cgroup::cgroup2_mount().expect("the cgroup2 mount");
    vec![
        PathBuf::from("/"),
        PathBuf::from("/sys"),
        cgroup2,
        PathBuf::from("/sys/fs/bpf"),
    ]
}

/// `-all,+bpf,+net_admin`: a capability set for setpriv.
fn setpriv_set(caps: &[String]) -> String {
    let mut spec = String::from("-all");
    for c in caps {
        let name = c.strip_prefix("CAP_").unwrap_or(c).to_ascii_lowercase();
        spec.push_str(",+");
        spec.push_str(&name);
    }
    spec
}

/// A path in single quotes for sh.
fn quoted(p: &Path) -> String {
    let s = p
        .to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()));
    assert!(!s.contains('\''), "{s} holds a single quote");
    format!("'{s}'")
}

/// The command prefix that runs a program with `bounding` as its bounding
/// set, `ambient` as its inheritable and ambient sets (as systemd does with
/// `AmbientCapabilities=`), no new privileges, as root, in a mount
/// namespace where [`read_only_mounts`] are read-only and `writable` (which
/// must exist) stays writable. The program keeps the caller's pid: every
/// step execs the next.
pub fn wrapper(bounding: &[String], ambient: &[String], writable: &[&Path]) -> Vec<OsString> {
    // Never remount the test host's own mounts: the script refuses to run
    // in this (the caller's) mount namespace.
    let host_ns = fs::read_link("/proc/self/ns/mnt").expect("readlink /proc/self/ns/mnt");
    let mut script = format!(
        "set -eu\n\
         if [ \"$(readlink /proc/self/ns/mnt)\" = {} ]; then\n\
         \x20 echo 'unit sandbox: not in a mount namespace of its own' >&2; exit 125\n\
         fi\n",
        quoted(&host_ns)
    );
    for w in writable {
        assert!(w.is_dir(), "{} must exist to stay writable", w.display());
        let w = quoted(w);
        script.push_str(&format!("mount --bind {w} {w}\n"));
    }
    // MS_REMOUNT | MS_BIND | MS_RDONLY: these mounts of this namespace only,
    // not the file systems (the host's mounts stay as they are).
    for m in read_only_mounts() {
        script.push_str(&format!("mount -o remount,bind,ro {}\n", quoted(&m)));
    }
    let ambient = setpriv_set(ambient);
    script.push_str(&format!(
        "exec setpriv --no-new-privs --bounding-set={} --inh-caps={ambient} \
         --ambient-caps={ambient} -- \"$@\"\n",
        setpriv_set(bounding)
    ));
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        &script,
        "unit-sandbox",
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

/// The capability sets of a process by name (`CapInh`, `CapPrm`,
/// `CapEff`, `CapBnd`, `CapAmb`), each as names (`CAP_BPF`), decoded by
/// `capsh --decode` rather than a table of ours.
pub fn process_caps(pid: u32) -> Vec<(String, BTreeSet<String>)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.starts_with("Cap"))
        .map(|(k, v)| (k.to_owned(), decode_caps(v.trim())))
        .collect()
}

/// `capsh --decode=<hex>`: "0x...=cap_a,cap_b" as {"CAP_A", "CAP_B"}.
fn decode_caps(hex: &str) -> BTreeSet<String> {
    let out = Command::new("capsh")
        .arg(format!("--decode={hex}"))
        .output()
        .unwrap_or_else(|e| panic!("run capsh (libcap2-bin; cargo xtask setup installs it): {e}"));
    assert!(out.status.success(), "capsh --decode={hex}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let (_, names) = text
        .trim()
        .split_once('=')
        .unwrap_or_else(|| panic!("capsh --decode={hex}: {text:?}"));
    names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_ascii_uppercase)
        .collect()
}

/// Whether the mount at `mount_point`, as process `pid` sees it (the
/// topmost one there), is read-only; None if nothing is mounted there.
pub fn mount_read_only(pid: u32, mount_point: &Path) -> Option<bool> {
    let info = fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/mountinfo: {e}"));
    // Fields: id, parent, major:minor, root, mount point, mount options, ...
    // The last line for a mount point is the topmost mount there.
    info.lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 5 && Path::new(f[4]) == mount_point).then(|| f[5].to_owned())
        })
        .map(|options| options.split(',').any(|o| o == "ro"))
}
