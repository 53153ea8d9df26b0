//! The hosts the config names: the control plane's (`[hosts]`, by region)
//! and the gateways this host dials (`gateways`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use super::names::{named_enum, Region, UnknownName};
use super::values::{normalize_hostname, parse_port_number};
use super::DEFAULT_GATEWAY_PORT;
use crate::policy::{Proto, Target};

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

    pub(super) fn get_mut(&mut self, which: ControlPlaneHost) -> &mut String {
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
