//! What `check` and `run` verify before touching the kernel: the config
//! loads and compiles, the resolvers are known, the target cgroup resolves.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    kernel::cgroup,
    policy::compile,
    policy::config::Config,
    policy::{Policy, Target},
};

/// The resolvers the policy allows and the agent asks: `[dns] servers`, or
/// the nameservers of /etc/resolv.conf.
pub fn resolvers(config: &Config) -> Result<Vec<IpAddr>> {
    if !config.dns.servers.is_empty() {
        return Ok(config.dns.servers.clone());
    }
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .context("read /etc/resolv.conf (or set [dns] servers)")?;
    let servers = compile::parse_resolv_conf(&text);
    if servers.is_empty() {
        bail!("/etc/resolv.conf names no nameserver; set [dns] servers in the config");
    }
    Ok(servers)
}

/// Where the config came from, for messages.
pub fn config_label(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in default config".into())
}

/// Where `cgroup` is set in the config file, as "line N: ", for messages.
fn cgroup_line(path: Option<&Path>) -> String {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| {
            t.lines()
                .position(|l| l.trim_start().starts_with("cgroup") && l.contains('='))
                .map(|i| format!("line {}: ", i + 1))
        })
        .unwrap_or_default()
}

/// The cgroup to attach to, checked. `Ok(None)`: the target does not exist
/// yet (a unit not started), with the reason; a bad target names the
/// config's file, line and key.
pub fn target_cgroup(
    config: &Config,
    path: Option<&Path>,
) -> Result<Result<PathBuf, cgroup::CgroupError>> {
    match cgroup::resolve_target(config.cgroup.as_ref()) {
        Ok(p) => Ok(Ok(p)),
        Err(e) if e.is_missing() => Ok(Err(e)),
        Err(e) => Err(anyhow::anyhow!(
            "config {}: {}key `cgroup`: {e}",
            config_label(path),
            cgroup_line(path)
        )),
    }
}

/// Loads and compiles a config: everything `check` and `run` verify before
/// touching the kernel.
pub fn prepare(path: Option<&Path>) -> Result<(Config, Policy, Vec<IpAddr>)> {
    let config = match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let resolvers = resolvers(&config)?;
    let policy = compile::compile(&config, &resolvers)
        .with_context(|| format!("config {}", config_label(path)))?;
    Ok((config, policy, resolvers))
}

/// The policy's hostnames the agent resolves itself.
pub(super) fn hostnames(policy: &Policy) -> Vec<String> {
    let mut names: Vec<String> = policy
        .rules
        .iter()
        .flat_map(|r| r.targets.iter())
        .filter_map(|t| match t {
            // Wildcards are learned from DNS answers in the kernel, not resolved here.
            Target::Host(h) if !h.starts_with("*.") => Some(h.clone()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}
