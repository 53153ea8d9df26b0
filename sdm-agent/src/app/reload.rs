//! Reload on SIGHUP (`systemctl reload sdm-agent`): the config file the
//! agent started with is read, validated and compiled again, and the
//! difference applied with the same flip as every policy update: the new
//! policy is written into the idle slot and the generation flips once the
//! write is complete, so packets see the old policy or the new one, never
//! a mix.
//!
//! A reload is refused, and the running config and policy stay whole, when
//! the file does not load (the error names file, line and key), when it
//! changes a setting that takes effect only at start-up ([`restart_needed`]),
//! or when the new policy does not fit the maps. Either way it is logged,
//! counted (`sdm_config_reloads_total`, `sdm_config_reload_errors_total`)
//! and recorded for `status`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::atomic::Ordering,
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    api::status::{self, monotonic_ns, ReloadStatus},
    dns::resolver::{DnsTiming, Resolver},
    flows::flow::now_ms,
    kernel::{dataplane::DataplaneError, entries},
    policy::{compile, config::Config, Policy},
};

use super::{
    agent::{lock, Agent, Pending},
    attach::{set_mode, write_dns_learning},
    event_loop::Running,
    prepare::{config_label, hostnames, prepare},
    systemd::notify_systemd,
};

#[cfg(test)]
mod tests;

/// The settings that take effect only at start-up and differ between
/// `old` and `new`, as the config names them. Everything else applies
/// live: the roles, region, resources, secret stores, `[[allow]]` rules,
/// gateways and hosts (the policy), `mode`, `loopback`, `optional` and the
/// whole `[dns]` and `[metrics]` tables. `fail` only matters on a fresh start, so a change
/// is accepted and used at the next one.
pub(super) fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    // The interfaces' names only: the line a name is written on is no
    // change.
    let backstop = |c: &Config| -> Vec<String> {
        c.backstop
            .interfaces
            .iter()
            .map(|i| i.name.clone())
            .collect()
    };
    let xdp =
        |c: &Config| -> Vec<String> { c.xdp.interfaces.iter().map(|i| i.name.clone()).collect() };
    [
        // The programs are attached to it.
        ("cgroup", old.cgroup != new.cgroup),
        // The HTTP server holds its socket and token.
        ("[http] listen", old.http.listen != new.http.listen),
        ("[http] token", old.http.token != new.http.token),
        // The flow store and the audit log are opened once.
        ("[state] dir", old.state.dir != new.state.dir),
        (
            "[state] retention",
            old.state.retention != new.state.retention,
        ),
        (
            "[state] max_bytes",
            old.state.max_bytes != new.state.max_bytes,
        ),
        ("[audit] log", old.audit.log != new.audit.log),
        // The tc programs are attached to these at start-up.
        ("[backstop] interfaces", backstop(old) != backstop(new)),
        // The XDP shield is attached (and its target checked) at start-up.
        ("[xdp] interfaces", xdp(old) != xdp(new)),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// What a successful reload did.
enum Reloaded {
    /// The file holds the running config: nothing was written.
    Unchanged,
    /// The new config is live.
    Applied { writes: usize },
}

impl Running {
    /// SIGHUP: reloads the config; logs, counts and records the outcome.
    /// systemd (`Type=notify`) is told the reload started and ended, so
    /// `systemctl reload` returns once it is done.
    pub(super) async fn on_reload(&mut self) {
        notify_systemd(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            monotonic_ns() / 1000
        ));
        let label = config_label(self.agent.config_path.as_deref());
        tracing::info!(config = %label, "SIGHUP: reloading the config");
        let started = Instant::now();
        let result = self.reload().await;
        let generation = lock(&self.agent.maps)
            .and_then(|m| Ok(m.config()?.generation))
            .unwrap_or(0);
        let ms = started.elapsed().as_millis() as u64;
        let error = match result {
            Ok(Reloaded::Unchanged) => {
                self.agent.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(config = %label, generation, "config reloaded: unchanged, nothing to apply");
                None
            }
            Ok(Reloaded::Applied { writes }) => {
                self.agent.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(config = %label, generation, writes, ms, rules = self.agent.policy.rules.len(), mode = ?self.config.mode, "config reloaded: the new policy is live");
                None
            }
            Err(e) => {
                self.agent.reload_errors.fetch_add(1, Ordering::Relaxed);
                let e = format!("{e:#}");
                tracing::error!(config = %label, generation, error = %e, "reloading the config failed; the running config and policy stay in force");
                Some(e)
            }
        };
        self.agent.last_reload = Some(ReloadStatus {
            at: now_ms() / 1000,
            ok: error.is_none(),
            generation,
            duration_ms: ms,
            error,
            applied: self.agent.reloads.load(Ordering::Relaxed),
            refused: self.agent.reload_errors.load(Ordering::Relaxed),
        });
        if let Err(e) = self.agent.write_state() {
            tracing::warn!(error = %format!("{e:#}"), "writing the state file failed");
        }
        notify_systemd("READY=1");
    }

    async fn reload(&mut self) -> Result<Reloaded> {
        let path = self.agent.config_path.clone().ok_or_else(|| {
            anyhow!("the agent runs on the built-in default config (no --config): there is no file to read again")
        })?;
        let (mut config, policy, resolvers) = prepare(Some(&path))?;
        // `run --cgroup` overrides the file, at a reload too.
        if let Some(t) = &self.cgroup_override {
            config.cgroup = Some(t.clone());
        }
        let restart = restart_needed(&self.config, &config);
        if !restart.is_empty() {
            let keys: Vec<String> = restart.iter().map(|k| format!("`{k}`")).collect();
            let (it, takes) = if keys.len() == 1 {
                ("it", "takes")
            } else {
                ("them", "take")
            };
            bail!(
                "config {}: {} changed, and {takes} effect only at start-up: a restart applies {it} (systemctl restart sdm-agent); set {it} back to reload the rest",
                path.display(),
                keys.join(", ")
            );
        }
        if config == self.config && resolvers == self.agent.resolvers {
            return Ok(Reloaded::Unchanged);
        }
        for w in compile::lockout_warnings(&config, &policy) {
            tracing::warn!("{w}");
        }
        let writes = self
            .agent
            .replace_policy(&self.config, &config, policy, &resolvers)
            .await?;
        // The new policy is live: from here on the new config is the running one.
        self.config = config;
        self.series.set(&self.config.metrics);
        self.pending = Pending::default();
        if let Err(e) = set_mode(&self.agent.maps, &self.config) {
            // Retried after the next successful update.
            self.pending.mode = true;
            return Err(e.context(
                "the new policy is live, but writing the mode and loopback handling failed",
            ));
        }
        Ok(Reloaded::Applied { writes })
    }
}

