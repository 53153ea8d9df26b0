//! The agent's main loop: one method per event.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::{signal::unix::Signal, task::JoinHandle, time::Interval};

use crate::{api::status::monotonic_ns, policy::config::Config};

use super::{
    agent::{Agent, Pending},
    attach::{set_mode, Programs},
    shutdown::FlowTasks,
    startup::InstanceLock,
    target::{attached_id, Followed, FOLLOW_POLL},
};

/// The loop's timers.
pub(super) struct Clock {
    /// Expired learned addresses are removed after the grace period (the
    /// kernel ignores them for new flows as soon as they expire).
    expire_tick: Interval,
    follow_tick: Interval,
    /// When the resolver last refreshed. An absolute time, so the other
    /// branches of the loop (the target check ticks every FOLLOW_POLL) do
    /// not push the next refresh back.
    last_refresh: Instant,
}

impl Clock {
    pub(super) fn new() -> Self {
        let mut expire_tick = tokio::time::interval(Duration::from_secs(30));
        expire_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut follow_tick = tokio::time::interval(FOLLOW_POLL);
        follow_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Clock {
            expire_tick,
            follow_tick,
            last_refresh: Instant::now(),
        }
    }
}

/// The running agent, as start-up leaves it.
pub(super) struct Running {
    pub(super) config: Config,
    pub(super) agent: Agent,
    pub(super) programs: Programs,
    pub(super) followed: Followed,
    pub(super) pending: Pending,
    pub(super) clock: Clock,
    pub(super) sigterm: Signal,
    /// SIGHUP: reload the config (`reload`).
    pub(super) sighup: Signal,
    /// `run --cgroup`, which overrides the file's `cgroup` at a reload too.
    pub(super) cgroup_override: Option<crate::kernel::cgroup::CgroupTarget>,
    /// `[metrics]`, read by every scrape: a reload sets it live.
    pub(super) series: crate::api::metrics::SeriesOptions,
    pub(super) server: JoinHandle<std::io::Result<()>>,
    pub(super) flows: FlowTasks,
    pub(super) _lock: InstanceLock,
}

impl Running {
    /// Runs until SIGINT or SIGTERM, reloading the config on SIGHUP; an
    /// error if the metrics server stops.
    pub(super) async fn run_until_stopped(&mut self) -> Result<()> {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => self.on_refresh_due().await,
                _ = self.clock.expire_tick.tick() => self.on_expire_tick(),
                _ = self.clock.follow_tick.tick() => self.on_follow_tick(),
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = self.sigterm.recv() => return Ok(()),
                _ = self.sighup.recv() => self.on_reload().await,
                r = &mut self.server => {
                    bail!("the metrics server stopped: {r:?}");
                }
            }
        }
    }

    /// The next DNS refresh or retry, at most one every 200 ms.
    fn next_wake(&self) -> Instant {
        self.agent
            .resolver
            .next_due()
            .into_iter()
            .chain(self.pending.retry_at)
            .min()
            .map(|t| t.max(self.clock.last_refresh + Duration::from_millis(200)))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// A DNS refresh (or a retry of a failed update) is due.
    ///
    /// A failed update (a map full, say) keeps the last applied policy
    /// live: the flip happens only after a complete write. It is logged and
    /// retried at the next refresh; the agent stays up.
    async fn on_refresh_due(&mut self) {
        let retry_sync = self.pending.retry_at.is_some_and(|t| t <= Instant::now());
        let changed = self.agent.resolver.refresh_due().await || retry_sync;
        self.clock.last_refresh = Instant::now();
        let result = if changed {
            self.agent.sync().map(Some)
        } else {
            self.agent.write_state_if_changed().map(|()| None)
        };
        if retry_sync {
            self.pending.retry_at = None;
        }
        match result {
            Ok(Some(writes)) => {
                tracing::info!(writes, "allowlist updated");
                self.write_pending_mode();
            }
            Ok(None) => {}
            Err(e) => {
                if changed {
                    self.pending.retry_at = Some(Instant::now() + self.config.dns.ttl_min);
                }
                tracing::error!(error = %format!("{e:#}"), "updating the allowlist failed; the previous policy stays in force");
            }
        }
    }

    /// The configured mode, once a policy that failed at start-up applies.
    fn write_pending_mode(&mut self) {
        if !self.pending.mode {
            return;
        }
        match set_mode(&self.agent.maps, &self.config) {
            Ok(()) => {
                self.pending.mode = false;
                tracing::info!(mode = ?self.config.mode, "policy applied; the configured mode is live");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "setting the mode failed; retrying")
            }
        }
    }

    /// Removes the learned addresses expired for longer than the grace
    /// period.
    fn on_expire_tick(&mut self) {
        let grace = u64::try_from(self.config.dns.grace.as_nanos()).unwrap_or(u64::MAX);
        let removed = self
            .agent
            .maps
            .lock()
            .map_err(|_| anyhow::anyhow!("maps lock poisoned"))
            .and_then(|mut m| Ok(m.expire_learned(monotonic_ns(), grace)?));
        match removed {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired learned addresses removed"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "removing expired learned addresses failed")
            }
        }
    }

    /// Checks the target cgroup; attaches to it again when it was
    /// re-created (or moved).
    fn on_follow_tick(&mut self) {
        let Some(path) = self.followed.check() else {
            return;
        };
        let was_gone = self.followed.gone_since.map(|t| t.elapsed());
        if path != self.followed.path {
            // Never a silent move: the policed workload is now
            // another cgroup.
            tracing::warn!(target = %self.followed.target.as_ref().map(|t| t.to_string()).unwrap_or_default(), from = %self.followed.path.display(), to = %path.display(), "the target cgroup moved to another path; following it");
        }
        if let Err(e) = self.programs.reattach(&path) {
            tracing::error!(cgroup = %path.display(), error = %e, "attaching to the re-created target cgroup failed; retrying");
            return;
        }
        // The id attach() recorded, of the cgroup it attached to; not the
        // path's id now, which may be a newer cgroup already (a service
        // restarting again), then never attached.
        self.followed.id = attached_id(&self.programs.layout);
        // The setsockopt link and the backstop's cgroup follow the new
        // cgroup too.
        if let Err(e) = self.programs.sync_backstop(&path) {
            tracing::error!(cgroup = %path.display(), error = %format!("{e:#}"), "moving the backstop to the re-created target cgroup failed");
        }
        self.followed.path = path;
        self.followed.gone_since = None;
        tracing::info!(cgroup = %self.followed.path.display(), gone_ms = was_gone.map(|d| d.as_millis() as u64), "the target cgroup was re-created; attached the programs to the new one");
        if let Err(e) = self.agent.write_state() {
            tracing::warn!(error = %format!("{e:#}"), "writing the state file failed");
        }
    }
}
