//! What a denied flow is: its key, the record the store keeps, the
//! query over them; and the hostname index that names a flow's remote.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::flows::events::Event;
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
    /// The remote's port in the last event of an ingress TCP or UDP flow
    /// (the key's port is the local one): for a reply to this host's own
    /// request, the service it asked. None for egress (the key's port is
    /// the remote's) and for flows stored before the agent kept it.
    #[serde(default)]
    pub remote_port: Option<u16>,
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
            remote_port: (e.direction == "ingress" && matches!(e.proto.as_str(), "tcp" | "udp"))
                .then_some(e.remote_port),
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
            self.remote_port = other.remote_port.or(self.remote_port);
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
