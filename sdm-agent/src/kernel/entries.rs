//! From the policy and the addresses its hostnames resolve to, the exact
//! contents the allowlist maps should have; and the difference between two
//! such contents, so a sync writes only what changed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use sdm_common::{
    dns_host_id, dns_name_key, dns_wire_name, Cidr4, Cidr6, DnsHost, HostPortKey, Key4, Key6,
    PortSetKey, CIDR_HEADER_BITS, MAX_CIDR_ENTRIES, MAX_EXACT_ENTRIES, MAX_HOST_PORTS,
    MAX_RANGE_ENTRIES, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

use crate::policy::{Direction, Policy, Proto, Rule, Target};

pub mod ranges;

use ranges::{Claims, RANGE_EXPAND_MAX};

/// An LPM trie entry: (prefix length in bits, including the 32 bits of
/// direction, protocol and port, then the key data).
pub type Cidr4Entry = (u32, Cidr4);
pub type Cidr6Entry = (u32, Cidr6);
/// A port set trie entry: (prefix length in bits, including the 32 bits of
/// the set id, then the key data).
pub type PortSetEntry = (u32, PortSetKey);

/// What one slot of the allowlist maps holds: key -> rule id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    pub exact4: BTreeMap<Key4, u32>,
    pub exact6: BTreeMap<Key6, u32>,
    pub cidr4: BTreeMap<Cidr4Entry, u32>,
    pub cidr6: BTreeMap<Cidr6Entry, u32>,
    /// (hostname's host id, port, protocol, direction) -> rule: what an
    /// address learned in the kernel from a DNS answer for that hostname
    /// may reach.
    pub host_ports: BTreeMap<HostPortKey, u32>,
    /// Port ranges (see [`ranges`]): (direction, protocol, port 0, address
    /// prefix) -> port set id.
    pub range4: BTreeMap<Cidr4Entry, u32>,
    pub range6: BTreeMap<Cidr6Entry, u32>,
    /// (hostname's host id, port 0, protocol, direction) -> port set id.
    pub host_ranges: BTreeMap<HostPortKey, u32>,
    /// (port set id, port prefix) -> rule.
    pub port_sets: BTreeMap<PortSetEntry, u32>,
    /// Rule ids live in this slot.
    pub rules: BTreeSet<u32>,
}

impl Entries {
    pub fn len(&self) -> usize {
        self.exact4.len()
            + self.exact6.len()
            + self.cidr4.len()
            + self.cidr6.len()
            + self.host_ports.len()
            + self.range_len()
    }
    /// Entries of the range maps alone.
    pub fn range_len(&self) -> usize {
        self.range4.len() + self.range6.len() + self.host_ranges.len() + self.port_sets.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first map of a slot these contents would overflow, if any. Each
    /// slot's maps have fixed capacities; checking before writing keeps a
    /// policy that cannot fit from costing a slot's worth of map writes.
    pub fn overflow(&self) -> Option<Overflow> {
        [
            ("exact IPv4", self.exact4.len(), MAX_EXACT_ENTRIES),
            ("exact IPv6", self.exact6.len(), MAX_EXACT_ENTRIES),
            ("IPv4 CIDR", self.cidr4.len(), MAX_CIDR_ENTRIES),
            ("IPv6 CIDR", self.cidr6.len(), MAX_CIDR_ENTRIES),
            ("hostname port", self.host_ports.len(), MAX_HOST_PORTS),
            ("IPv4 port range", self.range4.len(), MAX_RANGE_ENTRIES),
            ("IPv6 port range", self.range6.len(), MAX_RANGE_ENTRIES),
            (
                "hostname port range",
                self.host_ranges.len(),
                MAX_RANGE_ENTRIES,
            ),
            ("port set", self.port_sets.len(), MAX_RANGE_ENTRIES),
        ]
        .into_iter()
        .find(|(_, need, max)| *need > *max as usize)
        .map(|(what, need, max)| Overflow { what, need, max })
    }
}

/// An allowlist too big for one of the kernel maps.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the allowlist needs {need} {what} entries (one per address, protocol and port; a range of \
     more than 16 ports takes at most 30), more than the {max} the kernel map holds"
)]
pub struct Overflow {
    pub what: &'static str,
    pub need: usize,
    pub max: u32,
}

