//! The families with a series per rule or per hostname, and what keeps
//! their number bounded: by default the rules of `[[resource]]` and
//! `[[secret_store]]` entries, and the hostnames only they name, are summed
//! by the Ports Guide row they are listed under
//! ([`crate::policy::compile::listed_row`], e.g. `gateway/egress/resource`),
//! so a host's series do not grow with its resources. `[metrics]
//! per_resource = true` gives each of them its own series again. The
//! `sdm_resource_*` families (one series per row) are served either way.

use std::collections::{BTreeMap, HashMap, HashSet};

use prometheus_client::encoding::DescriptorEncoder;

use super::{counter_family, gauge_family};
use crate::{
    api::status::{Count, Status},
    policy::compile::listed_row,
};

/// Series of a rule with series of its own: packets and bytes, egress and
/// ingress.
pub const SERIES_PER_RULE: usize = 4;
/// Most series of a hostname with series of its own:
/// `sdm_hostname_addresses`, `sdm_dns_failures_total` and
/// `sdm_dns_learned_addresses` (only while it has learned addresses).
pub const SERIES_PER_HOSTNAME: usize = 3;
/// Series of a guide row of listed entries: its summed rule counters
/// ([`SERIES_PER_RULE`]) and its six `sdm_resource_*` series.
pub const SERIES_PER_LISTED_ROW: usize = SERIES_PER_RULE + 6;

/// Which rules and hostnames get series of their own, for one status.
pub(super) struct Shape<'a> {
    per_resource: bool,
    /// The guide rows of listed entries, in the policy's order.
    rows: Vec<&'a str>,
    /// Hostname -> the guide row of the first listed rule naming it.
    listed_host: HashMap<&'a str, &'a str>,
    /// Hostnames named by a rule with series of its own.
    own_host: HashSet<&'a str>,
}

impl<'a> Shape<'a> {
    pub(super) fn new(s: &'a Status, per_resource: bool) -> Self {
        let mut shape = Shape {
            per_resource,
            rows: Vec::new(),
            listed_host: HashMap::new(),
            own_host: HashSet::new(),
        };
        for r in &s.rules {
            // Targets are hostnames or CIDRs; a CIDR never equals a
            // hostname of the DNS report, so it is harmless here.
            let targets = r.targets.iter().map(String::as_str);
            match listed_row(&r.name) {
                Some(row) => {
                    if !shape.rows.contains(&row) {
                        shape.rows.push(row);
                    }
                    for t in targets {
                        shape.listed_host.entry(t).or_insert(row);
                    }
                }
                None => shape.own_host.extend(targets),
            }
        }
        shape
    }

