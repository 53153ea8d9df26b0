//! The agent's TOML configuration.
//!
//! The file is read into private "raw" structs that keep the span of every
//! value (`toml::Spanned`), then validated into [`Config`], whose fields are
//! fully resolved and typed. Every error, whether TOML syntax, an unknown key
//! (`deny_unknown_fields` everywhere) or a semantic check such as a bad CIDR,
//! names the file, the line and the key it is about:
//!
//! ```text
//! config /etc/sdm-egress.toml: line 3, column 1: unknown field `rolez`, expected one of ...
//! config my.toml: line 12: [[resource]] "prod-db" key `cidr`: invalid CIDR "10.0.0.0/33": ...
//! ```
//!
//! Validation stops at the first error found.
//!
//! This file holds the resolved config; the modules hold the steps:
//! [`raw`] (the file as read, with spans), [`validate`] (raw into
//! resolved), [`values`] (value parsers) and [`errors`].

mod errors;
mod raw;
mod validate;
mod values;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use crate::kernel::cgroup::CgroupTarget;
use crate::policy::{Direction, PortRange, Proto, Target};

use self::{
    errors::syntax_error,
    raw::RawConfig,
    validate::Validator,
    values::{parse_port_number, serialize_duration},
};
pub use errors::ConfigError;
pub use values::{
    format_duration, is_loopback, normalize_hostname, normalize_ports, parse_cidr, parse_duration,
    parse_port_spec, parse_size, valid_name,
};

/// Port of a gateway when a `gateways` entry has none, and the default
/// advertised port of a gateway.
pub const DEFAULT_GATEWAY_PORT: u16 = 5000;
/// Default `[http] listen`.
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9850);
/// The Ports Guide's optional fallback resolver (Cloudflare).
pub const DEFAULT_DNS_FALLBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1));
/// Default `[dns] ttl_min`.
pub const DEFAULT_TTL_MIN: Duration = Duration::from_secs(30);
/// Default `[dns] ttl_max`.
pub const DEFAULT_TTL_MAX: Duration = Duration::from_secs(3600);
/// Default `[dns] grace`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);
/// Longest `name` of a `[[resource]]`, `[[secret_store]]` or `[[allow]]`.
pub const MAX_NAME_LEN: usize = 64;
/// Default `[state] dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sdm-agent";
/// Default `[state] retention`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86400);
/// Default `[state] max_bytes`: 64 MiB of flows (several hundred thousand).
pub const DEFAULT_STORE_MAX_BYTES: u64 = 64 << 20;
/// Smallest `[state] max_bytes`: the database's own pages need room.
pub const MIN_STORE_MAX_BYTES: u64 = 1 << 20;

/// Error of parsing one of the named enums ([`Role`], [`Region`], ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}, expected one of: {expected}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
    pub expected: String,
}

macro_rules! named_enum {
    ($ty:ident, $kind:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name used in the config file and in JSON.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownName {
                        kind: $kind,
                        value: s.to_string(),
                        expected: $ty::ALL
                            .iter()
                            .map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            }
        }
    };
}

/// A StrongDM component this host runs; each selects the rows of one
/// section of the Ports Guide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Client,
    Relay,
    Gateway,
    Api,
    AdDc,
}
named_enum!(Role, "role", {
    Client => "client",
    Relay => "relay",
    Gateway => "gateway",
    Api => "api",
    AdDc => "ad-dc",
});

/// The organisation's StrongDM region (not the host's location).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Us,
    Uk,
    Eu,
}
named_enum!(Region, "region", { Us => "us", Uk => "uk", Eu => "eu" });

/// `audit` counts and logs what would be denied and drops nothing;
/// `enforce` drops what no rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Audit,
    Enforce,
}
named_enum!(Mode, "mode", { Audit => "audit", Enforce => "enforce" });

/// Whether loopback traffic is policed (`enforce`) or always passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopbackMode {
    Pass,
    Enforce,
}
named_enum!(LoopbackMode, "loopback mode", { Pass => "pass", Enforce => "enforce" });

