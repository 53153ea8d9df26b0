//! The target cgroup: waited for at start-up, warned about, and followed
//! across re-creation while the agent runs.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    kernel::cgroup,
    kernel::dataplane::{self, Layout},
    policy::config::{Config, Mode},
};

use super::prepare::target_cgroup;

/// How often a missing target cgroup is looked for at start-up.
const TARGET_POLL: Duration = Duration::from_millis(100);

/// How often the attached cgroup is checked for re-creation (one stat):
/// a restarted service's new cgroup runs unfiltered until the next check,
/// so this bounds that gap (the attach itself takes about a millisecond).
pub(super) const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// Waits until the target cgroup exists (a unit that has not started yet,
/// say), logging that it waits; `None` if the agent was asked to stop
/// meanwhile.
pub(super) async fn wait_for_target(
    config: &Config,
    config_path: Option<&Path>,
    first: cgroup::CgroupError,
) -> Result<Option<PathBuf>> {
    let target = config
        .cgroup
        .as_ref()
        .map(|t| t.to_string())
        .unwrap_or_default();
    tracing::warn!(%target, reason = %first, mode = ?config.mode, "the target cgroup does not exist yet; waiting for it (the programs are attached, in the configured mode, as soon as it appears)");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let started = Instant::now();
    let mut next_note = started + Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TARGET_POLL) => {}
            _ = tokio::signal::ctrl_c() => return Ok(None),
            _ = sigterm.recv() => return Ok(None),
        }
        match target_cgroup(config, config_path)? {
            Ok(p) => {
                tracing::info!(%target, cgroup = %p.display(), waited_secs = started.elapsed().as_secs(), "the target cgroup appeared");
                return Ok(Some(p));
            }
            Err(e) if Instant::now() >= next_note => {
                tracing::warn!(%target, reason = %e, waited_secs = started.elapsed().as_secs(), "still waiting for the target cgroup");
                next_note = Instant::now() + Duration::from_secs(60);
            }
            Err(_) => {}
        }
    }
}

/// What an operator should know about the resolved target before the
/// programs attach: a service's cgroup that is re-created on restart, the
/// root cgroup in enforce mode, another cgroup than the previous agent's.
pub(super) fn warn_about_target(config: &Config, cgroup: &Path, layout: &Layout) -> Result<()> {
    if let Some(cgroup::CgroupTarget::Unit(u)) = &config.cgroup {
        if !u.ends_with(".slice") {
            tracing::warn!(unit = %u, "a service's cgroup is created anew on every restart, and the agent can attach to the new one only after it exists (within about 50 ms); for restarts without that gap, run the service in a slice of its own (Slice=NAME.slice) and target unit:NAME.slice: new cgroups inherit their parent's programs when they are created");
        }
    }
    if cgroup == cgroup::cgroup2_mount()? && config.mode == Mode::Enforce {
        tracing::warn!(cgroup = %cgroup.display(), "enforcing on the root cgroup: every process of this host is filtered");
    }
    if let Some(prev) = dataplane::AttachRecord::read(layout) {
        if prev.cgroup != cgroup {
            tracing::warn!(target = %config.cgroup.as_ref().map(|t| t.to_string()).unwrap_or_default(), from = %prev.cgroup.display(), to = %cgroup.display(), "the target resolves to another cgroup than the previous agent's");
        }
    }
    Ok(())
}

/// The attached cgroup, followed across re-creation: a restarted service
/// gets a new cgroup at the same path (a new id), which has none of the
/// programs; they are attached to it as soon as it is seen.
pub(super) struct Followed {
    pub(super) target: Option<cgroup::CgroupTarget>,
    pub(super) path: PathBuf,
    pub(super) id: u64,
    /// Since when the cgroup has been gone, if it is.
    pub(super) gone_since: Option<Instant>,
    last_search: Instant,
}

impl Followed {
    /// Follows `path`, the cgroup just attached to. A pid target is
    /// followed by the path it resolved to: the process may be gone after a
    /// restart, its service's cgroup comes back.
    pub(super) fn new(
        target: Option<cgroup::CgroupTarget>,
        path: PathBuf,
        layout: &Layout,
    ) -> Self {
        Followed {
            target,
            id: attached_id(layout),
            path,
            gone_since: None,
            last_search: Instant::now(),
        }
    }

    /// Checks the cgroup; returns a path to attach to when it was
    /// re-created (or moved, for a unit put in another slice).
    pub(super) fn check(&mut self) -> Option<PathBuf> {
        match cgroup::cgroup_id(&self.path) {
            Ok(id) if id == self.id => {
                self.gone_since = None;
                None
            }
            Ok(_) => Some(self.path.clone()),
            Err(_) => {
                if self.gone_since.is_none() {
                    tracing::warn!(cgroup = %self.path.display(), "the target cgroup is gone (its service stopped?); its processes are gone with it; waiting for it to come back");
                    self.gone_since = Some(Instant::now());
                }
                // A unit may come back under another slice: look where
                // systemd's layout allows it (never in delegated subtrees),
                // but not on every tick.
                if let Some(cgroup::CgroupTarget::Unit(u)) = &self.target {
                    if self.last_search.elapsed() >= Duration::from_secs(1) {
                        self.last_search = Instant::now();
                        let root = cgroup::unit_root().ok()?;
                        return cgroup::find_unit(&root, u);
                    }
                }
                None
            }
        }
    }
}

/// The id of the cgroup the pinned links are attached to, as the attach
/// recorded it; 0 (no cgroup's id) without a record, so that the target is
/// attached again at the next check.
pub(super) fn attached_id(layout: &Layout) -> u64 {
    dataplane::AttachRecord::read(layout).map_or(0, |r| r.cgroup_id)
}
