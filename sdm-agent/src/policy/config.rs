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

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use crate::kernel::cgroup::CgroupTarget;
use crate::policy::{Direction, PortRange, Proto, Target};

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

// ---------------------------------------------------------------------------
// Named enums

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

// ---------------------------------------------------------------------------
// The resolved config

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
        Ctx { src: text, path }.resolve(raw)
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: {op}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A syntax error, a type error, an unknown or missing key, or a value
    /// that failed validation.
    #[error("{}", render_invalid(path, *line, *column, section.as_deref(), key.as_deref(), message))]
    Invalid {
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// 1-based, in characters; given for TOML (syntax and type) errors.
        column: Option<usize>,
        /// E.g. `[dns]` or `[[resource]] "prod-db"`; `None` at top level.
        section: Option<String>,
        /// The key the error is about, where known.
        key: Option<String>,
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error points to.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { line, .. } => Some(*line),
        }
    }

    /// The key the error is about, where known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { key, .. } => key.as_deref(),
        }
    }
}

fn render_invalid(
    path: &Path,
    line: usize,
    column: Option<usize>,
    section: Option<&str>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut out = format!("config {}: line {line}", path.display());
    if let Some(c) = column {
        out.push_str(&format!(", column {c}"));
    }
    out.push_str(": ");
    let mut ctx = Vec::new();
    if let Some(s) = section {
        ctx.push(s.to_string());
    }
    if let Some(k) = key {
        ctx.push(format!("key `{k}`"));
    }
    if !ctx.is_empty() {
        out.push_str(&ctx.join(" "));
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The table header (`[dns]`, `[[resource]]`) in force at a line, and the
/// key of the `key = value` line at or above it, found from the text. Only
/// used to make TOML's own messages say which key they are about.
fn locate(src: &str, line: usize) -> (Option<String>, Option<String>) {
    let lines: Vec<&str> = src.lines().collect();
    let mut key = None;
    let mut section = None;
    let mut looking_for_key = true;
    for i in (0..line.min(lines.len())).rev() {
        let l = lines[i].trim_start();
        if l.starts_with('[') {
            let end = l.find(']').map_or(l.len(), |e| {
                if l[e..].starts_with("]]") {
                    e + 2
                } else {
                    e + 1
                }
            });
            section = Some(l[..end].to_string());
            break;
        }
        if looking_for_key {
            if let Some((k, _)) = l.split_once('=') {
                let k = k.trim();
                let bare = k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c));
                if !k.is_empty() && bare {
                    key = Some(k.replace(['"', '\''], ""));
                    looking_for_key = false;
                }
            }
        }
    }
    (section, key)
}

fn syntax_error(src: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let mut message = e
        .message()
        .trim_end()
        .replace("expected i64", "expected an integer");
    let (line, column) = match e.span() {
        Some(span) => line_col(src, span.start),
        None => (1, 1),
    };
    let (section, key) = if e.span().is_some() {
        locate(src, line)
    } else {
        (None, None)
    };
    // "unknown field `x`" already names its key.
    let key = key.filter(|k| !message.contains(&format!("`{k}`")));
    if let Some(table) = section
        .as_deref()
        .and_then(|s| s.strip_prefix('['))
        .and_then(|s| s.strip_suffix(']'))
        .filter(|t| ["resource", "secret_store", "allow"].contains(t))
    {
        if message.contains("expected a sequence") {
            message.push_str(&format!(" (write [[{table}]], with double brackets)"));
        }
    }
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        column: Some(column),
        section,
        key,
        message,
    }
}