/// Whether the rules' fixed addresses and CIDRs alone (no hostname
/// resolved yet) overflow a map: such a config can never be applied. Stops
/// counting at the first overflow, so a huge config costs bounded memory.
pub fn static_overflow(policy: &Policy) -> Option<Overflow> {
    let mut out = Entries::default();
    let mut claims = Claims::default();
    for rule in &policy.rules {
        for target in &rule.targets {
            match target {
                Target::Cidr(net) => add_net(&mut out, &mut claims, rule, 0, *net),
                // A hostname's ports are known before it resolves.
                Target::Host(h) => {
                    if let Some((key, _)) = dns_name_key(h) {
                        add_host_ports(&mut out, &mut claims, rule, 0, dns_host_id(key));
                    }
                }
            }
            if let Some(o) = out.overflow() {
                return Some(o);
            }
        }
    }
    // Ranges take at most 30 entries each: counted once, at the end.
    claims.finish(&mut out);
    out.overflow()
}

/// Changes that turn one map's contents into another's.
#[derive(Debug, PartialEq, Eq)]
pub struct Diff<K, V> {
    pub upsert: Vec<(K, V)>,
    pub remove: Vec<K>,
}

impl<K, V> Diff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// The changes from `old` to `new`: entries new or with another value, and
/// keys no longer present.
pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> Diff<K, V> {
    let upsert = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    Diff { upsert, remove }
}

fn dir_code(d: Direction) -> u8 {
    match d {
        Direction::Egress => sdm_common::TrafficDir::Egress,
        Direction::Ingress => sdm_common::TrafficDir::Ingress,
    }
    .into()
}

fn proto_code(p: Proto, v6: bool) -> u8 {
    match (p, v6) {
        (Proto::Tcp, _) => PROTO_TCP,
        (Proto::Udp, _) => PROTO_UDP,
        (Proto::Icmp, false) => PROTO_ICMP,
        (Proto::Icmp, true) => PROTO_ICMPV6,
    }
}

fn is_loopback(net: &IpNet) -> bool {
    net.addr().is_loopback()
}

/// Builds the map contents. `ids` names each rule's id (rules without one
/// are skipped); `resolved` gives the current addresses of a hostname.
/// When two rules claim the same key, the first in policy order keeps it.
pub fn build<'a>(
    policy: &Policy,
    ids: &BTreeMap<String, u32>,
    resolved: impl Fn(&str) -> &'a [IpAddr],
) -> Entries {
    let mut out = Entries::default();
    let mut claims = Claims::default();
    for rule in &policy.rules {
        let Some(&id) = ids.get(&rule.name) else {
            continue;
        };
        out.rules.insert(id);
        for target in &rule.targets {
            match target {
                Target::Host(h) => {
                    for addr in resolved(h) {
                        add_net(&mut out, &mut claims, rule, id, IpNet::from(*addr));
                    }
                    if let Some((key, _)) = dns_name_key(h) {
                        add_host_ports(&mut out, &mut claims, rule, id, dns_host_id(key));
                    }
                }
                Target::Cidr(net) => add_net(&mut out, &mut claims, rule, id, *net),
            }
        }
    }
    claims.finish(&mut out);
    out
}

fn add_host_ports(out: &mut Entries, claims: &mut Claims, rule: &Rule, id: u32, host: u32) {
    let dir = dir_code(rule.direction);
    for proto in &rule.protos {
        for range in &rule.ports {
            if range.len() > RANGE_EXPAND_MAX {
                for v6 in [false, true] {
                    let p = proto_code(*proto, v6);
                    claims.add_host(host, dir, p, id, range.lo, range.hi);
                }
                continue;
            }
            for port in range.iter() {
                // Both address families: the learned address says which.
                for v6 in [false, true] {
                    let key = HostPortKey {
                        host,
                        port,
                        proto: proto_code(*proto, v6),
                        dir,
                    };
                    out.host_ports.entry(key).or_insert(id);
                }
            }
        }
    }
}

