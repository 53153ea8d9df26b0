//! The config's tables, `[gateway]` to `[metrics]`, and its array
//! entries `[[resource]]`, `[[secret_store]]` and `[[allow]]`, resolved.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::names::DnsQueries;
use super::values::serialize_duration;
use super::{
    DEFAULT_DNS_CONCURRENCY, DEFAULT_DNS_FALLBACK, DEFAULT_GATEWAY_PORT, DEFAULT_GRACE,
    DEFAULT_HTTP_LISTEN, DEFAULT_MAX_QPS, DEFAULT_RETENTION, DEFAULT_STATE_DIR,
    DEFAULT_STORE_MAX_BYTES, DEFAULT_TTL_MAX, DEFAULT_TTL_MIN,
};
use crate::policy::{Direction, PortRange, Proto, Target};

/// `[gateway]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayConfig {
    /// The port the gateway listens on for clients, relays and gateways.
    pub advertised_port: u16,
    /// Who may reach the advertised port.
    pub sources: Vec<IpNet>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            advertised_port: DEFAULT_GATEWAY_PORT,
            sources: default_sources(),
        }
    }
}

fn default_sources() -> Vec<IpNet> {
    vec![any_v4(), any_v6()]
}

fn any_v4() -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0))
}

fn any_v6() -> IpNet {
    IpNet::V6(ipnet::Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 0))
}

/// `[client]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientConfig {
    /// Resource port overrides the client listens on, on loopback.
    pub loopback_ports: Vec<PortRange>,
}

/// One `[[resource]]` or `[[secret_store]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceConfig {
    pub name: String,
    /// `host` (a name, possibly `*.` wildcard, or an address) or `cidr`.
    pub target: Target,
    pub proto: Proto,
    /// Sorted, overlapping and adjacent ranges merged.
    pub ports: Vec<PortRange>,
}

/// One `[[allow]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AllowConfig {
    pub name: String,
    pub direction: Direction,
    pub proto: Proto,
    /// Ports, or ICMP types for `icmp`; sorted and merged.
    pub ports: Vec<PortRange>,
    /// `to` for egress (names or CIDRs), `from` for ingress (CIDRs only).
    pub targets: Vec<Target>,
}

/// `[dns]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsConfig {
    /// Resolvers to use and allow; empty: those of `/etc/resolv.conf`.
    pub servers: Vec<IpAddr>,
    /// The guide's optional fallback resolver; `None` when disabled.
    pub fallback: Option<IpAddr>,
    /// Floor of the refresh interval of a resolved name.
    #[serde(serialize_with = "serialize_duration")]
    pub ttl_min: Duration,
    /// Ceiling of the refresh interval.
    #[serde(serialize_with = "serialize_duration")]
    pub ttl_max: Duration,
    /// How long an address that left a name's answer set stays allowed.
    #[serde(serialize_with = "serialize_duration")]
    pub grace: Duration,
    /// Queries per second the agent's own lookups send to the resolvers
    /// at most, A and AAAA counted apart.
    pub max_qps: u32,
    /// The agent's lookups in flight at once.
    pub concurrency: u32,
    /// Which queries reach the resolvers.
    pub queries: DnsQueries,
    /// Suffixes whose names may be queried under `queries = "policy"`
    /// (normalised, without a leading dot): what `/etc/resolv.conf`'s
    /// `search` makes a resolver library append.
    pub search: Vec<String>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            fallback: Some(DEFAULT_DNS_FALLBACK),
            ttl_min: DEFAULT_TTL_MIN,
            ttl_max: DEFAULT_TTL_MAX,
            grace: DEFAULT_GRACE,
            max_qps: DEFAULT_MAX_QPS,
            concurrency: DEFAULT_DNS_CONCURRENCY,
            queries: DnsQueries::Any,
            search: Vec::new(),
        }
    }
}

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// When set, every request must carry `Authorization: Bearer <token>`
    /// (or `?token=`). Required when `listen` is not a loopback address.
    /// Never serialized.
    #[serde(skip_serializing)]
    pub token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_HTTP_LISTEN,
            token: None,
        }
    }
}

/// `[state]`: where the agent keeps what must survive restarts (the denied
/// flows database).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateConfig {
    pub dir: PathBuf,
    /// Flows not seen for longer than this are deleted from the store.
    #[serde(serialize_with = "serialize_duration")]
    pub retention: Duration,
    /// The most the flow store may hold; the oldest flows are evicted
    /// beyond it, so a flood of new flows cannot fill the disk.
    pub max_bytes: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_STATE_DIR),
            retention: DEFAULT_RETENTION,
            max_bytes: DEFAULT_STORE_MAX_BYTES,
        }
    }
}

/// `[audit]`: where each new denied flow is written as one JSON line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditConfig {
    /// A file to append to; `None`: standard output.
    pub log: Option<PathBuf>,
}

/// `[backstop]`: the interfaces whose egress a tc program watches for
/// frames of the target cgroup's packet sockets (see README, Trust model).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackstopConfig {
    /// In the order written, duplicates refused. Empty: the backstop is off.
    pub interfaces: Vec<BackstopInterface>,
}

/// One `[backstop] interfaces` entry and where it is written, so that an
/// interface the host does not have is reported at its line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackstopInterface {
    pub name: String,
    #[serde(skip)]
    pub line: usize,
}

/// `[xdp]`: the interfaces the XDP shield guards (see README, XDP
/// shield). Only with the host's root cgroup as target: XDP sees every
/// packet of the interface, whichever process the flow belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct XdpConfig {
    /// In the order written, duplicates refused. Empty: the shield is off.
    pub interfaces: Vec<BackstopInterface>,
}

/// `[metrics]`: the shape of `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsConfig {
    /// Series of their own for every `[[resource]]` and `[[secret_store]]`
    /// rule and hostname. Off by default: those are summed by their guide
    /// row, so that a host's series do not grow with its resources.
    pub per_resource: bool,
}

/// Linux interface names: at most IFNAMSIZ - 1 bytes, no '/', ':' or
/// whitespace, not "." or ".." (`dev_valid_name`,
/// <https://github.com/torvalds/linux/blob/v6.18/net/core/dev.c>).
pub fn valid_interface_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty interface name".into());
    }
    if s.len() > 15 {
        return Err(format!(
            "{s:?} is longer than an interface name can be (15 bytes)"
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not an interface name"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{s:?}: {c:?} cannot appear in an interface name"));
    }
    Ok(())
}
