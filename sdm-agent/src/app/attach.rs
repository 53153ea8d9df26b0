//! The kernel side of start-up: the programs loaded (or adopted) and
//! attached to the target cgroup, the backstop set up, and the writes that
//! must wait for the policy (the mode) or come with it (the DNS learning
//! maps). Also the re-attach to a re-created target.

use std::{borrow::Cow, path::Path, sync::Mutex};

use anyhow::{Context as _, Result};
use sdm_common::{LOOPBACK_ENFORCE, LOOPBACK_PASS};
use tokio::io::unix::AsyncFd;

use crate::{
    kernel::cgroup,
    kernel::dataplane::{self, AttachOutcome, DataplaneError, Layout, Maps},
    kernel::entries,
    kernel::{backstop, xdp},
    policy::config::{Config, DnsQueries, FailMode, LoopbackMode, Mode},
    policy::Policy,
};

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

/// Writes the configured loopback handling and mode into the kernel's
/// config: only once the configured policy is applied.
pub(super) fn set_mode(maps: &Mutex<Maps>, config: &Config) -> Result<()> {
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
pub(super) fn write_dns_learning(
    m: &mut Maps,
    policy: &Policy,
    resolvers: &[std::net::IpAddr],
    config: &Config,
) -> Result<usize> {
    let names = entries::dns_names_and_search(policy, &config.dns.search);
    let dns_writes = m
        .apply_dns(&names, resolvers)
        .context("write the DNS learning maps")?;
    m.set_dns_queries(config.dns.queries == DnsQueries::Policy);
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
    policy: &Policy,
    resolvers: &[std::net::IpAddr],
) -> Result<aya::Ebpf> {
    let ebpf = dataplane::load(layout, object, policy.rules.len()).context("load the programs")?;
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

/// The programs as the agent holds them: the object they come from, the
/// loaded copy (if any; adopted links need none), and the backstop's
/// interfaces.
pub(super) struct Programs {
    pub(super) layout: Layout,
    /// The embedded object, or the one given to `run --object`.
    object: Cow<'static, [u8]>,
    ebpf: Option<aya::Ebpf>,
    backstop_ifaces: Vec<backstop::Interface>,
    /// The policy's rule count, which sizes the rule maps of a load.
    rules: usize,
    /// `[xdp] interfaces`.
    xdp_ifaces: Vec<String>,
}

impl Programs {
    /// Loads (or adopts) the programs and attaches them to `cgroup`; with
    /// enforce mode and `fail = "closed"` on a host with nothing attached,
    /// the policy's fixed part and the mode are written first.
    pub(super) fn attach(
        layout: Layout,
        cgroup: &Path,
        object: Option<Vec<u8>>,
        config: &Config,
        policy: &Policy,
        resolvers: &[std::net::IpAddr],
        backstop_ifaces: Vec<backstop::Interface>,
    ) -> Result<Self> {
        dataplane::ensure_bpffs().context("mount bpffs")?;
        let object: Cow<'static, [u8]> =
            object.map_or(Cow::Borrowed(dataplane::EBPF_OBJECT), Cow::Owned);
        // Nothing attached yet, enforce mode and `fail = "closed"`: the fixed
        // part of the policy is written before the programs attach.
        let mut preloaded = if !layout.is_attached()
            && config.mode == Mode::Enforce
            && config.fail == FailMode::Closed
        {
            Some(preload_fixed_policy(
                &layout, &object, config, policy, resolvers,
            )?)
        } else {
            None
        };
        // With pinned links in place attach() adopts or replaces them, loading
        // the object only when it must.
        let rules = policy.rules.len();
        let (outcome, loaded) =
            dataplane::attach(&layout, cgroup, &object, preloaded.as_mut(), rules)
                .context("attach the programs")?;
        let mut programs = Programs {
            layout,
            object,
            ebpf: loaded.or(preloaded),
            backstop_ifaces,
            rules,
            xdp_ifaces: config
                .xdp
                .interfaces
                .iter()
                .map(|i| i.name.clone())
                .collect(),
        };
        programs.log_outcome(cgroup, &outcome);
        programs.load_for_recreation(cgroup)?;
        if let Some(e) = programs.ebpf.as_mut() {
            spawn_ebpf_logger(e);
        }
        programs.sync_backstop(cgroup)?;
        programs.sync_xdp()?;
        Ok(programs)
    }

    fn log_outcome(&self, cgroup: &Path, outcome: &AttachOutcome) {
        let layout = &self.layout;
        // Which object the links run, as attach.json records it.
        let object_hash = format!("{:016x}", dataplane::object_hash(&self.object));
        match outcome {
            AttachOutcome::Adopted => {
                tracing::info!(cgroup = %cgroup.display(), pins = %layout.pin_root.display(), object = %object_hash, "adopted the pinned programs and maps of a previous agent: no gap")
            }
            AttachOutcome::Attached { replaced } => {
                tracing::info!(cgroup = %cgroup.display(), pins = %layout.pin_root.display(), object = %object_hash, replaced, "attached the egress and ingress programs")
            }
        }
    }

    /// Adopted links leave the object unloaded, and a re-created target would
    /// then wait for the verifier (about 0.4 s) before its programs attach.
    /// Load it now, unless the target is the root cgroup, which is never
    /// re-created; a failure leaves that to the re-attach, as before.
    fn load_for_recreation(&mut self, cgroup: &Path) -> Result<()> {
        if self.ebpf.is_none() && cgroup != cgroup::cgroup2_mount()? {
            match dataplane::load(&self.layout, &self.object, self.rules) {
                Ok(e) => self.ebpf = Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "loading the programs for a re-created target cgroup failed; they are loaded when it is re-created")
                }
            }
        }
        Ok(())
    }

    /// Attaches the programs to `cgroup` (a re-created target), loading the
    /// object if it must.
    pub(super) fn reattach(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
        let (_, loaded) = dataplane::attach(
            &self.layout,
            cgroup,
            &self.object,
            self.ebpf.as_mut(),
            self.rules,
        )?;
        if loaded.is_some() {
            self.ebpf = loaded;
            if let Some(e) = self.ebpf.as_mut() {
                spawn_ebpf_logger(e);
            }
        }
        Ok(())
    }

    /// Puts the backstop in the state the config asks for (see
    /// [`backstop::sync`]), loading the object if the programs were adopted
    /// without it, and records its interfaces.
    pub(super) fn sync_backstop(&mut self, cgroup: &Path) -> Result<()> {
        let (layout, ifaces) = (&self.layout, &self.backstop_ifaces);
        let previous = backstop::recorded(layout);
        if ifaces.is_empty()
            && previous.is_empty()
            && !layout.link_pin(backstop::SOCKOPT_PIN).exists()
        {
            return Ok(());
        }
        if !ifaces.is_empty() && self.ebpf.is_none() {
            self.ebpf = Some(
                dataplane::load(layout, &self.object, self.rules)
                    .context("load the programs for the backstop")?,
            );
        }
        backstop::sync(layout, cgroup, self.ebpf.as_mut(), ifaces, &previous)
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

    /// Puts the XDP shield on the `[xdp] interfaces` (see [`xdp::sync`]),
    /// loading the object if the programs were adopted without it; removes
    /// it from interfaces no longer listed.
    pub(super) fn sync_xdp(&mut self) -> Result<()> {
        let ifaces = &self.xdp_ifaces;
        if ifaces.is_empty() && xdp::attached(&self.layout).is_empty() {
            return Ok(());
        }
        if !ifaces.is_empty() && self.ebpf.is_none() {
            self.ebpf = Some(
                dataplane::load(&self.layout, &self.object, self.rules)
                    .context("load the programs for the XDP shield")?,
            );
        }
        xdp::sync(&self.layout, self.ebpf.as_mut(), ifaces).context("set up the XDP shield")?;
        Ok(())
    }
}
