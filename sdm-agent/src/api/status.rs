//! What is enforced right now, read from the kernel: the pinned maps hold
//! the mode, the live policy and every counter, so this works while the
//! agent is down. The agent adds what only it knows (rule details, DNS
//! state) in RUN_DIR/state.json.

use std::{collections::BTreeMap, fs, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{dns::resolver::HostReport, kernel::dataplane::Layout, policy::Rule};

mod page;
mod render;
mod sample;
mod snapshot;
#[cfg(test)]
mod tests;

pub use page::{
    Order, PageError, PageInfo, PageParams, PageQuery, Pageable, DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT, MAX_QUERY_LEN, PARAMS,
};
pub use render::render;
pub use snapshot::snapshot;

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
    /// The agent's last config reload (SIGHUP), if there was one.
    #[serde(default)]
    pub last_reload: Option<ReloadStatus>,
}

/// The outcome of the agent's last config reload (SIGHUP), and the counts
/// since it started (also `sdm_config_reloads_total` and
/// `sdm_config_reload_errors_total`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Unix seconds when it finished.
    pub at: u64,
    /// Whether the file's config is the running one now (applied, or the
    /// same as before); `false`: refused, the previous config runs on.
    pub ok: bool,
    /// The policy generation live after it.
    pub generation: u32,
    /// How long it took (reading, resolving the new names, writing).
    #[serde(default)]
    pub duration_ms: u64,
    /// Why it was refused.
    pub error: Option<String>,
    /// Reloads that succeeded since the agent started.
    pub applied: u64,
    /// Reloads refused since the agent started.
    pub refused: u64,
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
        // Streamed and compact: at 10,000 rules the pretty text was 8 MB
        // held in memory at once (and the agent's peak RSS with it).
        let mut out = std::io::BufWriter::new(fs::File::create(&tmp)?);
        serde_json::to_writer(&mut out, self).map_err(std::io::Error::other)?;
        std::io::Write::flush(&mut out)?;
        drop(out);
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
    /// Rules in the live policy, of all of `rules` (before any paging).
    #[serde(default)]
    pub rules_active: usize,
    /// Set when `rules` is a page (see [`Status::paginate`]): the totals
    /// and the filter, sort and window it is of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_page: Option<PageInfo>,
    /// Set when `dns` is a page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_page: Option<PageInfo>,
    /// Set when `learned` is a page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_page: Option<PageInfo>,
    /// Rules the pinned rule maps hold (`Maps::rule_capacity`), sized from
    /// the policy at load time; a policy past it needs a restart.
    #[serde(default)]
    pub rule_capacity: u32,
    /// The agent's last config reload (SIGHUP), from its state file.
    #[serde(default)]
    pub last_reload: Option<ReloadStatus>,
    /// The XDP shield: its interfaces and counters (`None`: off).
    #[serde(default)]
    pub xdp: Option<XdpStatus>,
}

/// The XDP shield in [`Status`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct XdpStatus {
    /// Each interface and how the program runs there ("native" in the
    /// driver, "generic" in the stack).
    pub interfaces: Vec<crate::kernel::xdp::Shielded>,
    /// Packets by verdict (`sdm_common::XdpVerdict::name`): "passed", or
    /// the reason of a drop (counted, not dropped, in audit mode).
    pub packets: BTreeMap<String, u64>,
}

/// The pages of a [`Status`]'s three long lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusPages {
    pub rules: PageQuery,
    pub dns: PageQuery,
    pub learned: PageQuery,
}

impl Status {
    /// Cuts `rules`, `dns` and `learned` to the pages `pages` asks for and
    /// records what they are pages of (`*_page`).
    pub fn paginate(&mut self, pages: &StatusPages) {
        self.rules_active = self.rules.iter().filter(|r| r.active).count();
        let (rules, info) = pages.rules.apply(std::mem::take(&mut self.rules));
        self.rules = rules;
        self.rules_page = Some(info);
        let (dns, info) = pages.dns.apply(std::mem::take(&mut self.dns));
        self.dns = dns;
        self.dns_page = Some(info);
        let (learned, info) = pages.learned.apply(std::mem::take(&mut self.learned));
        self.learned = learned;
        self.learned_page = Some(info);
    }
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

/// Adds the processes of the status's cgroup (and below) that can bypass
/// the cgroup programs ([`crate::kernel::caps`]).
pub fn add_bypass_capable(s: &mut Status) {
    s.bypass_capable = s
        .cgroup
        .as_deref()
        .map(|cg| crate::kernel::caps::bypass_capable(cg, s.agent_pid.filter(|_| s.agent_running)))
        .unwrap_or_default();
}
