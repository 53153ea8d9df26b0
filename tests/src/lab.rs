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
/// (target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>).
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

/// The result string of a probe outcome ("ok", "timeout", "eperm", ...).
pub fn result(v: &Value) -> &str {
    v["result"].as_str().unwrap_or("?")
}

/// Whether an outcome is what the enforcer does to a denied flow: dropped
/// packets (a timeout) or, at connect/sendto in enforce mode, EPERM.
pub fn denied(v: &Value) -> bool {
    matches!(result(v), "timeout" | "eperm")
}

// ---------------------------------------------------------------------------
// Fake DNS

/// How the fake DNS server treats queries, whatever the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsMode {
    /// Answers from the table; NXDOMAIN for unknown names.
    Answer,
    /// SERVFAIL to everything.
    ServFail,
    /// Reads queries and answers nothing.
    Silent,
}

/// What the fake DNS server answers for one name of its table (in
/// [`DnsMode::Answer`]), for A and AAAA queries alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// These addresses (A or AAAA records by family) with this TTL. Over
    /// UDP an answer longer than the query's EDNS payload size (512 bytes
    /// without EDNS) is truncated (TC set, no records), as real servers
    /// do; the full answer is served over TCP.
    Addrs(Vec<IpAddr>, u32),
    /// NXDOMAIN (with an SOA), although the name is in the table.
    NxDomain,
    /// NOERROR with no record at all: no answer, no SOA.
    Empty,
    /// SERVFAIL.
    ServFail,
    /// No reply: the client times out.
    Silent,
    /// A CNAME to another name, followed through the table as a recursive
    /// resolver would, each link in the answer, until a name with
    /// addresses or one already visited (a loop).
    Cname(String, u32),
}

#[derive(Default)]
struct DnsTable {
    records: HashMap<String, Answer>,
    /// Names answered with a new address every time: (IPv4 /24 base, IPv6
    /// /64 base, TTL, answers so far).
    rotating: HashMap<String, (Ipv4Addr, Ipv6Addr, u32, u64)>,
    queries: HashMap<String, u64>,
}

struct DnsShared {
    table: Mutex<DnsTable>,
    mode: Mutex<DnsMode>,
    total: AtomicU64,
    /// Queries that came over TCP.
    tcp: AtomicU64,
    /// UDP replies sent truncated.
    truncated: AtomicU64,
}

/// The sockets and threads of a running server.
struct DnsRun {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// An authoritative-for-everything DNS server on UDP and TCP port 53 of
/// one address in the `net` namespace, answering A and AAAA queries from a
/// table the test may change at any time. It can be stopped (its sockets
/// closed: the resolver went away) and started again.
pub struct FakeDns {
    pub addr: SocketAddr,
    shared: Arc<DnsShared>,
    run: Mutex<Option<DnsRun>>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl FakeDns {
    fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let dns = Self {
            addr,
            shared: Arc::new(DnsShared {
                table: Mutex::new(DnsTable::default()),
                mode: Mutex::new(DnsMode::Answer),
                total: AtomicU64::new(0),
                tcp: AtomicU64::new(0),
                truncated: AtomicU64::new(0),
            }),
            run: Mutex::new(None),
        };
        dns.serve(ns);
        dns
    }

