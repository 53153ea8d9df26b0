//! The agent: attach, resolve, apply, keep current, serve metrics.
//!
//! Start-up order matters for safety: the programs go in first in audit
//! mode (or keep running as a previous agent left them), the policy is
//! applied, and only then is the configured mode written. A fresh host is
//! never in enforce mode with an empty allowlist.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use sdm_common::{LOOPBACK_ENFORCE, LOOPBACK_PASS};
use tokio::io::unix::AsyncFd;

use crate::{
    api::http,
    api::metrics,
    api::status::StateFile,
    dns::resolver::{DnsTiming, HostState, Resolver},
    flows,
    flows::events,
    flows::store,
    kernel::backstop,
    kernel::cgroup,
    kernel::dataplane::{self, AttachOutcome, Layout, Maps},
    kernel::entries,
    policy::compile,
    policy::config::{Config, FailMode, LoopbackMode, Mode},
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
    /// Why the last attempt to apply the policy failed, while the previous
    /// policy stays in force; cleared by the next success.
    policy_error: Option<String>,
    /// Failed attempts (`sdm_policy_apply_errors_total`).
    apply_errors: Arc<AtomicU64>,
    /// The resolvers and names the answers in the state file belong to.
    dns_fingerprint: String,
    /// `sdm_flow_store_evictions_total`, recorded for `status`.
    store_evictions: Arc<AtomicU64>,
}

