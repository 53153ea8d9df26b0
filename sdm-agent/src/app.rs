//! The agent: attach, resolve, apply, keep current, serve metrics.
//!
//! Start-up order matters for safety: the programs go in first in audit
//! mode (or keep running as a previous agent left them), the policy is
//! applied, and only then is the configured mode written. A fresh host is
//! never in enforce mode with an empty allowlist.
//!
//! [`run`] reads as its three phases:
//! - `startup`: check the config and the target, take the instance lock,
//!   bind the HTTP listener, attach (`attach`), apply the policy
//!   (`agent`), then start the flow pipeline and the HTTP server;
//! - `event_loop`: one method per event (DNS refresh due, learned
//!   addresses to expire, the target cgroup re-created, a signal, the
//!   server stopping), and `reload` (SIGHUP: the config read again and
//!   the difference applied);
//! - `shutdown`: hand the last deny events to the store and leave the
//!   programs enforcing from the pinned maps.

use std::path::PathBuf;

use anyhow::Result;

use crate::kernel::{cgroup, dataplane::Layout};

mod agent;
mod attach;
mod event_loop;
mod prepare;
mod reload;
mod shutdown;
mod startup;
mod systemd;
mod target;
#[cfg(test)]
mod tests;

pub use prepare::{config_label, prepare, resolvers, target_cgroup};

/// `object`: an eBPF object to load instead of the embedded one (`run
/// --object`, for the upgrade tests).
pub async fn run(
    layout: Layout,
    config_path: Option<PathBuf>,
    cgroup_override: Option<cgroup::CgroupTarget>,
    object: Option<Vec<u8>>,
) -> Result<()> {
    let Some(mut running) = startup::start(layout, config_path, cgroup_override, object).await?
    else {
        return Ok(());
    };
    // A stopped metrics server is an error returned at once, as ever: no
    // drain of the flow pipeline.
    running.run_until_stopped().await?;
    running.shutdown().await;
    Ok(())
}