/// What the programs do between attaching and the first applied policy
/// (`fail`): enforce the policy's fixed part, or pass everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Closed,
    Open,
}
named_enum!(FailMode, "fail mode", { Closed => "closed", Open => "open" });

/// `[dns] queries`: which DNS queries may reach the trusted resolvers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsQueries {
    /// Any name (the resolvers are reachable, their questions unjudged).
    Any,
    /// Only the policy's hostnames (wildcards included) and names under
    /// `[dns] search`: the kernel reads each query's question.
    Policy,
}
named_enum!(DnsQueries, "dns queries", { Any => "any", Policy => "policy" });

/// One of the control-plane names of [`ControlPlaneHosts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlPlaneHost {
    App,
    Login,
    Downloads,
    Checkip,
}
named_enum!(ControlPlaneHost, "control-plane host", {
    App => "app",
    Login => "login",
    Downloads => "downloads",
    Checkip => "checkip",
});

/// The control-plane names the Ports Guide asks for, for the region, after
/// the `[hosts]` overrides.
///
/// | region | app | login | downloads |
/// | --- | --- | --- | --- |
/// | us | app.strongdm.com | login.strongdm.com | downloads.strongdm.com |
/// | uk | app.uk.strongdm.com | login.uk.strongdm.com | downloads.strongdm.com |
/// | eu | app.eu.strongdm.com | login.eu.strongdm.com | downloads.strongdm.com |
///
/// `checkip` is `checkip.amazonaws.com` everywhere. The Ports Guide's text
/// only shows the US names; the UK and EU `login` and `downloads` names are
/// our reading of the guide's region tabs, so every name can be overridden
/// in `[hosts]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControlPlaneHosts {
    pub app: String,
    pub login: String,
    pub downloads: String,
    pub checkip: String,
}

impl ControlPlaneHosts {
    /// The default names of a region.
    pub fn for_region(region: Region) -> Self {
        let (app, login) = match region {
            Region::Us => ("app.strongdm.com", "login.strongdm.com"),
            Region::Uk => ("app.uk.strongdm.com", "login.uk.strongdm.com"),
            Region::Eu => ("app.eu.strongdm.com", "login.eu.strongdm.com"),
        };
        Self {
            app: app.to_string(),
            login: login.to_string(),
            downloads: "downloads.strongdm.com".to_string(),
            checkip: "checkip.amazonaws.com".to_string(),
        }
    }

    pub fn get(&self, which: ControlPlaneHost) -> &str {
        match which {
            ControlPlaneHost::App => &self.app,
            ControlPlaneHost::Login => &self.login,
            ControlPlaneHost::Downloads => &self.downloads,
            ControlPlaneHost::Checkip => &self.checkip,
        }
    }

    fn get_mut(&mut self, which: ControlPlaneHost) -> &mut String {
        match which {
            ControlPlaneHost::App => &mut self.app,
            ControlPlaneHost::Login => &mut self.login,
            ControlPlaneHost::Downloads => &mut self.downloads,
            ControlPlaneHost::Checkip => &mut self.checkip,
        }
    }
}

