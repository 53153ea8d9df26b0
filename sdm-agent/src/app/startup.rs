//! Start-up, in the order safety asks for: everything that can fail
//! without touching the kernel first (config, target, interfaces, the
//! instance lock, the HTTP port), then attach, apply the policy and write
//! the mode, then the flow pipeline and the HTTP server.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    api::{http, metrics, status::StateFile},
    flows::{self, events, store},
    kernel::{backstop, cgroup, dataplane::Layout},
    policy::compile,
    policy::config::Config,
};

use super::{
    agent::Agent,
    attach::Programs,
    event_loop::{Clock, Running},
    prepare::{prepare, target_cgroup},
    shutdown::FlowTasks,
    target::{wait_for_target, warn_about_target, Followed},
};

/// Holds an exclusive lock on RUN_DIR/agent.lock while the agent runs, so a
/// second agent on the same pins fails at once instead of fighting the first.
pub(super) struct InstanceLock(
    #[allow(dead_code, reason = "held for its lock, never read")] std::fs::File,
);

fn lock_instance(layout: &Layout) -> Result<InstanceLock> {
    use std::os::fd::AsRawFd as _;
    std::fs::create_dir_all(&layout.run_dir)
        .with_context(|| format!("create {}", layout.run_dir.display()))?;
    let path = layout.run_dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = StateFile::read(layout)
            .map(|s| s.pid.to_string())
            .unwrap_or_else(|| "?".into());
        bail!(
            "another sdm-agent (pid {pid}) is running on {}; stop it first",
            layout.pin_root.display()
        );
    }
    Ok(InstanceLock(file))
}

/// Starts the agent; `None` when it was asked to stop while it waited for
/// the target cgroup (then nothing was attached).
pub(super) async fn start(
    layout: Layout,
    config_path: Option<PathBuf>,
    cgroup_override: Option<cgroup::CgroupTarget>,
    object: Option<Vec<u8>>,
) -> Result<Option<Running>> {
    // First of all: SIGHUP's default action ends the process, and systemd
    // may send it (`systemctl reload`) as soon as the agent reports ready.
    // One received before the loop runs is a reload when it does.
    let sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("handle SIGHUP")?;
    let (mut config, policy, resolvers) = prepare(config_path.as_deref())?;
    if let Some(t) = &cgroup_override {
        config.cgroup = Some(t.clone());
    }
    let found = target_cgroup(&config, config_path.as_deref())?;
    // Before touching the kernel: an interface the host lacks is a config
    // error, like any other.
    let backstop_ifaces = backstop::resolve(&config, config_path.as_deref())?;
    if !config.xdp.interfaces.is_empty() {
        crate::kernel::xdp::check_target(
            &config,
            &cgroup::cgroup2_mount()?,
            &crate::app::config_label(config_path.as_deref()),
        )?;
        crate::kernel::xdp::check_interfaces(&config, config_path.as_deref())?;
    }
    let lock = lock_instance(&layout)?;
    for w in compile::lockout_warnings(&config, &policy) {
        tracing::warn!("{w}");
    }
    // Bind before touching the kernel: a busy port is an error that should
    // change nothing.
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("listen on {} ([http] listen)", config.http.listen))?;
    let Some(cgroup) = resolve_cgroup(&config, config_path.as_deref(), found).await? else {
        tracing::info!("stopped while waiting for the target cgroup; nothing was attached");
        return Ok(None);
    };
    warn_about_target(&config, &cgroup, &layout)?;
    let programs = Programs::attach(
        layout.clone(),
        &cgroup,
        object,
        &config,
        &policy,
        &resolvers,
        backstop_ifaces,
    )?;
    let followed = Followed::new(config.cgroup.clone(), cgroup, &layout);
    let stats = metrics::AgentStats::default();
    let series = metrics::SeriesOptions::new(&config.metrics);
    let mut agent = Agent::start(&layout, config_path, &config, policy, &resolvers, &stats)?;
    let pending = agent.first_apply(&config, &resolvers).await?;
    let (flows, flow_table) = start_flows(&layout, &config, &stats, &agent)?;
    let http_state = http::HttpState::new(
        Arc::new(metrics::registry_with(
            source(&layout, &agent),
            stats.clone(),
            series.clone(),
        )),
        source(&layout, &agent),
        flow_table,
        Some(flows.store.clone()),
        config.http.token.clone(),
        stats.http.clone(),
    );
    let server = tokio::spawn(http::serve(listener, http_state));
    Ok(Some(Running {
        config,
        agent,
        programs,
        followed,
        pending,
        clock: Clock::new(),
        sigterm: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        sighup,
        cgroup_override,
        series,
        server,
        flows,
        _lock: lock,
    }))
}

/// The target cgroup found, or waited for when it does not exist yet.
async fn resolve_cgroup(
    config: &Config,
    config_path: Option<&Path>,
    found: Result<PathBuf, cgroup::CgroupError>,
) -> Result<Option<PathBuf>> {
    match found {
        Ok(p) => Ok(Some(p)),
        Err(e) => wait_for_target(config, config_path, e).await,
    }
}

/// What the metrics and the HTTP API read the kernel through.
fn source(layout: &Layout, agent: &Agent) -> metrics::Source {
    metrics::Source {
        layout: layout.clone(),
        maps: agent.maps.clone(),
    }
}

/// Denied flows: aggregated in memory, logged when new, stored in
/// <[state] dir>/flows.db (a broken store is reported, never fatal).
fn start_flows(
    layout: &Layout,
    config: &Config,
    stats: &metrics::AgentStats,
    agent: &Agent,
) -> Result<(FlowTasks, flows::SharedTable)> {
    let flow_table = flows::FlowTable::shared(flows::DEFAULT_CAPACITY);
    let flow_store = store::StoreHandle::spawn(
        store::StoreOptions::from_config(&config.state),
        stats.store.clone(),
    );
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(flows::EVENT_CHANNEL_CAPACITY);
    let mut flow_pipeline = flows::Pipeline::new(
        flow_table.clone(),
        agent.hostnames.clone(),
        flows::AuditLog::from_config(&config.audit),
        Some(flow_store.clone()),
    );
    flow_pipeline.evicted = stats.flows_evicted.clone();
    let pipeline = tokio::spawn(flow_pipeline.run(events_rx));
    let ring = events::open(layout).context("open the deny event ring buffer")?;
    let (stop_events, stop_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(events::forward(
        ring,
        events_tx,
        stats.events_lost.clone(),
        stop_rx,
    ));
    let tasks = FlowTasks {
        stop_events,
        pipeline,
        store: flow_store,
    };
    Ok((tasks, flow_table))
}
