//! The lab: a StrongDM host and "the internet" on one machine, for end to
//! end tests of the real `sdm-agent` binary.
//!
//! ```text
//!   host netns                                  net netns
//!   ┌───────────────────────────┐   veth    ┌──────────────────────────────┐
//!   │ sdm-agent (outside cg)    │ h0 ── n0  │ fake DNS  10.231.N.2:53      │
//!   │ lab-probe (in the cgroup) │           │ TCP "ok"+echo servers,       │
//!   │ 10.231.N.1                │           │ UDP echo, on 10.231.N.2 .. .9│
//!   │ fd00:231:N::1             │           │ fd00:231:N::2 .. ::9         │
//!   └───────────────────────────┘           └──────────────────────────────┘
//! ```
//!
//! Everything is the test's own: two network namespaces, a child cgroup the
//! agent attaches to (never the root), a pin root under /sys/fs/bpf and a
//! run directory, a temporary directory for configs and logs. All of it is
//! removed when the [`Lab`] drops, also on panic; on panic the agent's log is
//! printed first. Labs are serialised within a test binary (a global lock),
//! so a default parallel `cargo test` run is safe too.
//!
//! The fake DNS server and the servers run on threads of the test process
//! whose sockets were opened inside the `net` namespace. Client traffic
//! comes from `lab-probe` processes (src/bin/lab-probe.rs) that enter the
//! `host` namespace and, unless asked otherwise, the lab's cgroup.

use std::{
    collections::HashMap,
    fs,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc, Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{
        rdata::{A, AAAA, CNAME, SOA},
        Name, RData, Record, RecordType,
    },
};
use serde_json::Value;

use crate::{
    guards::{Cgroup, Netns, Pins, Proc, TempDir},
    require_root,
};

mod agent;
mod dns;
mod probes;
mod servers;
mod status;

use self::servers::Servers;
pub use self::{
    dns::{Answer, DnsMode, FakeDns},
    probes::{assert_watches_held, set_recv_timeout, watch_outcomes, BgProbe, Sniffer},
    status::{
        denied, denied_bytes, denied_packets, dns_addresses, dns_failures, generation, metric,
        names_line, result, rule, rule_packets,
    },
};

/// Where the agent serves /metrics, inside the lab's `host` namespace.
pub const AGENT_LISTEN: &str = "127.0.0.1:9850";

/// How long [`Lab::start_agent`] waits for the agent to be ready, unless
/// `SDM_LAB_READY_SECS` says otherwise: the kernel matrix's emulated guests
/// verify the programs ten to fifty times slower than this machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// [`READY_TIMEOUT`], or `SDM_LAB_READY_SECS` seconds when that is set.
pub fn ready_timeout() -> Duration {
    std::env::var("SDM_LAB_READY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(READY_TIMEOUT, Duration::from_secs)
}

/// How much longer an agent that was not ready in time may take to exit
/// with its error, for the failure message.
const EXIT_GRACE: Duration = Duration::from_secs(25);

static SERIAL: Mutex<()> = Mutex::new(());

/// Locks a mutex even if a panicking test poisoned it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A binary of the workspace next to the running test executable
/// (`target/<profile>/deps/<test>-<hash>` -> `target/<profile>/<name>`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("the test executable's directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{name} is not built: {} does not exist. Build it first with `cargo build -p {}` \
         (`cargo xtask test` builds the whole workspace before testing)",
        path.display(),
        if name == "sdm-agent" {
            "sdm-agent"
        } else {
            "sdm-tests --bins"
        }
    );
    path
}

