//! RAII guards for everything the benchmark creates (network namespaces,
//! cgroups, bpffs pins, temporary folders): each is removed when its guard
//! drops, also on an error or Ctrl-C. Every name starts with
//! `sdmb<pid>x`, so a later run can sweep what a killed run left behind.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use sdm_agent::kernel::dataplane::{self, Layout};

use crate::sys::sh;

/// Prefix of every name the benchmark creates.
const PREFIX: &str = "sdmb";
const BPFFS: &str = "/sys/fs/bpf";
const NETNS_DIR: &str = "/run/netns";

/// `sdmb<pid>x<tag><n>`: unique to this process and call, short enough for
/// interface-like names.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}x{tag}{n}", std::process::id())
}

/// A network namespace of the benchmark's own, deleted on drop (with its
/// interfaces and any iptables/nftables rules inside it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// `ip netns exec <ns> <args>`.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// `ip netns exec <ns> <args>` with `input` on standard input.
    pub fn exec_input(&self, args: &[&str], input: &str) -> Result<String> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        crate::sys::sh_input(&v, input)
    }

    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        let out = self.ip(&["-o", "link", "show", dev])?;
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("no ifindex for {dev} in {}: {out}", self.name))
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> Result<NetnsEntered> {
        let original = fs::File::open("/proc/thread-self/ns/net").context("open own netns")?;
        let target = fs::File::open(self.path()).with_context(|| format!("open {}", self.name))?;
        // SAFETY: setns on valid namespace fds; affects only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setns into {}", self.name));
        }
        Ok(NetnsEntered { original })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

pub struct NetnsEntered {
    original: fs::File,
}

impl Drop for NetnsEntered {
    fn drop(&mut self) {
        // SAFETY: as in enter().
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// A cgroup of the benchmark's own (a child of the cgroup2 root, or of
/// another such cgroup); its processes are killed and it is removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    /// A new cgroup directly under the cgroup2 mount. Programs are only ever
    /// attached to cgroups made here, never to the root.
    pub fn new_top(tag: &str) -> Result<Self> {
        let root = sdm_agent::kernel::cgroup::cgroup2_mount().context("find the cgroup2 mount")?;
        Self::create(root.join(unique(tag)))
    }

    pub fn child(&self, tag: &str) -> Result<Self> {
        Self::create(self.path.join(tag))
    }

    fn create(path: PathBuf) -> Result<Self> {
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
    }
}

fn cgroup_pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in the cgroup and its descendants, then removes them
/// bottom-up.
fn remove_cgroup_tree(path: &Path) {
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
            unsafe { libc::kill(p, libc::SIGKILL) };
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

/// A pin root under /sys/fs/bpf and a run folder under /tmp, detached and
/// removed on drop.
pub struct Pins {
    pub layout: Layout,
}

impl Pins {
    pub fn new(tag: &str) -> Result<Self> {
        dataplane::ensure_bpffs().context("mount bpffs")?;
        let name = unique(tag);
        Ok(Self {
            layout: Layout {
                pin_root: Path::new(BPFFS).join(&name),
                run_dir: std::env::temp_dir().join(format!("{name}-run")),
            },
        })
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        remove_pins(&self.layout);
    }
}

fn remove_pins(layout: &Layout) {
    let _ = dataplane::detach(layout);
    let _ = fs::remove_dir_all(&layout.pin_root);
    let _ = fs::remove_dir_all(&layout.run_dir);
}

/// A temporary folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(unique(tag));
        fs::create_dir_all(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(Self(p))
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

/// The pid in a name made by [`unique`], if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let end = rest.find('x')?;
    rest[..end].parse().ok()
}

/// Whether a benchmark process with this pid is still running (a zombie
/// is not).
fn bench_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("Z");
    comm.starts_with("sdm-bench") && state != "Z" && state != "X"
}

/// Names in `dir` left by benchmark runs that are no longer running.
fn stale_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            owner_pid(&name.to_string_lossy()).is_some_and(|pid| !bench_alive(pid))
        })
        .map(|e| e.path())
        .collect()
}

/// Removes what earlier runs that were killed (SIGKILL, a crash of the
/// machine's session) left behind: their namespaces, cgroups, pins and
/// temporary folders. Returns how many were removed.
pub fn sweep_stale() -> Result<usize> {
    let mut n = 0;
    for ns in stale_in(Path::new(NETNS_DIR)) {
        if let Some(name) = ns.file_name().and_then(|n| n.to_str()) {
            let _ = sh(&["ip", "netns", "del", name]);
            n += 1;
        }
    }
    if let Ok(root) = sdm_agent::kernel::cgroup::cgroup2_mount() {
        for cg in stale_in(&root) {
            remove_cgroup_tree(&cg);
            n += 1;
        }
    }
    for pins in stale_in(Path::new(BPFFS)) {
        let _ = dataplane::detach(&Layout {
            pin_root: pins.clone(),
            run_dir: PathBuf::from("/nonexistent"),
        });
        let _ = fs::remove_dir_all(&pins);
        n += 1;
    }
    for tmp in stale_in(&std::env::temp_dir()) {
        let _ = fs::remove_dir_all(&tmp);
        n += 1;
    }
    Ok(n)
}

/// Fails unless running as root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root: it loads eBPF programs and creates network namespaces and cgroups (run `cargo xtask bench` as root)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_owner() {
        let name = unique("c");
        assert!(name.starts_with("sdmb"));
        assert_eq!(owner_pid(&name), Some(std::process::id()));
        assert_eq!(owner_pid("sdmb12x"), Some(12));
        assert_eq!(owner_pid("sdm-agent"), None);
        assert_eq!(owner_pid("sdmbabcx"), None);
    }
}
