//! The policy state the running agent keeps: the compiled policy, the
//! resolver's answers, and the maps they are applied to.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{atomic::AtomicU64, atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    api::metrics::AgentStats,
    api::status::{self, ReloadStatus, StateFile},
    dns::resolver::{DnsTiming, HostState, Resolver},
    flows::{self, flow::now_ms},
    kernel::dataplane::{Layout, Maps},
    kernel::entries,
    policy::config::Config,
    policy::Policy,
};

use super::{
    attach::{set_mode, write_dns_learning},
    prepare::hostnames,
    systemd::notify_systemd,
};

pub(super) struct Agent {
    layout: Layout,
    pub(super) config_path: Option<PathBuf>,
    pub(super) policy: Policy,
    pub(super) maps: Arc<Mutex<Maps>>,
    pub(super) resolver: Resolver,
    /// The resolvers the resolver asks and the policy allows.
    pub(super) resolvers: Vec<IpAddr>,
    pub(super) ids: std::collections::BTreeMap<String, u32>,
    /// Address -> hostnames, for naming the destinations of denied flows.
    pub(super) hostnames: flows::HostnameIndex,
    /// Why the last attempt to apply the policy failed, while the previous
    /// policy stays in force; cleared by the next success.
    pub(super) policy_error: Option<String>,
    /// Failed attempts (`sdm_policy_apply_errors_total`).
    apply_errors: Arc<AtomicU64>,
    /// The resolvers and names the answers in the state file belong to.
    pub(super) dns_fingerprint: String,
    /// `sdm_flow_store_evictions_total`, recorded for `status`.
    store_evictions: Arc<AtomicU64>,
    /// `sdm_config_reloads_total` and `sdm_config_reload_errors_total`.
    pub(super) reloads: Arc<AtomicU64>,
    pub(super) reload_errors: Arc<AtomicU64>,
    /// The last reload's outcome, for `status`.
    pub(super) last_reload: Option<ReloadStatus>,
    /// When the state file was last written, and the resolver's
    /// [`Resolver::report_digest`] then: a refresh that changed nothing is
    /// not written again for [`STATE_REWRITE`].
    state_written: std::sync::Mutex<(Instant, u64)>,
}

/// How long a state file whose DNS outcomes did not change stays unwritten
/// (its countdowns go stale meanwhile). Each write serializes every rule and
/// hostname: megabytes at 10,000 resources, and a refresh is due several
/// times a second there.
const STATE_REWRITE: Duration = Duration::from_secs(30);

/// What the first application of the policy left to do: retry it (it was
/// refused while a previous agent's policy is live), then write the mode.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) retry_at: Option<Instant>,
    pub(super) mode: bool,
}

pub(super) fn lock(maps: &Mutex<Maps>) -> Result<std::sync::MutexGuard<'_, Maps>> {
    maps.lock()
        .map_err(|_| anyhow::anyhow!("maps lock poisoned"))
}

impl Agent {
    /// Opens the pinned maps, gives the policy's rules their ids, and sets
    /// the resolver up with the policy's hostnames (seeded with the
    /// previous run's answers where they apply).
    pub(super) fn start(
        layout: &Layout,
        config_path: Option<PathBuf>,
        config: &Config,
        policy: Policy,
        resolvers: &[IpAddr],
        stats: &AgentStats,
    ) -> Result<Agent> {
        let maps = Maps::open(layout).context("open the pinned maps")?;
        let maps = Arc::new(Mutex::new(maps));
        let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        let ids = lock(&maps)?
            .assign_rule_ids(&names)
            .context("assign rule ids")?;
        let mut resolver = Resolver::new(resolvers, DnsTiming::from(&config.dns))?;
        resolver.count_queries_in(stats.resolver_queries.clone());
        let hosts = hostnames(&policy);
        resolver.set_names(hosts.iter().map(String::as_str), Instant::now());
        let dns_fingerprint = status::dns_fingerprint(resolvers, &hosts);
        seed_from_previous(&mut resolver, layout, &dns_fingerprint);
        tracing::info!(hostnames = hosts.len(), resolvers = ?resolvers, "resolving");
        Ok(Agent {
            layout: layout.clone(),
            config_path,
            policy,
            maps,
            resolver,
            resolvers: resolvers.to_vec(),
            ids,
            hostnames: flows::HostnameIndex::default(),
            policy_error: None,
            apply_errors: stats.policy_apply_errors.clone(),
            dns_fingerprint,
            store_evictions: stats.store.evictions.clone(),
            reloads: stats.config_reloads.clone(),
            reload_errors: stats.config_reload_errors.clone(),
            last_reload: None,
            state_written: std::sync::Mutex::new((Instant::now(), 0)),
        })
    }

