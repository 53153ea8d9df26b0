//! The top-level keys and the small tables: `[hosts]`, `[gateway]`,
//! `[client]`.

use crate::kernel::cgroup::CgroupTarget;
use crate::policy::Proto;

use super::super::{
    errors::ConfigError,
    raw::{items, RawClient, RawConfig, RawGateway, RawHosts},
    values::normalize_hostname,
    ClientConfig, Config, ControlPlaneHost, ControlPlaneHosts, GatewayConfig, HostPort, Role,
    UnknownName,
};
use super::{Here, Validator};

impl Validator<'_> {
    /// `role`, `region`, `mode`, `loopback`, `fail`, `optional`, `cgroup`
    /// and `gateways`.
    pub(super) fn top_level(&self, raw: &RawConfig, cfg: &mut Config) -> Result<(), ConfigError> {
        let top = Here::top();
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
        Ok(())
    }

    /// `[hosts]`: overrides of the region's control-plane names.
    pub(super) fn hosts(
        &self,
        h: &RawHosts,
        hosts: &mut ControlPlaneHosts,
    ) -> Result<(), ConfigError> {
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
                *hosts.get_mut(which) = name;
            }
        }
        Ok(())
    }

    /// `[gateway]`.
    pub(super) fn gateway(
        &self,
        g: &RawGateway,
        gateway: &mut GatewayConfig,
    ) -> Result<(), ConfigError> {
        let here = Here::table("gateway");
        if let Some(p) = &g.advertised_port {
            gateway.advertised_port = self.port(p, Proto::Tcp, &here, "advertised_port")?;
        }
        if let Some(s) = &g.sources {
            gateway.sources = self.cidrs(s, &here, "sources")?;
        }
        Ok(())
    }

    /// `[client]`.
    pub(super) fn client(
        &self,
        c: &RawClient,
        client: &mut ClientConfig,
    ) -> Result<(), ConfigError> {
        let here = Here::table("client");
        if let Some(p) = &c.loopback_ports {
            client.loopback_ports = self.ports_value(p, Proto::Tcp, &here, "loopback_ports")?;
        }
        Ok(())
    }
}
