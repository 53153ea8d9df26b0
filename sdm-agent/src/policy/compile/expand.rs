//! One guide row, given the config, into the rules it asks for; and the
//! merging of the same rule asked for by several roles.

use std::net::IpAddr;

use ipnet::IpNet;

use super::CompileError;
use crate::policy::catalogue::{guide_section, CatalogueRow, RowPort, RowTarget};
use crate::policy::config::Config;
use crate::policy::{Direction, PortRange, Proto, Rule, Target};

fn loopback_sources() -> Vec<Target> {
    vec![
        Target::Cidr(IpNet::V4(ipnet::Ipv4Net::new_assert(
            std::net::Ipv4Addr::new(127, 0, 0, 0),
            8,
        ))),
        Target::Cidr(IpNet::V6(ipnet::Ipv6Net::new_assert(
            std::net::Ipv6Addr::LOCALHOST,
            128,
        ))),
    ]
}

pub(super) fn host_net(ip: IpAddr) -> Target {
    Target::Cidr(IpNet::from(ip))
}

/// A rule produced by a guide row for one role, before merging roles.
pub(super) struct Candidate {
    /// The name without the leading `{role}/`.
    pub(super) suffix: String,
    pub(super) rule: Rule,
}

fn guide_origin(row: &CatalogueRow) -> String {
    format!(
        "Ports Guide, {}: {} {} {} ({}): {}",
        guide_section(row.role),
        row.guide_target,
        row.guide_port,
        match row.direction {
            Direction::Egress => "Egress",
            Direction::Ingress => "Ingress",
        },
        if row.required { "Required" } else { "Optional" },
        row.description
    )
}

/// Makes the rules of one guide row: the name's suffix, protocols, ports
/// and targets vary; direction, required, role and origin come from the row.
struct RowRules<'a> {
    row: &'a CatalogueRow,
    /// `{direction}/{key}`: the suffix of the row's (first) rule.
    base: String,
    origin: String,
}

impl<'a> RowRules<'a> {
    fn new(row: &'a CatalogueRow) -> Self {
        Self {
            row,
            base: format!("{}/{}", row.direction, row.key),
            origin: guide_origin(row),
        }
    }

    fn one(
        &self,
        suffix: String,
        protos: Vec<Proto>,
        ports: Vec<PortRange>,
        targets: Vec<Target>,
    ) -> Candidate {
        let row = self.row;
        Candidate {
            rule: Rule {
                name: format!("{}/{suffix}", row.role),
                direction: row.direction,
                protos,
                ports,
                targets,
                required: row.required,
                roles: vec![row.role.as_str().to_string()],
                origin: self.origin.clone(),
            },
            suffix,
        }
    }

    /// The row's one rule for a fixed protocol and port.
    fn fixed(&self, proto: Proto, port: u16, targets: Vec<Target>) -> Vec<Candidate> {
        vec![self.one(
            self.base.clone(),
            vec![proto],
            vec![PortRange::single(port)],
            targets,
        )]
    }

    /// The row's one tcp rule for ports from the config.
    fn tcp(&self, ports: Vec<PortRange>, targets: Vec<Target>) -> Vec<Candidate> {
        vec![self.one(self.base.clone(), vec![Proto::Tcp], ports, targets)]
    }

    /// One rule per gateway host; a host listed with several ports gets
    /// one rule with all of them, so names stay unique.
    fn gateways(&self, config: &Config) -> Vec<Candidate> {
        let mut hosts: Vec<(&str, Target, Vec<PortRange>)> = Vec::new();
        for gw in &config.gateways {
            match hosts.iter_mut().find(|(h, _, _)| *h == gw.host) {
                Some((_, _, ports)) => ports.push(PortRange::single(gw.port)),
                None => hosts.push((&gw.host, gw.target(), vec![PortRange::single(gw.port)])),
            }
        }
        hosts
            .into_iter()
            .map(|(host, target, ports)| {
                self.one(
                    format!("{}/{host}", self.base),
                    vec![Proto::Tcp],
                    crate::policy::config::normalize_ports(ports),
                    vec![target],
                )
            })
            .collect()
    }

    /// One rule per `[[resource]]` or `[[secret_store]]` (the row says which).
    fn listed(&self, config: &Config) -> Vec<Candidate> {
        let (list, kind) = if self.row.target == RowTarget::Resources {
            (&config.resources, "[[resource]]")
        } else {
            (&config.secret_stores, "[[secret_store]]")
        };
        list.iter()
            .map(|r| {
                let mut c = self.one(
                    format!("{}/{}", self.base, r.name),
                    vec![r.proto],
                    r.ports.clone(),
                    vec![r.target.clone()],
                );
                c.rule.origin = format!("config {kind} {}; {}", r.name, self.origin);
                c
            })
            .collect()
    }
}

/// The rules one guide row asks for, given the config.
pub(super) fn expand_row(
    config: &Config,
    row: &CatalogueRow,
) -> Result<Vec<Candidate>, CompileError> {
    let rules = RowRules::new(row);
    let out = match (row.target, row.port) {
        (RowTarget::ControlPlane(which), RowPort::Fixed(proto, port)) => rules.fixed(
            proto,
            port,
            vec![Target::Host(config.hosts.get(which).to_string())],
        ),
        (RowTarget::DnsFallback, RowPort::Fixed(proto, port)) => match config.dns.fallback {
            Some(ip) => rules.fixed(proto, port, vec![host_net(ip)]),
            None => Vec::new(),
        },
        (RowTarget::Loopback, RowPort::Fixed(proto, port)) => {
            rules.fixed(proto, port, loopback_sources())
        }
        (RowTarget::Loopback, RowPort::Custom) => {
            if config.client.loopback_ports.is_empty() {
                Vec::new()
            } else {
                rules.tcp(config.client.loopback_ports.clone(), loopback_sources())
            }
        }
        (RowTarget::AnySource, RowPort::Custom) => {
            let sources = &config.gateway.sources;
            if sources.is_empty() {
                Vec::new()
            } else {
                rules.tcp(
                    vec![PortRange::single(config.gateway.advertised_port)],
                    sources.iter().copied().map(Target::Cidr).collect(),
                )
            }
        }
        (RowTarget::Gateways, RowPort::Custom) => rules.gateways(config),
        (RowTarget::Resources, RowPort::Custom) | (RowTarget::SecretStores, RowPort::Custom) => {
            rules.listed(config)
        }
        (RowTarget::ControlPlane(_), RowPort::Custom)
        | (RowTarget::DnsFallback, RowPort::Custom)
        | (RowTarget::AnySource, RowPort::Fixed(..))
        | (RowTarget::Gateways, RowPort::Fixed(..))
        | (RowTarget::Resources, RowPort::Fixed(..))
        | (RowTarget::SecretStores, RowPort::Fixed(..)) => {
            return Err(CompileError::UnsupportedRow {
                role: row.role,
                key: row.key,
            })
        }
    };
    Ok(out)
}

/// Adds a guide rule, or merges it into the rule another role already
/// produced with the same suffix and shape.
pub(super) fn push_merged(rules: &mut Vec<(String, Rule)>, c: Candidate) {
    let same = rules.iter_mut().find(|(suffix, r)| {
        *suffix == c.suffix
            && r.direction == c.rule.direction
            && r.protos == c.rule.protos
            && r.ports == c.rule.ports
            && r.targets == c.rule.targets
    });
    match same {
        Some((_, r)) => {
            for role in c.rule.roles {
                if !r.roles.contains(&role) {
                    r.roles.push(role);
                }
            }
            r.required |= c.rule.required;
        }
        None => rules.push((c.suffix, c.rule)),
    }
}