    /// Opens the sockets (in `ns`) and starts answering; a no-op while
    /// running.
    fn serve(&self, ns: &Netns) {
        let mut run = lock(&self.run);
        if run.is_some() {
            return;
        }
        let addr = self.addr;
        let (udp, tcp) = {
            let _in = ns.enter();
            (
                UdpSocket::bind(addr).unwrap_or_else(|e| panic!("fake DNS: bind udp {addr}: {e}")),
                TcpListener::bind(addr)
                    .unwrap_or_else(|e| panic!("fake DNS: bind tcp {addr}: {e}")),
            )
        };
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp timeout");
        tcp.set_nonblocking(true).expect("tcp nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (self.shared.clone(), stop.clone());
        let t_udp = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = dns_reply(&s, &buf[..n], true) {
                    let _ = udp.send_to(&reply, from);
                }
            }
        });
        let (s, st) = (self.shared.clone(), stop.clone());
        let t_tcp = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((conn, _)) => dns_tcp_conn(&s, conn, &st),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        *run = Some(DnsRun {
            stop,
            threads: vec![t_udp, t_tcp],
        });
    }

    /// Closes the sockets: queries are refused (ICMP port unreachable,
    /// TCP reset) until [`Lab::dns_up`].
    fn shutdown(&self) {
        if let Some(run) = lock(&self.run).take() {
            run.stop.store(true, Ordering::Relaxed);
            for t in run.threads {
                let _ = t.join();
            }
        }
    }

    /// Answers `name` with `addrs` (A and AAAA by family) and this TTL.
    pub fn set(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        self.set_answer(name, Answer::Addrs(addrs.to_vec(), ttl));
    }

    /// Answers `name` so.
    pub fn set_answer(&self, name: &str, answer: Answer) {
        lock(&self.shared.table)
            .records
            .insert(normalize(name), answer);
    }

    /// Answers `name` with a new address on every answer: the next of
    /// `v4`'s /24 (A) or of `v6`'s /64 (AAAA), with this TTL.
    pub fn rotate(&self, name: &str, v4: Ipv4Addr, v6: Ipv6Addr, ttl: u32) {
        lock(&self.shared.table)
            .rotating
            .insert(normalize(name), (v4, v6, ttl, 0));
    }

    /// Makes `name` unknown (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        lock(&self.shared.table).records.remove(&normalize(name));
    }

    pub fn set_mode(&self, mode: DnsMode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Queries received, in total.
    pub fn queries(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Queries received over TCP.
    pub fn tcp_queries(&self) -> u64 {
        self.shared.tcp.load(Ordering::Relaxed)
    }

    /// UDP replies sent truncated (TC set) because they were too long.
    pub fn truncated(&self) -> u64 {
        self.shared.truncated.load(Ordering::Relaxed)
    }

    /// Queries received for one name (any type).
    pub fn queries_for(&self, name: &str) -> u64 {
        lock(&self.shared.table)
            .queries
            .get(&normalize(name))
            .copied()
            .unwrap_or(0)
    }

    /// The table and query counts, for failure messages (long answers are
    /// summarised).
    pub fn describe(&self) -> String {
        let t = lock(&self.shared.table);
        let records: Vec<String> = t
            .records
            .iter()
            .map(|(n, a)| match a {
                Answer::Addrs(v, ttl) if v.len() > 8 => {
                    format!("{n}: {} addresses (ttl {ttl})", v.len())
                }
                a => format!("{n}: {a:?}"),
            })
            .collect();
        format!(
            "mode {:?}, {} queries ({} over TCP, {} UDP replies truncated), running {}; \
             records {records:?}; queries by name {:?}",
            *lock(&self.shared.mode),
            self.queries(),
            self.tcp_queries(),
            self.truncated(),
            lock(&self.run).is_some(),
            t.queries
        )
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn soa() -> Record {
    let root = Name::root();
    let mname = Name::from_ascii("ns.lab.test.").expect("name");
    let rname = Name::from_ascii("hostmaster.lab.test.").expect("name");
    Record::from_rdata(
        root,
        1,
        RData::SOA(SOA::new(mname, rname, 1, 60, 60, 60, 1)),
    )
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{name}.")).unwrap_or_else(|e| panic!("fake DNS: name {name}: {e}"))
}

/// A CNAME chain: (owner, target, ttl) per link.
type CnameChain = Vec<(String, String, u32)>;

/// What the table answers for `name`: the entry at the end of its CNAME
/// chain (None at a loop or an unknown name) and the chain; a rotating
/// name answers its next addresses.
fn lookup(s: &DnsShared, name: &str) -> (Option<(String, Answer)>, CnameChain) {
    let name = name.to_owned();
    let mut t = lock(&s.table);
    *t.queries.entry(name.clone()).or_default() += 1;
    if let Some((v4, v6, ttl, n)) = t.rotating.get_mut(&name) {
        *n += 1;
        let o = v4.octets();
        let a4 = Ipv4Addr::new(o[0], o[1], o[2], (1 + (*n - 1) % 254) as u8);
        let a6 = Ipv6Addr::from(u128::from(*v6) + u128::from(*n));
        let answer = Answer::Addrs(vec![IpAddr::V4(a4), IpAddr::V6(a6)], *ttl);
        (Some((name.clone(), answer)), Vec::new())
    } else {
        // Follow CNAMEs through the table, stopping at a loop.
        let mut chain: Vec<(String, String, u32)> = Vec::new();
        let mut at = name.clone();
        let mut seen = std::collections::HashSet::from([name.clone()]);
        let entry = loop {
            match t.records.get(&at).cloned() {
                Some(Answer::Cname(target, ttl)) => {
                    let target = normalize(&target);
                    chain.push((at.clone(), target.clone(), ttl));
                    if !seen.insert(target.clone()) {
                        break None;
                    }
                    at = target;
                }
                other => break other.map(|a| (at.clone(), a)),
            }
        };
        (entry, chain)
    }
}

/// The reply to one DNS message, or None to stay silent. `udp`: a reply
/// longer than the query allows is sent truncated.
fn dns_reply(s: &DnsShared, query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let q = req.queries.first()?.clone();
    let name = normalize(&q.name.to_ascii());
    s.total.fetch_add(1, Ordering::Relaxed);
    if !udp {
        s.tcp.fetch_add(1, Ordering::Relaxed);
    }
    let (entry, chain) = lookup(s, &name);
    let mode = *lock(&s.mode);
    if mode == DnsMode::Silent || matches!(entry, Some((_, Answer::Silent))) {
        return None;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    if mode == DnsMode::ServFail || matches!(entry, Some((_, Answer::ServFail))) {
        resp.metadata.response_code = ResponseCode::ServFail;
        return resp.to_vec().ok();
    }
    resp.metadata.authoritative = true;
    for (owner, target, ttl) in &chain {
        resp.add_answer(Record::from_rdata(
            fqdn(owner),
            *ttl,
            RData::CNAME(CNAME(fqdn(target))),
        ));
    }
    match entry {
        // The end of a CNAME loop: the chain is all there is.
        None if !chain.is_empty() => {}
        None | Some((_, Answer::NxDomain)) => {
            resp.metadata.response_code = ResponseCode::NXDomain;
            resp.add_authority(soa());
        }
        Some((_, Answer::Empty)) => {}
        Some((owner, Answer::Addrs(addrs, ttl))) => {
            let before = resp.answers.len();
            for a in addrs {
                let rdata = match (a, q.query_type) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(fqdn(&owner), ttl, rdata));
            }
            if resp.answers.len() == before {
                // NODATA: the name exists, without records of this type.
                resp.add_authority(soa());
            }
        }
        Some((_, Answer::ServFail | Answer::Silent | Answer::Cname(..))) => {
            unreachable!("handled above")
        }
    }
    let bytes = resp.to_vec().ok()?;
    if udp && bytes.len() > usize::from(req.max_payload()) {
        s.truncated.fetch_add(1, Ordering::Relaxed);
        let mut tc = resp.truncate();
        tc.edns = None;
        return tc.to_vec().ok();
    }
    Some(bytes)
}

/// DNS over TCP: two-byte length prefixes, several queries per connection.
fn dns_tcp_conn(s: &DnsShared, mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    while !stop.load(Ordering::Relaxed) {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if conn.read_exact(&mut msg).is_err() {
            return;
        }
        let Some(reply) = dns_reply(s, &msg, false) else {
            continue;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = n.to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if conn.write_all(&out).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Servers in the `net` namespace

/// TCP servers that greet every connection with "ok\n" and then echo what
/// they receive until the client closes, and UDP echo servers.
#[derive(Default)]
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Servers {
    fn tcp(&self, ns: &Netns, addr: SocketAddr) {
        let listener = {
            let _in = ns.enter();
            reuseport_listener(addr)
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = self.stop.clone();
        let threads = self.threads.clone();
        let t = std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let stop = stop.clone();
                        let h = std::thread::spawn(move || tcp_conn(conn, &stop));
                        lock(&threads).push(h);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        lock(&self.threads).push(t);
    }

    fn udp_echo(&self, ns: &Netns, addr: SocketAddr) {
        let sock = {
            let _in = ns.enter();
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"))
        };
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp timeout");
        let stop = self.stop.clone();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        lock(&self.threads).push(t);
    }
}

fn tcp_conn(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    if conn.write_all(b"ok\n").is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Connection threads are added by the accept threads: drain until
        // nothing is left.
        loop {
            let batch: Vec<JoinHandle<()>> = lock(&self.threads).drain(..).collect();
            if batch.is_empty() {
                break;
            }
            for t in batch {
                let _ = t.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Probes

/// Checks `tcp-watch` probes once their stop file is written: each made at
/// least 50 attempts, every attempt to an allowed address (`true`)
/// connected, and every attempt to a denied one was refused (EPERM) or
/// timed out, across `what` (e.g. "20 kills").
pub fn assert_watches_held(probes: &mut [(SocketAddr, bool, BgProbe)], what: &str) {
    for (addr, ok, p) in probes {
        let v = p.line(Duration::from_secs(15));
        let counts = watch_outcomes(&v);
        let attempts = v["attempts"].as_u64().unwrap_or(0);
        eprintln!("tcp-watch {addr} (allowed: {ok}): {counts:?}");
        assert!(attempts >= 50, "{addr}: only {attempts} attempts: {v}");
        if *ok {
            assert_eq!(
                counts.keys().collect::<Vec<_>>(),
                ["ok"],
                "allowed {addr}: connections failed across {what}: {v}"
            );
        } else {
            assert!(
                counts.keys().all(|k| k == "eperm" || k == "timeout"),
                "denied {addr}: an outcome other than eperm or timeout across {what}: {v}"
            );
        }
    }
}

/// The outcome counts of a finished `tcp-watch`.
pub fn watch_outcomes(v: &Value) -> std::collections::BTreeMap<String, u64> {
    v["outcomes"]
        .as_object()
        .unwrap_or_else(|| panic!("tcp-watch: no outcomes in {v}"))
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect()
}

/// A probe running in the background (listen-tcp, tcp-hold, tcp-loop): its
/// output lines arrive as JSON values. Killed on drop.
pub struct BgProbe {
    proc: Proc,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl BgProbe {
    /// The next output line, parsed; panics after `timeout`.
    pub fn line(&mut self, timeout: Duration) -> Value {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => serde_json::from_str(&l)
                .unwrap_or_else(|e| panic!("probe {}: bad output {l:?}: {e}", self.what)),
            Err(e) => {
                let status = self.proc.0.try_wait();
                let mut err = String::new();
                if let Some(s) = self.proc.0.stderr.as_mut() {
                    if matches!(status, Ok(Some(_))) {
                        let _ = s.read_to_string(&mut err);
                    }
                }
                panic!(
                    "probe {}: no output line within {timeout:?} ({e}); status {status:?}; stderr: {err}",
                    self.what
                )
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

// ---------------------------------------------------------------------------
// Watching the wire

/// A raw socket in the `net` namespace that sees a copy of every TCP
/// segment (or UDP datagram) arriving there, and counts those sent to
/// chosen IPv4 destinations: proof that a denied packet never left the
/// host, whatever the client saw.
pub struct Sniffer {
    counts: Arc<Mutex<HashMap<SocketAddr, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sniffer {
    /// `proto`: `libc::IPPROTO_TCP` or `libc::IPPROTO_UDP` (both carry the
    /// destination port in the transport header's bytes 2 and 3).
    fn start(ns: &Netns, proto: libc::c_int, dsts: &[SocketAddr]) -> Self {
        assert!(
            proto == libc::IPPROTO_TCP || proto == libc::IPPROTO_UDP,
            "the sniffer reads TCP or UDP ports, not protocol {proto}"
        );
        for d in dsts {
            assert!(d.is_ipv4(), "the sniffer counts IPv4 only: {d}");
        }
        let fd = {
            let _in = ns.enter();
            // SAFETY: plain socket(2); the fd is owned at once below.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, proto) }
        };
        assert!(
            fd >= 0,
            "raw TCP socket in {}: {}",
            ns.name,
            io::Error::last_os_error()
        );
        // SAFETY: a new fd we own.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: setsockopt with a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
        let counts: Arc<Mutex<HashMap<SocketAddr, u64>>> =
            Arc::new(Mutex::new(dsts.iter().map(|d| (*d, 0)).collect()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (counts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                // SAFETY: recv into a buffer of the length given.
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else { continue };
                let pkt = &buf[..n];
                let ihl = usize::from(pkt.first().map_or(0, |b| b & 0x0f)) * 4;
                if ihl < 20 || pkt.len() < ihl + 4 {
                    continue;
                }
                let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
                let port = u16::from_be_bytes([pkt[ihl + 2], pkt[ihl + 3]]);
                if let Some(n) = lock(&c).get_mut(&SocketAddr::new(dst.into(), port)) {
                    *n += 1;
                }
            }
        });
        Self {
            counts,
            stop,
            thread: Some(thread),
        }
    }

    /// Segments (datagrams) seen so far for `dst`.
    pub fn count(&self, dst: SocketAddr) -> u64 {
        *lock(&self.counts)
            .get(&dst)
            .unwrap_or_else(|| panic!("the sniffer does not watch {dst}"))
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

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

    /// 10.231.N.<last> (2..=9), the net side.
    pub fn net_ip(&self, last: u8) -> IpAddr {
        assert!((2..=9).contains(&last), "the net side has .2 to .9");
        Ipv4Addr::new(10, 231, self.n, last).into()
    }

    /// fd00:231:N::<last> (2..=9), the net side.
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

    /// Writes a config file into the lab's directory and returns its path.
    pub fn write_config(&self, name: &str, c: &AgentConfig) -> PathBuf {
        let text = self.config_text(c);
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// The text [`Lab::write_config`] writes.
    pub fn config_text(&self, c: &AgentConfig) -> String {
        let state = self.dir.path().join("state");
        let audit = self.dir.path().join("audit.jsonl");
        format!(
            "# sdm-egress lab {n}\n\
             cgroup = \"{cg}\"\n\
             {top}\n\
             \n\
             [dns]\n\
             servers = [\"{dns}\"]\n\
             {dns_extra}\n\
             \n\
             [http]\n\
             listen = \"{listen}\"\n\
             \n\
             [state]\n\
             dir = \"{state}\"\n\
             \n\
             [audit]\n\
             log = \"{audit}\"\n\
             \n\
             {tables}\n",
            n = self.n,
            cg = self.cgroup.path.display(),
            top = c.top.trim(),
            dns = self.dns_ip(),
            dns_extra = c.dns.trim(),
            listen = AGENT_LISTEN,
            state = state.display(),
            audit = audit.display(),
            tables = c.tables.trim(),
        )
    }

    /// `sdm-agent --pin-root .. --run-dir .. <args>`, run to completion
    /// (outside any namespace: these commands only touch pins and files).
    pub fn agent_cmd(&self, args: &[&str]) -> Output {
        self.agent_command()
            .arg("--pin-root")
            .arg(&self.pins.layout.pin_root)
            .arg("--run-dir")
            .arg(&self.pins.layout.run_dir)
            .args(self.unit_root_args())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.agent_bin.display()))
    }

    /// The agent binary, under [`Lab::agent_wrapper`] if there is one.
    fn agent_command(&self) -> Command {
        match self.agent_wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.agent_bin);
                cmd
            }
            None => Command::new(&self.agent_bin),
        }
    }

    fn unit_root_args(&self) -> Vec<std::ffi::OsString> {
        match &self.unit_root {
            Some(r) => vec!["--unit-root".into(), r.clone().into_os_string()],
            None => vec![],
        }
    }

    /// Like [`Lab::agent_cmd`], panicking (with the agent's log) unless it
    /// succeeds; returns stdout.
    pub fn agent_ok(&self, args: &[&str]) -> String {
        let out = self.agent_cmd(args);
        assert!(
            out.status.success(),
            "sdm-agent {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sdm-agent status --json`.
    pub fn status(&self) -> Value {
        let out = self.agent_ok(&["status", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
    }

    /// `sdm-agent <args>` run to completion in the lab's host namespace
    /// (commands that look at its interfaces: `check`, `detach`).
    pub fn agent_cmd_in_host(&self, args: &[&str]) -> Output {
        self.agent_in_host(args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.agent_bin.display()))
    }

    /// `sdm-agent --pin-root .. --run-dir .. <args>`, to be started in the
    /// lab's host namespace. Only the network namespace is entered (`ip
    /// netns exec` would also remount /sys and hide bpffs and cgroup2).
    fn agent_in_host(&self, args: &[&str]) -> Command {
        let netns = fs::File::open(self.host.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.host.path().display()));
        let mut cmd = self.agent_command();
        cmd.arg("--pin-root")
            .arg(&self.pins.layout.pin_root)
            .arg("--run-dir")
            .arg(&self.pins.layout.run_dir)
            .args(self.unit_root_args())
            .args(args)
            .stdin(Stdio::null());
        // SAFETY: setns is async-signal-safe; the closure owns the file, so
        // its fd stays open until the Command is dropped (it is CLOEXEC:
        // the agent does not inherit it).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Starts `sdm-agent <args>` in the host namespace with stdout and
    /// stderr piped, for commands expected to exit on their own (a `run`
    /// with a bad config); the caller waits.
    pub fn spawn_agent_oneshot(&self, args: &[&str]) -> Proc {
        let child = self
            .agent_in_host(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.agent_bin.display()));
        Proc(child)
    }

    /// Starts `sdm-agent run --config <config>` in the host namespace and
    /// waits until its status shows a policy (generation > 0), `mode`, and
    /// addresses for every name in `hosts`.
    pub fn start_agent(&mut self, config: &Path, mode: &str, hosts: &[&str]) {
        self.spawn_agent(config, mode, hosts);
        self.wait_ready(mode, hosts);
    }

    /// Starts `sdm-agent run --config <config>` like [`Lab::start_agent`],
    /// without waiting for it to be ready (it may be waiting for its target
    /// cgroup); [`Lab::wait_ready`] waits.
    pub fn spawn_agent(&mut self, config: &Path, mode: &str, hosts: &[&str]) {
        self.spawn_agent_with(config, &[], mode, hosts);
    }

    /// [`Lab::start_agent`] with `extra` arguments after `run --config
    /// <config>` (e.g. `--object <path>`); [`Lab::restart_agent`] repeats
    /// them.
    pub fn start_agent_with(&mut self, config: &Path, extra: &[&str], mode: &str, hosts: &[&str]) {
        self.spawn_agent_with(config, extra, mode, hosts);
        self.wait_ready(mode, hosts);
    }

    /// [`Lab::spawn_agent`] with `extra` arguments after `run --config
    /// <config>`.
    pub fn spawn_agent_with(&mut self, config: &Path, extra: &[&str], mode: &str, hosts: &[&str]) {
        assert!(self.agent.is_none(), "the agent is already running");
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let _ = writeln!(
            log,
            "==== lab: sdm-agent run --config {} {} ====",
            config.display(),
            extra.join(" ")
        );
        let config_arg = config.display().to_string();
        let mut args = vec!["run", "--config", &config_arg];
        args.extend_from_slice(extra);
        let child = self
            .agent_in_host(&args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("clone the log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.agent_bin.display()));
        self.agent = Some(Proc(child));
        self.last_run = Some(AgentRun {
            config: config.to_owned(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            mode: mode.to_owned(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        });
    }

    /// Waits until the agent's status shows a policy (generation > 0),
    /// `mode`, and addresses for every name in `hosts`.
    pub fn wait_ready(&mut self, mode: &str, hosts: &[&str]) {
        let start = Instant::now();
        loop {
            if let Some(p) = self.agent.as_mut() {
                if let Ok(Some(st)) = p.0.try_wait() {
                    panic!("the agent exited ({st}) before it was ready (its log follows)");
                }
            }
            let out = self.agent_cmd(&["status", "--json"]);
            let last = if out.status.success() {
                match serde_json::from_slice::<Value>(&out.stdout) {
                    Ok(s) => {
                        let missing: Vec<&str> = hosts
                            .iter()
                            .copied()
                            .filter(|h| dns_addresses(&s, h).is_empty())
                            .collect();
                        // This agent, not the pins a previous one left
                        // (which already show a policy and the mode).
                        let ours = s["agent_pid"].as_u64().map(|p| p as u32) == self.agent_pid();
                        if s["generation"].as_u64().unwrap_or(0) > 0
                            && s["mode"] == mode
                            && missing.is_empty()
                            && ours
                        {
                            return;
                        }
                        format!(
                            "generation {}, mode {}, agent pid {} (ours: {ours}), unresolved {missing:?}{}",
                            s["generation"],
                            s["mode"],
                            s["agent_pid"],
                            if s["cgroup"].is_null() {
                                " (no attach record yet: the programs are not attached)"
                            } else {
                                ""
                            }
                        )
                    }
                    Err(e) => format!("bad status json: {e}"),
                }
            } else {
                String::from_utf8_lossy(&out.stderr).into_owned()
            };
            let ready_timeout = ready_timeout();
            if start.elapsed() > ready_timeout {
                // Give a stuck agent a while to exit with its error (a
                // verifier rejection can take long), so the log says why.
                let exited = self.agent.as_mut().and_then(|p| {
                    let until = Instant::now() + EXIT_GRACE;
                    while Instant::now() < until {
                        if let Ok(Some(st)) = p.0.try_wait() {
                            return Some(st);
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    None
                });
                panic!(
                    "the agent was not ready (mode {mode}, hosts {hosts:?}) within \
                     {ready_timeout:?}: {last}; {} (its log follows)",
                    match exited {
                        Some(st) => format!("it exited ({st}) later"),
                        None => format!("still running {EXIT_GRACE:?} later"),
                    },
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's pid, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|p| p.0.id())
    }

    /// kill -9 the agent and reap it.
    pub fn kill_agent(&mut self) {
        let mut p = self.agent.take().expect("no agent is running");
        p.0.kill().expect("kill -9 the agent");
        let st = p.0.wait().expect("reap the agent");
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .and_then(|mut f| writeln!(f, "==== lab: killed the agent (SIGKILL): {st} ===="));
    }

    /// Starts the agent again with the config, arguments, mode and hosts of
    /// the last start.
    pub fn restart_agent(&mut self) {
        let run = self.last_run.take().expect("the agent never ran");
        let hosts: Vec<&str> = run.hosts.iter().map(String::as_str).collect();
        let extra: Vec<&str> = run.extra.iter().map(String::as_str).collect();
        self.start_agent_with(&run.config, &extra, &run.mode, &hosts);
    }

    /// Everything the agent wrote, across restarts.
    pub fn agent_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Stops the agent with SIGTERM (a clean shutdown) and reaps it.
    pub fn stop_agent(&mut self) {
        let mut p = self.agent.take().expect("no agent is running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(15);
        let st = loop {
            match p.0.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
                other => panic!("the agent did not exit within 15 s of SIGTERM: {other:?}"),
            }
        };
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .and_then(|mut f| writeln!(f, "==== lab: stopped the agent (SIGTERM): {st} ===="));
        assert!(st.success(), "the agent exited with {st} on SIGTERM");
    }

    /// CPU time the running agent has used so far (user + system).
    pub fn agent_cpu(&self) -> Duration {
        let pid = self.agent_pid().expect("no agent is running");
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
        // Fields after the command name, which is in parentheses and may
        // hold spaces: utime and stime are fields 14 and 15 (1-based).
        let rest = &stat[stat.rfind(')').expect("comm in /proc/pid/stat") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// The running agent's resident memory in bytes.
    pub fn agent_rss(&self) -> u64 {
        let pid = self.agent_pid().expect("no agent is running");
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
        kb * 1024
    }

    /// GET `path` from the agent's HTTP server, over loopback inside the
    /// host namespace, with optional extra header lines; returns the status
    /// code and the body.
    pub fn http_get_with(&self, path: &str, headers: &[&str]) -> (u16, String) {
        let addr: SocketAddr = AGENT_LISTEN.parse().expect("listen address");
        let mut conn = {
            let _in = self.host.enter();
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connect to the agent's {addr}: {e}"))
        };
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        conn.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("send GET {path}: {e}"));
        let mut resp = String::new();
        conn.read_to_string(&mut resp)
            .unwrap_or_else(|e| panic!("read GET {path}: {e}"));
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP header end in {resp:?}"));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {head:?}"));
        (code, body.to_owned())
    }

    /// GET `path`, which must answer 200; returns the body.
    pub fn http_get(&self, path: &str) -> String {
        let (code, body) = self.http_get_with(path, &[]);
        assert_eq!(code, 200, "GET {path}: {body}");
        body
    }

    /// GET /metrics from the agent, over loopback inside the host namespace.
    pub fn metrics(&self) -> String {
        self.http_get("/metrics")
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

/// The `dns` entry of a hostname in `status --json`: its addresses.
pub fn dns_addresses(status: &Value, host: &str) -> Vec<String> {
    status["dns"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["hostname"] == host)
        .and_then(|d| d["addresses"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The `dns` entry's failure count of a hostname.
pub fn dns_failures(status: &Value, host: &str) -> u64 {
    status["dns"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["hostname"] == host)
        .and_then(|d| d["failures"].as_u64())
        .unwrap_or_else(|| panic!("no dns entry for {host} in {status}"))
}

/// The rule called `name` in `status --json`.
pub fn rule<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| {
            let names: Vec<&Value> = status["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| &r["name"])
                .collect();
            panic!("no rule {name} in status; rules: {names:?}")
        })
}

/// Packets a rule allowed in one direction ("egress" | "ingress").
pub fn rule_packets(status: &Value, name: &str, dir: &str) -> u64 {
    rule(status, name)[dir]["packets"].as_u64().unwrap_or(0)
}

/// Denied packets for (mode, direction, reason).
pub fn denied_packets(status: &Value, mode: &str, dir: &str, reason: &str) -> u64 {
    denied_field(status, mode, dir, reason, "packets")
}

/// Denied bytes for (mode, direction, reason): a send refused by a socket
/// hook counts a packet of no bytes, the packet programs count each
/// packet's length.
pub fn denied_bytes(status: &Value, mode: &str, dir: &str, reason: &str) -> u64 {
    denied_field(status, mode, dir, reason, "bytes")
}

fn denied_field(status: &Value, mode: &str, dir: &str, reason: &str, field: &str) -> u64 {
    status["denied"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["mode"] == mode && d["direction"] == dir && d["reason"] == reason)
        .filter_map(|d| d[field].as_u64())
        .sum()
}

/// The sum of the samples of a Prometheus metric whose labels include all
/// of `labels`; None when no sample matches.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else {
                continue;
            };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let have = parse_labels(label_text);
        if !labels
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        {
            continue;
        }
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, r)) = rest.split_once("=\"") {
        let mut val = String::new();
        let mut chars = r.char_indices();
        let mut end = r.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((k.trim_start_matches(',').trim().to_owned(), val));
        rest = &r[end..];
    }
    out
}

/// A listener with SO_REUSEPORT, so that a test may also connect *from*
/// the served port (an allowed remote's service port as a source port: see
/// `tcp-from` in lab-probe).
fn reuseport_listener(addr: SocketAddr) -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .unwrap_or_else(|e| panic!("tcp socket for {addr}: {e}"));
    sock.set_reuse_address(true)
        .and_then(|()| sock.set_reuse_port(true))
        .unwrap_or_else(|e| panic!("SO_REUSEPORT on {addr}: {e}"));
    if addr.is_ipv6() {
        // As std's listener: a wildcard IPv6 listener also takes IPv4.
        let _ = sock.set_only_v6(false);
    }
    sock.bind(&addr.into())
        .and_then(|()| sock.listen(128))
        .unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
    sock.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_are_matched_by_labels() {
        let text = "# HELP x\n\
                    sdm_rule_packets_total{rule=\"gateway/egress/app\",direction=\"egress\",verdict=\"allow\"} 12\n\
                    sdm_rule_packets_total{rule=\"gateway/egress/app\",direction=\"ingress\",verdict=\"allow\"} 10\n\
                    sdm_mode{mode=\"enforce\"} 1\n\
                    sdm_up 1\n";
        assert_eq!(
            metric(
                text,
                "sdm_rule_packets_total",
                &[("rule", "gateway/egress/app"), ("direction", "egress")]
            ),
            Some(12.0)
        );
        assert_eq!(
            metric(
                text,
                "sdm_rule_packets_total",
                &[("rule", "gateway/egress/app")]
            ),
            Some(22.0)
        );
        assert_eq!(metric(text, "sdm_mode", &[("mode", "enforce")]), Some(1.0));
        assert_eq!(metric(text, "sdm_mode", &[("mode", "audit")]), None);
        assert_eq!(metric(text, "sdm_up", &[]), Some(1.0));
        assert_eq!(metric(text, "sdm_rule", &[]), None);
    }
}
