//! What is enforced right now, read from the kernel: the pinned maps hold
//! the mode, the live policy and every counter, so this works while the
//! agent is down. The agent adds what only it knows (rule details, DNS
//! state) in RUN_DIR/state.json.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    net::IpAddr,
    path::PathBuf,
};

use ipnet::IpNet;
use sdm_common::{CIDR_HEADER_BITS, LOOPBACK_ENFORCE};
use serde::{Deserialize, Serialize};

use crate::{
    dns::resolver::HostReport,
    kernel::dataplane::{AttachRecord, DataplaneError, Layout, Maps},
    policy::Rule,
};

/// What the agent writes after every policy change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateFile {
    pub pid: u32,
    pub config: Option<PathBuf>,
    pub rules: Vec<Rule>,
    pub dns: Vec<HostReport>,
    /// Why the agent's last attempt to apply the policy failed (the maps
    /// keep the previous policy meanwhile); `None` once one succeeds.
    #[serde(default)]
    pub policy_error: Option<String>,
    /// Unix seconds of the last write.
    pub updated: u64,
    /// What the DNS answers in `dns` were asked of and for: see
    /// [`dns_fingerprint`]. A restarted agent adopts them as "last good"
    /// only when its own fingerprint is the same.
    #[serde(default)]
    pub dns_fingerprint: Option<String>,
    /// Flows evicted from the flow store to stay within `[state]
    /// max_bytes`, since the agent started.
    #[serde(default)]
    pub flow_store_evictions: u64,
}

