//! Validation: the raw structs into a resolved [`super::Config`], section
//! by section; the first error stops it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use crate::kernel::cgroup::CgroupTarget;
use crate::policy::{Direction, PortRange, Proto, Target};

use super::{
    errors::{line_col, ConfigError},
    raw::{
        items, DurationValue, OneOrMany, PortItem, PortsValue, RawAllow, RawConfig, RawResource,
    },
    valid_interface_name,
    values::{
        check_port, format_duration, is_loopback, normalize_hostname, normalize_ports, parse_cidr,
        parse_duration, parse_port_spec, parse_size, parse_target, valid_name,
    },
    AllowConfig, BackstopInterface, Config, ControlPlaneHost, ControlPlaneHosts, HostPort,
    ResourceConfig, Role, UnknownName, DEFAULT_GRACE, DEFAULT_RETENTION, DEFAULT_TTL_MAX,
    DEFAULT_TTL_MIN, MIN_STORE_MAX_BYTES,
};

pub(super) struct Validator<'a> {
    pub(super) src: &'a str,
    pub(super) path: &'a Path,
}

/// Where in the file a value is: the section label and key used in errors.
#[derive(Clone)]
pub(super) struct Here {
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

impl Validator<'_> {
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

    pub(super) fn resolve(&self, raw: RawConfig) -> Result<Config, ConfigError> {
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