/// A gateway this host dials: a DNS name (lower-case, no trailing dot) or
/// an IP address (in its canonical text form), and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// The address of the host if it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The policy target: a `/32` or `/128` for an IP literal, else the name.
    pub fn target(&self) -> Target {
        match self.ip() {
            Some(ip) => Target::Cidr(IpNet::from(ip)),
            None => Target::Host(self.host.clone()),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for HostPort {
    type Err = String;

    /// `host`, `host:port`, `1.2.3.4`, `1.2.3.4:port`, `2001:db8::1`,
    /// `[2001:db8::1]` or `[2001:db8::1]:port`; the port defaults to
    /// [`DEFAULT_GATEWAY_PORT`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("empty gateway address".to_string());
        }
        let port_of = |p: &str| -> Result<u16, String> {
            if p.is_empty() {
                return Err(format!("missing port after ':' in {s:?}"));
            }
            parse_port_number(p, Proto::Tcp).map_err(|m| format!("{m} in {s:?}"))
        };
        if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("missing ']' in {s:?}"))?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| format!("invalid IPv6 address {inside:?} in {s:?}"))?;
            let port = match after {
                "" => DEFAULT_GATEWAY_PORT,
                _ => match after.strip_prefix(':') {
                    Some(p) => port_of(p)?,
                    None => return Err(format!("unexpected {after:?} after ']' in {s:?}")),
                },
            };
            return Ok(HostPort {
                host: ip.to_string(),
                port,
            });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(HostPort {
                host: ip.to_string(),
                port: DEFAULT_GATEWAY_PORT,
            });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                if h.contains(':') {
                    return Err(format!(
                        "{s:?}: write an IPv6 address with a port as \"[address]:port\""
                    ));
                }
                (h, port_of(p)?)
            }
            None => (s, DEFAULT_GATEWAY_PORT),
        };
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => normalize_hostname(host, false)?,
        };
        Ok(HostPort { host, port })
    }
}

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

/// Linux interface names: at most IFNAMSIZ - 1 bytes, no '/', ':' or
/// whitespace, not "." or ".." (`dev_valid_name`,
/// https://github.com/torvalds/linux/blob/v6.18/net/core/dev.c).
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

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    /// In the order written, duplicates removed. May be empty (`role = []`).
    pub roles: Vec<Role>,
    pub region: Region,
    pub mode: Mode,
    /// The cgroup to police (a path, `unit:NAME` or `pid:N`); `None`: the
    /// root of the cgroup2 mount, resolved by the caller.
    pub cgroup: Option<CgroupTarget>,
    /// Whether the guide's optional rows are allowed.
    pub optional: bool,
    pub loopback: LoopbackMode,
    /// Before the first policy applies (enforce mode only).
    pub fail: FailMode,
    /// Gateways this host dials, exact duplicates removed.
    pub gateways: Vec<HostPort>,
    /// Region defaults with the `[hosts]` overrides applied.
    pub hosts: ControlPlaneHosts,
    pub gateway: GatewayConfig,
    pub client: ClientConfig,
    pub resources: Vec<ResourceConfig>,
    pub secret_stores: Vec<ResourceConfig>,
    pub allow: Vec<AllowConfig>,
    pub dns: DnsConfig,
    pub http: HttpConfig,
    pub state: StateConfig,
    pub audit: AuditConfig,
    pub backstop: BackstopConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            roles: vec![Role::Gateway],
            region: Region::Us,
            mode: Mode::Audit,
            cgroup: None,
            optional: true,
            loopback: LoopbackMode::Pass,
            fail: FailMode::Closed,
            gateways: Vec::new(),
            hosts: ControlPlaneHosts::for_region(Region::Us),
            gateway: GatewayConfig::default(),
            client: ClientConfig::default(),
            resources: Vec::new(),
            secret_stores: Vec::new(),
            allow: Vec::new(),
            dns: DnsConfig::default(),
            http: HttpConfig::default(),
            state: StateConfig::default(),
            audit: AuditConfig::default(),
            backstop: BackstopConfig::default(),
        }
    }
}

const DEFAULT_TOML: &str = r#"# sdm-egress agent configuration.
# Every key is optional: the values set below are the defaults.
# Unknown keys are errors.

# The StrongDM components this host runs: client, relay, gateway, api, ad-dc.
# A single string works too, e.g. role = "relay".
role = ["gateway"]

# Your organisation's StrongDM region (not your location): us, uk or eu.
region = "us"

# "audit" counts and logs what would be denied and drops nothing;
# "enforce" drops what no rule allows.
mode = "audit"

# Whose traffic is policed. Default: the root of the cgroup2 mount, i.e.
# the whole host. Or a cgroup2 directory, or the cgroup of a systemd unit
# (a sidecar to the gateway: "unit:sdm-proxy.service"), or the cgroup of a
# running process ("pid:1234"). The agent waits for a unit that has not
# started yet and follows its cgroup when the service restarts. For a
# sidecar, e.g. "unit:sdm-proxy.slice" (see README: no gap on restarts).
# cgroup = "/sys/fs/cgroup"