/// A fingerprint of the resolvers asked and the names resolved: answers
/// recorded by an agent with another config or other resolvers must not
/// become this agent's "last good" addresses (they could be what another
/// resolver, no longer trusted, said). FNV-1a over the sorted lists: stable
/// across builds, unlike std's hasher.
pub fn dns_fingerprint(resolvers: &[IpAddr], names: &[String]) -> String {
    let mut r: Vec<String> = resolvers
        .iter()
        .map(|a| a.to_canonical().to_string())
        .collect();
    r.sort();
    r.dedup();
    let mut n: Vec<&str> = names.iter().map(String::as_str).collect();
    n.sort_unstable();
    n.dedup();
    let text = format!("v1\nresolvers={}\nnames={}", r.join(","), n.join(","));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl StateFile {
    pub fn path(layout: &Layout) -> PathBuf {
        layout.run_dir.join("state.json")
    }

    pub fn read(layout: &Layout) -> Option<Self> {
        serde_json::from_str(&fs::read_to_string(Self::path(layout)).ok()?).ok()
    }

    /// The recorded DNS answers, if they were recorded for `fingerprint`
    /// (the same resolvers and names); `None` otherwise, also for a file
    /// from an agent that recorded no fingerprint.
    pub fn dns_for(&self, fingerprint: &str) -> Option<&[HostReport]> {
        (self.dns_fingerprint.as_deref() == Some(fingerprint)).then_some(self.dns.as_slice())
    }

    /// Removes the state file (`detach`: nothing of this run may outlive
    /// it). Returns whether there was one.
    pub fn remove(layout: &Layout) -> std::io::Result<bool> {
        match fs::remove_file(Self::path(layout)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn write(&self, layout: &Layout) -> std::io::Result<()> {
        fs::create_dir_all(&layout.run_dir)?;
        let path = Self::path(layout);
        let tmp = path.with_extension("json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        fs::rename(&tmp, &path)
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl From<sdm_common::Counter> for Count {
    fn from(c: sdm_common::Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleStatus {
    pub name: String,
    pub id: u32,
    /// From the agent's state file; absent if the agent never wrote one.
    pub direction: Option<String>,
    pub protos: Vec<String>,
    pub ports: Vec<String>,
    pub targets: Vec<String>,
    pub required: Option<bool>,
    pub origin: Option<String>,
    /// In the live policy slot right now.
    pub active: bool,
    /// Addresses and CIDRs the live maps hold for this rule.
    pub addresses: Vec<String>,
    pub egress: Count,
    pub ingress: Count,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DenyStatus {
    pub mode: String,
    pub direction: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub mode: String,
    pub loopback: String,
    pub generation: u32,
    pub cgroup: Option<PathBuf>,
    pub pin_root: PathBuf,
    pub agent_pid: Option<u32>,
    pub agent_running: bool,
    pub rules: Vec<RuleStatus>,
    pub denied: Vec<DenyStatus>,
    pub dns: Vec<HostReport>,
    /// The agent's last failure to apply the policy, if the live maps hold
    /// an older one (see [`StateFile::policy_error`]).
    #[serde(default)]
    pub policy_error: Option<String>,
    /// Answers the kernel's DNS parser handled, by result
    /// (`sdm_common::DnsResult::name`).
    #[serde(default)]
    pub dns_answers: BTreeMap<String, u64>,
    /// Addresses of allowed answers not learned because the learned-address
    /// table (`LEARNED_ENTRIES` per family) was full.
    #[serde(default)]
    pub dns_learn_table_full: u64,
    /// `[dns] queries`: "any" or "policy".
    #[serde(default)]
    pub dns_queries_mode: String,
    /// Queries to the trusted resolvers judged by the kernel under
    /// `[dns] queries = "policy"`, by verdict (`sdm_common::DnsQueryVerdict::name`).
    #[serde(default)]
    pub dns_queries: BTreeMap<String, u64>,
    /// Addresses the kernel learned from DNS answers and still allows.
    #[serde(default)]
    pub learned: Vec<LearnedStatus>,
    /// Processes in the policed cgroup (or below) that hold CAP_NET_RAW or
    /// CAP_NET_ADMIN: they can bypass the cgroup programs.
    #[serde(default)]
    pub bypass_capable: Vec<crate::kernel::caps::BypassCapable>,
    /// Flows evicted from the flow store to stay within `[state]
    /// max_bytes` (as of the agent's last state write).
    #[serde(default)]
    pub flow_store_evictions: u64,
    /// The interfaces whose egress the backstop watches for frames of the
    /// policed cgroup's packet sockets (empty: off).
    #[serde(default)]
    pub backstop: Vec<String>,
}

/// An address learned in the kernel from a DNS answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LearnedStatus {
    pub address: std::net::IpAddr,
    /// The policy hostname (or `*.wildcard`) the answer was for.
    pub hostname: Option<String>,
    /// Seconds until new connections to it are no longer allowed.
    pub expires_in_secs: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: the kernel's bpf_ktime_get_ns clock.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

pub fn mode_name(mode: u32) -> &'static str {
    if mode == sdm_common::KernelMode::Enforce {
        "enforce"
    } else {
        "audit"
    }
}

pub fn dir_name(dir: u8) -> &'static str {
    if dir == sdm_common::TrafficDir::Egress {
        "egress"
    } else {
        "ingress"
    }
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid != 0 && unsafe { libc::kill(pid as i32, 0) } == 0
}

impl Status {
    /// A status with a row in every family (rules, denied, DNS, answers,
    /// queries, learned), for the tests that render it: the HTTP API, the
    /// metrics and the Grafana dashboard's series check. Not used by the
    /// agent itself.
    #[doc(hidden)]
    pub fn sample() -> Status {
        Status {
            mode: "audit".into(),
            loopback: "pass".into(),
            generation: 4,
            cgroup: Some(PathBuf::from("/sys/fs/cgroup/test")),
            pin_root: PathBuf::from("/sys/fs/bpf/sdm"),
            agent_pid: Some(1),
            agent_running: true,
            rules: vec![RuleStatus {
                name: "gateway/egress/app".into(),
                id: 1,
                direction: Some("egress".into()),
                protos: vec!["tcp".into()],
                ports: vec!["443".into()],
                targets: vec!["app.strongdm.com".into()],
                required: Some(true),
                origin: Some("guide".into()),
                active: true,
                addresses: vec!["192.0.2.10".into()],
                egress: Count {
                    packets: 5,
                    bytes: 500,
                },
                ingress: Count {
                    packets: 4,
                    bytes: 400,
                },
            }],
            denied: vec![DenyStatus {
                mode: "audit".into(),
                direction: "egress".into(),
                reason: "no_rule".into(),
                packets: 7,
                bytes: 700,
            }],
            dns: vec![HostReport {
                hostname: "app.strongdm.com".into(),
                addresses: vec![IpAddr::from([192, 0, 2, 10])],
                failures: 2,
                last_error: None,
                next_refresh_secs: 30,
                resolved: true,
            }],
            dns_answers: [("learned".to_string(), 3), ("unasked".to_string(), 1)]
                .into_iter()
                .collect(),
            dns_learn_table_full: 0,
            dns_queries_mode: "policy".into(),
            dns_queries: [("allowed".to_string(), 5), ("refused".to_string(), 2)]
                .into_iter()
                .collect(),
            learned: vec![LearnedStatus {
                address: IpAddr::from([192, 0, 2, 11]),
                hostname: Some("app.strongdm.com".into()),
                expires_in_secs: 60,
            }],
            bypass_capable: vec![],
            flow_store_evictions: 0,
            backstop: vec![],
            policy_error: None,
        }
    }
}

/// Reads everything. `maps` must be open on the layout's pins.
pub fn snapshot(layout: &Layout, maps: &mut Maps) -> Result<Status, DataplaneError> {
    let cfg = maps.config()?;
    let names = maps.rule_names()?;
    let live = maps.live()?;
    let mut addrs: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for (k, id) in &live.exact4 {
        addrs
            .entry(*id)
            .or_default()
            .insert(IpAddr::from(k.addr).to_string());
    }
    for (k, id) in &live.exact6 {
        addrs
            .entry(*id)
            .or_default()
            .insert(IpAddr::from(k.addr).to_string());
    }
    for ((plen, k), id) in &live.cidr4 {
        let len = (plen - CIDR_HEADER_BITS) as u8;
        if let Ok(n) = IpNet::new(IpAddr::from(k.addr), len) {
            addrs.entry(*id).or_default().insert(n.to_string());
        }
    }
    for ((plen, k), id) in &live.cidr6 {
        let len = (plen - CIDR_HEADER_BITS) as u8;
        if let Ok(n) = IpNet::new(IpAddr::from(k.addr), len) {
            addrs.entry(*id).or_default().insert(n.to_string());
        }
    }
    let state = StateFile::read(layout);
    let details: BTreeMap<&str, &Rule> = state
        .as_ref()
        .map(|s| s.rules.iter().map(|r| (r.name.as_str(), r)).collect())
        .unwrap_or_default();
    let mut rules = Vec::new();
    for (id, name) in &names {
        let active = live.rules.contains(id);
        let rule = details.get(name.as_str());
        if !active && rule.is_none() {
            continue; // a rule of an earlier policy, kept only for its id
        }
        rules.push(RuleStatus {
            name: name.clone(),
            id: *id,
            direction: rule.map(|r| r.direction.to_string()),
            protos: rule
                .map(|r| r.protos.iter().map(|p| p.to_string()).collect())
                .unwrap_or_default(),
            ports: rule
                .map(|r| r.ports.iter().map(|p| p.to_string()).collect())
                .unwrap_or_default(),
            targets: rule
                .map(|r| r.targets.iter().map(|t| t.to_string()).collect())
                .unwrap_or_default(),
            required: rule.map(|r| r.required),
            origin: rule.map(|r| r.origin.clone()),
            active,
            addresses: addrs
                .remove(id)
                .map(|s| s.into_iter().collect())
                .unwrap_or_default(),
            egress: maps
                .rule_counter(*id, sdm_common::TrafficDir::Egress)?
                .into(),
            ingress: maps
                .rule_counter(*id, sdm_common::TrafficDir::Ingress)?
                .into(),
        });
    }
    // Keep the policy's order where the agent recorded it.
    if let Some(s) = &state {
        let order: BTreeMap<&str, usize> = s
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        rules.sort_by_key(|r| order.get(r.name.as_str()).copied().unwrap_or(usize::MAX));
    }
    let mut denied = Vec::new();
    for enforce in [false, true] {
        for dir in [
            sdm_common::TrafficDir::Egress,
            sdm_common::TrafficDir::Ingress,
        ] {
            for reason in sdm_common::DenyReason::ALL {
                let c = maps.deny_counter(enforce, dir, reason)?;
                denied.push(DenyStatus {
                    mode: if enforce { "enforce" } else { "audit" }.into(),
                    direction: dir.name().into(),
                    reason: reason.name().into(),
                    packets: c.packets,
                    bytes: c.bytes,
                });
            }
        }
    }
    let dns_queries = maps
        .dns_query_stats()?
        .iter()
        .zip(sdm_common::DnsQueryVerdict::ALL.map(sdm_common::DnsQueryVerdict::name))
        .map(|(n, name)| (name.to_string(), *n))
        .collect();
    let dns_queries_mode = if cfg.dns_queries == sdm_common::DNS_QUERIES_POLICY {
        "policy"
    } else {
        "any"
    }
    .to_string();
    let dns_answers = maps
        .dns_stats()?
        .iter()
        .zip(sdm_common::DnsResult::ALL.map(sdm_common::DnsResult::name))
        .map(|(n, name)| (name.to_string(), *n))
        .collect();
    // Host ids back to the hostnames of the recorded policy.
    let host_names: BTreeMap<u32, String> = state
        .as_ref()
        .map(|s| {
            s.rules
                .iter()
                .flat_map(|r| r.targets.iter())
                .filter_map(|t| match t {
                    crate::policy::Target::Host(h) => sdm_common::dns_name_key(h)
                        .map(|(k, _)| (sdm_common::dns_host_id(k), h.clone())),
                    crate::policy::Target::Cidr(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let now = monotonic_ns();
    let mut learned: Vec<LearnedStatus> = maps
        .learned()?
        .into_iter()
        .filter(|(_, _, expires)| *expires > now)
        .map(|(address, host, expires)| LearnedStatus {
            address,
            hostname: host_names.get(&host).cloned(),
            expires_in_secs: (expires - now) / 1_000_000_000,
        })
        .collect();
    learned.sort_by(|a, b| (&a.hostname, a.address).cmp(&(&b.hostname, b.address)));
    let record = AttachRecord::read(layout);
    let agent_pid = state
        .as_ref()
        .map(|s| s.pid)
        .or(record.as_ref().map(|r| r.pid));
    let backstop = record
        .as_ref()
        .map(|r| r.backstop.clone())
        .unwrap_or_default();
    let cgroup = record.map(|r| r.cgroup);
    Ok(Status {
        mode: mode_name(cfg.mode).into(),
        loopback: if cfg.loopback == LOOPBACK_ENFORCE {
            "enforce"
        } else {
            "pass"
        }
        .into(),
        generation: cfg.generation,
        cgroup,
        pin_root: layout.pin_root.clone(),
        agent_running: agent_pid.is_some_and(pid_alive),
        agent_pid,
        rules,
        denied,
        policy_error: state.as_ref().and_then(|s| s.policy_error.clone()),
        flow_store_evictions: state.as_ref().map_or(0, |s| s.flow_store_evictions),
        dns: state.map(|s| s.dns).unwrap_or_default(),
        dns_answers,
        dns_learn_table_full: maps.learn_table_full()?,
        dns_queries_mode,
        dns_queries,
        learned,
        // Filled by `add_bypass_capable` where a person reads it: walking
        // /proc is not for every metrics scrape.
        bypass_capable: Vec::new(),
        backstop,
    })
}

/// Adds the processes of the status's cgroup (and below) that can bypass
/// the cgroup programs ([`crate::kernel::caps`]).
pub fn add_bypass_capable(s: &mut Status) {
    s.bypass_capable = s
        .cgroup
        .as_deref()
        .map(|cg| crate::kernel::caps::bypass_capable(cg, s.agent_pid.filter(|_| s.agent_running)))
        .unwrap_or_default();
}

/// The human view of [`Status`].
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "mode:       {} (loopback: {})", s.mode, s.loopback);
    let cg = s
        .cgroup
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "unknown".into());
    let _ = writeln!(o, "cgroup:     {cg}");
    if !s.backstop.is_empty() {
        let _ = writeln!(
            o,
            "backstop:   {} (packet sockets' frames judged at tc egress)",
            s.backstop.join(", ")
        );
    }
    if s.dns_queries_mode == "policy" {
        let n = |k: &str| s.dns_queries.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "dns queries: policy names only ({} allowed, {} refused, {} would be refused in audit)",
            n("allowed"),
            n("refused"),
            n("would_refuse")
        );
    }
    let _ = writeln!(o, "pins:       {}", s.pin_root.display());
    let agent = match (s.agent_pid, s.agent_running) {
        (Some(p), true) => format!("running (pid {p})"),
        (Some(p), false) => {
            format!("not running (last pid {p}); enforcement continues from the pinned maps")
        }
        (None, _) => "unknown".into(),
    };
    let _ = writeln!(o, "agent:      {agent}");
    let _ = writeln!(o, "generation: {}", s.generation);
    if s.flow_store_evictions > 0 {
        let _ = writeln!(
            o,
            "flow store: {} flows evicted to stay within [state] max_bytes",
            s.flow_store_evictions
        );
    }
    if !s.bypass_capable.is_empty() {
        let _ = write!(o, "\n{}", crate::kernel::caps::render(&s.bypass_capable));
    }
    if let Some(e) = &s.policy_error {
        let _ = writeln!(
            o,
            "policy:     NOT UPDATED, the previous policy stays in force: {e}"
        );
    }
    let _ = writeln!(o, "\nRULES");
    let _ = writeln!(
        o,
        "{:<44} {:<8} {:<10} {:>12} {:>12}  addresses",
        "name", "dir", "ports", "egress pkts", "ingress pkts"
    );
    for r in &s.rules {
        let _ = writeln!(
            o,
            "{:<44} {:<8} {:<10} {:>12} {:>12}  {}{}",
            r.name,
            r.direction.as_deref().unwrap_or("?"),
            format!("{}/{}", r.protos.join("+"), r.ports.join(",")),
            r.egress.packets,
            r.ingress.packets,
            if r.addresses.is_empty() {
                "-".to_string()
            } else {
                r.addresses.join(" ")
            },
            if r.active {
                ""
            } else {
                "  (not in the live policy)"
            }
        );
    }
    let _ = writeln!(o, "\nDENIED (packets)");
    for d in s.denied.iter().filter(|d| d.packets > 0) {
        let _ = writeln!(
            o,
            "  {:<8} {:<8} {:<17} {:>12}",
            d.mode, d.direction, d.reason, d.packets
        );
    }
    if s.denied.iter().all(|d| d.packets == 0) {
        let _ = writeln!(o, "  none");
    }
    let _ = writeln!(o, "\nDNS");
    for h in &s.dns {
        let addrs: Vec<String> = h.addresses.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            o,
            "  {:<40} {}  failures {}{}",
            h.hostname,
            if addrs.is_empty() {
                "-".into()
            } else {
                addrs.join(" ")
            },
            h.failures,
            h.last_error
                .as_ref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        );
    }
    if s.dns.is_empty() {
        let _ = writeln!(o, "  no state from the agent");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> Status {
        Status {
            rules: vec![],
            denied: vec![],
            dns: vec![],
            learned: vec![],
            ..Status::sample()
        }
    }

    #[test]
    fn evictions_and_bypass_capable_processes_are_shown() {
        let quiet = render(&empty());
        assert!(
            !quiet.contains("evicted") && !quiet.contains("bypass"),
            "{quiet}"
        );
        let mut s = empty();
        s.flow_store_evictions = 1234;
        s.bypass_capable = vec![crate::kernel::caps::BypassCapable {
            pid: 4242,
            comm: "relay".into(),
            cgroup: "/sys/fs/cgroup/x".into(),
            caps: vec!["CAP_NET_RAW".into()],
        }];
        let text = render(&s);
        assert!(text.contains("1234 flows evicted"), "{text}");
        assert!(text.contains("can bypass the cgroup programs"), "{text}");
        assert!(text.contains("pid 4242"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["flow_store_evictions"], 1234);
        assert_eq!(json["bypass_capable"][0]["caps"][0], "CAP_NET_RAW");
    }

    /// A state file of an older agent (no fingerprint, no evictions) still
    /// reads; its DNS answers are not adopted.
    #[test]
    fn an_older_state_file_reads_without_a_fingerprint() {
        let old = r#"{"pid":1,"config":null,"rules":[],"dns":[],"updated":0}"#;
        let f: StateFile = serde_json::from_str(old).unwrap();
        assert_eq!(f.dns_fingerprint, None);
        assert_eq!(f.flow_store_evictions, 0);
        assert!(f.dns_for(&dns_fingerprint(&[], &[])).is_none());
    }
}
