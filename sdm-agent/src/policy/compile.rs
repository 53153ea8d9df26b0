//! Config + catalogue -> [`Policy`].
//!
//! Rules come out in a deterministic order: the guide's rows for each role
//! in the order of `role` in the config (each role's rows in the guide's
//! order), then `dns/egress/resolvers`, then the `[[allow]]` entries in file
//! order.
//!
//! Rule names:
//!
//! | rule | name |
//! | --- | --- |
//! | a guide row | `{role}/{direction}/{key}`, e.g. `gateway/egress/app`, `client/ingress/cli-status` |
//! | a gateway this host dials | `{role}/egress/gateway/{host}` |
//! | a `[[resource]]` | `{role}/egress/resource/{name}` |
//! | a `[[secret_store]]` | `{role}/egress/secret-store/{name}` |
//! | the resolvers | `dns/egress/resolvers` |
//! | an `[[allow]]` | `allow/{name}` |
//!
//! When several roles produce the same rule (same name after the role, and
//! same direction, protocols, ports and targets), e.g. relay and gateway
//! both need `app.strongdm.com:443`, it is emitted once, named by the first
//! of those roles in config order, with `roles` listing them all.

mod expand;
mod warnings;

use std::collections::HashSet;
use std::net::IpAddr;

use crate::policy::catalogue;
use crate::policy::config::{AllowConfig, Config, Role};
use crate::policy::{Direction, Policy, PortRange, Proto, Rule, Target};

use expand::{expand_row, host_net, push_merged};
pub use warnings::lockout_warnings;

/// Most (protocol, port) pairs one rule may expand to, per target address.
pub const MAX_RULE_PORTS: u64 = 65536;

/// Name of the rule that allows the resolvers.
pub const RESOLVERS_RULE: &str = "dns/egress/resolvers";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("the policy has {count} rules, more than the {max} the dataplane can ever hold")]
    TooManyRules { count: usize, max: usize },
    #[error("rule {rule} expands to {count} (protocol, port) pairs, more than {max}")]
    TooManyPorts { rule: String, count: u64, max: u64 },
    #[error("two rules are named {0}")]
    DuplicateName(String),
    #[error("catalogue row {role}/{key}: its target and port do not go together")]
    UnsupportedRow { role: Role, key: &'static str },
    /// Fixed addresses times ports that can never be applied (`run` would
    /// otherwise load, attach and then fail to write the maps).
    #[error("rules with fixed addresses: {0}; narrow their port ranges or address lists")]
    TooManyEntries(crate::kernel::entries::Overflow),
}

/// Compiles the config into the policy. `resolvers` are the DNS servers
/// the agent uses (`[dns] servers`, or those of `/etc/resolv.conf` when
/// that list is empty); they get the rule `dns/egress/resolvers`.
pub fn compile(config: &Config, resolvers: &[IpAddr]) -> Result<Policy, CompileError> {
    let mut rules = guide_rules(config)?;
    rules.extend(resolvers_rule(config, resolvers));
    rules.extend(config.allow.iter().map(allow_rule));
    check_limits(&rules)?;
    let policy = Policy { rules };
    if let Some(o) = crate::kernel::entries::static_overflow(&policy) {
        return Err(CompileError::TooManyEntries(o));
    }
    Ok(policy)
}

/// The guide's rows for each role, in config order, merged across roles.
fn guide_rules(config: &Config) -> Result<Vec<Rule>, CompileError> {
    let mut guide: Vec<(String, Rule)> = Vec::new();
    for &role in &config.roles {
        for row in catalogue::rows_for(role) {
            if !row.required && !config.optional {
                continue;
            }
            for c in expand_row(config, row)? {
                push_merged(&mut guide, c);
            }
        }
    }
    Ok(guide.into_iter().map(|(_, r)| r).collect())
}

/// [`RESOLVERS_RULE`], unless there is no resolver.
fn resolvers_rule(config: &Config, resolvers: &[IpAddr]) -> Option<Rule> {
    let mut targets: Vec<Target> = Vec::new();
    for ip in resolvers {
        let t = host_net(*ip);
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    if targets.is_empty() {
        return None;
    }
    Some(Rule {
        name: RESOLVERS_RULE.to_string(),
        direction: Direction::Egress,
        protos: vec![Proto::Udp, Proto::Tcp],
        ports: vec![PortRange::single(53)],
        targets,
        required: true,
        roles: Vec::new(),
        origin: if config.dns.servers.is_empty() {
            "resolv.conf".to_string()
        } else {
            "[dns] servers".to_string()
        },
    })
}

fn allow_rule(a: &AllowConfig) -> Rule {
    Rule {
        name: format!("allow/{}", a.name),
        direction: a.direction,
        protos: vec![a.proto],
        ports: a.ports.clone(),
        targets: a.targets.clone(),
        required: true,
        roles: Vec::new(),
        origin: format!("config [[allow]] {}", a.name),
    }
}

/// What the dataplane holds: rules, (protocol, port) pairs per rule, and
/// names unique.
fn check_limits(rules: &[Rule]) -> Result<(), CompileError> {
    // The hard ceiling: below it the agent sizes the rule maps to the policy.
    let max = sdm_common::RULE_CEILING as usize;
    if rules.len() > max {
        return Err(CompileError::TooManyRules {
            count: rules.len(),
            max,
        });
    }
    let mut names = HashSet::new();
    for r in rules {
        let ports: u64 = r.ports.iter().map(|p| u64::from(p.len())).sum();
        let count = ports * r.protos.len() as u64;
        if count > MAX_RULE_PORTS {
            return Err(CompileError::TooManyPorts {
                rule: r.name.clone(),
                count,
                max: MAX_RULE_PORTS,
            });
        }
        if !names.insert(r.name.as_str()) {
            return Err(CompileError::DuplicateName(r.name.clone()));
        }
    }
    Ok(())
}

/// The guide row a rule of a `[[resource]]` or `[[secret_store]]` entry was
/// listed under: `gateway/egress/resource` for `gateway/egress/resource/db`.
/// Read from the name alone (see the table above), so that it answers for
/// any rule the kernel holds, recorded in the agent's state file or not.
/// `None` for every other rule: a guide row's own rules (gateways
/// included), the resolvers, `[[allow]]`.
pub fn listed_row(name: &str) -> Option<&str> {
    let (row, entry) = name.rsplit_once('/')?;
    let mut parts = row.split('/');
    let (Some(role), Some(direction), Some(key), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let role: Role = role.parse().ok()?;
    let listed = catalogue::rows_for(role).any(|r| {
        r.key == key
            && r.direction.to_string() == direction
            && matches!(
                r.target,
                catalogue::RowTarget::Resources | catalogue::RowTarget::SecretStores
            )
    });
    (listed && !entry.is_empty()).then_some(row)
}

/// The `nameserver` addresses of a resolv.conf, in order, duplicates
/// removed. Comments (`#` or `;` to the end of the line) are ignored, a
/// `%scope` suffix (`fe80::1%eth0`) is stripped, and lines that do not
/// parse are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        let addr = addr.split('%').next().unwrap_or(addr);
        if let Ok(ip) = addr.parse::<IpAddr>() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::too_many_lines, reason = "a test reads as one scenario")]
mod tests;
