//! `sdm-agent suggest`: config that would allow the flows seen in audit
//! mode.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use ipnet::IpNet;

use super::flow::{rfc3339, Flow};
use crate::{
    policy::config::{Config, Role, MAX_NAME_LEN},
    policy::{Direction, Policy, Proto, Target},
};

pub(super) fn config_proto(p: &str) -> Option<Proto> {
    match p {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        "icmp" | "icmpv6" => Some(Proto::Icmp),
        _ => None,
    }
}

/// Printable ASCII only, for comments (a process can name itself anything).
pub(super) fn clean(s: &str) -> String {
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

pub(super) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Names already used and the way to make a new one unique and valid.
pub(super) struct Names(pub(super) BTreeSet<String>);

impl Names {
    pub(super) fn unique(&mut self, base: &str) -> String {
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
pub(super) fn sources(addrs: &BTreeSet<IpAddr>, collapse: usize) -> Vec<IpNet> {
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

pub(super) fn ports_toml(ports: &BTreeSet<u16>) -> String {
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
pub(super) struct Group {
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
pub(super) fn is_sdm_process(comm: &str) -> bool {
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
    let mut names = taken_names(config);
    let groups = Groups::of(flows, config, policy);
    let mut o = String::new();
    groups.header(&mut o, flows.len());
    for ((resource, target, proto), g) in &groups.egress {
        o.push('\n');
        egress_entry(&mut o, &mut names, *resource, target, *proto, g);
    }
    for ((port, proto), g) in &groups.ingress {
        o.push('\n');
        ingress_entry(&mut o, &mut names, *port, *proto, g, collapse);
    }
    o
}

/// The names the config already uses, so that suggested ones differ.
fn taken_names(config: &Config) -> Names {
    Names(
        config
            .resources
            .iter()
            .chain(&config.secret_stores)
            .map(|r| r.name.clone())
            .chain(config.allow.iter().map(|a| a.name.clone()))
            .collect(),
    )
}

/// The flows a suggestion is made for, grouped into entries, and the
/// counts of those left out.
#[derive(Default)]
struct Groups {
    /// (kind, target or port, proto) -> group; BTreeMap for a stable order.
    egress: BTreeMap<(bool, String, Proto), Group>,
    ingress: BTreeMap<(u16, Proto), Group>,
    skipped: usize,
    already: usize,
}

impl Groups {
    fn of(flows: &[Flow], config: &Config, policy: Option<&Policy>) -> Self {
        let resource_host = config
            .roles
            .iter()
            .any(|r| matches!(r, Role::Relay | Role::Gateway));
        let mut g = Self::default();
        for f in flows {
            let Some(proto) = config_proto(&f.key.proto) else {
                g.skipped += 1;
                continue;
            };
            if f.key.verdict != "audit" || f.reason != "no_rule" {
                g.skipped += 1;
                continue;
            }
            if policy.is_some_and(|p| covered(p, f)) {
                g.already += 1;
                continue;
            }
            if f.key.direction == "ingress" {
                g.ingress.entry((f.key.port, proto)).or_default().add(f);
            } else {
                let target = f
                    .hostname
                    .clone()
                    .unwrap_or_else(|| f.key.remote.to_string());
                let resource = resource_host && proto != Proto::Icmp && is_sdm_process(&f.key.comm);
                g.egress
                    .entry((resource, target, proto))
                    .or_default()
                    .add(f);
            }
        }
        g
    }

    /// The comment lines above the entries: what they come from and what
    /// was left out.
    fn header(&self, o: &mut String, flows: usize) {
        let (skipped, already) = (self.skipped, self.already);
        let total = self.egress.len() + self.ingress.len();
        let _ = writeln!(
            o,
            "# Suggested by `sdm-agent suggest` from {} audit-mode flow(s): {total} entr{}.",
            flows - skipped - already,
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
    }
}

/// One egress entry: a `[[resource]]` for the StrongDM relay or gateway,
/// else an `[[allow]]`.
fn egress_entry(
    o: &mut String,
    names: &mut Names,
    resource: bool,
    target: &str,
    proto: Proto,
    g: &Group,
) {
    let is_ip = target.parse::<IpAddr>().is_ok();
    let base = match proto {
        Proto::Tcp => target.to_string(),
        p => format!("{target}-{p}"),
    };
    let name = names.unique(&base);
    if resource {
        g.comment(
            o,
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
        g.comment(o, &what);
        let _ = writeln!(o, "[[allow]]");
        let _ = writeln!(o, "name = {}", toml_str(&name));
        let _ = writeln!(o, "direction = \"egress\"");
        let _ = writeln!(o, "proto = {}", toml_str(&proto.to_string()));
        let _ = writeln!(o, "{}", ports_toml(&g.ports));
        let _ = writeln!(o, "to = {}", toml_str(target));
    }
}

/// One ingress `[[allow]]`, `from` the sources seen (collapsed).
fn ingress_entry(
    o: &mut String,
    names: &mut Names,
    port: u16,
    proto: Proto,
    g: &Group,
    collapse: usize,
) {
    let name = names.unique(&format!("in-{proto}-{port}"));
    let from: Vec<String> = sources(&g.remotes, collapse)
        .iter()
        .map(|n| toml_str(&n.to_string()))
        .collect();
    g.comment(o, &format!("ingress {proto} to local port {port}"));
    let _ = writeln!(o, "[[allow]]");
    let _ = writeln!(o, "name = {}", toml_str(&name));
    let _ = writeln!(o, "direction = \"ingress\"");
    let _ = writeln!(o, "proto = {}", toml_str(&proto.to_string()));
    let _ = writeln!(o, "port = {port}");
    let _ = writeln!(o, "from = [{}]", from.join(", "));
}

/// The default `collapse` of [`suggest`]: this many sources of one /24
/// become the /24.
pub const DEFAULT_COLLAPSE: usize = 4;