// ---------------------------------------------------------------------------
// Raw, spanned structs

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    role: Option<Spanned<OneOrMany>>,
    region: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    optional: Option<bool>,
    loopback: Option<Spanned<String>>,
    fail: Option<Spanned<String>>,
    gateways: Option<Spanned<OneOrMany>>,
    hosts: Option<RawHosts>,
    gateway: Option<RawGateway>,
    client: Option<RawClient>,
    #[serde(default)]
    resource: Vec<Spanned<RawResource>>,
    #[serde(default)]
    secret_store: Vec<Spanned<RawResource>>,
    #[serde(default)]
    allow: Vec<Spanned<RawAllow>>,
    dns: Option<RawDns>,
    http: Option<RawHttp>,
    state: Option<RawState>,
    audit: Option<RawAudit>,
    backstop: Option<RawBackstop>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHosts {
    app: Option<Spanned<String>>,
    login: Option<Spanned<String>>,
    downloads: Option<Spanned<String>>,
    checkip: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    advertised_port: Option<Spanned<i64>>,
    sources: Option<Spanned<OneOrMany>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    loopback_ports: Option<Spanned<PortsValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: Spanned<String>,
    host: Option<Spanned<String>>,
    cidr: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    ports: Option<Spanned<PortsValue>>,
    proto: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    name: Spanned<String>,
    direction: Spanned<String>,
    port: Option<Spanned<i64>>,
    ports: Option<Spanned<PortsValue>>,
    proto: Option<Spanned<String>>,
    from: Option<Spanned<OneOrMany>>,
    to: Option<Spanned<OneOrMany>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    servers: Option<Spanned<OneOrMany>>,
    fallback: Option<Spanned<String>>,
    ttl_min: Option<Spanned<DurationValue>>,
    ttl_max: Option<Spanned<DurationValue>>,
    grace: Option<Spanned<DurationValue>>,
    queries: Option<Spanned<String>>,
    search: Option<Spanned<OneOrMany>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<Spanned<String>>,
    retention: Option<Spanned<DurationValue>>,
    max_bytes: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    log: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackstop {
    interfaces: Option<Spanned<OneOrMany>>,
}

/// A string, or an array of strings (each with its own span).
enum OneOrMany {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// The items of a [`OneOrMany`], each with its span (a single string has
/// the span of the value).
fn items(v: &Spanned<OneOrMany>) -> Vec<(&str, Range<usize>)> {
    match v.get_ref() {
        OneOrMany::One(s) => vec![(s.as_str(), v.span())],
        OneOrMany::Many(list) => list
            .iter()
            .map(|s| (s.get_ref().as_str(), s.span()))
            .collect(),
    }
}

/// `ports`: a string `"80,443,8000-8100"`, or an array of integers and
/// such strings.
enum PortsValue {
    Text(String),
    List(Vec<Spanned<PortItem>>),
}

enum PortItem {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for PortsValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PortsValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string such as \"80,443,8000-8100\" or an array of ports")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortsValue, E> {
                Ok(PortsValue::Text(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PortsValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<PortItem>>()? {
                    items.push(item);
                }
                Ok(PortsValue::List(items))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for PortItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a string such as \"8000-8100\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortItem, E> {
                Ok(PortItem::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortItem, E> {
                Ok(PortItem::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortItem, E> {
                Ok(PortItem::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration: an integer (seconds) or a string such as "30s".
enum DurationValue {
    Seconds(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"10m\", \"1h\", \"500ms\", or seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationValue, E> {
                Ok(DurationValue::Seconds(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationValue, E> {
                Ok(DurationValue::Seconds(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
                Ok(DurationValue::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Value parsers (public where useful elsewhere)

/// Parses a size: bytes (`"1048576"`), or a number with `KiB`, `MiB`,
/// `GiB` (or `K`, `M`, `G`, `KB`, `MB`, `GB`: taken as powers of 1024 too,
/// so no unit means less than it seems).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size {s:?}: expected bytes or e.g. \"512KiB\", \"64MiB\", \"1GiB\"");
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let shift = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Parses a duration: `"500ms"`, `"30s"`, `"10m"`, `"1h"`, `"2d"`,
/// compounds such as `"1h30m"`, or a plain number of seconds (`"30"`).
/// `"us"` and `"ns"` are read too, so [`format_duration`] round-trips.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {s:?}: expected e.g. \"500ms\", \"30s\", \"10m\", \"1h\" or seconds"
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    // Nothing in a config means more than a century; the bound also keeps
    // every duration printable in milliseconds (`format_duration`) and
    // readable back.
    const MAX: Duration = Duration::from_secs(100 * 365 * 86_400);
    let too_long = || format!("duration {s:?} is too long (at most 100 years)");
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| too_long())?;
        let d = Duration::from_secs(secs);
        return if d > MAX { Err(too_long()) } else { Ok(d) };
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ns" => Some(Duration::from_nanos(n)),
            "us" => Some(Duration::from_micros(n)),
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86400).map(Duration::from_secs),
            _ => return Err(bad()),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .filter(|t| *t <= MAX)
            .ok_or_else(too_long)?;
    }
    Ok(total)
}

/// The shortest exact rendering of a duration in the units
/// [`parse_duration`] reads: "7d", "1h", "10m", "30s", "500ms".
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}ns", d.as_nanos());
    }
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    if s != 0 && s.is_multiple_of(86400) {
        format!("{}d", s / 86400)
    } else if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Validates and normalises a DNS name: lower-cased, one trailing dot
/// removed, labels of 1 to 63 characters of `[a-z0-9_-]` not starting or
/// ending with `-`, at most 253 characters in all, and a last label that is
/// not all digits (so a mistyped address is not taken for a name). With
/// `allow_wildcard`, a leading `*.` label is accepted.
pub fn normalize_hostname(s: &str, allow_wildcard: bool) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let invalid = |why: &str| format!("invalid hostname {s:?}: {why}");
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    let body = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        Some(_) => return Err(invalid("a wildcard is not allowed here")),
        None => name,
    };
    let labels: Vec<&str> = body.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(invalid("empty label"));
        }
        if label.len() > 63 {
            return Err(invalid("a label is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(invalid(&format!("character {c:?} is not allowed")));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label starts or ends with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid(
            "not a name (all-numeric last label) nor an IP address",
        ));
    }
    if name.starts_with("*.") && is_public_suffix(body) {
        // `*.com` would allow every registrable domain under `.com`: any
        // attacker can register one and point it anywhere.
        return Err(invalid(&format!(
            "the wildcard covers every domain under the public suffix {body:?} \
             (Public Suffix List); name a domain below a registrable one, e.g. *.example.{body}"
        )));
    }
    Ok(name.to_string())
}

/// Whether `name` (lower-case, validated) is itself a public suffix by the
/// Public Suffix List (ICANN and private sections, e.g. `com`, `co.uk`,
/// `s3.amazonaws.com`), or a single label, which the list's default rule
/// makes one (`internal`, `corp`: a whole top-level domain).
fn is_public_suffix(name: &str) -> bool {
    !name.contains('.')
        || psl::suffix(name.as_bytes()).is_some_and(|s| s.as_bytes() == name.as_bytes())
}

/// A CIDR (`10.0.0.0/8`) or a single address (a `/32` or `/128`). Host
/// bits are cleared (`10.0.0.1/8` is `10.0.0.0/8`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        s.parse::<IpNet>()
            .map(|n| n.trunc())
            .map_err(|e| format!("invalid CIDR {s:?}: {e}"))
    } else {
        s.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|e| format!("invalid CIDR {s:?}: {e}"))
    }
}

/// A host as written in `host` or an egress `to`: an address, a CIDR (only
/// when `cidr_ok`), or a name (a `*.` wildcard allowed).
fn parse_target(s: &str, cidr_ok: bool) -> Result<Target, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Target::Cidr(IpNet::from(ip)));
    }
    if s.contains('/') {
        if cidr_ok {
            return parse_cidr(s).map(Target::Cidr);
        }
        return Err(format!("{s:?} is a CIDR: use the `cidr` key"));
    }
    normalize_hostname(s, true).map(Target::Host)
}

/// Lowest and highest port (or ICMP type) for a protocol.
fn port_bounds(proto: Proto) -> (u32, u32) {
    match proto {
        Proto::Icmp => (0, 255),
        Proto::Tcp | Proto::Udp => (1, 65535),
    }
}

fn check_port(n: i64, proto: Proto) -> Result<u16, String> {
    let (lo, hi) = port_bounds(proto);
    let what = if proto == Proto::Icmp {
        "ICMP type"
    } else {
        "port"
    };
    match u32::try_from(n) {
        Ok(v) if v >= lo && v <= hi => {
            u16::try_from(v).map_err(|_| format!("{what} {n} is out of range"))
        }
        _ => Err(format!("{what} {n} is out of range {lo}-{hi}")),
    }
}

fn parse_port_number(s: &str, proto: Proto) -> Result<u16, String> {
    let what = if proto == Proto::Icmp {
        "ICMP type"
    } else {
        "port"
    };
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid {what} {s:?}"));
    }
    let n: i64 = s.parse().unwrap_or(i64::MAX);
    check_port(n, proto)
}

/// Parses `"80"`, `"8000-8100"` or `"80,443,8000-8100"` into sorted,
/// merged ranges. For ICMP the values are types (0-255).
pub fn parse_port_spec(s: &str, proto: Proto) -> Result<Vec<PortRange>, String> {
    let mut out = Vec::new();
    for item in s.split(',') {
        out.push(parse_port_item(item.trim(), proto)?);
    }
    Ok(normalize_ports(out))
}

fn parse_port_item(item: &str, proto: Proto) -> Result<PortRange, String> {
    if item.is_empty() {
        return Err("empty item in port list".to_string());
    }
    match item.split_once('-') {
        Some((a, b)) => {
            let lo = parse_port_number(a.trim(), proto)?;
            let hi = parse_port_number(b.trim(), proto)?;
            if lo > hi {
                return Err(format!("port range {item:?}: {lo} is greater than {hi}"));
            }
            Ok(PortRange { lo, hi })
        }
        None => Ok(PortRange::single(parse_port_number(item, proto)?)),
    }
}

/// Sorts ranges and merges the overlapping and adjacent ones.
pub fn normalize_ports(mut ports: Vec<PortRange>) -> Vec<PortRange> {
    ports.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(ports.len());
    for p in ports {
        match out.last_mut() {
            Some(last) if u32::from(p.lo) <= u32::from(last.hi) + 1 => {
                last.hi = last.hi.max(p.hi);
            }
            _ => out.push(p),
        }
    }
    out
}

/// Whether an address only reaches this host (127.0.0.0/8, ::1, and
/// IPv4-mapped loopback).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Checks a `[[resource]]`, `[[secret_store]]` or `[[allow]]` name.
pub fn valid_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !rest_ok {
        return Err(format!(
            "invalid name {s:?}: must match [a-z0-9][a-z0-9._-]*"
        ));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "name {s:?} is longer than {MAX_NAME_LEN} characters"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Validation

struct Ctx<'a> {
    src: &'a str,
    path: &'a Path,
}

/// Where in the file a value is: the section label and key used in errors.
#[derive(Clone)]
struct Here {
    section: Option<String>,
}

impl Here {
    fn top() -> Self {
        Here { section: None }
    }
    fn table(name: &str) -> Self {
        Here {
            section: Some(format!("[{name}]")),
        }
    }
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Range<usize>,
        here: &Here,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, _) = line_col(self.src, span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column: None,
            section: here.section.clone(),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    fn named<T: FromStr<Err = UnknownName>>(
        &self,
        v: &Spanned<String>,
        here: &Here,
        key: &str,
    ) -> Result<T, ConfigError> {
        v.get_ref()
            .parse()
            .map_err(|e: UnknownName| self.err(v.span(), here, key, e.to_string()))
    }

    fn port(
        &self,
        v: &Spanned<i64>,
        proto: Proto,
        here: &Here,
        key: &str,
    ) -> Result<u16, ConfigError> {
        check_port(*v.get_ref(), proto).map_err(|m| self.err(v.span(), here, key, m))
    }

    fn ports_value(
        &self,
        v: &Spanned<PortsValue>,
        proto: Proto,
        here: &Here,
        key: &str,
    ) -> Result<Vec<PortRange>, ConfigError> {
        match v.get_ref() {
            PortsValue::Text(s) => {
                let ports =
                    parse_port_spec(s, proto).map_err(|m| self.err(v.span(), here, key, m))?;
                Ok(ports)
            }
            PortsValue::List(list) => {
                let mut out = Vec::new();
                for item in list {
                    let span = item.span();
                    match item.get_ref() {
                        PortItem::Number(n) => {
                            let p =
                                check_port(*n, proto).map_err(|m| self.err(span, here, key, m))?;
                            out.push(PortRange::single(p));
                        }
                        PortItem::Text(s) => {
                            let ps = parse_port_spec(s, proto)
                                .map_err(|m| self.err(span, here, key, m))?;
                            out.extend(ps);
                        }
                    }
                }
                Ok(normalize_ports(out))
            }
        }
    }

    /// `port` xor `ports`; `table_span` is where to point when both are missing.
    fn port_or_ports(
        &self,
        port: Option<&Spanned<i64>>,
        ports: Option<&Spanned<PortsValue>>,
        proto: Proto,
        here: &Here,
        table_span: Range<usize>,
    ) -> Result<Vec<PortRange>, ConfigError> {
        match (port, ports) {
            (Some(p), None) => Ok(vec![PortRange::single(self.port(p, proto, here, "port")?)]),
            (None, Some(ps)) => {
                let list = self.ports_value(ps, proto, here, "ports")?;
                if list.is_empty() {
                    return Err(self.err(ps.span(), here, "ports", "empty port list"));
                }
                Ok(list)
            }
            (Some(_), Some(ps)) => Err(self.err(
                ps.span(),
                here,
                "ports",
                "give either `port` or `ports`, not both",
            )),
            (None, None) => Err(self.err(
                table_span,
                here,
                "port",
                "one of `port` or `ports` is required",
            )),
        }
    }

    fn proto(
        &self,
        v: Option<&Spanned<String>>,
        allowed: &[Proto],
        here: &Here,
    ) -> Result<Proto, ConfigError> {
        let Some(v) = v else { return Ok(Proto::Tcp) };
        allowed
            .iter()
            .copied()
            .find(|p| p.to_string() == *v.get_ref())
            .ok_or_else(|| {
                let names: Vec<String> = allowed.iter().map(|p| p.to_string()).collect();
                self.err(
                    v.span(),
                    here,
                    "proto",
                    format!(
                        "unknown protocol {:?}, expected one of: {}",
                        v.get_ref(),
                        names.join(", ")
                    ),
                )
            })
    }

    fn cidrs(
        &self,
        v: &Spanned<OneOrMany>,
        here: &Here,
        key: &str,
    ) -> Result<Vec<IpNet>, ConfigError> {
        let mut out = Vec::new();
        for (s, span) in items(v) {
            let net = parse_cidr(s).map_err(|m| self.err(span, here, key, m))?;
            if !out.contains(&net) {
                out.push(net);
            }
        }
        Ok(out)
    }

    fn duration(
        &self,
        v: Option<&Spanned<DurationValue>>,
        default: Duration,
        here: &Here,
        key: &str,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        match v.get_ref() {
            DurationValue::Seconds(n) => u64::try_from(*n)
                .map(Duration::from_secs)
                .map_err(|_| self.err(v.span(), here, key, format!("negative duration {n}"))),
            DurationValue::Text(s) => {
                parse_duration(s).map_err(|m| self.err(v.span(), here, key, m))
            }
        }
    }

    fn resolve(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let top = Here::top();
        let mut cfg = Config::default();

        if let Some(v) = &raw.role {
            cfg.roles.clear();
            for (s, span) in items(v) {
                let role: Role = s
                    .parse()
                    .map_err(|e: UnknownName| self.err(span, &top, "role", e.to_string()))?;
                if !cfg.roles.contains(&role) {
                    cfg.roles.push(role);
                }
            }
        }
        if let Some(v) = &raw.region {
            cfg.region = self.named(v, &top, "region")?;
        }
        if let Some(v) = &raw.mode {
            cfg.mode = self.named(v, &top, "mode")?;
        }
        if let Some(v) = &raw.loopback {
            cfg.loopback = self.named(v, &top, "loopback")?;
        }
        if let Some(v) = &raw.fail {
            cfg.fail = self.named(v, &top, "fail")?;
        }
        if let Some(v) = raw.optional {
            cfg.optional = v;
        }
        if let Some(v) = &raw.cgroup {
            let t: CgroupTarget = v
                .get_ref()
                .parse()
                .map_err(|m: String| self.err(v.span(), &top, "cgroup", m))?;
            cfg.cgroup = Some(t);
        }
        if let Some(v) = &raw.gateways {
            for (s, span) in items(v) {
                let hp: HostPort = s
                    .parse()
                    .map_err(|m: String| self.err(span, &top, "gateways", m))?;
                if !cfg.gateways.contains(&hp) {
                    cfg.gateways.push(hp);
                }
            }
        }

        cfg.hosts = ControlPlaneHosts::for_region(cfg.region);
        if let Some(h) = &raw.hosts {
            let here = Here::table("hosts");
            for (which, v) in [
                (ControlPlaneHost::App, &h.app),
                (ControlPlaneHost::Login, &h.login),
                (ControlPlaneHost::Downloads, &h.downloads),
                (ControlPlaneHost::Checkip, &h.checkip),
            ] {
                if let Some(v) = v {
                    let name = normalize_hostname(v.get_ref(), false)
                        .map_err(|m| self.err(v.span(), &here, which.as_str(), m))?;
                    *cfg.hosts.get_mut(which) = name;
                }
            }
        }

        if let Some(g) = &raw.gateway {
            let here = Here::table("gateway");
            if let Some(p) = &g.advertised_port {
                cfg.gateway.advertised_port = self.port(p, Proto::Tcp, &here, "advertised_port")?;
            }
            if let Some(s) = &g.sources {
                cfg.gateway.sources = self.cidrs(s, &here, "sources")?;
            }
        }

        if let Some(c) = &raw.client {
            let here = Here::table("client");
            if let Some(p) = &c.loopback_ports {
                cfg.client.loopback_ports =
                    self.ports_value(p, Proto::Tcp, &here, "loopback_ports")?;
            }
        }

        // Rule names are unique across [[resource]], [[secret_store]] and
        // [[allow]]; the later of two entries (in file order) is reported.
        let mut all_names: Vec<(&Spanned<String>, &'static str)> = Vec::new();
        all_names.extend(
            raw.resource
                .iter()
                .map(|r| (&r.get_ref().name, "[[resource]]")),
        );
        all_names.extend(
            raw.secret_store
                .iter()
                .map(|r| (&r.get_ref().name, "[[secret_store]]")),
        );
        all_names.extend(raw.allow.iter().map(|a| (&a.get_ref().name, "[[allow]]")));
        all_names.sort_by_key(|(n, _)| n.span().start);
        let mut seen: HashMap<&str, (&'static str, usize)> = HashMap::new();
        for (name, kind) in all_names {
            let (line, _) = line_col(self.src, name.span().start);
            if let Some((other, other_line)) = seen.get(name.get_ref().as_str()) {
                return Err(self.err(
                    name.span(),
                    &self.entry_here(kind, name),
                    "name",
                    format!(
                        "duplicate name {:?} (already used by {other} on line {other_line})",
                        name.get_ref()
                    ),
                ));
            }
            seen.insert(name.get_ref(), (kind, line));
        }

        for (kind, list, out) in [
            ("[[resource]]", &raw.resource, &mut cfg.resources),
            (
                "[[secret_store]]",
                &raw.secret_store,
                &mut cfg.secret_stores,
            ),
        ] {
            for r in list {
                let here = self.entry_here(kind, &r.get_ref().name);
                out.push(self.resource(r, &here)?);
            }
        }

        for a in &raw.allow {
            let here = self.entry_here("[[allow]]", &a.get_ref().name);
            cfg.allow.push(self.allow(a, &here)?);
        }

        if let Some(d) = &raw.dns {
            let here = Here::table("dns");
            if let Some(v) = &d.servers {
                for (s, span) in items(v) {
                    let ip: IpAddr = s.parse().map_err(|_| {
                        self.err(span, &here, "servers", format!("invalid IP address {s:?}"))
                    })?;
                    if !cfg.dns.servers.contains(&ip) {
                        cfg.dns.servers.push(ip);
                    }
                }
            }
            if let Some(v) = &d.fallback {
                let s = v.get_ref();
                cfg.dns.fallback = if s.is_empty() || s.eq_ignore_ascii_case("none") {
                    None
                } else {
                    Some(s.parse().map_err(|_| {
                        self.err(
                            v.span(),
                            &here,
                            "fallback",
                            format!(
                                "invalid IP address {s:?} (\"\" or \"none\" disables the fallback)"
                            ),
                        )
                    })?)
                };
            }
            cfg.dns.ttl_min =
                self.duration(d.ttl_min.as_ref(), DEFAULT_TTL_MIN, &here, "ttl_min")?;
            cfg.dns.ttl_max =
                self.duration(d.ttl_max.as_ref(), DEFAULT_TTL_MAX, &here, "ttl_max")?;
            cfg.dns.grace = self.duration(d.grace.as_ref(), DEFAULT_GRACE, &here, "grace")?;
            if let Some(v) = &d.queries {
                cfg.dns.queries = self.named(v, &here, "queries")?;
            }
            if let Some(v) = &d.search {
                for (s, span) in items(v) {
                    // A suffix lets every name under it be queried: as wide
                    // as the wildcard `*.suffix`, and refused as it is.
                    let wildcard = format!("*.{}", s.trim_start_matches('.'));
                    let name = normalize_hostname(&wildcard, true)
                        .map_err(|e| self.err(span, &here, "search", e))?;
                    let suffix = name.trim_start_matches("*.").to_string();
                    if !cfg.dns.search.contains(&suffix) {
                        cfg.dns.search.push(suffix);
                    }
                }
            }
            if cfg.dns.ttl_min.is_zero() {
                let span = d.ttl_min.as_ref().map_or(0..0, |v| v.span());
                return Err(self.err(span, &here, "ttl_min", "must be greater than zero"));
            }
            if cfg.dns.ttl_min > cfg.dns.ttl_max {
                let (key, span) = match (&d.ttl_max, &d.ttl_min) {
                    (Some(v), _) => ("ttl_max", v.span()),
                    (None, Some(v)) => ("ttl_min", v.span()),
                    (None, None) => ("ttl_max", 0..0),
                };
                return Err(self.err(
                    span,
                    &here,
                    key,
                    format!(
                        "ttl_min ({}) is greater than ttl_max ({})",
                        format_duration(cfg.dns.ttl_min),
                        format_duration(cfg.dns.ttl_max)
                    ),
                ));
            }
        }

        if let Some(h) = &raw.http {
            let here = Here::table("http");
            if let Some(v) = &h.listen {
                cfg.http.listen = v.get_ref().parse().map_err(|_| {
                    self.err(
                        v.span(),
                        &here,
                        "listen",
                        format!(
                            "invalid socket address {:?}, expected e.g. \"127.0.0.1:9850\"",
                            v.get_ref()
                        ),
                    )
                })?;
            }
            if let Some(v) = &h.token {
                let t = v.get_ref();
                if t.is_empty() {
                    return Err(self.err(v.span(), &here, "token", "empty token"));
                }
                if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
                    return Err(self.err(
                        v.span(),
                        &here,
                        "token",
                        format!(
                            "character {c:?} is not allowed (use printable ASCII without spaces)"
                        ),
                    ));
                }
                cfg.http.token = Some(t.clone());
            }
            if let Some(v) = &h.listen {
                if cfg.http.token.is_none() && !is_loopback(cfg.http.listen.ip()) {
                    return Err(self.err(
                        v.span(),
                        &here,
                        "listen",
                        format!(
                            "{} is not a loopback address: set [http] token to serve the dashboard and metrics on it",
                            cfg.http.listen
                        ),
                    ));
                }
            }
        }

        if let Some(st) = &raw.state {
            let here = Here::table("state");
            if let Some(v) = &st.dir {
                cfg.state.dir = self.absolute(v, &here, "dir")?;
            }
            cfg.state.retention =
                self.duration(st.retention.as_ref(), DEFAULT_RETENTION, &here, "retention")?;
            if cfg.state.retention.is_zero() {
                let span = st.retention.as_ref().map_or(0..0, |v| v.span());
                return Err(self.err(span, &here, "retention", "must be greater than zero"));
            }
            if let Some(v) = &st.max_bytes {
                // A number or a string, read like a duration's value.
                let n = match v.get_ref() {
                    DurationValue::Seconds(n) => {
                        u64::try_from(*n).map_err(|_| format!("negative size {n}"))
                    }
                    DurationValue::Text(t) => parse_size(t),
                }
                .map_err(|m| self.err(v.span(), &here, "max_bytes", m))?;
                if n < MIN_STORE_MAX_BYTES {
                    return Err(self.err(
                        v.span(),
                        &here,
                        "max_bytes",
                        format!("{n} bytes is too small: at least 1MiB ({MIN_STORE_MAX_BYTES})"),
                    ));
                }
                cfg.state.max_bytes = n;
            }
        }

        if let Some(a) = &raw.audit {
            if let Some(v) = &a.log {
                cfg.audit.log = Some(self.absolute(v, &Here::table("audit"), "log")?);
            }
        }

        if let Some(v) = raw.backstop.as_ref().and_then(|b| b.interfaces.as_ref()) {
            let here = Here::table("backstop");
            for (name, span) in items(v) {
                valid_interface_name(name)
                    .map_err(|m| self.err(span.clone(), &here, "interfaces", m))?;
                if cfg.backstop.interfaces.iter().any(|i| i.name == name) {
                    return Err(self.err(
                        span,
                        &here,
                        "interfaces",
                        format!("{name:?} is listed twice"),
                    ));
                }
                let (line, _) = line_col(self.src, span.start);
                cfg.backstop.interfaces.push(BackstopInterface {
                    name: name.to_owned(),
                    line,
                });
            }
        }

        Ok(cfg)
    }

    /// An absolute path.
    fn absolute(
        &self,
        v: &Spanned<String>,
        here: &Here,
        key: &str,
    ) -> Result<PathBuf, ConfigError> {
        let p = PathBuf::from(v.get_ref());
        if !p.is_absolute() {
            return Err(self.err(
                v.span(),
                here,
                key,
                format!("{:?} is not an absolute path", v.get_ref()),
            ));
        }
        Ok(p)
    }

    /// The section label of an array entry: `[[resource]] "prod-db"`.
    fn entry_here(&self, kind: &str, name: &Spanned<String>) -> Here {
        Here {
            section: Some(format!("{kind} {:?}", name.get_ref())),
        }
    }

    fn resource(
        &self,
        r: &Spanned<RawResource>,
        here: &Here,
    ) -> Result<ResourceConfig, ConfigError> {
        let raw = r.get_ref();
        valid_name(raw.name.get_ref()).map_err(|m| self.err(raw.name.span(), here, "name", m))?;
        let proto = self.proto(raw.proto.as_ref(), &[Proto::Tcp, Proto::Udp], here)?;
        let target = match (&raw.host, &raw.cidr) {
            (Some(h), None) => {
                parse_target(h.get_ref(), false).map_err(|m| self.err(h.span(), here, "host", m))?
            }
            (None, Some(c)) => Target::Cidr(
                parse_cidr(c.get_ref()).map_err(|m| self.err(c.span(), here, "cidr", m))?,
            ),
            (Some(_), Some(c)) => {
                return Err(self.err(
                    c.span(),
                    here,
                    "cidr",
                    "give either `host` or `cidr`, not both",
                ))
            }
            (None, None) => {
                return Err(self.err(
                    r.span(),
                    here,
                    "host",
                    "one of `host` or `cidr` is required",
                ))
            }
        };
        let ports =
            self.port_or_ports(raw.port.as_ref(), raw.ports.as_ref(), proto, here, r.span())?;
        Ok(ResourceConfig {
            name: raw.name.get_ref().clone(),
            target,
            proto,
            ports,
        })
    }

    fn allow(&self, a: &Spanned<RawAllow>, here: &Here) -> Result<AllowConfig, ConfigError> {
        let raw = a.get_ref();
        valid_name(raw.name.get_ref()).map_err(|m| self.err(raw.name.span(), here, "name", m))?;
        let direction = match raw.direction.get_ref().as_str() {
            "egress" => Direction::Egress,
            "ingress" => Direction::Ingress,
            other => {
                return Err(self.err(
                    raw.direction.span(),
                    here,
                    "direction",
                    format!("unknown direction {other:?}, expected one of: egress, ingress"),
                ))
            }
        };
        let proto = self.proto(
            raw.proto.as_ref(),
            &[Proto::Tcp, Proto::Udp, Proto::Icmp],
            here,
        )?;
        let ports =
            self.port_or_ports(raw.port.as_ref(), raw.ports.as_ref(), proto, here, a.span())?;
        let targets = match direction {
            Direction::Egress => {
                if let Some(f) = &raw.from {
                    return Err(self.err(
                        f.span(),
                        here,
                        "from",
                        "an egress rule takes `to`, not `from`",
                    ));
                }
                let Some(to) = &raw.to else {
                    return Err(self.err(
                        a.span(),
                        here,
                        "to",
                        "an egress rule needs `to` (hosts or CIDRs)",
                    ));
                };
                let mut out = Vec::new();
                for (s, span) in items(to) {
                    let t = parse_target(s, true).map_err(|m| self.err(span, here, "to", m))?;
                    if !out.contains(&t) {
                        out.push(t);
                    }
                }
                if out.is_empty() {
                    return Err(self.err(to.span(), here, "to", "empty list"));
                }
                out
            }
            Direction::Ingress => {
                if let Some(t) = &raw.to {
                    return Err(self.err(
                        t.span(),
                        here,
                        "to",
                        "an ingress rule takes `from`, not `to`",
                    ));
                }
                let Some(from) = &raw.from else {
                    return Err(self.err(
                        a.span(),
                        here,
                        "from",
                        "an ingress rule needs `from` (CIDRs)",
                    ));
                };
                let nets = self.cidrs(from, here, "from")?;
                if nets.is_empty() {
                    return Err(self.err(from.span(), here, "from", "empty list"));
                }
                nets.into_iter().map(Target::Cidr).collect()
            }
        };
        Ok(AllowConfig {
            name: raw.name.get_ref().clone(),
            direction,
            proto,
            ports,
            targets,
        })
    }
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `values` fuzz target: a sum of huge parts that printed
    /// as more milliseconds than a u64 holds, so it did not read back.
    #[test]
    fn absurd_durations_are_refused_and_the_rest_round_trips() {
        let e = parse_duration("9999999999900ms5999999999999009m9s").unwrap_err();
        assert!(e.contains("too long"), "{e}");
        assert!(parse_duration("99999999999999999999").is_err());
        let century = Duration::from_secs(100 * 365 * 86_400);
        assert_eq!(parse_duration(&format_duration(century)), Ok(century));
        assert!(parse_duration("36501d").is_err());
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("my.toml"))
    }

    fn ok(text: &str) -> Config {
        match parse(text) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// Asserts that `text` fails on `line` about `key`, and that the
    /// message contains every one of `words`.
    fn fails(text: &str, line: usize, key: &str, words: &[&str]) -> String {
        let err = match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(msg.starts_with("config my.toml: "), "{msg}");
        assert_eq!(err.line(), Some(line), "wrong line in: {msg}");
        assert!(
            msg.contains(&format!("line {line}:")) || msg.contains(&format!("line {line},")),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("`{key}`")),
            "key `{key}` not named in: {msg}"
        );
        for w in words {
            assert!(msg.contains(w), "{w:?} not in: {msg}");
        }
        msg
    }

    fn cidr(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn empty_file_is_the_default() {
        let c = ok("");
        assert_eq!(c, Config::default());
        assert_eq!(c.roles, vec![Role::Gateway]);
        assert_eq!(c.region, Region::Us);
        assert_eq!(c.mode, Mode::Audit);
        assert_eq!(c.cgroup, None);
        assert!(c.optional);
        assert_eq!(c.loopback, LoopbackMode::Pass);
        assert!(c.gateways.is_empty());
        assert_eq!(c.hosts.app, "app.strongdm.com");
        assert_eq!(c.hosts.login, "login.strongdm.com");
        assert_eq!(c.hosts.downloads, "downloads.strongdm.com");
        assert_eq!(c.hosts.checkip, "checkip.amazonaws.com");
        assert_eq!(c.gateway.advertised_port, 5000);
        assert_eq!(c.gateway.sources, vec![cidr("0.0.0.0/0"), cidr("::/0")]);
        assert!(c.client.loopback_ports.is_empty());
        assert!(c.resources.is_empty() && c.secret_stores.is_empty() && c.allow.is_empty());
        assert!(c.dns.servers.is_empty());
        assert_eq!(c.dns.fallback, Some("1.1.1.1".parse().unwrap()));
        assert_eq!(c.dns.ttl_min, Duration::from_secs(30));
        assert_eq!(c.dns.ttl_max, Duration::from_secs(3600));
        assert_eq!(c.dns.grace, Duration::from_secs(600));
        assert_eq!(c.http.listen, "127.0.0.1:9850".parse().unwrap());
        assert_eq!(c.http.token, None);
        assert_eq!(c.state.dir, PathBuf::from("/var/lib/sdm-agent"));
        assert_eq!(c.state.retention, Duration::from_secs(7 * 86400));
        assert_eq!(c.audit.log, None);
    }

    #[test]
    fn default_toml_parses_to_default() {
        assert_eq!(ok(Config::default_toml()), Config::default());
    }

    #[test]
    fn default_toml_commented_examples_parse() {
        // Uncomment the example lines (`# key = value` and `# [table]`);
        // of alternatives for one key (`cgroup`), the first.
        let mut table = String::new();
        let mut seen = std::collections::HashSet::new();
        let text: String = Config::default_toml()
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.starts_with('[') => {
                    table = rest.to_string();
                    seen.clear();
                    rest.to_string()
                }
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                            && seen.insert((table.clone(), k.to_string()))
                    }) =>
                {
                    rest.to_string()
                }
                _ => {
                    if l.starts_with('[') {
                        table = l.to_string();
                        seen.clear();
                    }
                    l.to_string()
                }
            })
            .map(|l| l + "\n")
            .collect();
        let c = ok(&text);
        assert_eq!(
            c.cgroup,
            Some(CgroupTarget::Path(PathBuf::from("/sys/fs/cgroup")))
        );
        assert_eq!(c.resources.len(), 1);
        assert_eq!(c.secret_stores.len(), 1);
        assert_eq!(c.allow.len(), 1);
        assert_eq!(c.hosts, ControlPlaneHosts::for_region(Region::Us));
        assert_eq!(c.http.token.as_deref(), Some("a-long-random-string"));
        assert_eq!(
            c.audit.log.as_deref(),
            Some(Path::new("/var/log/sdm-agent/flows.jsonl"))
        );
        let names: Vec<&str> = c
            .backstop
            .interfaces
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, ["eth0"]);
    }

    #[test]
    fn backstop_interfaces_are_checked_names_with_their_lines() {
        assert!(ok("").backstop.interfaces.is_empty());
        assert!(ok("[backstop]\n").backstop.interfaces.is_empty());
        let c = ok("[backstop]\ninterfaces = [\n  \"eth0\",\n  \"wg0\",\n]\n");
        let got: Vec<(&str, usize)> = c
            .backstop
            .interfaces
            .iter()
            .map(|i| (i.name.as_str(), i.line))
            .collect();
        assert_eq!(got, [("eth0", 3), ("wg0", 4)]);
        // A single name is a list of one, as for `role`.
        assert_eq!(
            ok("[backstop]\ninterfaces = \"ens5\"\n")
                .backstop
                .interfaces
                .len(),
            1
        );

        fails(
            "[backstop]\ninterfaces = [\"eth0\",\n \"eth0\"]\n",
            3,
            "interfaces",
            &["[backstop]", "\"eth0\" is listed twice"],
        );
        fails(
            "[backstop]\ninterfaces = [\"a-very-long-interface\"]\n",
            2,
            "interfaces",
            &["longer than an interface name"],
        );
        fails(
            "[backstop]\ninterfaces = [\"eth0:1\"]\n",
            2,
            "interfaces",
            &["':' cannot appear"],
        );
        fails(
            "[backstop]\ninterfaces = [\"\"]\n",
            2,
            "interfaces",
            &["empty"],
        );
        fails(
            "[backstop]\ninterface = [\"eth0\"]\n",
            2,
            "interface",
            &["unknown field"],
        );
    }

    #[test]
    fn full_example() {
        let c = ok(r#"
role = ["relay", "gateway", "relay"]
region = "eu"
mode = "enforce"
cgroup = "/sys/fs/cgroup/sdm.slice"
optional = false
loopback = "enforce"
gateways = ["GW2.Example.com.:5001", "gw3.example.com", "1.2.3.4:5000", "[2001:db8::1]:6000", "2001:db8::2"]

[hosts]
login = "Login.Example.Com."

[gateway]
advertised_port = 5100
sources = ["10.0.0.0/8", "192.168.1.7"]

[client]
loopback_ports = [13306, "15000-15002"]

[[resource]]
name = "prod-db"
host = "db.internal"
port = 5432

[[resource]]
name = "web"
cidr = "10.0.0.1/24"
ports = "8000-8100, 80,443"
proto = "udp"

[[secret_store]]
name = "vault"
host = "*.vault.internal"
ports = [8200, 8201]

[[allow]]
name = "ssh-in"
direction = "ingress"
port = 22
from = "10.0.0.0/8"

[[allow]]
name = "ping"
direction = "egress"
proto = "icmp"
port = 8
to = ["1.1.1.1", "example.com", "10.0.0.0/8"]

[dns]
servers = ["10.0.0.2", "fd00::53"]
fallback = "none"
ttl_min = 5
ttl_max = "2h30m"
grace = "500ms"

[http]
listen = "[::1]:9000"

[state]
dir = "/srv/sdm"
retention = "36h"

[audit]
log = "/var/log/sdm/flows.jsonl"
"#);
        assert_eq!(c.roles, vec![Role::Relay, Role::Gateway]);
        assert_eq!(c.region, Region::Eu);
        assert_eq!(c.mode, Mode::Enforce);
        assert_eq!(
            c.cgroup,
            Some(CgroupTarget::Path("/sys/fs/cgroup/sdm.slice".into()))
        );
        assert!(!c.optional);
        assert_eq!(c.loopback, LoopbackMode::Enforce);
        let gws: Vec<String> = c.gateways.iter().map(|g| g.to_string()).collect();
        assert_eq!(
            gws,
            vec![
                "gw2.example.com:5001",
                "gw3.example.com:5000",
                "1.2.3.4:5000",
                "[2001:db8::1]:6000",
                "[2001:db8::2]:5000"
            ]
        );
        assert_eq!(c.hosts.app, "app.eu.strongdm.com");
        assert_eq!(c.hosts.login, "login.example.com");
        assert_eq!(c.gateway.advertised_port, 5100);
        assert_eq!(
            c.gateway.sources,
            vec![cidr("10.0.0.0/8"), cidr("192.168.1.7/32")]
        );
        assert_eq!(
            c.client.loopback_ports,
            vec![
                PortRange::single(13306),
                PortRange {
                    lo: 15000,
                    hi: 15002
                }
            ]
        );
        assert_eq!(
            c.resources[0],
            ResourceConfig {
                name: "prod-db".into(),
                target: Target::Host("db.internal".into()),
                proto: Proto::Tcp,
                ports: vec![PortRange::single(5432)],
            }
        );
        assert_eq!(c.resources[1].target, Target::Cidr(cidr("10.0.0.0/24")));
        assert_eq!(c.resources[1].proto, Proto::Udp);
        assert_eq!(
            c.resources[1].ports,
            vec![
                PortRange::single(80),
                PortRange::single(443),
                PortRange { lo: 8000, hi: 8100 }
            ]
        );
        assert_eq!(
            c.secret_stores[0].target,
            Target::Host("*.vault.internal".into())
        );
        assert_eq!(
            c.secret_stores[0].ports,
            vec![PortRange { lo: 8200, hi: 8201 }]
        );
        assert_eq!(
            c.allow[0],
            AllowConfig {
                name: "ssh-in".into(),
                direction: Direction::Ingress,
                proto: Proto::Tcp,
                ports: vec![PortRange::single(22)],
                targets: vec![Target::Cidr(cidr("10.0.0.0/8"))],
            }
        );
        assert_eq!(c.allow[1].proto, Proto::Icmp);
        assert_eq!(
            c.allow[1].targets,
            vec![
                Target::Cidr(cidr("1.1.1.1/32")),
                Target::Host("example.com".into()),
                Target::Cidr(cidr("10.0.0.0/8"))
            ]
        );
        assert_eq!(
            c.dns.servers,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fd00::53".parse().unwrap()
            ]
        );
        assert_eq!(c.dns.fallback, None);
        assert_eq!(c.dns.ttl_min, Duration::from_secs(5));
        assert_eq!(c.dns.ttl_max, Duration::from_secs(9000));
        assert_eq!(c.dns.grace, Duration::from_millis(500));
        assert_eq!(c.http.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(c.http.token, None);
        assert_eq!(c.state.dir, PathBuf::from("/srv/sdm"));
        assert_eq!(c.state.retention, Duration::from_secs(36 * 3600));
        assert_eq!(c.audit.log, Some(PathBuf::from("/var/log/sdm/flows.jsonl")));
    }

    #[test]
    fn http_token_and_listen() {
        // Off loopback without a token: an error naming [http] listen.
        let msg = fails(
            "[http]

listen = \"0.0.0.0:9850\"\n",
            3,
            "listen",
            &["[http]", "loopback", "token"],
        );
        assert!(msg.contains("0.0.0.0:9850"), "{msg}");
        fails(
            "[http]
listen = \"[::]:9850\"\n",
            2,
            "listen",
            &["token"],
        );
        fails(
            "[http]
listen = \"10.1.2.3:80\"\n",
            2,
            "listen",
            &["token"],
        );
        // With a token, anywhere; the token is never serialized.
        let c = ok("[http]
listen = \"0.0.0.0:9850\"\ntoken = \"s3cret-token\"\n");
        assert_eq!(c.http.token.as_deref(), Some("s3cret-token"));
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("s3cret"), "{json}");
        // Loopback needs none, IPv4-mapped loopback included.
        assert_eq!(
            ok("[http]
listen = \"127.0.0.2:1\"\n")
            .http
            .token,
            None
        );
        ok("[http]
listen = \"[::ffff:127.0.0.1]:1\"\n");
        ok("[http]
listen = \"[::1]:1\"\ntoken = \"t\"\n");
        fails(
            "[http]
token = \"\"\n",
            2,
            "token",
            &["empty"],
        );
        fails(
            "[http]
token = \"a b\"\n",
            2,
            "token",
            &["not allowed"],
        );
        fails(
            "[http]
token = 5\n",
            2,
            "token",
            &["[http]"],
        );
    }

    #[test]
    fn state_and_audit() {
        let c = ok("[state]
dir = \"/tmp/x\"\n");
        assert_eq!(c.state.dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.state.retention, DEFAULT_RETENTION);
        assert_eq!(
            ok("[state]
retention = 3600\n")
            .state
            .retention,
            Duration::from_secs(3600)
        );
        fails(
            "[state]
dir = \"var/lib\"\n",
            2,
            "dir",
            &["[state]", "absolute"],
        );
        fails(
            "[state]

retention = \"0s\"\n",
            3,
            "retention",
            &["[state]", "greater than zero"],
        );
        fails(
            "[state]
retention = \"7 days\"\n",
            2,
            "retention",
            &["invalid duration"],
        );
        fails(
            "[state]
dirs = \"/x\"\n",
            2,
            "dirs",
            &["unknown field"],
        );
        fails(
            "[audit]
log = \"flows.log\"\n",
            2,
            "log",
            &["[audit]", "absolute"],
        );
        fails(
            "[audit]
file = \"/x\"\n",
            2,
            "file",
            &["unknown field"],
        );
        let json = serde_json::to_value(Config::default()).unwrap();
        assert_eq!(json["state"]["retention"], "7d");
    }

    #[test]
    fn store_max_bytes() {
        assert_eq!(ok("").state.max_bytes, DEFAULT_STORE_MAX_BYTES);
        assert_eq!(
            ok("[state]\nmax_bytes = \"8MiB\"\n").state.max_bytes,
            8 << 20
        );
        assert_eq!(
            ok("[state]\nmax_bytes = 2097152\n").state.max_bytes,
            2 << 20
        );
        assert_eq!(
            ok("[state]\nmax_bytes = \"1 GiB\"\n").state.max_bytes,
            1 << 30
        );
        fails(
            "[state]\n\nmax_bytes = \"64 furlongs\"\n",
            3,
            "max_bytes",
            &["[state]", "invalid size"],
        );
        fails(
            "[state]\nmax_bytes = 4096\n",
            2,
            "max_bytes",
            &["too small"],
        );
        fails("[state]\nmax_bytes = -1\n", 2, "max_bytes", &["negative"]);
        fails(
            "[state]\nmax_bytes = \"99999999999999GiB\"\n",
            2,
            "max_bytes",
            &["invalid size"],
        );
    }

    #[test]
    fn role_as_single_string_and_empty_list() {
        assert_eq!(ok("role = \"ad-dc\"").roles, vec![Role::AdDc]);
        assert_eq!(ok("role = []").roles, Vec::<Role>::new());
        assert_eq!(
            ok("role = [\"client\", \"api\"]").roles,
            vec![Role::Client, Role::Api]
        );
    }

    #[test]
    fn regions_and_host_overrides() {
        let uk = ok("region = \"uk\"");
        assert_eq!(uk.hosts.app, "app.uk.strongdm.com");
        assert_eq!(uk.hosts.login, "login.uk.strongdm.com");
        assert_eq!(uk.hosts.downloads, "downloads.strongdm.com");
        assert_eq!(uk.hosts.checkip, "checkip.amazonaws.com");
        let eu = ok("region = \"eu\"");
        assert_eq!(eu.hosts.app, "app.eu.strongdm.com");
        assert_eq!(eu.hosts.login, "login.eu.strongdm.com");
        assert_eq!(eu.hosts.downloads, "downloads.strongdm.com");
        // Overrides win over the region, whatever their order in the file.
        let c = ok(r#"
[hosts]
app = "APP.corp.example."
downloads = "mirror.example.com"
checkip = "ip.example.com"
login = "sso.example.com"
"#);
        assert_eq!(c.hosts.app, "app.corp.example");
        assert_eq!(c.hosts.login, "sso.example.com");
        assert_eq!(c.hosts.downloads, "mirror.example.com");
        assert_eq!(c.hosts.checkip, "ip.example.com");
        let c = ok("region = \"uk\"\n[hosts]\ndownloads = \"dl.uk.example\"\n");
        assert_eq!(c.hosts.app, "app.uk.strongdm.com");
        assert_eq!(c.hosts.downloads, "dl.uk.example");
        assert_eq!(
            ControlPlaneHosts::for_region(Region::Uk).get(ControlPlaneHost::App),
            "app.uk.strongdm.com"
        );
    }

    #[test]
    fn gateway_entries() {
        let hp = |s: &str| s.parse::<HostPort>();
        assert_eq!(
            hp("gw:5000"),
            Ok(HostPort {
                host: "gw".into(),
                port: 5000
            })
        );
        assert_eq!(
            hp("gw"),
            Ok(HostPort {
                host: "gw".into(),
                port: 5000
            })
        );
        assert_eq!(
            hp("GW.example.COM.:7000"),
            Ok(HostPort {
                host: "gw.example.com".into(),
                port: 7000
            })
        );
        assert_eq!(
            hp("[::1]:5000"),
            Ok(HostPort {
                host: "::1".into(),
                port: 5000
            })
        );
        assert_eq!(
            hp("[::1]"),
            Ok(HostPort {
                host: "::1".into(),
                port: 5000
            })
        );
        assert_eq!(
            hp("2001:db8::1"),
            Ok(HostPort {
                host: "2001:db8::1".into(),
                port: 5000
            })
        );
        assert_eq!(
            hp("1.2.3.4:5001"),
            Ok(HostPort {
                host: "1.2.3.4".into(),
                port: 5001
            })
        );
        assert_eq!(
            hp("1.2.3.4:5000").unwrap().target(),
            Target::Cidr(cidr("1.2.3.4/32"))
        );
        assert_eq!(
            hp("[::1]:5000").unwrap().target(),
            Target::Cidr(cidr("::1/128"))
        );
        assert_eq!(hp("gw:5000").unwrap().target(), Target::Host("gw".into()));
        for bad in [
            "",
            "gw:",
            "gw:0",
            "gw:65536",
            "gw:x",
            "2001:db8::1:5000x",
            "[::1",
            "[::1]5000",
            "[1.2.3.4]:5",
            "*.gw.example",
            "bad host:5000",
            "1.2.3.400",
            "gw:-1",
        ] {
            assert!(hp(bad).is_err(), "{bad:?} should be rejected");
        }
        // In a file, with duplicates removed.
        let c = ok("gateways = [\"gw:5000\", \"gw\", \"gw:5001\"]");
        assert_eq!(
            c.gateways,
            vec![
                HostPort {
                    host: "gw".into(),
                    port: 5000
                },
                HostPort {
                    host: "gw".into(),
                    port: 5001
                }
            ]
        );
        assert_eq!(ok("gateways = \"gw\"").gateways.len(), 1);
        fails(
            "role = \"client\"\ngateways = [\"gw:5000\",\n  \"gw:99999\"]\n",
            3,
            "gateways",
            &["99999"],
        );
    }

    #[test]
    fn port_specs() {
        let r = |lo, hi| PortRange { lo, hi };
        assert_eq!(parse_port_spec("80", Proto::Tcp), Ok(vec![r(80, 80)]));
        assert_eq!(
            parse_port_spec("8000-8100", Proto::Tcp),
            Ok(vec![r(8000, 8100)])
        );
        assert_eq!(
            parse_port_spec("443, 80,8000-8100", Proto::Udp),
            Ok(vec![r(80, 80), r(443, 443), r(8000, 8100)])
        );
        // Overlapping and adjacent ranges merge.
        assert_eq!(
            parse_port_spec("10-20,15-30,31,5", Proto::Tcp),
            Ok(vec![r(5, 5), r(10, 31)])
        );
        assert_eq!(
            parse_port_spec("1-65535", Proto::Tcp),
            Ok(vec![r(1, 65535)])
        );
        assert_eq!(
            parse_port_spec("0,8", Proto::Icmp),
            Ok(vec![r(0, 0), r(8, 8)])
        );
        for bad in [
            "",
            "0",
            "65536",
            "8100-8000",
            "80,,443",
            "a",
            "-5",
            "5-",
            "+5",
            "80 443",
            "1-2-3",
        ] {
            assert!(
                parse_port_spec(bad, Proto::Tcp).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(parse_port_spec("256", Proto::Icmp).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m15s"), Ok(Duration::from_secs(5415)));
        for bad in [
            "",
            "s",
            "1x",
            "1.5h",
            "-1s",
            "1 s",
            "ms",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        for d in [
            Duration::from_secs(30),
            Duration::from_secs(600),
            Duration::from_secs(3600),
            Duration::from_millis(500),
            Duration::from_secs(61),
            Duration::from_nanos(1_500),
            Duration::ZERO,
        ] {
            assert_eq!(
                parse_duration(&format_duration(d)),
                Ok(d),
                "{}",
                format_duration(d)
            );
        }
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(2 * 86400)), "2d");
        assert_eq!(format_duration(Duration::from_secs(36 * 3600)), "36h");
    }

    #[test]
    fn hostnames() {
        assert_eq!(
            normalize_hostname("Db.Internal.", false),
            Ok("db.internal".into())
        );
        assert_eq!(
            normalize_hostname("_srv.a-b.example", false),
            Ok("_srv.a-b.example".into())
        );
        assert_eq!(
            normalize_hostname("*.example.com", true),
            Ok("*.example.com".into())
        );
        assert!(normalize_hostname("*.example.com", false).is_err());
        let long_label = "a".repeat(64);
        let long_name = format!("{}.com", ["abcdefghi"; 26].join("."));
        for bad in [
            "",
            ".",
            "a..b",
            "-a.com",
            "a-.com",
            "a b.com",
            "a/b",
            "é.com",
            "1.2.3.4",
            "a.*.com",
            "*",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(
                normalize_hostname(bad, true).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(normalize_hostname(&"a".repeat(63), false).is_ok());
    }

    /// Issue 16: `*.com` passed `check`, allowing every domain anyone can
    /// register. Wildcards at or directly under a public suffix are refused
    /// with the file, line and key; below a registrable domain they stay.
    #[test]
    fn dns_queries_and_search_are_read_and_checked_with_their_lines() {
        let c = ok("[dns]\nqueries = \"policy\"\nsearch = [\"Corp.Example.\", \".lab.example\"]\n");
        assert_eq!(c.dns.queries, DnsQueries::Policy);
        assert_eq!(c.dns.search, vec!["corp.example", "lab.example"]);
        assert_eq!(Config::default().dns.queries, DnsQueries::Any);
        fails(
            "[dns]\nqueries = \"some\"\n",
            2,
            "queries",
            &["any", "policy"],
        );
        // A search suffix lets every name under it be asked: refused as
        // wide as a public suffix, like the wildcard it amounts to.
        fails(
            "[dns]\nsearch = [\"com\"]\n",
            2,
            "search",
            &["public suffix"],
        );
        fails(
            "[dns]\n\nsearch = \"bad name!\"\n",
            3,
            "search",
            &["not allowed"],
        );
    }

    #[test]
    fn wildcards_as_wide_as_a_public_suffix_are_refused() {
        for wide in [
            "*.com",
            "*.COM.",
            "*.co.uk",
            "*.s3.amazonaws.com",
            "*.github.io",
            "*.internal",
        ] {
            let err = normalize_hostname(wide, true).unwrap_err();
            assert!(err.contains("public suffix"), "{wide}: {err}");
        }
        for fine in [
            "*.example.com",
            "*.corp.example.co.uk",
            "*.mybucket.s3.amazonaws.com",
            "*.vault.internal",
            "*.cdn.example",
        ] {
            assert!(normalize_hostname(fine, true).is_ok(), "{fine}");
        }
        // Plain names that are public suffixes are not wildcards: allowed.
        assert!(normalize_hostname("co.uk", false).is_ok());
        fails(
            "[[resource]]\nname = \"a\"\nport = 1\nhost = \"*.com\"\n",
            4,
            "host",
            &["public suffix", "\"com\""],
        );
        fails(
            "role = []\n[[allow]]\nname = \"w\"\ndirection = \"egress\"\nport = 443\n\nto = \"*.co.uk\"\n",
            7,
            "to",
            &["public suffix", "co.uk"],
        );
        fails(
            "[[secret_store]]\nname = \"s\"\nhost = \"*.s3.amazonaws.com\"\nport = 443\n",
            3,
            "host",
            &["public suffix"],
        );
    }

    #[test]
    fn enum_names() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(*r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(Role::AdDc.as_str(), "ad-dc");
        for r in Region::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        for m in Mode::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
        for m in LoopbackMode::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
        let json = serde_json::to_value(Config::default()).unwrap();
        assert_eq!(json["roles"], serde_json::json!(["gateway"]));
        assert_eq!(json["dns"]["ttl_max"], "1h");
        assert_eq!(json["http"]["listen"], "127.0.0.1:9850");
    }

    #[test]
    fn load_reads_files_and_reports_io_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sdm.toml");
        std::fs::write(&path, "mode = \"enforce\"\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().mode, Mode::Enforce);

        std::fs::write(&path, "mode = \"enforce\"\nrolez = 1\n").unwrap();
        let msg = Config::load(&path).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("config {}: line 2, column 1:", path.display())),
            "{msg}"
        );

        let missing = dir.path().join("nope.toml");
        let err = Config::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Io { op: "read", .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(&missing.display().to_string()) && msg.contains("read"),
            "{msg}"
        );
    }

    // --- errors: each names the line and the key --------------------------

    #[test]
    fn unknown_keys() {
        let msg = fails(
            "region = \"us\"\n\nrolez = [\"gateway\"]\n",
            3,
            "rolez",
            &["column 1", "unknown field"],
        );
        assert!(
            msg.starts_with("config my.toml: line 3, column 1: unknown field `rolez`"),
            "{msg}"
        );
        fails(
            "[hosts]\napp = \"a.example\"\napx = \"b\"\n",
            3,
            "apx",
            &["[hosts]", "unknown field"],
        );
        fails(
            "[gateway]\nadvertised_port = 5000\nsource = []\n",
            3,
            "source",
            &["unknown field"],
        );
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 1\nporz = 5\n",
            5,
            "porz",
            &["[[resource]]"],
        );
        fails("[dns]\nttl = \"1s\"\n", 2, "ttl", &["[dns]"]);
        fails("[http]\nport = 1\n", 2, "port", &["[http]"]);
        fails("[client]\nports = [1]\n", 2, "ports", &["[client]"]);
        fails("\n[[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 1\nto = \"a.b\"\nform = \"x\"\n", 7, "form", &[]);
        fails("[dnz]\n", 1, "dnz", &["unknown field"]);
    }

    #[test]
    fn type_errors_name_the_key() {
        fails(
            "mode = \"audit\"\nregion = 5\n",
            2,
            "region",
            &["column 10", "invalid type"],
        );
        fails(
            "[gateway]\nadvertised_port = \"x\"\n",
            2,
            "advertised_port",
            &["[gateway]"],
        );
        fails(
            "[dns]\nservers = [\n  \"1.1.1.1\",\n  1,\n]\n",
            4,
            "servers",
            &["[dns]"],
        );
        fails("optional = \"yes\"\n", 1, "optional", &[]);
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = \"x\"\n",
            4,
            "port",
            &["expected an integer"],
        );
        let msg = parse("[resource]\nname = \"a\"\n").unwrap_err().to_string();
        assert!(
            msg.contains("line 1") && msg.contains("double brackets"),
            "{msg}"
        );
        // A syntax error.
        let msg = parse("region = \n").unwrap_err().to_string();
        assert!(
            msg.starts_with("config my.toml: line 1, column 10: "),
            "{msg}"
        );
    }

    #[test]
    fn missing_keys() {
        let msg = parse("\n[[resource]]\nhost = \"h\"\nport = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 2") && msg.contains("missing field `name`"),
            "{msg}"
        );
        let msg = parse("[[allow]]\nname = \"x\"\nport = 5\nto = \"h.example\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 1") && msg.contains("`direction`"),
            "{msg}"
        );
    }

    #[test]
    fn bad_enums() {
        fails(
            "\nrole = [\"gateway\", \"relais\"]\n",
            2,
            "role",
            &["relais", "client, relay, gateway, api, ad-dc"],
        );
        fails("role = \"bogus\"\n", 1, "role", &["bogus"]);
        fails(
            "\n\nregion = \"us-east\"\n",
            3,
            "region",
            &["us-east", "us, uk, eu"],
        );
        fails(
            "mode = \"block\"\n",
            1,
            "mode",
            &["block", "audit, enforce"],
        );
        fails("loopback = \"drop\"\n", 1, "loopback", &["drop"]);
        fails("fail = \"maybe\"\n", 1, "fail", &["maybe"]);
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 1\nproto = \"icmp\"\n",
            5,
            "proto",
            &["icmp", "tcp, udp"],
        );
        fails(
            "[[allow]]\nname = \"a\"\ndirection = \"out\"\nport = 1\nto = \"h.example\"\n",
            3,
            "direction",
            &["out"],
        );
        fails(
            "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\nproto = \"sctp\"\nto = \"h.example\"\n",
            5,
            "proto",
            &["sctp"],
        );
    }

    #[test]
    fn bad_cidrs() {
        let text = "role = [\"gateway\"]\n\n[[resource]]\nname = \"prod-db\"\ncidr = \"10.0.0.0/33\"\nport = 5432\n";
        let msg = fails(text, 5, "cidr", &[]);
        assert!(
            msg.starts_with("config my.toml: line 5: [[resource]] \"prod-db\" key `cidr`: invalid CIDR \"10.0.0.0/33\": "),
            "{msg}"
        );
        fails(
            "[gateway]\nsources = [\"0.0.0.0/0\", \"::/129\"]\n",
            2,
            "sources",
            &["[gateway]", "::/129"],
        );
        fails(
            "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 22\nfrom = [\"10.0.0.0/8\",\n \"example.com\"]\n",
            6,
            "from",
            &["example.com"],
        );
        fails(
            "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 22\nto = \"10.0.0.0/99\"\n",
            5,
            "to",
            &["10.0.0.0/99"],
        );
        fails(
            "[[secret_store]]\nname = \"v\"\nhost = \"10.0.0.0/8\"\nport = 1\n",
            3,
            "host",
            &["cidr"],
        );
    }

    #[test]
    fn bad_ports() {
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 0\n",
            4,
            "port",
            &["0"],
        );
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 65536\n",
            4,
            "port",
            &["65536"],
        );
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = -1\n",
            4,
            "port",
            &[],
        );
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"h\"\nports = \"8100-8000\"\n",
            4,
            "ports",
            &["8100-8000"],
        );
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"h\"\nports = \"80,99999\"\n",
            4,
            "ports",
            &["99999"],
        );
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"h\"\nports = []\n",
            4,
            "ports",
            &["empty"],
        );
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 1\nports = \"2\"\n",
            5,
            "ports",
            &["not both"],
        );
        fails(
            "\n[[resource]]\nname = \"a\"\nhost = \"h\"\n",
            2,
            "port",
            &["[[resource]] \"a\"", "`ports`"],
        );
        fails(
            "[gateway]\nadvertised_port = 0\n",
            2,
            "advertised_port",
            &[],
        );
        fails(
            "[client]\nloopback_ports = [13306, 70000]\n",
            2,
            "loopback_ports",
            &["70000"],
        );
        fails(
            "[[allow]]\nname = \"p\"\ndirection = \"egress\"\nproto = \"icmp\"\nport = 256\nto = \"h.example\"\n",
            5,
            "port",
            &["ICMP type"],
        );
        // ICMP type 0 (echo reply) is fine.
        assert_eq!(
            ok("[[allow]]\nname = \"p\"\ndirection = \"ingress\"\nproto = \"icmp\"\nport = 0\nfrom = \"::/0\"\n").allow[0].ports,
            vec![PortRange::single(0)]
        );
    }

    #[test]
    fn host_and_cidr() {
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"h\"\ncidr = \"10.0.0.0/8\"\nport = 1\n",
            4,
            "cidr",
            &["not both"],
        );
        fails(
            "\n\n[[secret_store]]\nname = \"a\"\nport = 1\n",
            3,
            "host",
            &["[[secret_store]] \"a\"", "`cidr`"],
        );
        fails(
            "[[resource]]\nname = \"a\"\nhost = \"bad_host!\"\nport = 1\n",
            3,
            "host",
            &["invalid hostname"],
        );
        fails(
            "[hosts]\napp = \"*.strongdm.com\"\n",
            2,
            "app",
            &["wildcard"],
        );
        fails("[hosts]\n\nlogin = \"a..b\"\n", 3, "login", &["[hosts]"]);
        // An address in `host` is taken as a /32.
        assert_eq!(
            ok("[[resource]]\nname = \"a\"\nhost = \"10.1.2.3\"\nport = 1\n").resources[0].target,
            Target::Cidr(cidr("10.1.2.3/32"))
        );
    }

    #[test]
    fn names() {
        fails(
            "[[resource]]\nname = \"Prod\"\nhost = \"h\"\nport = 1\n",
            2,
            "name",
            &["[a-z0-9][a-z0-9._-]*"],
        );
        fails(
            "[[resource]]\nname = \"-x\"\nhost = \"h\"\nport = 1\n",
            2,
            "name",
            &[],
        );
        fails(
            "[[resource]]\nname = \"\"\nhost = \"h\"\nport = 1\n",
            2,
            "name",
            &[],
        );
        fails(
            "[[allow]]\nname = \"a b\"\ndirection = \"egress\"\nport = 1\nto = \"h.example\"\n",
            2,
            "name",
            &[],
        );
        let long = "a".repeat(MAX_NAME_LEN + 1);
        fails(
            &format!("[[resource]]\nname = \"{long}\"\nhost = \"h\"\nport = 1\n"),
            2,
            "name",
            &["longer"],
        );
        assert_eq!(
            ok("[[resource]]\nname = \"db-1.prod_x\"\nhost = \"h\"\nport = 1\n").resources[0].name,
            "db-1.prod_x"
        );
    }

    #[test]
    fn duplicate_names() {
        let text = r#"
[[resource]]
name = "db"
host = "h"
port = 1

[[secret_store]]
name = "db"
host = "v"
port = 2
"#;
        fails(
            text,
            8,
            "name",
            &[
                "duplicate",
                "[[secret_store]] \"db\"",
                "[[resource]] on line 3",
            ],
        );
        let text = "[[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 1\nto = \"a.example\"\n\
                    [[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 2\nto = \"b.example\"\n";
        fails(text, 7, "name", &["duplicate", "[[allow]] on line 2"]);
        let text = "[[resource]]\nname = \"x\"\nhost = \"h\"\nport = 1\n\
                    [[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 2\nto = \"b.example\"\n";
        fails(text, 6, "name", &["duplicate"]);
        // The later entry in the file is the one reported.
        let text = "[[secret_store]]\nname = \"db\"\nhost = \"h\"\nport = 1\n\
                    [[resource]]\nname = \"db\"\nhost = \"h\"\nport = 1\n";
        fails(
            text,
            6,
            "name",
            &["[[resource]] \"db\"", "[[secret_store]] on line 2"],
        );
    }

    #[test]
    fn allow_directions() {
        fails(
            "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\n",
            1,
            "to",
            &["needs `to`"],
        );
        fails(
            "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 1\n",
            1,
            "from",
            &["needs `from`"],
        );
        fails(
            "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 1\nfrom = \"::/0\"\nto = \"h.example\"\n",
            6,
            "to",
            &[],
        );
        fails(
            "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\nto = \"h.example\"\nfrom = \"::/0\"\n",
            6,
            "from",
            &[],
        );
        fails(
            "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\nto = []\n",
            5,
            "to",
            &["empty"],
        );
        fails(
            "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 1\nfrom = []\n",
            5,
            "from",
            &["empty"],
        );
        fails(
            "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\nto = \"bad..host\"\n",
            5,
            "to",
            &["invalid hostname"],
        );
        fails("[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\n\nto = [\"ok.example\", \"x y\"]\n", 6, "to", &[]);
    }

    #[test]
    fn dns_and_http_errors() {
        fails(
            "[dns]\nservers = [\"1.1.1.1\", \"dns.google\"]\n",
            2,
            "servers",
            &["dns.google"],
        );
        fails(
            "[dns]\nfallback = \"one.one\"\n",
            2,
            "fallback",
            &["one.one"],
        );
        assert_eq!(ok("[dns]\nfallback = \"\"\n").dns.fallback, None);
        assert_eq!(ok("[dns]\nfallback = \"NONE\"\n").dns.fallback, None);
        assert_eq!(
            ok("[dns]\nfallback = \"9.9.9.9\"\n").dns.fallback,
            Some("9.9.9.9".parse().unwrap())
        );
        fails(
            "[dns]\n\nttl_min = \"30 s\"\n",
            3,
            "ttl_min",
            &["invalid duration"],
        );
        fails("[dns]\nttl_max = \"1y\"\n", 2, "ttl_max", &["1y"]);
        fails("[dns]\ngrace = -5\n", 2, "grace", &["negative"]);
        fails(
            "[dns]\nttl_min = \"0s\"\n",
            2,
            "ttl_min",
            &["greater than zero"],
        );
        fails(
            "[dns]\nttl_min = \"2h\"\nttl_max = \"1h\"\n",
            3,
            "ttl_max",
            &["ttl_min (2h)"],
        );
        fails("[dns]\nttl_min = \"2h\"\n", 2, "ttl_min", &[]);
        fails(
            "[http]\nlisten = \"localhost:9850\"\n",
            2,
            "listen",
            &["[http]"],
        );
        fails("\ncgroup = \"sys/fs/cgroup\"\n", 2, "cgroup", &["absolute"]);
        fails(
            "\ncgroup = \"unit:a/b\"\n",
            2,
            "cgroup",
            &["not a unit name"],
        );
        fails("\ncgroup = \"pid:0\"\n", 2, "cgroup", &["process id"]);
        assert_eq!(
            ok("cgroup = \"unit:sdm-proxy\"\n").cgroup,
            Some(CgroupTarget::Unit("sdm-proxy.service".into()))
        );
        assert_eq!(
            ok("cgroup = \"pid:77\"\n").cgroup,
            Some(CgroupTarget::Pid(77))
        );
    }

    #[test]
    fn crlf_and_unicode_positions() {
        let text = "region = \"us\"\r\n# é comment\r\nmode = \"nope\"\r\n";
        fails(text, 3, "mode", &[]);
        assert_eq!(line_col("aé\nxyz", 7), (2, 4));
        assert_eq!(line_col("ab", 100), (1, 3));
    }
}
