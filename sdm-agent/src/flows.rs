//! Denied flows: the kernel's deny events ([`Event`]) aggregated by
//! (direction, protocol, remote address, port, process, verdict), named by
//! the hostname the agent resolved the address from, written once as a JSON
//! line to the audit log when new, and handed in batches to the store
//! ([`crate::flows::store`]), which is the source of truth. The in-memory table is
//! bounded ([`DEFAULT_CAPACITY`]) and only serves the dashboard when the
//! store is unavailable, and decides which flows are new.
//!
//! Also here: [`suggest`], which turns flows seen in audit mode into
//! `[[allow]]` / `[[resource]]` config.

pub mod events;
pub mod store;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    flows::events::Event,
    flows::store::StoreHandle,
    policy::config::{AuditConfig, Config, Role, MAX_NAME_LEN},
    policy::{Direction, Policy, Proto, Target},
};

/// Most flows kept in memory; the least recently seen go first.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// A flow not seen for this long is logged again when it comes back.
pub const DEFAULT_RELOG_AFTER: Duration = Duration::from_secs(3600);
/// The store gets a batch at least this often...
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// ... or after this many events, whichever comes first.
pub const DEFAULT_FLUSH_EVENTS: usize = 500;
/// Capacity of the channel from the ring buffer reader to the pipeline.
pub const EVENT_CHANNEL_CAPACITY: usize = 8192;

/// Reverse DNS of the allowlist: address -> the hostnames of the policy
/// that resolved to it. Kept current by the agent from the resolver.
pub type HostnameIndex = Arc<RwLock<BTreeMap<IpAddr, Vec<String>>>>;

/// Builds a [`HostnameIndex`]'s contents from `(hostname, addresses)` pairs,
/// e.g. `resolver.hosts().iter().map(|(h, s)| (h.as_str(), s.addresses()))`.
/// The names of an address come out sorted, without duplicates.
pub fn index_from<'a>(
    resolver_hosts: impl Iterator<Item = (&'a str, &'a [IpAddr])>,
) -> BTreeMap<IpAddr, Vec<String>> {
    let mut out: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for (host, addrs) in resolver_hosts {
        for a in addrs {
            let names = out.entry(a.to_canonical()).or_default();
            if !names.iter().any(|n| n == host) {
                names.push(host.to_string());
            }
        }
    }
    for names in out.values_mut() {
        names.sort();
    }
    out
}

/// The hostname an address was resolved from, if the agent knows one.
pub fn hostname_of(index: &HostnameIndex, ip: IpAddr) -> Option<String> {
    let index = index.read().ok()?;
    index
        .get(&ip.to_canonical())
        .and_then(|names| names.first().cloned())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// RFC 3339 UTC time with milliseconds: `2026-05-01T12:00:00.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// What a flow is aggregated by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlowKey {
    /// "egress" | "ingress".
    pub direction: String,
    /// "tcp" | "udp" | "icmp" | "icmpv6" | a protocol number.
    pub proto: String,
    /// The other end: the destination of egress, the source of ingress.
    pub remote: IpAddr,
    /// The remote port for egress, the local port for ingress; the ICMP
    /// type for ICMP.
    pub port: u16,
    /// The process name; empty when unknown.
    pub comm: String,
    /// "dropped" (enforce) | "audit" (would have been dropped).
    pub verdict: String,
}

impl FlowKey {
    pub fn of(e: &Event) -> Self {
        Self {
            direction: e.direction.to_string(),
            proto: e.proto.clone(),
            remote: e.remote.to_canonical(),
            port: if e.direction == "ingress" {
                e.local_port
            } else {
                e.remote_port
            },
            comm: e.comm.clone(),
            verdict: e.verdict.to_string(),
        }
    }
}

/// One aggregated flow, as stored, served by `/api/flows` and printed by
/// `sdm-agent flows --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    #[serde(flatten)]
    pub key: FlowKey,
    /// The hostname the remote address was resolved from, when known.
    pub hostname: Option<String>,
    /// Why it was denied: `no_rule`, `malformed`, `fragment`, `unknown_protocol`.
    pub reason: String,
    /// The local address of the last event.
    pub local: Option<IpAddr>,
    /// The last process seen (0: unknown).
    pub pid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    /// Unix milliseconds.
    pub first_seen: u64,
    /// Unix milliseconds.
    pub last_seen: u64,
    /// Packets denied.
    pub count: u64,
}

impl Flow {
    /// The flow one event stands for (`hostname`: what the remote address
    /// was resolved from, if known).
    pub fn from_event(e: &Event, hostname: Option<String>) -> Self {
        let t = unix_ms(e.time);
        Self {
            key: FlowKey::of(e),
            hostname,
            reason: e.reason.to_string(),
            local: Some(e.local.to_canonical()),
            pid: e.pid,
            uid: e.uid,
            cgroup_id: e.cgroup_id,
            first_seen: t,
            last_seen: t,
            count: e.packets.max(1),
        }
    }

    /// Folds a later observation of the same flow into this one.
    pub fn merge(&mut self, other: &Flow) {
        if other.last_seen >= self.last_seen {
            self.reason.clone_from(&other.reason);
            self.local = other.local.or(self.local);
            self.pid = other.pid;
            self.uid = other.uid;
            self.cgroup_id = other.cgroup_id;
        }
        if other.hostname.is_some() {
            self.hostname.clone_from(&other.hostname);
        }
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
        self.count = self.count.saturating_add(other.count);
    }

    /// Whether the flow matches a query's filters (not its limit).
    pub fn matches(&self, q: &FlowQuery) -> bool {
        self.last_seen >= q.since_ms
            && q.direction
                .as_deref()
                .is_none_or(|d| d == self.key.direction)
            && q.verdict.as_deref().is_none_or(|v| v == self.key.verdict)
    }
}

