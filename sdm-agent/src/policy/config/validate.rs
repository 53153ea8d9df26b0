//! Validation: the raw structs into a resolved [`super::Config`], one
//! method per section, in the order of the file's documentation; the first
//! error stops it. Here: the validator, where a value is, the value
//! readers the sections share, and [`Validator::resolve`]; the sections are
//! in [`top`] (top-level keys, `[hosts]`, `[gateway]`, `[client]`),
//! [`entries`] (`[[resource]]`, `[[secret_store]]`, `[[allow]]`), [`dns`]
//! and [`agent`] (`[http]`, `[state]`, `[audit]`, `[backstop]`, `[metrics]`).

mod agent;
mod dns;
mod entries;
mod top;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use crate::policy::{PortRange, Proto};

use super::{
    errors::{line_col, ConfigError},
    raw::{items, DurationValue, OneOrMany, PortItem, PortsValue, RawConfig},
    values::{check_port, normalize_ports, parse_cidr, parse_duration, parse_port_spec},
    Config, ControlPlaneHosts, UnknownName,
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
        let mut cfg = Config::default();
        self.top_level(&raw, &mut cfg)?;
        cfg.hosts = ControlPlaneHosts::for_region(cfg.region);
        if let Some(h) = &raw.hosts {
            self.hosts(h, &mut cfg.hosts)?;
        }
        if let Some(g) = &raw.gateway {
            self.gateway(g, &mut cfg.gateway)?;
        }
        if let Some(c) = &raw.client {
            self.client(c, &mut cfg.client)?;
        }
        self.unique_names(&raw)?;
        cfg.resources = self.resources("[[resource]]", &raw.resource)?;
        cfg.secret_stores = self.resources("[[secret_store]]", &raw.secret_store)?;
        cfg.allow = self.allows(&raw.allow)?;
        if let Some(d) = &raw.dns {
            self.dns(d, &mut cfg.dns)?;
        }
        if let Some(h) = &raw.http {
            self.http(h, &mut cfg.http)?;
        }
        if let Some(st) = &raw.state {
            self.state(st, &mut cfg.state)?;
        }
        if let Some(a) = &raw.audit {
            self.audit(a, &mut cfg.audit)?;
        }
        if let Some(v) = raw.backstop.as_ref().and_then(|b| b.interfaces.as_ref()) {
            cfg.backstop.interfaces = self.interfaces("backstop", v)?;
        }
        if let Some(v) = raw.xdp.as_ref().and_then(|b| b.interfaces.as_ref()) {
            cfg.xdp.interfaces = self.interfaces("xdp", v)?;
        }
        if let Some(m) = &raw.metrics {
            cfg.metrics = Self::metrics(m);
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
}
