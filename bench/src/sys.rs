//! Processes, signals, clocks and the two raw bpf(2) commands the benchmark
//! needs that aya does not wrap: loading an empty cgroup_skb program and
//! BPF_PROG_TEST_RUN on any program fd.

use std::{
    ffi::OsStr,
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader, Read as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::process::CommandExt as _,
    },
    path::Path,
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM only set a flag: the benchmark notices it between
/// steps and unwinds, so every guard cleans up. Children get their default
/// handlers back when they exec.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; sigaction is given a zeroed, valid struct.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once Ctrl-C (or SIGTERM) was received.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// Sleeps up to `d`, waking early (with an error) on Ctrl-C.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes `n` in decimal into `buf` without allocating; returns the length.
fn fmt_u32(mut n: u32, buf: &mut [u8; 12]) -> usize {
    let mut tmp = [0u8; 12];
    let mut len = 0;
    loop {
        tmp[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = tmp[len - 1 - i];
    }
    len
}

/// Spawns `cmd` inside a network namespace (a /run/netns file) and a
/// cgroup, both joined in the child before it execs, so every socket it
/// opens belongs to them; with `cpu`, pinned to that CPU. The child is
/// killed if the benchmark dies.
pub fn spawn_in(
    cmd: &mut Command,
    netns: Option<&Path>,
    cgroup: Option<&Path>,
    cpu: Option<usize>,
) -> Result<Child> {
    let ns = netns
        .map(|p| File::open(p).with_context(|| format!("open {}", p.display())))
        .transpose()?;
    let procs = cgroup.map(|c| c.join("cgroup.procs"));
    let cg = procs
        .as_ref()
        .map(|p| {
            OpenOptions::new()
                .write(true)
                .open(p)
                .with_context(|| format!("open {}", p.display()))
        })
        .transpose()?;
    let ns_fd: Option<RawFd> = ns.as_ref().map(|f| f.as_raw_fd());
    let cg_fd: Option<RawFd> = cg.as_ref().map(|f| f.as_raw_fd());
    let cpu_set = cpu.map(|c| {
        // SAFETY: cpu_set_t is plain data; CPU_SET writes within it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(c, &mut set);
            set
        }
    });
    // SAFETY: the closure only makes async-signal-safe system calls on fds
    // opened above (still open in the child until exec) and a stack buffer.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = cg_fd {
                let mut buf = [0u8; 12];
                let n = fmt_u32(libc::getpid() as u32, &mut buf);
                if libc::write(fd, buf.as_ptr().cast(), n) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(fd) = ns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(set) = cpu_set.as_ref() {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", describe(cmd)))?;
    drop(ns);
    drop(cg);
    Ok(child)
}

/// Pins the calling thread (and threads it starts later) to `cpu` until
/// the guard drops, which restores the previous set.
pub fn pin_self(cpu: usize) -> Result<Pinned> {
    // SAFETY: cpu_set_t is plain data; the calls read and write within it.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) != 0 {
            return Err(io::Error::last_os_error()).context("sched_getaffinity");
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error()).context("sched_setaffinity");
        }
        Ok(Pinned(old))
    }
}

pub struct Pinned(libc::cpu_set_t);

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: restoring the set read in pin_self.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// `program arg...` for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion, failing with its output unless it exits 0
/// (the test kit's).
pub use sdm_testkit::shell::try_sh as sh;

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn new(child: Child, name: impl Into<String>) -> Self {
        Self {
            child,
            name: name.into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early ({status})", self.name);
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a spawned child to completion within `timeout` (killing it
/// otherwise, or on Ctrl-C) and returns its stdout; an error unless it
/// exits 0.
pub fn finish(mut child: Child, what: &str, timeout: Duration) -> Result<String> {
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let proc = Proc::new(child, what);
    let end = Instant::now() + timeout;
    let mut proc = proc;
    let status = loop {
        if let Some(status) = proc.child.try_wait()? {
            break status;
        }
        if interrupted() {
            bail!("interrupted while running {what}");
        }
        if Instant::now() > end {
            bail!("{what} did not finish within {timeout:?}; killed");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!("{what} failed ({status}): {}{}", out.trim(), err.trim());
    }
    Ok(out)
}

/// Lines a child prints on stdout, as they come.
pub fn line_channel(child: &mut Child) -> Result<mpsc::Receiver<String>> {
    let stdout = child.stdout.take().context("child stdout not piped")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Waits for the next line from `rx`, up to `timeout`.
pub fn next_line(rx: &mpsc::Receiver<String>, what: &str, timeout: Duration) -> Result<String> {
    let end = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{what}: no output within {timeout:?}");
        }
        match rx.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(line) => return Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("{what} closed its output"),
        }
    }
}

// ---------------------------------------------------------------------------
// bpf(2)

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;

/// Loads the smallest cgroup_skb program there is, `r0 = 1; exit` (pass),
/// straight from its two instructions: the baseline every verdict cost is
/// divided by.
pub fn load_empty_skb_prog() -> Result<OwnedFd> {
    #[repr(C)]
    struct Insn {
        code: u8,
        regs: u8,
        off: i16,
        imm: i32,
    }
    // BPF_ALU64 | BPF_MOV | BPF_K into r0, then BPF_JMP | BPF_EXIT.
    let insns = [
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: 1,
        },
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = b"GPL\0";
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"sdmb_empty");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_SKB,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_LOAD; the kernel
    // reads the instructions and license within the sizes given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("BPF_PROG_LOAD of the empty program");
    }
    // SAFETY: a new fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// BPF_PROG_TEST_RUN of any skb program fd on `packet` (from the IP header
/// on). Returns (verdict, the kernel's average duration in ns).
pub fn test_run(prog_fd: RawFd, packet: &[u8], ifindex: u32, repeat: u32) -> Result<(u32, u32)> {
    sdm_agent::kernel::dataplane::test_run_fd(prog_fd, packet, ifindex, repeat)
        .context("BPF_PROG_TEST_RUN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_pids_without_allocating() {
        let mut buf = [0u8; 12];
        for n in [0u32, 7, 10, 4_194_304, u32::MAX] {
            let len = fmt_u32(n, &mut buf);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), n.to_string());
        }
    }
}