impl Agent {
    /// Makes `policy` (of the reloaded `config`; `old` is the running one)
    /// the live policy: its new rules get ids, its new hostnames are
    /// resolved before the flip (the answers of names it keeps are reused),
    /// then the maps are written and flipped as in [`Agent::sync`]. Any
    /// error is before the flip and leaves the agent and the live policy as
    /// they were. Returns the map writes.
    pub(super) async fn replace_policy(
        &mut self,
        old: &Config,
        config: &Config,
        policy: Policy,
        resolvers: &[IpAddr],
    ) -> Result<usize> {
        let ids = self.ids_for(&policy)?;
        let resolver = self.resolver_for(config, &policy, resolvers).await?;
        let want = entries::build(&policy, &ids, |h| resolver.addresses(h));
        // While the slots flip, the kernel learns the names of both policies
        // and trusts the resolvers of both; trimmed to the new ones after.
        {
            let mut names = entries::dns_names_and_search(&self.policy, &old.dns.search);
            names.extend(entries::dns_names_and_search(&policy, &config.dns.search));
            let mut trusted = self.resolvers.clone();
            trusted.extend_from_slice(resolvers);
            let written = lock(&self.maps)?.apply_dns(&names, &trusted);
            if let Err(e) = written {
                self.restore_dns_learning(old);
                return Err(anyhow::Error::new(e).context("write the DNS learning maps"));
            }
        }
        let applied = lock(&self.maps)?.apply(&want);
        let writes = match applied {
            Ok(w) => w,
            Err(e) => {
                self.restore_dns_learning(old);
                return Err(anyhow::Error::new(e).context("apply the new policy to the maps"));
            }
        };
        self.dns_fingerprint = status::dns_fingerprint(resolvers, &hostnames(&policy));
        self.policy = policy;
        self.ids = ids;
        self.resolver = resolver;
        self.resolvers = resolvers.to_vec();
        self.policy_error = None;
        self.update_hostname_index();
        // The flip is done: from here on nothing may report the reload as
        // refused (the new policy is live). A failed trim leaves the old
        // config's names learnable too, which the next reload or restart
        // mends; the caller writes the state file.
        let trimmed = lock(&self.maps)
            .and_then(|mut m| write_dns_learning(&mut m, &self.policy, resolvers, config));
        if let Err(e) = trimmed {
            tracing::warn!(error = %format!("{e:#}"), "the new policy is live, but trimming the DNS learning maps to its names failed; they also hold the previous config's names");
        }
        Ok(writes)
    }

