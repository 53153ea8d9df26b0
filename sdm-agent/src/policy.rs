//! The effective policy: what the catalogue and the config compile into,
//! before any hostname is resolved. The dataplane turns it into map entries.

pub mod catalogue;
pub mod compile;
pub mod config;

use std::fmt;

use ipnet::IpNet;
use serde::Serialize;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        })
    }
}

/// Transport protocol of a rule. `Icmp` covers ICMP on IPv4 and ICMPv6 on
/// IPv6; its "ports" are ICMP types.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        })
    }
}

/// Inclusive port range (a single port has `lo == hi`). For ICMP rules the
/// values are ICMP types.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        Self { lo: port, hi: port }
    }
    pub fn len(&self) -> u32 {
        u32::from(self.hi) - u32::from(self.lo) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.lo..=self.hi
    }
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Who a rule talks to: the remote end for egress, the allowed source for
/// ingress.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A DNS name, lower-cased, without a trailing dot; resolved by the agent.
    Host(String),
    /// An address block (a single address is a /32 or /128).
    Cidr(IpNet),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Host(h) => f.write_str(h),
            Target::Cidr(c) => write!(f, "{c}"),
        }
    }
}

/// One allow rule. Its `name` is stable across restarts and releases
/// (counters and dashboards key on it), e.g. `gateway/egress/app`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Rule {
    pub name: String,
    pub direction: Direction,
    pub protos: Vec<Proto>,
    pub ports: Vec<PortRange>,
    pub targets: Vec<Target>,
    /// What the Ports Guide says of the row: required (true) or optional.
    /// Config-only rules (`[[allow]]`, resources, resolvers) are required.
    pub required: bool,
    /// Roles whose guide rows produced this rule (empty for config rules).
    pub roles: Vec<String>,
    /// Where the rule comes from, for people: the guide row's text, or
    /// `config [[allow]] ssh-in`, or "resolv.conf".
    pub origin: String,
}

/// The compiled policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The rule of that name.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

impl Rule {
    /// Whether the rule covers `proto` and `port` (an ICMP type for ICMP).
    pub fn allows(&self, proto: Proto, port: u16) -> bool {
        self.protos.contains(&proto) && self.ports.iter().any(|p| p.contains(port))
    }
}
