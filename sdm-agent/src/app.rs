//! The agent: attach, resolve, apply, keep current, serve metrics.
//!
//! Start-up order matters for safety: the programs go in first in audit
//! mode (or keep running as a previous agent left them), the policy is
//! applied, and only then is the configured mode written. A fresh host is
//! never in enforce mode with an empty allowlist.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use sdm_common::{LOOPBACK_ENFORCE, LOOPBACK_PASS, MODE_AUDIT, MODE_ENFORCE};
use tokio::io::unix::AsyncFd;

use crate::{
    cgroup, compile,
    config::{Config, LoopbackMode, Mode},
    dataplane::{self, AttachOutcome, Layout, Maps},
    entries, events, flows, http, metrics,
    policy::{Policy, Target},
    resolver::{DnsTiming, HostState, Resolver},
    status::StateFile,
    store,
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

/// The cgroup to attach to, checked; a bad path names the config's file,
/// line and key.
pub fn target_cgroup(config: &Config, path: Option<&Path>) -> Result<PathBuf> {
    cgroup::resolve(config.cgroup.as_deref()).map_err(|e| {
        let line = path
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| {
                t.lines()
                    .position(|l| l.trim_start().starts_with("cgroup") && l.contains('='))
                    .map(|i| format!("line {}: ", i + 1))
            })
            .unwrap_or_default();
        anyhow::anyhow!("config {}: {line}key `cgroup`: {e}", config_label(path))
    })
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

fn hostnames(policy: &Policy) -> Vec<String> {
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

/// Drains aya-log records from the kernel programs into tracing.
fn spawn_ebpf_logger(ebpf: &mut aya::Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            tokio::spawn(async move {
                // SAFETY: the logger owns the ring buffer's fd and moves into
                // the AsyncFd, which owns it for as long as it is registered.
                let registered = unsafe {
                    AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
                };
                let Ok(mut fd) = registered else {
                    tracing::warn!("cannot poll the eBPF log ring buffer");
                    return;
                };
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "eBPF logging unavailable"),
    }
}

struct Agent {
    layout: Layout,
    config_path: Option<PathBuf>,
    policy: Policy,
    maps: Arc<Mutex<Maps>>,
    resolver: Resolver,
    ids: std::collections::BTreeMap<String, u32>,
    /// Address -> hostnames, for naming the destinations of denied flows.
    hostnames: flows::HostnameIndex,
}

impl Agent {
    /// Builds the wanted map contents from the policy and the current
    /// answers and applies them (only the difference; atomic flip).
    fn sync(&mut self) -> Result<usize> {
        let resolver = &self.resolver;
        let want = entries::build(&self.policy, &self.ids, |h| resolver.addresses(h));
        let mut maps = self
            .maps
            .lock()
            .map_err(|_| anyhow::anyhow!("maps lock poisoned"))?;
        let writes = maps.apply(&want).context("apply the policy to the maps")?;
        drop(maps);
        let index = flows::index_from(
            self.resolver
                .hosts()
                .iter()
                .map(|(h, s)| (h.as_str(), s.addresses())),
        );
        if let Ok(mut w) = self.hostnames.write() {
            *w = index;
        }
        self.write_state()?;
        Ok(writes)
    }

    fn write_state(&self) -> Result<()> {
        StateFile {
            pid: std::process::id(),
            config: self.config_path.clone(),
            rules: self.policy.rules.clone(),
            dns: self.resolver.report(),
            updated: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
        .write(&self.layout)
        .with_context(|| format!("write {}", StateFile::path(&self.layout).display()))
    }
}

/// Seeds the resolver with what the previous agent had resolved, so a
/// restart with DNS down does not shrink the allowlist.
fn seed_from_previous(resolver: &mut Resolver, layout: &Layout, names: &[String]) {
    let Some(prev) = StateFile::read(layout) else {
        return;
    };
    let now = Instant::now();
    let timing = resolver.timing().clone();
    for h in prev.dns {
        if !names.contains(&h.hostname) || h.addresses.is_empty() {
            continue;
        }
        let mut st = HostState::new(now);
        st.on_answer(now, &h.addresses, Duration::ZERO, &timing);
        // Due at once: the seed only bridges until the first fresh answer.
        st.next_refresh = now;
        resolver.seed(&h.hostname, st);
    }
}

/// Tells systemd about the agent's state (`READY=1`, `STOPPING=1`) when it
/// runs as a `Type=notify` service: one datagram to $NOTIFY_SOCKET, the
/// protocol of sd_notify(3). Without NOTIFY_SOCKET it does nothing. A failure
/// is logged, not fatal: the policy is in force either way.
fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = sd_notify(&socket, state) {
        tracing::warn!(socket = ?socket, error = %e, state, "cannot notify systemd");
    }
}

/// Sends `state` to the notification socket `socket`: a file system path,
/// or, with a leading '@', a name in the abstract namespace.
fn sd_notify(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    };
    let addr = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Holds an exclusive lock on RUN_DIR/agent.lock while the agent runs, so a
/// second agent on the same pins fails at once instead of fighting the first.
struct InstanceLock(#[allow(dead_code)] std::fs::File);

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

pub async fn run(layout: Layout, config_path: Option<PathBuf>) -> Result<()> {
    let (config, policy, resolvers) = prepare(config_path.as_deref())?;
    let cgroup = target_cgroup(&config, config_path.as_deref())?;
    let _lock = lock_instance(&layout)?;
    for w in compile::lockout_warnings(&config, &policy) {
        tracing::warn!("{w}");
    }
    if cgroup == cgroup::cgroup2_mount()? && config.mode == Mode::Enforce {
        tracing::warn!(cgroup = %cgroup.display(), "enforcing on the root cgroup: every process of this host is filtered");
    }
    // Bind before touching the kernel: a busy port is an error that should
    // change nothing.
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("listen on {} ([http] listen)", config.http.listen))?;

    dataplane::ensure_bpffs().context("mount bpffs")?;
    let object = dataplane::EBPF_OBJECT;
    // With pinned links in place attach() adopts or replaces them, loading
    // the object only when it must.
    let (outcome, mut ebpf) =
        dataplane::attach(&layout, &cgroup, object, None).context("attach the programs")?;
    match outcome {
        AttachOutcome::Adopted => {
            tracing::info!(cgroup = %cgroup.display(), pins = %layout.pin_root.display(), "adopted the pinned programs and maps of a previous agent: no gap")
        }
        AttachOutcome::Attached { replaced } => {
            tracing::info!(cgroup = %cgroup.display(), pins = %layout.pin_root.display(), replaced, "attached the egress and ingress programs")
        }
    }
    if let Some(e) = ebpf.as_mut() {
        spawn_ebpf_logger(e);
    }

    let maps = Maps::open(&layout).context("open the pinned maps")?;
    let maps = Arc::new(Mutex::new(maps));
    let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    let ids = maps
        .lock()
        .map_err(|_| anyhow::anyhow!("maps lock poisoned"))?
        .assign_rule_ids(&names)
        .context("assign rule ids")?;
    let timing = DnsTiming {
        ttl_min: config.dns.ttl_min,
        ttl_max: config.dns.ttl_max,
        grace: config.dns.grace,
    };
    let mut resolver = Resolver::new(&resolvers, timing)?;
    let hosts = hostnames(&policy);
    resolver.set_names(hosts.iter().map(String::as_str), Instant::now());
    seed_from_previous(&mut resolver, &layout, &hosts);
    let hostnames: flows::HostnameIndex = Default::default();
    let mut agent = Agent {
        layout: layout.clone(),
        config_path: config_path.clone(),
        policy,
        maps: maps.clone(),
        resolver,
        ids,
        hostnames: hostnames.clone(),
    };

    tracing::info!(hostnames = hosts.len(), resolvers = ?resolvers, "resolving");
    agent.resolver.refresh_due().await;
    let writes = agent.sync()?;
    {
        let mut m = maps
            .lock()
            .map_err(|_| anyhow::anyhow!("maps lock poisoned"))?;
        m.set_loopback(match config.loopback {
            LoopbackMode::Enforce => LOOPBACK_ENFORCE,
            LoopbackMode::Pass => LOOPBACK_PASS,
        })?;
        m.set_mode(match config.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        })?;
    }
    tracing::info!(
        rules = agent.policy.rules.len(),
        writes,
        mode = ?config.mode,
        metrics = %config.http.listen,
        "policy applied; enforcement is live"
    );
    // Under systemd (Type=notify) this is what lets units ordered after
    // sdm-agent.service start: the programs are attached and the policy and
    // mode written, so they start under enforcement.
    notify_systemd("READY=1");

    // Denied flows: aggregated in memory, logged when new, stored in
    // <[state] dir>/flows.db (a broken store is reported, never fatal).
    let agent_stats = metrics::AgentStats::default();
    let flow_table = flows::FlowTable::shared(flows::DEFAULT_CAPACITY);
    let flow_store = store::StoreHandle::spawn(
        store::StoreOptions::from_config(&config.state),
        agent_stats.store.clone(),
    );
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(flows::EVENT_CHANNEL_CAPACITY);
    tokio::spawn(
        flows::Pipeline::new(
            flow_table.clone(),
            hostnames.clone(),
            flows::AuditLog::from_config(&config.audit),
            Some(flow_store.clone()),
        )
        .run(events_rx),
    );
    let ring = events::open(&layout).context("open the deny event ring buffer")?;
    tokio::spawn(events::forward(
        ring,
        events_tx,
        agent_stats.events_lost.clone(),
    ));

    let source = metrics::Source {
        layout: layout.clone(),
        maps: maps.clone(),
    };
    let registry = Arc::new(metrics::registry_with(source.clone(), agent_stats.clone()));
    let http_state = http::HttpState::new(
        registry,
        source,
        flow_table,
        Some(flow_store),
        config.http.token.clone(),
    );
    let mut server = tokio::spawn(http::serve(listener, http_state));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut retry_sync = false;
    loop {
        let retry_at = retry_sync.then(|| Instant::now() + config.dns.ttl_min);
        let wake = agent
            .resolver
            .next_due()
            .into_iter()
            .chain(retry_at)
            .min()
            .map(|t| t.max(Instant::now() + Duration::from_millis(200)))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {
                // A failed update (a map full, say) keeps the last applied
                // policy live: the flip happens only after a complete write.
                // It is logged and retried at the next refresh; the agent
                // stays up.
                let changed = agent.resolver.refresh_due().await || retry_sync;
                let result = if changed { agent.sync().map(Some) } else { agent.write_state().map(|()| None) };
                retry_sync = false;
                match result {
                    Ok(Some(writes)) => tracing::info!(writes, "allowlist updated"),
                    Ok(None) => {}
                    Err(e) => {
                        retry_sync = changed;
                        tracing::error!(error = %format!("{e:#}"), "updating the allowlist failed; the previous policy stays in force");
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            r = &mut server => {
                bail!("the metrics server stopped: {r:?}");
            }
        }
    }
    notify_systemd("STOPPING=1");
    tracing::info!("stopping; the programs stay attached and keep enforcing from the pinned maps (`sdm-agent detach` removes them)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::{linux::net::SocketAddrExt as _, unix::net::UnixDatagram};

    use super::*;

    #[test]
    fn sd_notify_sends_one_datagram_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        sd_notify(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn sd_notify_reaches_an_abstract_socket() {
        let name = format!("sdm-agent-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        sd_notify(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn sd_notify_fails_without_a_listener() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nobody");
        assert!(sd_notify(missing.as_os_str(), "READY=1").is_err());
    }
}