    /// Ids for the rules of `policy`. The live policy's rules keep theirs
    /// and are asked for too, so that no id a live rule still uses until
    /// the flip is handed to a new rule (with its counters cleared). Only
    /// when the two policies together need more ids than there are, the ids
    /// of the rules the new policy drops are reused.
    fn ids_for(&self, policy: &Policy) -> Result<BTreeMap<String, u32>> {
        let new: BTreeSet<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        let both: BTreeSet<&str> = new
            .iter()
            .copied()
            .chain(self.policy.rules.iter().map(|r| r.name.as_str()))
            .collect();
        let mut m = lock(&self.maps)?;
        let mut ids = match m.assign_rule_ids(&both.iter().copied().collect::<Vec<_>>()) {
            Ok(ids) => ids,
            Err(DataplaneError::RuleCapacity { .. }) => {
                tracing::warn!(
                    rules = new.len(),
                    live = self.policy.rules.len(),
                    "the live and the reloaded policy need more rule ids together than the dataplane has: the ids of removed rules go to new rules now (their counters restart)"
                );
                m.assign_rule_ids(&new.iter().copied().collect::<Vec<_>>())
                    .context("assign rule ids")?
            }
            Err(e) => return Err(anyhow::Error::new(e).context("assign rule ids")),
        };
        ids.retain(|name, _| new.contains(name.as_str()));
        Ok(ids)
    }

    /// A resolver for the reloaded config, its names resolved. With the
    /// same resolvers the running resolver's answers are carried over (and
    /// only names it did not track are asked now); with other resolvers
    /// every name is asked again: answers of resolvers no longer trusted
    /// are not "last good" (as across a restart, see `seed_from_previous`).
    async fn resolver_for(
        &self,
        config: &Config,
        policy: &Policy,
        resolvers: &[IpAddr],
    ) -> Result<Resolver> {
        let mut resolver = Resolver::new(resolvers, DnsTiming::from(&config.dns))?;
        resolver.count_queries_in(self.resolver.query_counter());
        let hosts = hostnames(policy);
        resolver.set_names(hosts.iter().map(String::as_str), Instant::now());
        if status::dns_fingerprint(&self.resolvers, &[]) == status::dns_fingerprint(resolvers, &[])
        {
            for (host, state) in self.resolver.hosts() {
                resolver.seed(host, state.clone());
            }
        } else {
            tracing::info!(from = ?self.resolvers, to = ?resolvers, "the resolvers changed: every name is resolved again, by the new ones");
        }
        resolver.refresh_unasked().await;
        Ok(resolver)
    }

    /// Puts the DNS learning maps back as the running config wants them
    /// (after a refused reload wrote both policies' names).
    fn restore_dns_learning(&self, old: &Config) {
        let restored = lock(&self.maps)
            .and_then(|mut m| write_dns_learning(&mut m, &self.policy, &self.resolvers, old));
        if let Err(e) = restored {
            tracing::warn!(error = %format!("{e:#}"), "restoring the DNS learning maps failed; they also hold the refused config's names");
        }
    }
}