    /// Resolves, applies the policy, then writes the mode and the DNS
    /// learning maps, and tells systemd the agent is ready.
    ///
    /// When the policy does not apply (a DNS answer too big for the maps,
    /// say) and a previous agent's policy is live, that policy and its mode
    /// stay in force and the agent runs on, retrying like any failed update;
    /// exiting would leave nothing to retry, refresh or report. On a fresh
    /// host there is nothing to keep: the agent stops, in audit mode.
    pub(super) async fn first_apply(
        &mut self,
        config: &Config,
        resolvers: &[IpAddr],
    ) -> Result<Pending> {
        self.resolver.refresh_all_due().await;
        let mut pending = Pending::default();
        match self.sync() {
            Ok(writes) => {
                set_mode(&self.maps, config)?;
                tracing::info!(
                    rules = self.policy.rules.len(),
                    writes,
                    mode = ?config.mode,
                    metrics = %config.http.listen,
                    "policy applied; enforcement is live"
                );
            }
            Err(e) => {
                let generation = lock(&self.maps)?.config()?.generation;
                // Only a refused policy is survivable here; an error of another
                // kind (the state file) stays fatal, as before.
                if generation == 0 || self.policy_error.is_none() {
                    return Err(e);
                }
                tracing::error!(error = %format!("{e:#}"), generation, "applying the policy failed; the previous policy and mode stay in force until it applies; retrying");
                pending.retry_at = Some(Instant::now() + config.dns.ttl_min);
                pending.mode = true;
            }
        }
        {
            let mut m = lock(&self.maps)?;
            let dns_writes = write_dns_learning(&mut m, &self.policy, resolvers, config)?;
            tracing::debug!(dns_writes, "DNS learning maps written");
        }
        // Under systemd (Type=notify) this is what lets units ordered after
        // sdm-agent.service start: the programs are attached and a policy and
        // mode are live (this one, or a previous agent's while it retries), so
        // they start under enforcement.
        notify_systemd("READY=1");
        Ok(pending)
    }

    /// Builds the wanted map contents from the policy and the current
    /// answers and applies them (only the difference; atomic flip). A
    /// failure leaves the live policy as it was; it is counted and recorded
    /// in the state file for `status`.
    pub(super) fn sync(&mut self) -> Result<usize> {
        let resolver = &self.resolver;
        let want = entries::build(&self.policy, &self.ids, |h| resolver.addresses(h));
        let applied = lock(&self.maps)?.apply(&want);
        let writes = match applied {
            Ok(w) => {
                self.policy_error = None;
                w
            }
            Err(e) => {
                self.apply_errors.fetch_add(1, Ordering::Relaxed);
                self.policy_error = Some(e.to_string());
                if let Err(w) = self.write_state() {
                    tracing::warn!(error = %format!("{w:#}"), "writing the state file failed");
                }
                return Err(anyhow::Error::new(e).context("apply the policy to the maps"));
            }
        };
        self.update_hostname_index();
        self.write_state()?;
        Ok(writes)
    }

    /// Address -> hostnames, from the resolver's current answers.
    pub(super) fn update_hostname_index(&self) {
        let index = flows::index_from(
            self.resolver
                .hosts()
                .iter()
                .map(|(h, s)| (h.as_str(), s.addresses())),
        );
        if let Ok(mut w) = self.hostnames.write() {
            *w = index;
        }
    }

    /// Writes the state file unless only its countdowns would change (the
    /// same DNS outcomes, written less than [`STATE_REWRITE`] ago).
    pub(super) fn write_state_if_changed(&self) -> Result<()> {
        let digest = self.resolver.report_digest();
        let unchanged = self
            .state_written
            .lock()
            .map(|w| w.1 == digest && w.0.elapsed() < STATE_REWRITE)
            .unwrap_or(false);
        if unchanged {
            return Ok(());
        }
        self.write_state_with(digest)
    }

    pub(super) fn write_state(&self) -> Result<()> {
        self.write_state_with(self.resolver.report_digest())
    }

    /// Writes the state file; `digest` is the resolver's report digest now.
    fn write_state_with(&self, digest: u64) -> Result<()> {
        if let Ok(mut w) = self.state_written.lock() {
            *w = (Instant::now(), digest);
        }
        StateFile {
            pid: std::process::id(),
            config: self.config_path.clone(),
            rules: self.policy.rules.clone(),
            dns: self.resolver.report(),
            policy_error: self.policy_error.clone(),
            updated: now_ms() / 1000,
            dns_fingerprint: Some(self.dns_fingerprint.clone()),
            flow_store_evictions: self.store_evictions.load(Ordering::Relaxed),
            last_reload: self.last_reload.clone(),
        }
        .write(&self.layout)
        .with_context(|| format!("write {}", StateFile::path(&self.layout).display()))
    }
}

/// Seeds the resolver with what the previous agent had resolved, so a
/// restart with DNS down does not shrink the allowlist. Only answers
/// recorded for the same resolvers and names (`fingerprint`) are adopted:
/// another config's answers, from resolvers this one does not trust, are
/// not "last good" here.
pub(super) fn seed_from_previous(resolver: &mut Resolver, layout: &Layout, fingerprint: &str) {
    let Some(prev) = StateFile::read(layout) else {
        return;
    };
    let Some(dns) = prev.dns_for(fingerprint) else {
        tracing::info!(
            recorded = prev.dns_fingerprint.as_deref().unwrap_or("none"),
            current = fingerprint,
            "the previous run's DNS answers were recorded for other resolvers or names; not adopting them"
        );
        return;
    };
    let now = Instant::now();
    let timing = resolver.timing().clone();
    for h in dns {
        // A name the policy no longer has is not tracked: `seed` ignores it.
        if h.addresses.is_empty() {
            continue;
        }
        let mut st = HostState::new(now);
        st.on_answer(now, &h.addresses, Duration::ZERO, &timing);
        // Due at once: the seed only bridges until the first fresh answer.
        st.next_refresh = now;
        resolver.seed(&h.hostname, st);
    }
}