impl Agent {
    /// Builds the wanted map contents from the policy and the current
    /// answers and applies them (only the difference; atomic flip). A
    /// failure leaves the live policy as it was; it is counted and recorded
    /// in the state file for `status`.
    fn sync(&mut self) -> Result<usize> {
        let resolver = &self.resolver;
        let want = entries::build(&self.policy, &self.ids, |h| resolver.addresses(h));
        let mut maps = self
            .maps
            .lock()
            .map_err(|_| anyhow::anyhow!("maps lock poisoned"))?;
        let applied = maps.apply(&want);
        drop(maps);
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
            policy_error: self.policy_error.clone(),
            updated: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            dns_fingerprint: Some(self.dns_fingerprint.clone()),
            flow_store_evictions: self.store_evictions.load(Ordering::Relaxed),
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
fn seed_from_previous(
    resolver: &mut Resolver,
    layout: &Layout,
    names: &[String],
    fingerprint: &str,
) {
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
struct InstanceLock(#[allow(dead_code, reason = "held for its lock, never read")] std::fs::File);

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

/// Waits until the target cgroup exists (a unit that has not started yet,
/// say), logging that it waits; `None` if the agent was asked to stop
/// meanwhile.
async fn wait_for_target(
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

/// How often a missing target cgroup is looked for at start-up.
const TARGET_POLL: Duration = Duration::from_millis(100);

/// How often the attached cgroup is checked for re-creation (one stat):
/// a restarted service's new cgroup runs unfiltered until the next check,
/// so this bounds that gap (the attach itself takes about a millisecond).
const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// The attached cgroup, followed across re-creation: a restarted service
/// gets a new cgroup at the same path (a new id), which has none of the
/// programs; they are attached to it as soon as it is seen.
struct Followed {
    target: Option<cgroup::CgroupTarget>,
    path: PathBuf,
    id: u64,
    /// Since when the cgroup has been gone, if it is.
    gone_since: Option<Instant>,
    last_search: Instant,
}

impl Followed {
    /// Checks the cgroup; returns a path to attach to when it was
    /// re-created (or moved, for a unit put in another slice).
    fn check(&mut self) -> Option<PathBuf> {
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
fn attached_id(layout: &Layout) -> u64 {
    dataplane::AttachRecord::read(layout).map_or(0, |r| r.cgroup_id)
}

/// Writes the configured loopback handling and mode into the kernel's
/// config: only once the configured policy is applied.
fn set_mode(maps: &Mutex<Maps>, config: &Config) -> Result<()> {
    let mut m = maps
        .lock()
        .map_err(|_| anyhow::anyhow!("maps lock poisoned"))?;
    m.set_loopback(match config.loopback {
        LoopbackMode::Enforce => LOOPBACK_ENFORCE,
        LoopbackMode::Pass => LOOPBACK_PASS,
    })?;
    m.set_mode(match config.mode {
        Mode::Enforce => sdm_common::KernelMode::Enforce,
        Mode::Audit => sdm_common::KernelMode::Audit,
    })?;
    Ok(())
}

/// The DNS learning maps: the names it may learn addresses for, the
/// resolvers it trusts, and the floor of a learned address's life.
fn write_dns_learning(
    m: &mut Maps,
    policy: &crate::policy::Policy,
    resolvers: &[std::net::IpAddr],
    config: &Config,
) -> Result<usize> {
    let names = entries::dns_names_and_search(policy, &config.dns.search);
    let dns_writes = m
        .apply_dns(&names, resolvers)
        .context("write the DNS learning maps")?;
    m.set_dns_queries(config.dns.queries == crate::policy::config::DnsQueries::Policy);
    // Whole seconds, rounded up and at least one: a 0-TTL answer must
    // still let the connect right after it through.
    let floor = config.dns.ttl_min.as_secs() + u64::from(config.dns.ttl_min.subsec_nanos() > 0);
    m.set_learn_ttl_min(u32::try_from(floor.max(1)).unwrap_or(u32::MAX))?;
    m.set_loopback_dns(resolvers.iter().any(|r| r.is_loopback()))?;
    Ok(dns_writes)
}

/// Fail closed: on a fresh start in enforce mode, the programs are loaded
/// and their maps written with the policy's fixed part (every rule, with
/// no address for a hostname yet: CIDRs, the resolvers, ingress rules),
/// the DNS learning maps and the mode before anything is attached, so the
/// cgroup never runs unjudged while the agent resolves; the first
/// resolution then adds the hostnames' addresses.
fn preload_fixed_policy(
    layout: &Layout,
    object: &[u8],
    config: &Config,
    policy: &crate::policy::Policy,
    resolvers: &[std::net::IpAddr],
) -> Result<aya::Ebpf> {
    let ebpf = dataplane::load(layout, object).context("load the programs")?;
    let mut maps = Maps::open(layout).context("open the pinned maps")?;
    let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    let ids = maps.assign_rule_ids(&names).context("assign rule ids")?;
    let fixed = entries::build(policy, &ids, |_| &[]);
    let writes = maps
        .apply(&fixed)
        .context("apply the fixed part of the policy")?;
    write_dns_learning(&mut maps, policy, resolvers, config)?;
    set_mode(&Mutex::new(maps), config)?;
    tracing::info!(
        writes,
        "fail closed: the policy's fixed part is live before the programs attach; hostname rules allow nothing until their names resolve"
    );
    Ok(ebpf)
}

/// Puts the backstop in the state the config asks for (see
/// [`backstop::sync`]), loading the object if the programs were adopted
/// without it, and records its interfaces.
fn sync_backstop(
    layout: &Layout,
    cgroup: &Path,
    object: &[u8],
    ebpf: &mut Option<aya::Ebpf>,
    ifaces: &[backstop::Interface],
) -> Result<()> {
    let previous = backstop::recorded(layout);
    if ifaces.is_empty() && previous.is_empty() && !layout.link_pin(backstop::SOCKOPT_PIN).exists()
    {
        return Ok(());
    }
    if !ifaces.is_empty() && ebpf.is_none() {
        *ebpf =
            Some(dataplane::load(layout, object).context("load the programs for the backstop")?);
    }
    backstop::sync(layout, cgroup, ebpf.as_mut(), ifaces, &previous)
        .context("set up the backstop")?;
    let names = backstop::names(ifaces);
    dataplane::AttachRecord::set_backstop(layout, names.clone())
        .context("record the backstop's interfaces")?;
    if !names.is_empty() {
        tracing::info!(interfaces = ?names, "backstop: frames of the cgroup's packet sockets are judged at the egress of these interfaces");
    } else {
        tracing::info!(interfaces = ?previous, "backstop off: removed from these interfaces");
    }
    Ok(())
}

/// `object`: an eBPF object to load instead of the embedded one (`run
/// --object`, for the upgrade tests).
pub async fn run(
    layout: Layout,
    config_path: Option<PathBuf>,
    cgroup_override: Option<cgroup::CgroupTarget>,
    object: Option<Vec<u8>>,
) -> Result<()> {
    let (mut config, policy, resolvers) = prepare(config_path.as_deref())?;
    if let Some(t) = cgroup_override {
        config.cgroup = Some(t);
    }
    let found = target_cgroup(&config, config_path.as_deref())?;
    // Before touching the kernel: an interface the host lacks is a config
    // error, like any other.
    let backstop_ifaces = backstop::resolve(&config, config_path.as_deref())?;
    let _lock = lock_instance(&layout)?;
    for w in compile::lockout_warnings(&config, &policy) {
        tracing::warn!("{w}");
    }
    // Bind before touching the kernel: a busy port is an error that should
    // change nothing.
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("listen on {} ([http] listen)", config.http.listen))?;
    let cgroup = match found {
        Ok(p) => p,
        Err(e) => match wait_for_target(&config, config_path.as_deref(), e).await? {
            Some(p) => p,
            None => {
                tracing::info!("stopped while waiting for the target cgroup; nothing was attached");
                return Ok(());
            }
        },
    };
    if let Some(cgroup::CgroupTarget::Unit(u)) = &config.cgroup {
        if !u.ends_with(".slice") {
            tracing::warn!(unit = %u, "a service's cgroup is created anew on every restart, and the agent can attach to the new one only after it exists (within about 50 ms); for restarts without that gap, run the service in a slice of its own (Slice=NAME.slice) and target unit:NAME.slice: new cgroups inherit their parent's programs when they are created");
        }
    }
    if cgroup == cgroup::cgroup2_mount()? && config.mode == Mode::Enforce {
        tracing::warn!(cgroup = %cgroup.display(), "enforcing on the root cgroup: every process of this host is filtered");
    }

    if let Some(prev) = dataplane::AttachRecord::read(&layout) {
        if prev.cgroup != cgroup {
            tracing::warn!(target = %config.cgroup.as_ref().map(|t| t.to_string()).unwrap_or_default(), from = %prev.cgroup.display(), to = %cgroup.display(), "the target resolves to another cgroup than the previous agent's");
        }
    }
    dataplane::ensure_bpffs().context("mount bpffs")?;
    let object = object.as_deref().unwrap_or(dataplane::EBPF_OBJECT);
    // Nothing attached yet, enforce mode and `fail = "closed"`: the fixed
    // part of the policy is written before the programs attach.
    let mut preloaded =
        if !layout.is_attached() && config.mode == Mode::Enforce && config.fail == FailMode::Closed
        {
            Some(preload_fixed_policy(
                &layout, object, &config, &policy, &resolvers,
            )?)
        } else {
            None
        };
    // With pinned links in place attach() adopts or replaces them, loading
    // the object only when it must.
    let (outcome, loaded) = dataplane::attach(&layout, &cgroup, object, preloaded.as_mut())
        .context("attach the programs")?;
    let mut ebpf = loaded.or(preloaded);
    // Which object the links run, as attach.json records it.
    let object_hash = format!("{:016x}", dataplane::object_hash(object));
    match outcome {
        AttachOutcome::Adopted => {
            tracing::info!(cgroup = %cgroup.display(), pins = %layout.pin_root.display(), object = %object_hash, "adopted the pinned programs and maps of a previous agent: no gap")
        }
        AttachOutcome::Attached { replaced } => {
            tracing::info!(cgroup = %cgroup.display(), pins = %layout.pin_root.display(), object = %object_hash, replaced, "attached the egress and ingress programs")
        }
    }
    // Adopted links leave the object unloaded, and a re-created target would
    // then wait for the verifier (about 0.4 s) before its programs attach.
    // Load it now, unless the target is the root cgroup, which is never
    // re-created; a failure leaves that to the re-attach, as before.
    if ebpf.is_none() && cgroup != cgroup::cgroup2_mount()? {
        match dataplane::load(&layout, object) {
            Ok(e) => ebpf = Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "loading the programs for a re-created target cgroup failed; they are loaded when it is re-created")
            }
        }
    }
    if let Some(e) = ebpf.as_mut() {
        spawn_ebpf_logger(e);
    }
    sync_backstop(&layout, &cgroup, object, &mut ebpf, &backstop_ifaces)?;
    let mut followed = Followed {
        // A pid target is followed by the path it resolved to: the process
        // may be gone after a restart, its service's cgroup comes back.
        target: config.cgroup.clone(),
        id: attached_id(&layout),
        path: cgroup.clone(),
        gone_since: None,
        last_search: Instant::now(),
    };
    // Expired learned addresses are removed after the grace period (the
    // kernel ignores them for new flows as soon as they expire).
    let mut expire_tick = tokio::time::interval(Duration::from_secs(30));
    expire_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut follow_tick = tokio::time::interval(FOLLOW_POLL);
    follow_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

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
    let dns_fingerprint = crate::api::status::dns_fingerprint(&resolvers, &hosts);
    seed_from_previous(&mut resolver, &layout, &hosts, &dns_fingerprint);
    let hostnames: flows::HostnameIndex = Default::default();
    let agent_stats = metrics::AgentStats::default();
    let mut agent = Agent {
        layout: layout.clone(),
        config_path: config_path.clone(),
        policy,
        maps: maps.clone(),
        resolver,
        ids,
        hostnames: hostnames.clone(),
        policy_error: None,
        apply_errors: agent_stats.policy_apply_errors.clone(),
        dns_fingerprint,
        store_evictions: agent_stats.store.evictions.clone(),
    };

    tracing::info!(hostnames = hosts.len(), resolvers = ?resolvers, "resolving");
    agent.resolver.refresh_due().await;
    // When the policy does not apply (a DNS answer too big for the maps,
    // say) and a previous agent's policy is live, that policy and its mode
    // stay in force and the agent runs on, retrying like any failed update;
    // exiting would leave nothing to retry, refresh or report. On a fresh
    // host there is nothing to keep: the agent stops, in audit mode.
    let mut retry_at: Option<Instant> = None;
    let mut mode_pending = false;
    let writes = match agent.sync() {
        Ok(w) => Some(w),
        Err(e) => {
            let generation = maps
                .lock()
                .map_err(|_| anyhow::anyhow!("maps lock poisoned"))?
                .config()?
                .generation;
            // Only a refused policy is survivable here; an error of another
            // kind (the state file) stays fatal, as before.
            if generation == 0 || agent.policy_error.is_none() {
                return Err(e);
            }
            tracing::error!(error = %format!("{e:#}"), generation, "applying the policy failed; the previous policy and mode stay in force until it applies; retrying");
            retry_at = Some(Instant::now() + config.dns.ttl_min);
            mode_pending = true;
            None
        }
    };
    if let Some(writes) = writes {
        set_mode(&maps, &config)?;
        tracing::info!(
            rules = agent.policy.rules.len(),
            writes,
            mode = ?config.mode,
            metrics = %config.http.listen,
            "policy applied; enforcement is live"
        );
    }
    {
        let mut m = maps
            .lock()
            .map_err(|_| anyhow::anyhow!("maps lock poisoned"))?;
        let dns_writes = write_dns_learning(&mut m, &agent.policy, &resolvers, &config)?;
        tracing::debug!(dns_writes, "DNS learning maps written");
    }
    // Under systemd (Type=notify) this is what lets units ordered after
    // sdm-agent.service start: the programs are attached and a policy and
    // mode are live (this one, or a previous agent's while it retries), so
    // they start under enforcement.
    notify_systemd("READY=1");

    // Denied flows: aggregated in memory, logged when new, stored in
    // <[state] dir>/flows.db (a broken store is reported, never fatal).
    let flow_table = flows::FlowTable::shared(flows::DEFAULT_CAPACITY);
    let flow_store = store::StoreHandle::spawn(
        store::StoreOptions::from_config(&config.state),
        agent_stats.store.clone(),
    );
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(flows::EVENT_CHANNEL_CAPACITY);
    let mut flow_pipeline = flows::Pipeline::new(
        flow_table.clone(),
        hostnames.clone(),
        flows::AuditLog::from_config(&config.audit),
        Some(flow_store.clone()),
    );
    flow_pipeline.evicted = agent_stats.flows_evicted.clone();
    let pipeline = tokio::spawn(flow_pipeline.run(events_rx));
    let ring = events::open(&layout).context("open the deny event ring buffer")?;
    let (stop_events, stop_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(events::forward(
        ring,
        events_tx,
        agent_stats.events_lost.clone(),
        stop_rx,
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
        Some(flow_store.clone()),
        config.http.token.clone(),
        agent_stats.http.clone(),
    );
    let mut server = tokio::spawn(http::serve(listener, http_state));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Absolute times, so the other branches of the loop (the target check
    // ticks every FOLLOW_POLL) do not push them back.
    let mut last_refresh = Instant::now();
    loop {
        let wake = agent
            .resolver
            .next_due()
            .into_iter()
            .chain(retry_at)
            .min()
            .map(|t| t.max(last_refresh + Duration::from_millis(200)))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {
                // A failed update (a map full, say) keeps the last applied
                // policy live: the flip happens only after a complete write.
                // It is logged and retried at the next refresh; the agent
                // stays up.
                let retry_sync = retry_at.is_some_and(|t| t <= Instant::now());
                let changed = agent.resolver.refresh_due().await || retry_sync;
                last_refresh = Instant::now();
                let result = if changed { agent.sync().map(Some) } else { agent.write_state().map(|()| None) };
                if retry_sync {
                    retry_at = None;
                }
                match result {
                    Ok(Some(writes)) => {
                        tracing::info!(writes, "allowlist updated");
                        if mode_pending {
                            match set_mode(&maps, &config) {
                                Ok(()) => {
                                    mode_pending = false;
                                    tracing::info!(mode = ?config.mode, "policy applied; the configured mode is live");
                                }
                                Err(e) => tracing::error!(error = %format!("{e:#}"), "setting the mode failed; retrying"),
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if changed {
                            retry_at = Some(Instant::now() + config.dns.ttl_min);
                        }
                        tracing::error!(error = %format!("{e:#}"), "updating the allowlist failed; the previous policy stays in force");
                    }
                }
            }
            _ = expire_tick.tick() => {
                let grace = u64::try_from(config.dns.grace.as_nanos()).unwrap_or(u64::MAX);
                let removed = maps
                    .lock()
                    .map_err(|_| anyhow::anyhow!("maps lock poisoned"))
                    .and_then(|mut m| Ok(m.expire_learned(crate::api::status::monotonic_ns(), grace)?));
                match removed {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "expired learned addresses removed"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "removing expired learned addresses failed"),
                }
            }
            _ = follow_tick.tick() => {
                if let Some(path) = followed.check() {
                    let was_gone = followed.gone_since.map(|t| t.elapsed());
                    if path != followed.path {
                        // Never a silent move: the policed workload is now
                        // another cgroup.
                        tracing::warn!(target = %followed.target.as_ref().map(|t| t.to_string()).unwrap_or_default(), from = %followed.path.display(), to = %path.display(), "the target cgroup moved to another path; following it");
                    }
                    match dataplane::attach(&layout, &path, object, ebpf.as_mut()) {
                        Ok((_, loaded)) => {
                            if loaded.is_some() {
                                ebpf = loaded;
                                if let Some(e) = ebpf.as_mut() {
                                    spawn_ebpf_logger(e);
                                }
                            }
                            // The id attach() recorded, of the cgroup it
                            // attached to; not the path's id now, which may
                            // be a newer cgroup already (a service
                            // restarting again), then never attached.
                            followed.id = attached_id(&layout);
                            // The setsockopt link and the backstop's cgroup
                            // follow the new cgroup too.
                            if let Err(e) = sync_backstop(&layout, &path, object, &mut ebpf, &backstop_ifaces) {
                                tracing::error!(cgroup = %path.display(), error = %format!("{e:#}"), "moving the backstop to the re-created target cgroup failed");
                            }
                            followed.path = path;
                            followed.gone_since = None;
                            tracing::info!(cgroup = %followed.path.display(), gone_ms = was_gone.map(|d| d.as_millis() as u64), "the target cgroup was re-created; attached the programs to the new one");
                            if let Err(e) = agent.write_state() {
                                tracing::warn!(error = %format!("{e:#}"), "writing the state file failed");
                            }
                        }
                        Err(e) => tracing::error!(cgroup = %path.display(), error = %e, "attaching to the re-created target cgroup failed; retrying"),
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
    // Hand the last events to the store before exiting: the forwarder
    // drains the ring and closes the channel, the pipeline flushes, the
    // writer commits. Bounded, so a stuck disk cannot hang a shutdown.
    let _ = stop_events.send(());
    let _ = tokio::time::timeout(Duration::from_secs(3), pipeline).await;
    let synced = tokio::task::spawn_blocking(move || flow_store.sync(Duration::from_secs(3)))
        .await
        .unwrap_or(false);
    if !synced {
        tracing::warn!("the flow store did not confirm the last write before exit");
    }
    tracing::info!("stopping; the programs stay attached and keep enforcing from the pinned maps (`sdm-agent detach` removes them)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::{linux::net::SocketAddrExt as _, unix::net::UnixDatagram};

    use super::*;

    fn timing() -> DnsTiming {
        DnsTiming {
            ttl_min: Duration::from_secs(30),
            ttl_max: Duration::from_secs(3600),
            grace: Duration::from_secs(600),
        }
    }

    /// Issue 16: a state file left by a run with other resolvers (or
    /// names) seeded the next run's "last good" answers. Only answers
    /// recorded under the same fingerprint are adopted; `detach` removes
    /// the file altogether.
    #[test]
    fn previous_dns_answers_are_adopted_only_for_the_same_resolvers_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            pin_root: dir.path().join("pins"),
            run_dir: dir.path().join("run"),
        };
        let old_resolvers: Vec<IpAddr> = vec!["192.0.2.53".parse().unwrap()];
        let names = vec!["db.example".to_string()];
        let recorded = crate::api::status::dns_fingerprint(&old_resolvers, &names);
        let answer: IpAddr = "203.0.113.7".parse().unwrap();
        StateFile {
            dns: vec![crate::dns::resolver::HostReport {
                hostname: "db.example".into(),
                addresses: vec![answer],
                failures: 0,
                last_error: None,
                next_refresh_secs: 10,
                resolved: true,
            }],
            dns_fingerprint: Some(recorded.clone()),
            ..Default::default()
        }
        .write(&layout)
        .unwrap();
        let seeded = |resolvers: &[IpAddr], names: &[String]| {
            let mut r = Resolver::new(resolvers, timing()).unwrap();
            r.set_names(names.iter().map(String::as_str), Instant::now());
            let fp = crate::api::status::dns_fingerprint(resolvers, names);
            seed_from_previous(&mut r, &layout, names, &fp);
            r.addresses("db.example").to_vec()
        };
        // The same resolvers (in another order, duplicated) and names.
        let same: Vec<IpAddr> = vec![old_resolvers[0], old_resolvers[0]];
        assert_eq!(seeded(&same, &names), [answer]);
        // Another resolver: not adopted.
        let other: Vec<IpAddr> = vec!["198.51.100.53".parse().unwrap()];
        assert_eq!(seeded(&other, &names), Vec::<IpAddr>::new());
        // Other names (another config): not adopted either.
        let more = vec!["db.example".to_string(), "api.example".to_string()];
        assert_eq!(seeded(&old_resolvers, &more), Vec::<IpAddr>::new());
        // A file without a fingerprint (an older agent's): not adopted.
        let mut legacy = StateFile::read(&layout).unwrap();
        legacy.dns_fingerprint = None;
        legacy.write(&layout).unwrap();
        assert_eq!(seeded(&old_resolvers, &names), Vec::<IpAddr>::new());

        // detach clears the run state with the pins.
        let removed = dataplane::detach(&layout).unwrap();
        assert_eq!(removed, [StateFile::path(&layout)]);
        assert!(StateFile::read(&layout).is_none());
        assert!(dataplane::detach(&layout).unwrap().is_empty());
    }

    #[test]
    fn dns_fingerprints_ignore_order_and_tell_sets_apart() {
        use crate::api::status::dns_fingerprint as fp;
        let a: IpAddr = "10.0.0.53".parse().unwrap();
        let b: IpAddr = "::ffff:10.0.0.54".parse().unwrap();
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(fp(&[a, b], &n(&["x", "y"])), fp(&[b, a], &n(&["y", "x"])));
        // A mapped address is its IPv4 address.
        assert_eq!(
            fp(&[a, "10.0.0.54".parse().unwrap()], &n(&["x"])),
            fp(&[a, b], &n(&["x"]))
        );
        assert_ne!(fp(&[a], &n(&["x"])), fp(&[b], &n(&["x"])));
        assert_ne!(fp(&[a], &n(&["x"])), fp(&[a], &n(&["x", "y"])));
    }

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