/// A selection of flows: seen since, direction, verdict; newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowQuery {
    /// Flows last seen at or after this (Unix milliseconds).
    pub since_ms: u64,
    pub direction: Option<String>,
    pub verdict: Option<String>,
    pub limit: usize,
}

impl FlowQuery {
    /// Flows seen within `window` of now.
    pub fn within(window: Duration) -> Self {
        Self {
            since_ms: now_ms()
                .saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX)),
            direction: None,
            verdict: None,
            limit: usize::MAX,
        }
    }
}

/// The JSON line written to the audit log for each new flow.
#[derive(Serialize)]
struct AuditLine<'a> {
    time: String,
    event: &'static str,
    direction: &'a str,
    proto: &'a str,
    remote: IpAddr,
    port: u16,
    hostname: Option<&'a str>,
    comm: &'a str,
    pid: u32,
    uid: u32,
    cgroup_id: u64,
    verdict: &'a str,
    reason: &'a str,
    local: IpAddr,
    local_port: u16,
    remote_port: u16,
    packets: u64,
}

/// One JSON line (without the newline) for a new flow, from the event that
/// revealed it.
pub fn audit_line(e: &Event, hostname: Option<&str>) -> String {
    let line = AuditLine {
        time: rfc3339(unix_ms(e.time)),
        event: "denied_flow",
        direction: e.direction,
        proto: &e.proto,
        remote: e.remote.to_canonical(),
        port: if e.direction == "ingress" {
            e.local_port
        } else {
            e.remote_port
        },
        hostname,
        comm: &e.comm,
        pid: e.pid,
        uid: e.uid,
        cgroup_id: e.cgroup_id,
        verdict: e.verdict,
        reason: e.reason,
        local: e.local.to_canonical(),
        local_port: e.local_port,
        remote_port: e.remote_port,
        packets: e.packets.max(1),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// The bounded in-memory flow table.
#[derive(Debug)]
pub struct FlowTable {
    map: HashMap<FlowKey, Flow>,
    cap: usize,
    relog_after_ms: u64,
    /// Flows dropped to stay within `cap`, in all.
    evicted: u64,
}

/// The table as the pipeline and the HTTP server share it.
pub type SharedTable = Arc<Mutex<FlowTable>>;

impl Default for FlowTable {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_RELOG_AFTER)
    }
}

impl FlowTable {
    pub fn new(cap: usize, relog_after: Duration) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(1),
            relog_after_ms: u64::try_from(relog_after.as_millis()).unwrap_or(u64::MAX),
            evicted: 0,
        }
    }

    /// A table to share between the pipeline and the HTTP server.
    pub fn shared(cap: usize) -> SharedTable {
        Arc::new(Mutex::new(Self::new(cap, DEFAULT_RELOG_AFTER)))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.map.get(key)
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Flows dropped so far to stay within the capacity.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Folds an observation into the table; true when the flow is new: not
    /// in the table (first seen since start, or evicted long ago), or not
    /// seen for longer than the relog interval.
    pub fn record(&mut self, obs: &Flow) -> bool {
        if let Some(f) = self.map.get_mut(&obs.key) {
            let stale = obs.first_seen.saturating_sub(f.last_seen) > self.relog_after_ms;
            f.merge(obs);
            return stale;
        }
        if self.map.len() >= self.cap {
            self.evict();
        }
        self.map.insert(obs.key.clone(), obs.clone());
        true
    }

    /// Drops the least recently seen tenth of the table (at least one), so
    /// that eviction costs O(log n) per insert on average.
    fn evict(&mut self) {
        let n = (self.cap / 10).max(1);
        let mut ages: Vec<(u64, FlowKey)> = self
            .map
            .iter()
            .map(|(k, f)| (f.last_seen, k.clone()))
            .collect();
        let n = n.min(ages.len());
        if n == 0 {
            return;
        }
        ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
        for (_, k) in ages.into_iter().take(n) {
            self.map.remove(&k);
        }
        self.evicted += n as u64;
    }

    /// Flows matching `q`, newest first.
    pub fn query(&self, q: &FlowQuery) -> Vec<Flow> {
        let mut out: Vec<Flow> = self
            .map
            .values()
            .filter(|f| f.matches(q))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            b.last_seen
                .cmp(&a.last_seen)
                .then_with(|| a.key.cmp(&b.key))
        });
        out.truncate(q.limit);
        out
    }
}

// ---------------------------------------------------------------------------
// The audit log

enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: Option<std::io::BufWriter<std::fs::File>>,
        /// When opening last failed; retried after [`REOPEN_AFTER`].
        failed_at: Option<Instant>,
    },
}

const REOPEN_AFTER: Duration = Duration::from_secs(5);

/// Where new flows are written, one JSON line each: standard output, or a
/// file opened for appending (its directory created), reopened after an
/// error. Lines are buffered until [`AuditLog::flush`].
pub struct AuditLog {
    sink: Sink,
    buf: Vec<u8>,
    /// Lines that could not be written.
    pub lost: u64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sink {
            Sink::Stdout => f.write_str("AuditLog(stdout)"),
            Sink::File { path, .. } => write!(f, "AuditLog({})", path.display()),
        }
    }
}