/// Panics if a source file of the agent is newer than its binary: the lab
/// would test old code.
fn assert_fresh(bin: &Path) {
    let built = fs::metadata(bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stack: Vec<PathBuf> = [
        "sdm-agent/src",
        "sdm-agent/build.rs",
        "sdm-ebpf/src",
        "sdm-common/src",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::metadata(&p) else { continue };
        if meta.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if p.extension().is_some_and(|e| e == "rs")
            && meta.modified().is_ok_and(|t| t > built)
        {
            panic!(
                "{} is older than {}: rebuild it (`cargo build -p sdm-agent`) so the lab tests \
                 the current code",
                bin.display(),
                p.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Fake DNS

// ---------------------------------------------------------------------------
// Servers in the `net` namespace

// ---------------------------------------------------------------------------
// Probes

// ---------------------------------------------------------------------------
// Watching the wire

// ---------------------------------------------------------------------------
// The lab

/// Parts of an agent config; [`Lab::write_config`] adds the lab's own keys
/// (`cgroup`, `[dns] servers`, `[http] listen`, `[state] dir`, `[audit] log`).
#[derive(Clone, Debug, Default)]
pub struct AgentConfig {
    /// Top-level keys: `role`, `mode`, `gateways`, `loopback`, ...
    pub top: String,
    /// Extra lines of the `[dns]` table (`ttl_min`, `grace`, ...).
    pub dns: String,
    /// Further tables: `[hosts]`, `[gateway]`, `[[resource]]`, `[[allow]]`, ...
    pub tables: String,
}

struct AgentRun {
    config: PathBuf,
    /// Arguments after `run --config <config>`.
    extra: Vec<String>,
    mode: String,
    hosts: Vec<String>,
}

pub struct Lab {
    /// The third octet of every lab address: 10.231.N.x, fd00:231:N::x.
    pub n: u8,
    probe_bin: PathBuf,
    agent_bin: PathBuf,
    agent: Option<Proc>,
    last_run: Option<AgentRun>,
    log: PathBuf,
    servers: Servers,
    dns: FakeDns,
    pub pins: Pins,
    /// `--unit-root` for every agent command: where `unit:` targets are
    /// looked up by systemd's layout (a test's own tree); `None`: the
    /// agent's default, the cgroup2 mount.
    pub unit_root: Option<PathBuf>,
    /// A command every agent command of the lab runs under, the agent's
    /// path and arguments appended (e.g. [`crate::unit_sandbox::wrapper`]:
    /// the unit's capabilities and read-only mounts); empty: none.
    pub agent_wrapper: Vec<std::ffi::OsString>,
    pub cgroup: Cgroup,
    pub host: Netns,
    pub net: Netns,
    pub dir: TempDir,
    _serial: MutexGuard<'static, ()>,
}

fn lab_number() -> u8 {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    (std::process::id().wrapping_add(n.wrapping_mul(37)) % 250 + 1) as u8
}

/// The agent binary the lab runs: the workspace's build, or
/// SDM_LAB_AGENT.
fn agent_bin() -> PathBuf {
    // SDM_LAB_AGENT: another agent binary (e.g. a build of an earlier
    // commit) to run the lab against.
    match std::env::var_os("SDM_LAB_AGENT") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.exists(), "SDM_LAB_AGENT={} does not exist", p.display());
            p
        }
        None => {
            let bin = workspace_bin("sdm-agent");
            assert_fresh(&bin);
            bin
        }
    }
}

/// The veth pair between `host` and `net` (h0 -- n0), lab `n`'s addresses
/// on both sides (10.231.n.1 on the host, .2 to .9 on the net side, and the
/// same in fd00:231:n::/64) and default routes each way.
fn wire(host: &Netns, net: &Netns, n: u8) {
    host.ip(&[
        "link", "add", "h0", "type", "veth", "peer", "name", "n0", "netns", &net.name,
    ]);
    host.ip(&["addr", "add", &format!("10.231.{n}.1/24"), "dev", "h0"]);
    host.ip(&[
        "-6",
        "addr",
        "add",
        &format!("fd00:231:{n:x}::1/64"),
        "dev",
        "h0",
        "nodad",
    ]);
    host.ip(&["link", "set", "h0", "up"]);
    for last in 2..=9 {
        net.ip(&["addr", "add", &format!("10.231.{n}.{last}/24"), "dev", "n0"]);
        net.ip(&[
            "-6",
            "addr",
            "add",
            &format!("fd00:231:{n:x}::{last}/64"),
            "dev",
            "n0",
            "nodad",
        ]);
    }
    net.ip(&["link", "set", "n0", "up"]);
    host.ip(&["route", "add", "default", "via", &format!("10.231.{n}.2")]);
    host.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("fd00:231:{n:x}::2"),
    ]);
    net.ip(&["route", "add", "default", "via", &format!("10.231.{n}.1")]);
    net.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("fd00:231:{n:x}::1"),
    ]);
}