# Include the Ports Guide's optional flows (checkip, the 1.1.1.1 DNS fallback).
optional = true

# Loopback traffic: "pass" (never policed) or "enforce".
loopback = "pass"

# Enforce mode, on a fresh start, before the hostnames are resolved:
# "closed" attaches the programs already enforcing the fixed part of the
# policy (CIDRs, resolvers, ingress rules), so a hostname rule allows
# nothing until its name resolves or is learned from an answer; "open"
# passes everything until the first policy is applied.
fail = "closed"

# Gateways this host dials (clients, relays, chained gateways):
# "host:port", "1.2.3.4:5000" or "[2001:db8::1]:5000"; the port defaults to 5000.
gateways = []

# Overrides of the control-plane names of the region.
# [hosts]
# app = "app.strongdm.com"
# login = "login.strongdm.com"
# downloads = "downloads.strongdm.com"
# checkip = "checkip.amazonaws.com"

[gateway]
# The port this gateway advertises, and who may reach it.
advertised_port = 5000
sources = ["0.0.0.0/0", "::/0"]

[client]
# Resource port overrides the client listens on, on loopback.
loopback_ports = []

# Resources this relay or gateway reaches; [[secret_store]] takes the same keys.
# Exactly one of host and cidr, exactly one of port and ports.
# [[resource]]
# name = "prod-db"
# host = "db.internal"
# port = 5432
# proto = "tcp"

# [[secret_store]]
# name = "vault"
# cidr = "10.1.0.0/24"
# ports = "8200,8201"

# Flows outside the Ports Guide. Egress takes `to` (names or CIDRs),
# ingress takes `from` (CIDRs). For proto = "icmp" the ports are ICMP types.
# [[allow]]
# name = "ssh-in"
# direction = "ingress"
# port = 22
# proto = "tcp"
# from = ["10.0.0.0/8"]

[dns]
# Resolvers to use and allow. Empty: the nameservers of /etc/resolv.conf.
servers = []
# The guide's optional fallback resolver; "" or "none" disables it.
fallback = "1.1.1.1"
# Bounds of the refresh interval of a resolved name.
ttl_min = "30s"
ttl_max = "1h"
# How long an address that left a name's answers stays allowed.
grace = "10m"

[http]
# Metrics, the dashboard and its JSON API. Listening on anything but a
# loopback address requires a token, sent as "Authorization: Bearer <token>"
# (or ?token=<token> in the dashboard's address).
listen = "127.0.0.1:9850"
# token = "a-long-random-string"

[state]
# The denied flows database (flows.db) lives here.
dir = "/var/lib/sdm-agent"
# Flows not seen for this long are deleted.
retention = "7d"
# The most the flows database may hold (bytes, or "512KiB", "64MiB",
# "1GiB"); beyond it the least recently seen flows are evicted first
# (counted in sdm_flow_store_evictions_total).
max_bytes = "64MiB"

# Each new denied flow is written as one JSON line: to standard output by
# default, or appended to this file.
# [audit]
# log = "/var/log/sdm-agent/flows.jsonl"

# Where the policed workload may hold CAP_NET_RAW: a tc program at the
# egress of these interfaces judges the frames its packet sockets write
# (below the IP layer, where the cgroup programs do not run) by the same
# allowlist, and drops any that carry no IPv4 or IPv6. Empty: off, and no
# per-packet cost. Interfaces not listed are not watched.
# [backstop]
# interfaces = ["eth0"]
"#;

impl Config {
    /// A commented example config whose values are the defaults: it parses
    /// to `Config::default()`.
    pub fn default_toml() -> &'static str {
        DEFAULT_TOML
    }

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(text, path, &e))?;
        Validator { src: text, path }.resolve(raw)
    }
}

#[cfg(test)]
mod tests;