impl AuditLog {
    pub fn stdout() -> Self {
        Self {
            sink: Sink::Stdout,
            buf: Vec::new(),
            lost: 0,
        }
    }

    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            sink: Sink::File {
                path: path.into(),
                file: None,
                failed_at: None,
            },
            buf: Vec::new(),
            lost: 0,
        }
    }

    /// `[audit] log`, or standard output.
    pub fn from_config(c: &AuditConfig) -> Self {
        match &c.log {
            Some(p) => Self::file(p),
            None => Self::stdout(),
        }
    }

    /// Queues one line (a newline is added).
    pub fn write_line(&mut self, line: &str) {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
    }

    fn open(path: &Path) -> std::io::Result<std::fs::File> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    /// Writes out the queued lines.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let lines = self.buf.iter().filter(|b| **b == b'\n').count() as u64;
        let buf = std::mem::take(&mut self.buf);
        match &mut self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                if out.write_all(&buf).and_then(|()| out.flush()).is_err() {
                    self.lost += lines;
                }
            }
            Sink::File {
                path,
                file,
                failed_at,
            } => {
                if file.is_none() {
                    if failed_at.is_some_and(|t| t.elapsed() < REOPEN_AFTER) {
                        self.lost += lines;
                        return;
                    }
                    match Self::open(path) {
                        Ok(f) => {
                            if failed_at.take().is_some() {
                                tracing::info!(path = %path.display(), "audit log reopened");
                            }
                            *file = Some(std::io::BufWriter::new(f));
                        }
                        Err(e) => {
                            if failed_at.is_none() {
                                tracing::error!(path = %path.display(), error = %e, "cannot open the audit log ([audit] log); new flows are still stored; retrying");
                            }
                            *failed_at = Some(Instant::now());
                            self.lost += lines;
                            return;
                        }
                    }
                }
                if let Some(f) = file {
                    if let Err(e) = f.write_all(&buf).and_then(|()| f.flush()) {
                        tracing::error!(path = %path.display(), error = %e, "writing the audit log failed; reopening it");
                        *file = None;
                        *failed_at = Some(Instant::now());
                        self.lost += lines;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The pipeline

/// Consumes deny events: aggregates, logs new flows, batches to the store.
pub struct Pipeline {
    pub table: SharedTable,
    pub hostnames: HostnameIndex,
    pub audit: AuditLog,
    /// `None`: memory only.
    pub store: Option<StoreHandle>,
    pub flush_every: Duration,
    pub flush_events: usize,
    /// What has changed since the last batch went to the store (deltas:
    /// counts since then).
    pending: HashMap<FlowKey, Flow>,
    pending_events: usize,
    /// Flows the table evicted (`sdm_flows_evicted_total`).
    pub evicted: Arc<std::sync::atomic::AtomicU64>,
    /// When an eviction was last logged: at most one line a minute.
    evict_logged: Option<Instant>,
}

/// How often a full flow table is logged while it stays full.
const EVICT_LOG_EVERY: Duration = Duration::from_secs(60);

impl Pipeline {
    pub fn new(
        table: SharedTable,
        hostnames: HostnameIndex,
        audit: AuditLog,
        store: Option<StoreHandle>,
    ) -> Self {
        Self {
            table,
            hostnames,
            audit,
            store,
            flush_every: DEFAULT_FLUSH_EVERY,
            flush_events: DEFAULT_FLUSH_EVENTS,
            pending: HashMap::new(),
            pending_events: 0,
            evicted: Default::default(),
            evict_logged: None,
        }
    }

    /// Handles a burst of events (the table is locked once).
    pub fn handle(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let observed: Vec<Flow> = events
            .iter()
            .map(|e| {
                // A refused DNS query: the name it asked for, not the
                // resolver's own name.
                let name = e
                    .qname
                    .clone()
                    .or_else(|| hostname_of(&self.hostnames, e.remote));
                Flow::from_event(e, name)
            })
            .collect();
        let (fresh, evicted, cap): (Vec<bool>, u64, usize) = match self.table.lock() {
            Ok(mut t) => {
                let before = t.evicted();
                let fresh = observed.iter().map(|f| t.record(f)).collect();
                (fresh, t.evicted() - before, t.capacity())
            }
            Err(_) => (vec![false; observed.len()], 0, 0),
        };
        if evicted > 0 {
            use std::sync::atomic::Ordering;
            let total = self.evicted.fetch_add(evicted, Ordering::Relaxed) + evicted;
            if self
                .evict_logged
                .is_none_or(|t| t.elapsed() >= EVICT_LOG_EVERY)
            {
                self.evict_logged = Some(Instant::now());
                tracing::warn!(evicted, total, capacity = cap, "the in-memory flow table is full: its least recently seen flows were dropped (the store keeps them; a flow seen again is logged again)");
            }
        }
        for ((e, f), new) in events.iter().zip(observed).zip(fresh) {
            if new {
                self.audit.write_line(&audit_line(e, f.hostname.as_deref()));
            }
            match self.pending.get_mut(&f.key) {
                Some(p) => p.merge(&f),
                None => {
                    self.pending.insert(f.key.clone(), f);
                }
            }
        }
        self.pending_events += events.len();
        self.audit.flush();
        if self.pending_events >= self.flush_events {
            self.flush();
        }
    }

    /// Hands what changed to the store.
    pub fn flush(&mut self) {
        self.pending_events = 0;
        if self.pending.is_empty() {
            return;
        }
        let batch: Vec<Flow> = self.pending.drain().map(|(_, f)| f).collect();
        if let Some(store) = &self.store {
            store.submit(batch);
        }
    }

    /// Runs until the sender side of `rx` is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(self.flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = Vec::with_capacity(512);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut buf, 512) => {
                    if n == 0 {
                        self.flush();
                        return;
                    }
                    self.handle(&buf);
                    buf.clear();
                }
                _ = tick.tick() => self.flush(),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// suggest

fn config_proto(p: &str) -> Option<Proto> {
    match p {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        "icmp" | "icmpv6" => Some(Proto::Icmp),
        _ => None,
    }
}

/// Printable ASCII only, for comments (a process can name itself anything).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Names already used and the way to make a new one unique and valid.
struct Names(BTreeSet<String>);

impl Names {
    fn unique(&mut self, base: &str) -> String {
        let mut stem: String = base
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        while stem.starts_with(['.', '_', '-']) {
            stem.remove(0);
        }
        if stem.is_empty() {
            stem = "flow".into();
        }
        let mut n = 1;
        loop {
            let suffix = if n == 1 {
                String::new()
            } else {
                format!("-{n}")
            };
            let mut name = stem.clone();
            name.truncate(MAX_NAME_LEN - suffix.len());
            name.push_str(&suffix);
            if !self.0.contains(&name) {
                self.0.insert(name.clone());
                return name;
            }
            n += 1;
        }
    }
}

/// Whether the policy already allows the flow (by a rule whose direction,
/// protocol and port match and whose target is the flow's hostname or
/// covers its address).
pub fn covered(policy: &Policy, f: &Flow) -> bool {
    let Some(proto) = config_proto(&f.key.proto) else {
        return false;
    };
    let dir = if f.key.direction == "ingress" {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    policy.rules.iter().any(|r| {
        r.direction == dir
            && r.allows(proto, f.key.port)
            && r.targets.iter().any(|t| match t {
                Target::Cidr(n) => n.contains(&f.key.remote),
                Target::Host(h) => {
                    f.hostname
                        .as_deref()
                        .is_some_and(|name| match h.strip_prefix("*.") {
                            Some(suffix) => name.ends_with(&format!(".{suffix}")),
                            None => name == h,
                        })
                }
            })
    })
}

/// Sources of an ingress rule: single addresses, or the /24 (IPv4) or /64
/// (IPv6) when at least `collapse` addresses of it were seen.
fn sources(addrs: &BTreeSet<IpAddr>, collapse: usize) -> Vec<IpNet> {
    let mut by_net: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
    for a in addrs {
        let len = if a.is_ipv4() { 24 } else { 64 };
        if let Ok(n) = IpNet::new(*a, len) {
            by_net.entry(n.trunc()).or_default().push(*a);
        }
    }
    let mut out = Vec::new();
    for (net, list) in by_net {
        if list.len() >= collapse {
            out.push(net);
        } else {
            out.extend(list.into_iter().map(IpNet::from));
        }
    }
    out
}

fn ports_toml(ports: &BTreeSet<u16>) -> String {
    if ports.len() == 1 {
        format!(
            "port = {}",
            ports.iter().next().copied().unwrap_or_default()
        )
    } else {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        format!("ports = [{}]", list.join(", "))
    }
}

#[derive(Default)]
struct Group {
    ports: BTreeSet<u16>,
    remotes: BTreeSet<IpAddr>,
    procs: BTreeMap<String, (u32, u64)>,
    packets: u64,
    last: u64,
    flows: usize,
}

impl Group {
    fn add(&mut self, f: &Flow) {
        self.ports.insert(f.key.port);
        self.remotes.insert(f.key.remote);
        let comm = if f.key.comm.is_empty() {
            "?".to_string()
        } else {
            clean(&f.key.comm)
        };
        let p = self.procs.entry(comm).or_default();
        p.0 = f.pid;
        p.1 = p.1.saturating_add(f.count);
        self.packets = self.packets.saturating_add(f.count);
        self.last = self.last.max(f.last_seen);
        self.flows += 1;
    }

    fn comment(&self, o: &mut String, what: &str) {
        let procs: Vec<String> = self
            .procs
            .iter()
            .map(|(c, (pid, n))| {
                if *pid != 0 {
                    format!("{c} (pid {pid}, {n} packets)")
                } else {
                    format!("{c} ({n} packets)")
                }
            })
            .collect();
        let _ = writeln!(o, "# {what}");
        let _ = writeln!(
            o,
            "# {} flow(s), {} packet(s), last seen {}; processes: {}",
            self.flows,
            self.packets,
            rfc3339(self.last),
            procs.join(", ")
        );
    }
}

/// Whether a flow is the StrongDM relay or gateway reaching a resource.
fn is_sdm_process(comm: &str) -> bool {
    comm == "sdm"
}

/// `[[allow]]` / `[[resource]]` TOML that would allow `flows` (those in audit
/// mode denied for want of a rule; others are skipped), ready to append to
/// `config` after review:
///
/// - egress, grouped by hostname where the agent knew it, else by address
///   (a /32 or /128), one entry per protocol with every port seen; as a
///   `[[resource]]` when the StrongDM relay or gateway (`sdm`) made it on a
///   relay or gateway host, else as an `[[allow]]`;
/// - ingress, grouped by local port and protocol, `from` the sources seen,
///   collapsed to their /24 (/64) when `collapse` or more of one were seen.
///
/// Flows `policy` already covers are left out. Names are derived from the
/// hostname, address or port, valid, and unique against `config`.
pub fn suggest(
    flows: &[Flow],
    config: &Config,
    policy: Option<&Policy>,
    collapse: usize,
) -> String {
    let mut names = Names(
        config
            .resources
            .iter()
            .chain(&config.secret_stores)
            .map(|r| r.name.clone())
            .chain(config.allow.iter().map(|a| a.name.clone()))
            .collect(),
    );
    let resource_host = config
        .roles
        .iter()
        .any(|r| matches!(r, Role::Relay | Role::Gateway));
    // (kind, target or port, proto) -> group; BTreeMap for a stable order.
    let mut egress: BTreeMap<(bool, String, Proto), Group> = BTreeMap::new();
    let mut ingress: BTreeMap<(u16, Proto), Group> = BTreeMap::new();
    let mut skipped = 0usize;
    let mut already = 0usize;
    for f in flows {
        let Some(proto) = config_proto(&f.key.proto) else {
            skipped += 1;
            continue;
        };
        if f.key.verdict != "audit" || f.reason != "no_rule" {
            skipped += 1;
            continue;
        }
        if policy.is_some_and(|p| covered(p, f)) {
            already += 1;
            continue;
        }
        if f.key.direction == "ingress" {
            ingress.entry((f.key.port, proto)).or_default().add(f);
        } else {
            let target = f
                .hostname
                .clone()
                .unwrap_or_else(|| f.key.remote.to_string());
            let resource = resource_host && proto != Proto::Icmp && is_sdm_process(&f.key.comm);
            egress.entry((resource, target, proto)).or_default().add(f);
        }
    }
    let mut o = String::new();
    let total = egress.len() + ingress.len();
    let _ = writeln!(
        o,
        "# Suggested by `sdm-agent suggest` from {} audit-mode flow(s): {total} entr{}.",
        flows.len() - skipped - already,
        if total == 1 { "y" } else { "ies" }
    );
    let _ = writeln!(
        o,
        "# Review before use: each entry allows traffic that audit mode would have dropped."
    );
    if already > 0 {
        let _ = writeln!(
            o,
            "# {already} flow(s) left out: the current config already allows them."
        );
    }
    if skipped > 0 {
        let _ = writeln!(
            o,
            "# {skipped} flow(s) left out: not audit-mode flows that a rule could allow."
        );
    }
    for ((resource, target, proto), g) in &egress {
        o.push('\n');
        let is_ip = target.parse::<IpAddr>().is_ok();
        let base = match proto {
            Proto::Tcp => target.clone(),
            p => format!("{target}-{p}"),
        };
        let name = names.unique(&base);
        if *resource {
            g.comment(
                &mut o,
                &format!(
                    "egress {proto} to {} by the StrongDM relay/gateway",
                    clean(target)
                ),
            );
            let _ = writeln!(o, "[[resource]]");
            let _ = writeln!(o, "name = {}", toml_str(&name));
            let _ = writeln!(o, "host = {}", toml_str(target));
            let _ = writeln!(o, "{}", ports_toml(&g.ports));
            let _ = writeln!(o, "proto = {}", toml_str(&proto.to_string()));
        } else {
            let what = if is_ip {
                format!("egress {proto} to {}", clean(target))
            } else {
                let addrs: Vec<String> = g.remotes.iter().map(IpAddr::to_string).collect();
                format!("egress {proto} to {} ({})", clean(target), addrs.join(" "))
            };
            g.comment(&mut o, &what);
            let _ = writeln!(o, "[[allow]]");
            let _ = writeln!(o, "name = {}", toml_str(&name));
            let _ = writeln!(o, "direction = \"egress\"");
            let _ = writeln!(o, "proto = {}", toml_str(&proto.to_string()));
            let _ = writeln!(o, "{}", ports_toml(&g.ports));
            let _ = writeln!(o, "to = {}", toml_str(target));
        }
    }
    for ((port, proto), g) in &ingress {
        o.push('\n');
        let name = names.unique(&format!("in-{proto}-{port}"));
        let from: Vec<String> = sources(&g.remotes, collapse)
            .iter()
            .map(|n| toml_str(&n.to_string()))
            .collect();
        g.comment(&mut o, &format!("ingress {proto} to local port {port}"));
        let _ = writeln!(o, "[[allow]]");
        let _ = writeln!(o, "name = {}", toml_str(&name));
        let _ = writeln!(o, "direction = \"ingress\"");
        let _ = writeln!(o, "proto = {}", toml_str(&proto.to_string()));
        let _ = writeln!(o, "port = {port}");
        let _ = writeln!(o, "from = [{}]", from.join(", "));
    }
    o
}

/// The default `collapse` of [`suggest`]: this many sources of one /24
/// become the /24.
pub const DEFAULT_COLLAPSE: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::store::{Store, StoreOptions, StoreStats};

    fn event(
        dir: &'static str,
        proto: &str,
        remote: &str,
        port: u16,
        comm: &str,
        verdict: &'static str,
        t: u64,
    ) -> Event {
        Event {
            time: UNIX_EPOCH + Duration::from_millis(t),
            direction: dir,
            proto: proto.into(),
            local: "10.0.0.5".parse().unwrap(),
            local_port: if dir == "ingress" { port } else { 40000 },
            remote: remote.parse().unwrap(),
            remote_port: if dir == "ingress" { 50000 } else { port },
            verdict,
            reason: "no_rule",
            cgroup_id: 7,
            uid: 1000,
            pid: 4242,
            comm: comm.into(),
            packets: 2,
            len: 60,
            qname: None,
        }
    }

    fn index(pairs: &[(&str, &[&str])]) -> HostnameIndex {
        let owned: Vec<(String, Vec<IpAddr>)> = pairs
            .iter()
            .map(|(h, a)| {
                (
                    h.to_string(),
                    a.iter().map(|s| s.parse().unwrap()).collect(),
                )
            })
            .collect();
        Arc::new(RwLock::new(index_from(
            owned.iter().map(|(h, a)| (h.as_str(), a.as_slice())),
        )))
    }

    #[test]
    fn index_maps_addresses_to_sorted_names() {
        let idx = index(&[
            ("b.example", &["192.0.2.1", "::ffff:192.0.2.9"]),
            ("a.example", &["192.0.2.1"]),
            ("c.example", &[]),
        ]);
        let m = idx.read().unwrap();
        assert_eq!(
            m[&"192.0.2.1".parse::<IpAddr>().unwrap()],
            vec!["a.example", "b.example"]
        );
        // IPv4-mapped addresses are folded into IPv4.
        assert_eq!(
            m[&"192.0.2.9".parse::<IpAddr>().unwrap()],
            vec!["b.example"]
        );
        drop(m);
        assert_eq!(
            hostname_of(&idx, "192.0.2.1".parse().unwrap()).as_deref(),
            Some("a.example")
        );
        assert_eq!(hostname_of(&idx, "192.0.2.2".parse().unwrap()), None);
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn aggregates_by_key() {
        let mut t = FlowTable::new(100, Duration::from_secs(3600));
        let e1 = event("egress", "tcp", "192.0.2.1", 443, "curl", "dropped", 1_000);
        let e2 = event("egress", "tcp", "192.0.2.1", 443, "curl", "dropped", 2_000);
        let other_port = event("egress", "tcp", "192.0.2.1", 80, "curl", "dropped", 2_000);
        let other_comm = event("egress", "tcp", "192.0.2.1", 443, "wget", "dropped", 2_000);
        let other_verdict = event("egress", "tcp", "192.0.2.1", 443, "curl", "audit", 2_000);
        let mut in1 = event(
            "ingress",
            "tcp",
            "198.51.100.7",
            22,
            "sshd",
            "dropped",
            3_000,
        );
        assert!(t.record(&Flow::from_event(&e1, Some("api.example".into()))));
        assert!(!t.record(&Flow::from_event(&e2, None)));
        for e in [&other_port, &other_comm, &other_verdict, &in1] {
            assert!(t.record(&Flow::from_event(e, None)));
        }
        // Ingress keys on the local port, not the client's ephemeral one.
        in1.remote_port = 50001;
        in1.time += Duration::from_secs(1);
        assert!(!t.record(&Flow::from_event(&in1, None)));
        assert_eq!(t.len(), 5);
        let f = t.get(&FlowKey::of(&e1)).unwrap();
        assert_eq!((f.first_seen, f.last_seen, f.count), (1_000, 2_000, 4));
        assert_eq!(
            f.hostname.as_deref(),
            Some("api.example"),
            "a later event without a name keeps it"
        );
        assert_eq!((f.pid, f.uid, f.cgroup_id), (4242, 1000, 7));
        let inf = t.get(&FlowKey::of(&in1)).unwrap();
        assert_eq!((inf.key.port, inf.count), (22, 4));

        let q = FlowQuery {
            since_ms: 0,
            direction: Some("egress".into()),
            verdict: Some("dropped".into()),
            limit: 10,
        };
        let got = t.query(&q);
        assert_eq!(got.len(), 3);
        assert!(got
            .iter()
            .all(|f| f.key.direction == "egress" && f.key.verdict == "dropped"));
        assert_eq!(
            t.query(&FlowQuery {
                since_ms: 2_500,
                direction: None,
                verdict: None,
                limit: 10
            })
            .len(),
            1
        );
        assert_eq!(
            t.query(&FlowQuery {
                since_ms: 0,
                direction: None,
                verdict: None,
                limit: 2
            })
            .len(),
            2
        );
        // Newest first.
        assert_eq!(
            t.query(&FlowQuery {
                since_ms: 0,
                direction: None,
                verdict: None,
                limit: 1
            })[0]
                .key
                .comm,
            "sshd"
        );
    }

    #[test]
    fn relogs_after_a_long_silence() {
        let mut t = FlowTable::new(100, Duration::from_secs(60));
        let e = |ms| {
            Flow::from_event(
                &event("egress", "udp", "192.0.2.1", 53, "dig", "audit", ms),
                None,
            )
        };
        assert!(t.record(&e(0)));
        assert!(!t.record(&e(59_000)));
        assert!(!t.record(&e(100_000)));
        assert!(t.record(&e(200_000)));
    }

    #[test]
    fn table_is_bounded_and_evicts_the_oldest() {
        let mut t = FlowTable::new(100, Duration::from_secs(3600));
        for i in 0..1000u32 {
            let remote = IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + i));
            let mut e = event(
                "egress",
                "tcp",
                "192.0.2.1",
                443,
                "x",
                "dropped",
                u64::from(i) * 10,
            );
            e.remote = remote;
            t.record(&Flow::from_event(&e, None));
            // Keep one flow hot.
            t.record(&Flow::from_event(
                &event(
                    "egress",
                    "tcp",
                    "203.0.113.1",
                    443,
                    "hot",
                    "dropped",
                    u64::from(i) * 10 + 1,
                ),
                None,
            ));
            assert!(t.len() <= 100);
        }
        assert!(t
            .get(&FlowKey::of(&event(
                "egress",
                "tcp",
                "203.0.113.1",
                443,
                "hot",
                "dropped",
                0
            )))
            .is_some());
        let mut newest = event("egress", "tcp", "192.0.2.1", 443, "x", "dropped", 0);
        newest.remote = IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + 999u32));
        assert!(t.get(&FlowKey::of(&newest)).is_some());
        // Every flow that is gone is counted: 1001 distinct flows went in.
        assert_eq!(t.evicted() + t.len() as u64, 1001);
    }

    /// A writer for a tracing subscriber that keeps what is logged.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A full flow table is not a silent loss: the evictions are counted
    /// (`sdm_flows_evicted_total`) and logged, at most once a minute, and
    /// every new flow still reaches the audit log.
    #[test]
    fn a_full_table_logs_and_counts_its_evictions() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("audit.jsonl");
        let table = FlowTable::shared(10);
        let mut p = Pipeline::new(
            table.clone(),
            HostnameIndex::default(),
            AuditLog::file(&log_path),
            None,
        );
        let logged = Captured::default();
        let writer = logged.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for round in 0..3u32 {
                let events: Vec<Event> = (0..10u32)
                    .map(|i| {
                        let mut e = event("egress", "tcp", "192.0.2.1", 443, "x", "dropped", 0);
                        e.remote =
                            IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + round * 10 + i));
                        e.time = UNIX_EPOCH + Duration::from_millis(u64::from(round * 10 + i));
                        e
                    })
                    .collect();
                p.handle(&events);
            }
        });
        let t = table.lock().unwrap();
        assert!(t.len() <= 10, "{}", t.len());
        assert_eq!(t.evicted() + t.len() as u64, 30);
        assert_eq!(
            p.evicted.load(std::sync::atomic::Ordering::Relaxed),
            t.evicted(),
            "the pipeline's counter (the metric) follows the table"
        );
        let text = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("flow table is full"))
            .collect();
        assert_eq!(lines.len(), 1, "one warning, not one per eviction: {text}");
        assert!(
            lines[0].contains("WARN") && lines[0].contains("capacity=10"),
            "{text}"
        );
        let audit = std::fs::read_to_string(&log_path).unwrap();
        assert_eq!(
            audit.lines().count(),
            30,
            "every new flow is logged: {audit}"
        );
    }

    #[test]
    fn json_line_format() {
        let e = event(
            "egress",
            "tcp",
            "192.0.2.1",
            443,
            "cu\"rl\n",
            "dropped",
            1_700_000_000_123,
        );
        let line = audit_line(&e, Some("api.example.com"));
        assert!(!line.contains('\n'), "one line: {line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["event"], "denied_flow");
        assert_eq!(v["direction"], "egress");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["remote"], "192.0.2.1");
        assert_eq!(v["port"], 443);
        assert_eq!(v["hostname"], "api.example.com");
        assert_eq!(v["comm"], "cu\"rl\n");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["uid"], 1000);
        assert_eq!(v["cgroup_id"], 7);
        assert_eq!(v["verdict"], "dropped");
        assert_eq!(v["reason"], "no_rule");
        assert_eq!(v["local"], "10.0.0.5");
        assert_eq!(v["local_port"], 40000);
        assert_eq!(v["remote_port"], 443);
        assert_eq!(v["packets"], 2);
        // Unknown hostname: null; ingress: the local port.
        let v: serde_json::Value = serde_json::from_str(&audit_line(
            &event("ingress", "udp", "::1", 5353, "", "audit", 0),
            None,
        ))
        .unwrap();
        assert_eq!(v["hostname"], serde_json::Value::Null);
        assert_eq!(v["port"], 5353);
        assert_eq!(v["remote"], "::1");
    }

    #[test]
    fn audit_log_file_creates_dir_appends_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/flows.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "old\n").unwrap();
        let mut log = AuditLog::file(&path);
        log.write_line("{\"a\":1}");
        log.write_line("{\"a\":2}");
        log.flush();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "old\n{\"a\":1}\n{\"a\":2}\n"
        );
        // A fresh directory is created.
        let path2 = dir.path().join("new/flows.jsonl");
        let mut log2 = AuditLog::file(&path2);
        log2.write_line("x");
        log2.flush();
        assert_eq!(std::fs::read_to_string(&path2).unwrap(), "x\n");
        // An unopenable path counts the lines as lost and does not panic.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let mut bad = AuditLog::file(blocker.join("flows.jsonl"));
        bad.write_line("y");
        bad.flush();
        assert_eq!(bad.lost, 1);
        // A write error drops the file and the next flush reopens it.
        let mut log3 = AuditLog::file(&path2);
        if let Sink::File { file, .. } = &mut log3.sink {
            *file = Some(std::io::BufWriter::new(
                std::fs::File::open(&path2).unwrap(),
            )); // read-only: writes fail
        }
        log3.write_line("z");
        log3.flush();
        assert_eq!(log3.lost, 1);
        if let Sink::File { failed_at, .. } = &mut log3.sink {
            *failed_at = Some(Instant::now() - REOPEN_AFTER * 2);
        }
        log3.write_line("w");
        log3.flush();
        assert_eq!(std::fs::read_to_string(&path2).unwrap(), "x\nw\n");
    }

    #[tokio::test]
    async fn pipeline_logs_new_flows_once_and_stores_them() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("audit.jsonl");
        let db = dir.path().join("state/flows.db");
        let stats = StoreStats::default();
        let store = StoreHandle::spawn(
            StoreOptions::new(&db, Duration::from_secs(86400)),
            stats.clone(),
        );
        let table = FlowTable::shared(100);
        let idx = index(&[("api.example.com", &["192.0.2.1"])]);
        let mut p = Pipeline::new(
            table.clone(),
            idx,
            AuditLog::file(&log_path),
            Some(store.clone()),
        );
        p.flush_every = Duration::from_millis(50);
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(p.run(rx));
        let now = now_ms();
        for i in 0..3 {
            tx.send(event(
                "egress",
                "tcp",
                "192.0.2.1",
                443,
                "curl",
                "dropped",
                now + i,
            ))
            .await
            .unwrap();
        }
        tx.send(event(
            "egress",
            "udp",
            "198.51.100.1",
            53,
            "dig",
            "audit",
            now + 5,
        ))
        .await
        .unwrap();
        drop(tx);
        task.await.unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["hostname"], "api.example.com");
        assert_eq!(lines[0]["comm"], "curl");
        assert_eq!(lines[1]["hostname"], serde_json::Value::Null);
        assert_eq!(table.lock().unwrap().len(), 2);
        // The store gets them (the writer thread commits within a second).
        let mut got = Vec::new();
        for _ in 0..100 {
            got = store
                .query(&FlowQuery::within(Duration::from_secs(3600)))
                .unwrap_or_default();
            if got.len() == 2 && got.iter().any(|f| f.count == 6) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let curl = got
            .iter()
            .find(|f| f.key.comm == "curl")
            .expect("curl flow stored");
        assert_eq!(
            (curl.count, curl.hostname.as_deref(), curl.pid),
            (6, Some("api.example.com"), 4242)
        );
        assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    fn flow(
        dir: &str,
        proto: &str,
        remote: &str,
        port: u16,
        comm: &str,
        host: Option<&str>,
    ) -> Flow {
        Flow {
            key: FlowKey {
                direction: dir.into(),
                proto: proto.into(),
                remote: remote.parse().unwrap(),
                port,
                comm: comm.into(),
                verdict: "audit".into(),
            },
            hostname: host.map(String::from),
            reason: "no_rule".into(),
            local: None,
            pid: 99,
            uid: 0,
            cgroup_id: 1,
            first_seen: 1_000,
            last_seen: 2_000,
            count: 3,
        }
    }

    fn compiled(text: &str) -> (Config, Policy) {
        let c = Config::from_toml_str(text, Path::new("suggest.toml"))
            .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
        let p = crate::policy::compile::compile(&c, &["10.0.0.2".parse().unwrap()])
            .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
        (c, p)
    }

    #[test]
    fn suggest_round_trips_and_covers_the_flows() {
        let base = "role = [\"gateway\"]\nmode = \"audit\"\n\n[[allow]]\nname = \"api.example.com\"\ndirection = \"egress\"\nport = 1\nto = \"other.example\"\n\n[dns]\nservers = [\"10.0.0.2\"]\n";
        let mut flows = vec![
            flow(
                "egress",
                "tcp",
                "192.0.2.1",
                443,
                "curl",
                Some("api.example.com"),
            ),
            flow(
                "egress",
                "tcp",
                "192.0.2.2",
                8443,
                "curl",
                Some("api.example.com"),
            ),
            flow(
                "egress",
                "udp",
                "192.0.2.1",
                4500,
                "vpn",
                Some("api.example.com"),
            ),
            flow("egress", "tcp", "203.0.113.9", 22, "ssh", None),
            flow("egress", "tcp", "2001:db8::9", 22, "ssh", None),
            flow("egress", "icmp", "203.0.113.9", 8, "ping", None),
            flow("egress", "icmpv6", "2001:db8::9", 128, "ping", None),
            flow(
                "egress",
                "tcp",
                "10.9.9.9",
                5432,
                "sdm",
                Some("db.internal"),
            ),
            flow("ingress", "tcp", "198.51.100.7", 22, "sshd", None),
            flow("ingress", "udp", "2001:db8:1::5", 161, "snmpd", None),
            // A weird process name does not break out of its comment.
            flow(
                "ingress",
                "tcp",
                "198.51.100.8",
                22,
                "x\n[[allow]]\nname=\"evil\"",
                None,
            ),
        ];
        for i in 10..16 {
            flows.push(flow(
                "ingress",
                "tcp",
                &format!("203.0.113.{i}"),
                8080,
                "java",
                None,
            ));
        }
        // Not suggested: enforce-mode flows, malformed packets, odd protocols.
        let mut dropped = flow("egress", "tcp", "192.0.2.77", 25, "mail", None);
        dropped.key.verdict = "dropped".into();
        let mut malformed = flow("egress", "tcp", "192.0.2.78", 25, "mail", None);
        malformed.reason = "malformed".into();
        let gre = flow("egress", "47", "192.0.2.79", 0, "gre", None);
        let mut all = flows.clone();
        all.extend([dropped.clone(), malformed.clone(), gre.clone()]);

        let (cfg, _) = compiled(base);
        let out = suggest(&all, &cfg, None, DEFAULT_COLLAPSE);
        let text = format!("{base}\n{out}");
        let (c2, policy) = compiled(&text);
        assert!(!c2.allow.iter().any(|a| a.name == "evil"), "{out}");
        assert!(
            out.lines()
                .all(|l| l.starts_with('#') || !l.contains("evil")),
            "{out}"
        );
        for f in &flows {
            assert!(covered(&policy, f), "not covered: {f:?}\n{out}");
        }
        for f in [&dropped, &malformed] {
            assert!(!covered(&policy, f), "{f:?}\n{out}");
        }
        // Egress by hostname: one [[allow]] per protocol with every port.
        let api = c2
            .allow
            .iter()
            .find(|a| a.name == "api.example.com-2")
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(api.targets, vec![Target::Host("api.example.com".into())]);
        assert_eq!(api.ports.len(), 2);
        assert!(
            c2.allow.iter().any(|a| a.name == "api.example.com-udp"),
            "{out}"
        );
        // By address otherwise.
        assert!(
            c2.allow.iter().any(|a| a.targets
                == vec![Target::Cidr("203.0.113.9/32".parse().unwrap())]
                && a.proto == Proto::Tcp),
            "{out}"
        );
        // The relay/gateway process reaching a resource: a [[resource]].
        assert_eq!(c2.resources.len(), 1, "{out}");
        assert_eq!(c2.resources[0].target, Target::Host("db.internal".into()));
        // Ingress: by port, sources collapsed to a /24 when many.
        let web = c2
            .allow
            .iter()
            .find(|a| a.name == "in-tcp-8080")
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(
            web.targets,
            vec![Target::Cidr("203.0.113.0/24".parse().unwrap())]
        );
        let ssh = c2
            .allow
            .iter()
            .find(|a| a.name == "in-tcp-22")
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(ssh.targets.len(), 2, "two sources, not collapsed: {out}");

        // With the new config's policy, nothing is left to suggest.
        let again = suggest(&flows, &c2, Some(&policy), DEFAULT_COLLAPSE);
        assert!(
            !again.contains("[[allow]]") && !again.contains("[[resource]]"),
            "{again}"
        );
        assert!(again.contains("already allows"), "{again}");
    }

    #[test]
    fn suggested_names_are_valid_and_unique() {
        let mut n = Names(["a".to_string()].into_iter().collect());
        assert_eq!(n.unique("a"), "a-2");
        assert_eq!(n.unique("a"), "a-3");
        assert_eq!(n.unique("_srv.Example"), "srv.example");
        assert_eq!(n.unique("2001:db8::1"), "2001-db8--1");
        assert_eq!(n.unique("..."), "flow");
        let long = "x".repeat(100);
        let l1 = n.unique(&long);
        let l2 = n.unique(&long);
        assert_eq!(l1.len(), MAX_NAME_LEN);
        assert_eq!(l2.len(), MAX_NAME_LEN);
        assert_ne!(l1, l2);
        for name in [l1, l2] {
            crate::policy::config::valid_name(&name).unwrap();
        }
    }

    #[test]
    fn store_is_used_by_suggest_inputs() {
        // Flows read back from the store suggest the same as in memory.
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("flows.db")).unwrap();
        let f = flow(
            "egress",
            "tcp",
            "192.0.2.1",
            443,
            "curl",
            Some("api.example.com"),
        );
        s.upsert(std::slice::from_ref(&f)).unwrap();
        let back = s
            .query(&FlowQuery {
                since_ms: 0,
                direction: None,
                verdict: Some("audit".into()),
                limit: 100,
            })
            .unwrap();
        let cfg = Config::default();
        assert_eq!(
            suggest(&back, &cfg, None, DEFAULT_COLLAPSE),
            suggest(&[f], &cfg, None, DEFAULT_COLLAPSE)
        );
    }
}
