//! [`snapshot`]: the status read from the pinned maps, with what the
//! agent's state file adds.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use sdm_common::{CIDR_HEADER_BITS, LOOPBACK_ENFORCE};

use super::{mode_name, monotonic_ns, DenyStatus, LearnedStatus, RuleStatus, StateFile, Status};
use crate::{
    kernel::dataplane::{AttachRecord, DataplaneError, Layout, Maps},
    kernel::entries::Entries,
    policy::{Rule, Target},
};

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid != 0 && unsafe { libc::kill(pid as i32, 0) } == 0
}

/// Reads everything. `maps` must be open on the layout's pins.
pub fn snapshot(layout: &Layout, maps: &mut Maps) -> Result<Status, DataplaneError> {
    let cfg = maps.config()?;
    let state = StateFile::read(layout);
    let rules = rule_statuses(maps, state.as_ref())?;
    let denied = deny_statuses(maps)?;
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
    let learned = learned_statuses(maps, state.as_ref())?;
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
    let rules_active = rules.iter().filter(|r| r.active).count();
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
        rule_capacity: maps.rule_capacity(),
        last_reload: state.as_ref().and_then(|s| s.last_reload.clone()),
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
        rules_active,
        rules_page: None,
        dns_page: None,
        learned_page: None,
        xdp: xdp_status(layout),
    })
}

/// The XDP shield's interfaces (from its link pins) and counters; `None`
/// while it is on no interface.
fn xdp_status(layout: &Layout) -> Option<super::XdpStatus> {
    let interfaces = crate::kernel::xdp::attached(layout);
    if interfaces.is_empty() {
        return None;
    }
    let packets = crate::kernel::xdp::counters(layout)
        .unwrap_or_default()
        .into_iter()
        .map(|(v, n)| (v.name().to_string(), n))
        .collect();
    Some(super::XdpStatus {
        interfaces,
        packets,
    })
}

/// Rule id -> the addresses and CIDRs the live maps hold for it.
fn live_addresses(live: &Entries) -> BTreeMap<u32, BTreeSet<String>> {
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
    range_addresses(live, &mut addrs);
    addrs
}

/// The prefixes of the port range maps, under every rule of their port
/// set (a prefix inside another holds the covering prefix's ranges too).
fn range_addresses(live: &Entries, addrs: &mut BTreeMap<u32, BTreeSet<String>>) {
    let mut set_rules: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for ((_, k), id) in &live.port_sets {
        set_rules
            .entry(u32::from_be_bytes(k.set))
            .or_default()
            .insert(*id);
    }
    let nets = live
        .range4
        .iter()
        .map(|((plen, k), set)| (IpAddr::from(k.addr), *plen, *set))
        .chain(
            live.range6
                .iter()
                .map(|((plen, k), set)| (IpAddr::from(k.addr), *plen, *set)),
        );
    for (addr, plen, set) in nets {
        let full = if addr.is_ipv4() { 32 } else { 128 };
        let len = (plen - CIDR_HEADER_BITS) as u8;
        let Ok(n) = IpNet::new(addr, len) else {
            continue;
        };
        let shown = if len == full {
            addr.to_string()
        } else {
            n.to_string()
        };
        for id in set_rules.get(&set).into_iter().flatten() {
            addrs.entry(*id).or_default().insert(shown.clone());
        }
    }
}

/// Every rule of the live policy (and every rule the agent recorded), with
/// its details from the state file, addresses and counters, in the
/// policy's order where the agent recorded it.
fn rule_statuses(
    maps: &mut Maps,
    state: Option<&StateFile>,
) -> Result<Vec<RuleStatus>, DataplaneError> {
    let names = maps.rule_names()?;
    let live = maps.live()?;
    let mut addrs = live_addresses(&live);
    let details: BTreeMap<&str, &Rule> = state
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
    if let Some(s) = state {
        let order: BTreeMap<&str, usize> = s
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        rules.sort_by_key(|r| order.get(r.name.as_str()).copied().unwrap_or(usize::MAX));
    }
    Ok(rules)
}

/// One row per (mode, direction, reason), zeros included.
fn deny_statuses(maps: &mut Maps) -> Result<Vec<DenyStatus>, DataplaneError> {
    let mut denied = Vec::new();
    for enforce in [false, true] {
        for dir in sdm_common::TrafficDir::ALL {
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
    Ok(denied)
}

/// The addresses learned from DNS answers and not expired, named by the
/// hostnames of the recorded policy.
fn learned_statuses(
    maps: &mut Maps,
    state: Option<&StateFile>,
) -> Result<Vec<LearnedStatus>, DataplaneError> {
    // Host ids back to the hostnames of the recorded policy.
    let host_names: BTreeMap<u32, String> = state
        .map(|s| {
            s.rules
                .iter()
                .flat_map(|r| r.targets.iter())
                .filter_map(|t| match t {
                    Target::Host(h) => sdm_common::dns_name_key(h)
                        .map(|(k, _)| (sdm_common::dns_host_id(k), h.clone())),
                    Target::Cidr(_) => None,
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
    Ok(learned)
}

#[cfg(test)]
mod tests;
