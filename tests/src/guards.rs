//! RAII guards: whatever a test creates is removed when the guard drops,
//! also when the test panics.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Child,
};

use sdm_agent::kernel::dataplane::Layout;

use crate::{sh, unique};

/// A network namespace, deleted on drop (which also removes its veths).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// The ifindex of an interface inside the namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", dev]);
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex for {dev} in {}: {out}", self.name))
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Moves the calling thread into the namespace until the returned guard
    /// drops.
    pub fn enter(&self) -> NetnsEntered {
        let original = fs::File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = fs::File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()));
        // SAFETY: setns on valid namespace fds, affecting only this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
        NetnsEntered { original }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
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

/// A child cgroup of the cgroup2 root, removed on drop after its processes
/// were killed.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(tag: &str) -> Self {
        let root = sdm_agent::kernel::cgroup::cgroup2_mount().expect("cgroup2 mount");
        let path = root.join(unique(tag));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    /// A child cgroup named exactly `name` (a unit's name, say), removed on
    /// drop like any other; drop it before its parent.
    pub fn child(&self, name: &str) -> Self {
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
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
    /// https://github.com/torvalds/linux/blob/v6.1/kernel/bpf/cgroup.c).
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

    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: sending a signal to a pid.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = fs::remove_dir(&self.path);
    }
}

/// A pin root and run directory of the test's own under /sys/fs/bpf and
/// /tmp; detached and removed on drop.
pub struct Pins {
    pub layout: Layout,
}

impl Pins {
    pub fn new(tag: &str) -> Self {
        sdm_agent::kernel::dataplane::ensure_bpffs().expect("bpffs");
        let name = unique(tag);
        let layout = Layout {
            pin_root: PathBuf::from("/sys/fs/bpf").join(format!("sdmtest-{name}")),
            run_dir: std::env::temp_dir().join(format!("sdmtest-run-{name}")),
        };
        Self { layout }
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = sdm_agent::kernel::dataplane::detach(&self.layout);
        let _ = fs::remove_dir_all(&self.layout.pin_root);
        let _ = fs::remove_dir_all(&self.layout.run_dir);
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("sdmtest-{}", unique(tag)));
        fs::create_dir_all(&p).expect("temp dir");
        Self(p)
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