/// The hostnames of a policy, as the kernel matches DNS questions: name key
/// -> host id and the name in wire form (`SDM_DNS_NAMES`), wildcards
/// (`*.example.com`) included.
pub fn dns_names(policy: &Policy) -> BTreeMap<u64, DnsHost> {
    policy
        .rules
        .iter()
        .flat_map(|r| r.targets.iter())
        .filter_map(|t| match t {
            Target::Host(h) => {
                let (key, _) = dns_name_key(h)?;
                let (name, len) = dns_wire_name(h)?;
                Some((
                    key,
                    DnsHost {
                        host: dns_host_id(key),
                        len,
                        name,
                    },
                ))
            }
            Target::Cidr(_) => None,
        })
        .collect()
}

/// [`dns_names`] and the `[dns] search` suffixes, as query-only wildcards
/// (`DNS_HOST_QUERY_ONLY`: `[dns] queries = "policy"` lets their names be
/// asked, nothing is learned from the answers). A policy name with the same
/// key keeps its own entry.
pub fn dns_names_and_search(policy: &Policy, search: &[String]) -> BTreeMap<u64, DnsHost> {
    let mut names = dns_names(policy);
    for suffix in search {
        let wildcard = format!("*.{suffix}");
        let (Some((key, _)), Some((name, len))) =
            (dns_name_key(&wildcard), dns_wire_name(&wildcard))
        else {
            continue;
        };
        names.entry(key).or_insert(DnsHost {
            host: sdm_common::DNS_HOST_QUERY_ONLY,
            len,
            name,
        });
    }
    names
}

fn add_net(out: &mut Entries, claims: &mut Claims, rule: &Rule, id: u32, net: IpNet) {
    let net = net.trunc();
    let mut dirs = vec![dir_code(rule.direction)];
    // On loopback both ends are this host: a client connecting to an
    // allowed loopback listener sends from a socket of its own.
    if rule.direction == Direction::Ingress && is_loopback(&net) {
        dirs.push(sdm_common::TrafficDir::Egress.into());
    }
    for dir in dirs {
        for proto in &rule.protos {
            for range in &rule.ports {
                if range.len() > RANGE_EXPAND_MAX {
                    let p = proto_code(*proto, matches!(net, IpNet::V6(_)));
                    claims.add_net(dir, p, net, id, range.lo, range.hi);
                    continue;
                }
                for port in range.iter() {
                    insert(out, &net, dir, *proto, port, id);
                }
            }
        }
    }
}

fn insert(out: &mut Entries, net: &IpNet, dir: u8, proto: Proto, port: u16, id: u32) {
    match net {
        IpNet::V4(n) => {
            let proto = proto_code(proto, false);
            let addr = n.addr().octets();
            if n.prefix_len() == 32 {
                let key = Key4 {
                    addr,
                    port,
                    proto,
                    dir,
                };
                out.exact4.entry(key).or_insert(id);
            } else {
                let key = Cidr4 {
                    dir,
                    proto,
                    port: port.to_be_bytes(),
                    addr,
                };
                let plen = CIDR_HEADER_BITS + u32::from(n.prefix_len());
                out.cidr4.entry((plen, key)).or_insert(id);
            }
        }
        IpNet::V6(n) => {
            let proto = proto_code(proto, true);
            let addr = n.addr().octets();
            if n.prefix_len() == 128 {
                let key = Key6 {
                    addr,
                    port,
                    proto,
                    dir,
                };
                out.exact6.entry(key).or_insert(id);
            } else {
                let key = Cidr6 {
                    dir,
                    proto,
                    port: port.to_be_bytes(),
                    addr,
                };
                let plen = CIDR_HEADER_BITS + u32::from(n.prefix_len());
                out.cidr6.entry((plen, key)).or_insert(id);
            }
        }
    }
}

#[cfg(test)]
mod tests;