    /// The `rule` label a rule's counters are served under.
    fn rule_label(&self, name: &'a str) -> &'a str {
        match listed_row(name) {
            Some(row) if !self.per_resource => row,
            _ => name,
        }
    }

    /// Whether hostname `h` has series of its own. A name no recorded rule
    /// names (the agent's report of a policy being replaced) keeps them.
    fn own_series(&self, h: &str) -> bool {
        self.per_resource || self.own_host.contains(h) || !self.listed_host.contains_key(h)
    }
}

fn add(a: &mut Count, b: Count) {
    a.packets = a.packets.saturating_add(b.packets);
    a.bytes = a.bytes.saturating_add(b.bytes);
}

/// Packets and bytes allowed by each rule (or each guide row of listed
/// entries), by direction.
pub(super) fn encode_rules(
    s: &Status,
    shape: &Shape<'_>,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    // In the policy's order; a row at the place of its first rule.
    let mut labels: Vec<&str> = Vec::new();
    let mut sums: HashMap<&str, [Count; 2]> = HashMap::new();
    for r in &s.rules {
        let label = shape.rule_label(&r.name);
        let sum = sums.entry(label).or_insert_with(|| {
            labels.push(label);
            [Count::default(); 2]
        });
        add(&mut sum[0], r.egress);
        add(&mut sum[1], r.ingress);
    }
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    for label in labels {
        let [egress, ingress] = sums[label];
        for (dir, c) in [("egress", egress), ("ingress", ingress)] {
            let labels = vec![
                ("rule", label.to_string()),
                ("direction", dir.to_string()),
                ("verdict", "allow".to_string()),
            ];
            packets.push((labels.clone(), c.packets));
            bytes.push((labels, c.bytes));
        }
    }
    counter_family(encoder, "sdm_rule_packets", "Packets allowed by each rule, by direction (replies to an egress rule count under ingress). The rules of [[resource]] and [[secret_store]] entries are summed under their Ports Guide row (rule=\"gateway/egress/resource\") unless [metrics] per_resource = true.", &packets)?;
    counter_family(
        encoder,
        "sdm_rule_bytes",
        "Bytes allowed by each rule (or Ports Guide row of resources, as sdm_rule_packets), by direction.",
        &bytes,
    )
}

/// The agent's resolution of each hostname with series of its own:
/// addresses allowed, failures.
pub(super) fn encode_hostnames(
    s: &Status,
    shape: &Shape<'_>,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let own = || s.dns.iter().filter(|h| shape.own_series(&h.hostname));
    let addrs: Vec<_> = own()
        .map(|h| {
            (
                vec![("hostname", h.hostname.clone())],
                h.addresses.len() as i64,
            )
        })
        .collect();
    gauge_family(encoder, "sdm_hostname_addresses", "Addresses currently allowed for each hostname (latest answer plus those in their grace period). Hostnames only [[resource]] and [[secret_store]] entries name are in sdm_resource_hostname_addresses unless [metrics] per_resource = true.", &addrs)?;
    let failures: Vec<_> = own()
        .map(|h| (vec![("hostname", h.hostname.clone())], h.failures))
        .collect();
    counter_family(
        encoder,
        "sdm_dns_failures",
        "Failed DNS lookups per hostname (the last good answer is kept); resources' hostnames as sdm_hostname_addresses.",
        &failures,
    )
}

/// Addresses the kernel learned from DNS answers, per hostname with
/// series of its own.
pub(super) fn encode_learned(
    s: &Status,
    shape: &Shape<'_>,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mut per_host: BTreeMap<&str, i64> = BTreeMap::new();
    for l in &s.learned {
        let h = l.hostname.as_deref().unwrap_or("unknown");
        if shape.own_series(h) {
            *per_host.entry(h).or_default() += 1;
        }
    }
    let learned: Vec<_> = per_host
        .into_iter()
        .map(|(h, n)| (vec![("hostname", h.to_string())], n))
        .collect();
    gauge_family(
        encoder,
        "sdm_dns_learned_addresses",
        "Addresses learned in the kernel from DNS answers and not expired, per hostname (resources' hostnames as sdm_hostname_addresses).",
        &learned,
    )
}

/// One guide row of listed entries, summed.
#[derive(Default)]
struct RowSums {
    rules: i64,
    hostnames: i64,
    unresolved: i64,
    addresses: i64,
    failures: u64,
    learned: i64,
}

/// The `sdm_resource_*` families: the entries of each guide row, summed.
pub(super) fn encode_listed(
    s: &Status,
    shape: &Shape<'_>,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mut sums: HashMap<&str, RowSums> = shape
        .rows
        .iter()
        .map(|r| (*r, RowSums::default()))
        .collect();
    for r in &s.rules {
        if let Some(row) = listed_row(&r.name).and_then(|row| sums.get_mut(row)) {
            row.rules += 1;
        }
    }
    let row_of = |h: &str| shape.listed_host.get(h).copied();
    for h in &s.dns {
        if let Some(row) = row_of(&h.hostname).and_then(|row| sums.get_mut(row)) {
            row.hostnames += 1;
            row.unresolved += i64::from(h.addresses.is_empty());
            row.addresses += h.addresses.len() as i64;
            row.failures = row.failures.saturating_add(h.failures);
        }
    }
    for l in &s.learned {
        let row = l.hostname.as_deref().and_then(row_of);
        if let Some(row) = row.and_then(|row| sums.get_mut(row)) {
            row.learned += 1;
        }
    }
    let rows = |value: fn(&RowSums) -> i64| -> Vec<_> {
        shape
            .rows
            .iter()
            .map(|row| (vec![("rule", row.to_string())], value(&sums[row])))
            .collect()
    };
    for (name, help, value) in [
        ("sdm_resource_rules", "Rules of [[resource]] and [[secret_store]] entries (one each), by the Ports Guide row they are listed under (rule=\"gateway/egress/resource\").", (|r| r.rules) as fn(&RowSums) -> i64),
        ("sdm_resource_hostnames", "Hostnames of [[resource]] and [[secret_store]] entries the agent resolves, by Ports Guide row (a name in several rows counts in the first).", |r| r.hostnames),
        ("sdm_resource_hostnames_unresolved", "Of sdm_resource_hostnames, those with no address allowed now: their resources are unreachable until the name resolves (status lists them).", |r| r.unresolved),
        ("sdm_resource_hostname_addresses", "Addresses allowed for the hostnames of sdm_resource_hostnames, summed.", |r| r.addresses),
        ("sdm_resource_dns_learned_addresses", "Addresses learned in the kernel from DNS answers for the hostnames of sdm_resource_hostnames, not expired.", |r| r.learned),
    ] {
        gauge_family(encoder, name, help, &rows(value))?;
    }
    let failures: Vec<_> = shape
        .rows
        .iter()
        .map(|row| (vec![("rule", row.to_string())], sums[row].failures))
        .collect();
    counter_family(
        encoder,
        "sdm_resource_dns_failures",
        "Failed DNS lookups of the hostnames of sdm_resource_hostnames, summed (a removed resource takes its failures with it: a reset to Prometheus).",
        &failures,
    )
}