impl Lab {
    /// Builds the namespaces, the veth pair, the cgroup and the fake DNS
    /// server (empty table). `probe_bin` is the lab-probe binary (in the
    /// integration tests of this package: `env!("CARGO_BIN_EXE_lab-probe")`).
    pub fn new(probe_bin: impl Into<PathBuf>) -> Self {
        require_root();
        let serial = lock(&SERIAL);
        let probe_bin = probe_bin.into();
        assert!(
            probe_bin.exists(),
            "lab-probe missing at {} (cargo build -p sdm-tests --bins)",
            probe_bin.display()
        );
        let agent_bin = agent_bin();
        let n = lab_number();
        let dir = TempDir::new("lab");
        let host = Netns::new("h");
        let net = Netns::new("n");
        wire(&host, &net, n);
        let dns = FakeDns::start(
            &net,
            SocketAddr::new(Ipv4Addr::new(10, 231, n, 2).into(), 53),
        );
        let cgroup = Cgroup::new("lab");
        let pins = Pins::new("lab");
        let log = dir.path().join("agent.log");
        Self {
            n,
            probe_bin,
            agent_bin,
            agent: None,
            last_run: None,
            log,
            servers: Servers::default(),
            dns,
            pins,
            cgroup,
            host,
            net,
            dir,
            unit_root: None,
            agent_wrapper: Vec::new(),
            _serial: serial,
        }
    }

    /// 10.231.N.1, the host side.
    pub fn host_ip(&self) -> IpAddr {
        Ipv4Addr::new(10, 231, self.n, 1).into()
    }

    /// `10.231.N.<last>` (2..=9), the net side.
    pub fn net_ip(&self, last: u8) -> IpAddr {
        assert!((2..=9).contains(&last), "the net side has .2 to .9");
        Ipv4Addr::new(10, 231, self.n, last).into()
    }

    /// `fd00:231:N::<last>` (2..=9), the net side.
    pub fn net_ip6(&self, last: u8) -> IpAddr {
        assert!((2..=9).contains(&last), "the net side has ::2 to ::9");
        Ipv6Addr::new(
            0xfd00,
            0x231,
            u16::from(self.n),
            0,
            0,
            0,
            0,
            u16::from(last),
        )
        .into()
    }

    /// The fake DNS server's address (10.231.N.2).
    pub fn dns_ip(&self) -> IpAddr {
        self.dns.addr.ip()
    }

    pub fn dns(&self) -> &FakeDns {
        &self.dns
    }

    /// Stops the fake DNS server, closing its sockets: the resolver went
    /// away (queries are refused, not just unanswered).
    pub fn dns_down(&self) {
        self.dns.shutdown();
    }

    /// Starts the fake DNS server again, with its table as it was.
    pub fn dns_up(&self) {
        self.dns.serve(&self.net);
    }

    /// Counts the TCP segments that arrive in the `net` namespace for each
    /// of `dsts` (IPv4), from now until the sniffer drops.
    pub fn sniff_tcp(&self, dsts: &[SocketAddr]) -> Sniffer {
        Sniffer::start(&self.net, libc::IPPROTO_TCP, dsts)
    }

    /// Counts the UDP datagrams that arrive in the `net` namespace for each
    /// of `dsts` (IPv4), from now until the sniffer drops.
    pub fn sniff_udp(&self, dsts: &[SocketAddr]) -> Sniffer {
        Sniffer::start(&self.net, libc::IPPROTO_UDP, dsts)
    }

