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
//! This file holds the resolved config and its defaults; the modules hold
//! the vocabulary and the steps: `names` (the named values: roles,
//! region, modes), `hosts` (control-plane names and gateway addresses),
//! `sections` (the tables `[gateway]` to `[metrics]`), `raw` (the file
//! as read, with spans), `validate` (raw into resolved, one method per
//! section), `values` (value parsers) and `errors`.

mod errors;
mod hosts;
mod names;
mod raw;
mod sections;
mod validate;
mod values;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::kernel::cgroup::CgroupTarget;

use self::{errors::syntax_error, raw::RawConfig, validate::Validator};
pub use errors::ConfigError;
pub use hosts::{ControlPlaneHost, ControlPlaneHosts, HostPort};
pub use names::{DnsQueries, FailMode, LoopbackMode, Mode, Region, Role, UnknownName};
pub use sections::{
    valid_interface_name, AllowConfig, AuditConfig, BackstopConfig, BackstopInterface,
    ClientConfig, DnsConfig, GatewayConfig, HttpConfig, MetricsConfig, ResourceConfig, StateConfig,
    XdpConfig,
};
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
/// Default `[dns] max_qps`: 10,000 hostnames (20,000 queries, A and AAAA
/// counted apart) resolve in 2 s at start; a local caching resolver
/// (systemd-resolved, unbound, dnsmasq) answers that many.
pub const DEFAULT_MAX_QPS: u32 = 10_000;
/// Highest `[dns] max_qps`.
pub const MAX_MAX_QPS: u32 = 1_000_000;
/// Default `[dns] concurrency`: lookups in flight at once. At 1 ms per
/// answer the default ceiling needs 10; at 25 ms (a miss upstream), 250.
pub const DEFAULT_DNS_CONCURRENCY: u32 = 256;
/// Highest `[dns] concurrency`: each query in flight holds a socket.
pub const MAX_DNS_CONCURRENCY: u32 = 4_096;
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
    pub xdp: XdpConfig,
    pub metrics: MetricsConfig,
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
            xdp: XdpConfig::default(),
            metrics: MetricsConfig::default(),
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
# The agent's own lookups: at most this many queries per second to the
# resolvers (A and AAAA count apart), and this many in flight. An AWS VPC
# resolver takes 1,024 packets per second per network interface: there,
# set max_qps = 500 or so, leaving room for the host's other queries.
max_qps = 10000
concurrency = 256

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

# Gateway hosts: an XDP program on these interfaces drops, at the driver,
# what no ingress rule admits and no flow of this host asked for
# (unsolicited SYNs, scans of closed ports). Only with the root cgroup as
# target (`cgroup` unset or the cgroup2 mount). Empty: off.
# [xdp]
# interfaces = ["eth0"]

[metrics]
# Series of their own for each [[resource]] and [[secret_store]] rule and
# hostname. Off: they are summed by their Ports Guide row (the rule label
# "gateway/egress/resource"), so a host's series count does not grow with
# its resources; status, the API and the dashboard keep the detail.
per_resource = false
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
#[allow(clippy::too_many_lines, reason = "a test reads as one scenario")]
mod tests;