    /// TCP servers in `net` ("ok\n", then echo) on these addresses, e.g.
    /// `[::]:443` for every address of the net side.
    pub fn serve_tcp(&self, addrs: &[SocketAddr]) {
        for a in addrs {
            self.servers.tcp(&self.net, *a);
        }
    }

    /// UDP echo servers in `net`. An unspecified address (`[::]:9000`)
    /// stands for every address of the net side, each bound on its own so
    /// that replies come from the address the datagram was sent to.
    pub fn serve_udp_echo(&self, addrs: &[SocketAddr]) {
        for a in addrs {
            if a.ip().is_unspecified() {
                for last in 2..=9 {
                    for ip in [self.net_ip(last), self.net_ip6(last)] {
                        self.servers
                            .udp_echo(&self.net, SocketAddr::new(ip, a.port()));
                    }
                }
            } else {
                self.servers.udp_echo(&self.net, *a);
            }
        }
    }

    fn probe_cmd(&self, ns: &Netns, cgroup: Option<&Cgroup>, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.probe_bin);
        cmd.arg("--netns").arg(ns.path());
        if let Some(cg) = cgroup {
            cmd.arg("--cgroup").arg(&cg.path);
        }
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    /// Runs a probe to completion in `ns` (and `cgroup`) and returns its
    /// JSON outcome.
    pub fn run_probe(&self, ns: &Netns, cgroup: Option<&Cgroup>, args: &[&str]) -> Value {
        let out = self
            .probe_cmd(ns, cgroup, args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.probe_bin.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "probe {args:?} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let last = stdout.lines().last().unwrap_or("");
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("probe {args:?}: bad output {stdout:?}: {e}"))
    }

    /// A probe in the host namespace and the lab's cgroup.
    pub fn probe(&self, args: &[&str]) -> Value {
        self.run_probe(&self.host, Some(&self.cgroup), args)
    }

    /// A probe in the host namespace, outside the lab's cgroup.
    pub fn probe_outside(&self, args: &[&str]) -> Value {
        self.run_probe(&self.host, None, args)
    }

    /// A probe in the `net` namespace (the internet's side).
    pub fn probe_from_net(&self, args: &[&str]) -> Value {
        self.run_probe(&self.net, None, args)
    }

    /// `tcp` from the cgroup: connect and read the greeting.
    pub fn tcp(&self, addr: SocketAddr, timeout_ms: u64) -> Value {
        self.probe(&["tcp", &addr.to_string(), &timeout_ms.to_string()])
    }

    /// `udp` from the cgroup: a datagram and its echo.
    pub fn udp(&self, addr: SocketAddr, timeout_ms: u64) -> Value {
        self.probe(&["udp", &addr.to_string(), &timeout_ms.to_string()])
    }

    /// Starts a long-running probe in the host namespace (in the cgroup
    /// unless `outside`).
    pub fn spawn_probe(&self, args: &[&str], outside: bool) -> BgProbe {
        let cg = (!outside).then_some(&self.cgroup);
        let mut child = self
            .probe_cmd(&self.host, cg, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.probe_bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        BgProbe {
            proc: Proc(child),
            lines: rx,
            what: format!("{args:?}"),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- lab {}: fake DNS: {} ----",
                self.n,
                self.dns.describe()
            );
            let status = self.agent_cmd(&["status", "--json"]);
            eprintln!(
                "---- lab {}: status --json at the failure ----\n{}{}",
                self.n,
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&status.stderr)
            );
            eprintln!(
                "---- lab {}: agent log ({}) ----\n{}---- end of the agent log ----",
                self.n,
                self.log.display(),
                self.agent_log()
            );
        }
        // The agent goes first; the fields then drop in order: servers and
        // DNS (threads joined), pins (detached), cgroup (processes killed,
        // removed), namespaces, directory, and the serialisation lock last.
        drop(self.agent.take());
    }
}

// ---------------------------------------------------------------------------
// Reading status and metrics
