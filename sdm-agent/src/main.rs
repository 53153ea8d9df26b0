//! The `sdm-agent` command line.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sdm_agent::{
    app,
    cgroup::CgroupTarget,
    compile,
    config::Config,
    dataplane::{self, Layout, Maps},
    flows::{self, Flow, FlowKey, FlowQuery},
    kernel_check, status,
    store::{self, Store, StoreError},
};
use sdm_common::{MODE_AUDIT, MODE_ENFORCE};

#[derive(Parser)]
#[command(
    name = "sdm-agent",
    version,
    about = "eBPF egress enforcer for hosts that run StrongDM components"
)]
struct Cli {
    /// Where maps and links are pinned (bpffs).
    #[arg(long, global = true, env = "SDM_PIN_ROOT", default_value = dataplane::DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// Where the agent records what it attached and resolved (tmpfs).
    #[arg(long, global = true, env = "SDM_RUN_DIR", default_value = dataplane::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Where systemd's cgroup tree starts, for `unit:` targets (default:
    /// the root of the cgroup2 mount; e.g. the host's tree mounted into a
    /// container).
    #[arg(long, global = true, env = "SDM_UNIT_ROOT")]
    unit_root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach, apply the policy and keep it current (runs until stopped;
    /// enforcement stays in place when the agent stops).
    Run {
        /// Config file; without it the built-in default (gateway, us, audit).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Whose traffic to police, overriding the config's `cgroup`: a
        /// cgroup2 directory, `unit:NAME` (e.g. unit:sdm-proxy.service) or
        /// `pid:N`.
        #[arg(long, value_parser = parse_target)]
        cgroup: Option<CgroupTarget>,
        /// Load this eBPF object instead of the embedded one (for the
        /// upgrade tests: a second build of the programs, so that a
        /// restart replaces the pinned ones as an upgrade does).
        #[arg(long, hide = true)]
        object: Option<PathBuf>,
    },
    /// Validate a config and warn about lock-outs; changes nothing.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        /// As for `run`.
        #[arg(long, value_parser = parse_target)]
        cgroup: Option<CgroupTarget>,
        /// Also load every eBPF program into the running kernel, attaching
        /// nothing, and report the verifier's verdict per program; exits
        /// non-zero if the kernel refuses one (needs root).
        #[arg(long)]
        kernel: bool,
        /// With --kernel: the report as JSON on standard output.
        #[arg(long, requires = "kernel")]
        json: bool,
        /// With --kernel: verify this eBPF object instead of the embedded
        /// one (for tests: a fixture the verifier refuses).
        #[arg(long, requires = "kernel", hide = true)]
        object: Option<PathBuf>,
    },
    /// Print the effective rules of a config (no root needed).
    Policy {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Mode, cgroup, rules with addresses and counters, DNS state; read from
    /// the pinned maps, so it works while the agent is down.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Switch between audit and enforce at once, without reloading.
    Mode {
        #[arg(value_enum)]
        mode: ModeArg,
    },
    /// Remove everything the agent attached and pinned.
    Detach,
    /// Exit 0 only if a cgroup is policed now: the pinned programs are
    /// attached to it or an ancestor and a policy is live (for an
    /// ExecStartPre= of the policed service; see the sdm-proxy drop-in).
    Policed {
        /// The cgroup to check (as for `run`); default: the caller's own.
        #[arg(long, value_parser = parse_target)]
        cgroup: Option<CgroupTarget>,
        /// Also require enforce mode (audit mode only counts).
        #[arg(long)]
        enforce: bool,
    },
    /// Log every verdict from the kernel (through the running agent's log);
    /// off by default: it costs time on every packet.
    Trace {
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Print the default config, commented.
    DefaultConfig,
    /// Denied flows from the flow store (`[state] dir` of the config), oldest
    /// first; works while the agent runs or is down.
    Flows {
        /// Config naming the state directory; default: the built-in config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// How far back: e.g. 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_window)]
        since: Duration,
        /// One JSON object per line (the fields of /api/flows).
        #[arg(long)]
        json: bool,
        /// Keep polling; print flows as they appear or change.
        #[arg(long)]
        follow: bool,
    },
    /// Print [[allow]] / [[resource]] config that would allow the flows seen
    /// in audit mode, to review and append to the config.
    Suggest {
        #[arg(long)]
        config: Option<PathBuf>,
        /// How far back: e.g. 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_window)]
        since: Duration,
    },
}

fn parse_target(s: &str) -> Result<CgroupTarget, String> {
    s.parse()
}

fn parse_window(s: &str) -> Result<Duration, String> {
    sdm_agent::config::parse_duration(s)
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Audit,
    Enforce,
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sdm-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status of `check --kernel` when BPF cannot be used from here at
/// all (no CAP_BPF, a container without it): nothing was learnt of the
/// kernel, which the .deb's postinst tells apart from a refusal.
const EXIT_NO_BPF: u8 = 3;

/// `check --kernel`: the verifier's verdict on every program.
fn check_kernel(object: Option<&Path>, json: bool) -> Result<ExitCode> {
    let bytes = match object {
        Some(path) => kernel_check::read_object(path)?,
        None => dataplane::EBPF_OBJECT.to_vec(),
    };
    let report = match kernel_check::verify(&bytes) {
        Ok(report) => report,
        Err(e) if e.is_permission() => {
            eprintln!(
                "sdm-agent: cannot use BPF here ({e}); run `check --kernel` as root \
                 (CAP_BPF and CAP_NET_ADMIN) on the host that runs the agent"
            );
            return Ok(ExitCode::from(EXIT_NO_BPF));
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.render());
    }
    if report.all_ok() {
        return Ok(ExitCode::SUCCESS);
    }
    let refused: Vec<&str> = report
        .programs
        .iter()
        .filter(|p| !p.ok)
        .map(|p| p.program.as_str())
        .collect();
    eprintln!(
        "sdm-agent: error: kernel {} refuses {} of the programs enforcement needs: {}",
        report.kernel,
        refused.len(),
        refused.join(", ")
    );
    Ok(ExitCode::FAILURE)
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    if let Some(root) = cli.unit_root {
        sdm_agent::cgroup::set_unit_root(root);
    }
    let layout = Layout {
        pin_root: cli.pin_root,
        run_dir: cli.run_dir,
    };
    match cli.command {
        Command::Run {
            config,
            cgroup,
            object,
        } => {
            let object = match object {
                Some(path) => {
                    tracing::warn!(object = %path.display(), "--object: loading this eBPF object instead of the embedded one");
                    Some(kernel_check::read_object(&path)?)
                }
                None => None,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("start the tokio runtime")?;
            rt.block_on(app::run(layout, config, cgroup, object))?;
        }
        Command::Check {
            config,
            cgroup,
            kernel,
            json,
            object,
        } => {
            let (mut cfg, policy, _) = app::prepare(config.as_deref())?;
            if let Some(t) = cgroup {
                cfg.cgroup = Some(t);
            }
            // `[backstop] interfaces` must name interfaces of this host.
            sdm_agent::backstop::resolve(&cfg, config.as_deref())?;
            let mut warnings = compile::lockout_warnings(&cfg, &policy);
            match app::target_cgroup(&cfg, config.as_deref())? {
                // Not an error: `run` waits for a unit that has not started.
                Err(e) => eprintln!("sdm-agent: note: {e}; `run` will wait for it to appear"),
                Ok(cg) => {
                    let bypass = sdm_agent::caps::bypass_capable(&cg, None);
                    if !bypass.is_empty() {
                        eprint!("{}", sdm_agent::caps::render(&bypass));
                        warnings.push(format!(
                            "{} process(es) in {} hold CAP_NET_RAW or CAP_NET_ADMIN and can bypass the cgroup programs (listed above){}",
                            bypass.len(),
                            cg.display(),
                            if cfg.backstop.interfaces.is_empty() {
                                "; set [backstop] interfaces to judge their packet sockets' frames"
                            } else {
                                ""
                            }
                        ));
                    }
                }
            }
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            let summary = format!(
                "{}: ok, {} rules{}",
                app::config_label(config.as_deref()),
                policy.rules.len(),
                if warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning(s)", warnings.len())
                }
            );
            if json {
                eprintln!("{summary}");
            } else {
                println!("{summary}");
            }
            if kernel {
                return check_kernel(object.as_deref(), json);
            }
        }
        Command::Policy { config, json } => {
            let (_, policy, _) = app::prepare(config.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&policy)?);
            } else {
                print!("{}", render_policy(&policy));
            }
        }
        Command::Status { json } => {
            let mut maps = Maps::open(&layout)?;
            let mut s = status::snapshot(&layout, &mut maps)?;
            status::add_bypass_capable(&mut s);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", status::render(&s));
            }
        }
        Command::Mode { mode } => {
            let mut maps = Maps::open(&layout)?;
            let m = match mode {
                ModeArg::Audit => MODE_AUDIT,
                ModeArg::Enforce => MODE_ENFORCE,
            };
            maps.set_mode(m)?;
            println!(
                "mode: {} (a running agent keeps it; a restarted agent applies its config's mode)",
                status::mode_name(m)
            );
        }
        Command::Trace { state } => {
            let mut maps = Maps::open(&layout)?;
            let on = matches!(state, OnOff::On);
            maps.set_log_verdicts(on);
            println!(
                "verdict tracing {}",
                if on {
                    "on: verdicts appear in the log of the agent that loaded the programs"
                } else {
                    "off"
                }
            );
        }
        Command::Detach => {
            let removed = dataplane::detach(&layout)?;
            if removed.is_empty() {
                println!("nothing was attached under {}", layout.pin_root.display());
            } else {
                println!(
                    "detached: removed {} pins and records under {}",
                    removed.len(),
                    layout.pin_root.display()
                );
            }
        }
        Command::Policed { cgroup, enforce } => return Ok(policed(&layout, cgroup, enforce)),
        Command::DefaultConfig => print!("{}", sdm_agent::config::Config::default_toml()),
        Command::Flows {
            config,
            since,
            json,
            follow,
        } => {
            let cfg = load_config(config.as_deref())?;
            list_flows(&store::db_path(&cfg.state.dir), since, json, follow)?;
        }
        Command::Suggest { config, since } => {
            let cfg = load_config(config.as_deref())?;
            let path = store::db_path(&cfg.state.dir);
            let mut q = FlowQuery::within(since);
            q.verdict = Some("audit".into());
            let found = match Store::open_existing(&path) {
                Ok(s) => s.query(&q)?,
                Err(StoreError::Missing { .. }) => {
                    eprintln!(
                        "no flows recorded yet: {} does not exist (the agent creates it)",
                        path.display()
                    );
                    Vec::new()
                }
                Err(e) => return Err(e.into()),
            };
            // Leave out what the config already allows, where it compiles.
            let resolvers = app::resolvers(&cfg).unwrap_or_default();
            let policy = compile::compile(&cfg, &resolvers).ok();
            let suggestion = flows::suggest(&found, &cfg, policy.as_ref(), flows::DEFAULT_COLLAPSE);
            print!("{suggestion}");
            // Check that the config with the suggestion appended still
            // loads and compiles (rule limits, name clashes), so a paste
            // does not fail at the next restart.
            if let Some(p) = config.as_deref() {
                let text =
                    std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
                let combined = format!("{text}\n{suggestion}");
                let checked = Config::from_toml_str(&combined, p)
                    .map_err(anyhow::Error::from)
                    .and_then(|c| compile::compile(&c, &resolvers).map_err(anyhow::Error::from));
                if let Err(e) = checked {
                    eprintln!(
                        "sdm-agent: the config with these suggestions appended would not load: {e:#}"
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sdm-agent policed`: one line on stdout when policed (exit 0), the reason
/// on stderr when not (exit 1), so a refused ExecStartPre= says why.
fn policed(layout: &Layout, cgroup: Option<CgroupTarget>, enforce: bool) -> ExitCode {
    match sdm_agent::policed::check(layout, cgroup.as_ref(), enforce) {
        Ok(p) => {
            println!(
                "policed: {} (programs on {}, mode {}, policy generation {})",
                p.target.display(),
                p.attached.display(),
                p.mode,
                p.generation
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sdm-agent: not policed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn flow_line(f: &Flow) -> String {
    let process = if f.key.comm.is_empty() {
        "?".to_string()
    } else {
        f.key.comm.escape_debug().to_string()
    };
    let process = if f.pid != 0 {
        format!("{process} ({})", f.pid)
    } else {
        process
    };
    format!(
        "{:<24} {:<7} {:<7} {:<6} {:<39} {:>5}  {:<30} {:<22} {:>9}  {}",
        flows::rfc3339(f.last_seen),
        f.key.direction,
        f.key.verdict,
        f.key.proto,
        f.key.remote,
        f.key.port,
        f.hostname.as_deref().unwrap_or("-"),
        process,
        f.count,
        f.reason
    )
}

fn flow_header() -> String {
    format!(
        "{:<24} {:<7} {:<7} {:<6} {:<39} {:>5}  {:<30} {:<22} {:>9}  reason",
        "last seen (UTC)",
        "dir",
        "verdict",
        "proto",
        "remote",
        "port",
        "hostname",
        "process (pid)",
        "packets"
    )
}

/// `sdm-agent flows`: oldest first; with `follow`, polls every second and
/// prints the flows that appear or change. A closed pipe (`| head`) ends it.
fn list_flows(path: &Path, since: Duration, json: bool, follow: bool) -> Result<()> {
    match list_flows_to(&mut std::io::stdout(), path, since, json, follow) {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        r => r,
    }
}

fn list_flows_to(
    out: &mut impl std::io::Write,
    path: &Path,
    since: Duration,
    json: bool,
    follow: bool,
) -> Result<()> {
    let mut store = None;
    let mut printed: HashMap<FlowKey, (u64, u64)> = HashMap::new();
    let mut header = !json;
    let mut window = FlowQuery::within(since);
    let mut warned = false;
    loop {
        if store.is_none() {
            match Store::open_existing(path) {
                Ok(s) => store = Some(s),
                Err(StoreError::Missing { .. }) if !warned || !follow => {
                    eprintln!(
                        "no flows recorded yet: {} does not exist (the agent creates it)",
                        path.display()
                    );
                    warned = true;
                }
                Err(StoreError::Missing { .. }) => {}
                Err(e) if follow => eprintln!("sdm-agent: {e}; retrying"),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(s) = &store {
            match s.query(&window) {
                Ok(mut found) => {
                    found.reverse();
                    for f in found {
                        let seen = (f.last_seen, f.count);
                        if printed.get(&f.key) == Some(&seen) {
                            continue;
                        }
                        if header {
                            writeln!(out, "{}", flow_header())?;
                            header = false;
                        }
                        if json {
                            writeln!(out, "{}", serde_json::to_string(&f)?)?;
                        } else {
                            writeln!(out, "{}", flow_line(&f))?;
                        }
                        printed.insert(f.key.clone(), seen);
                    }
                }
                Err(e) if follow => {
                    eprintln!("sdm-agent: {e}; retrying");
                    store = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !follow {
            return Ok(());
        }
        out.flush()?;
        std::thread::sleep(Duration::from_secs(1));
        // Look back a little: the agent writes in batches, and events of
        // different CPUs are not strictly ordered.
        let newest = printed
            .values()
            .map(|(t, _)| *t)
            .max()
            .unwrap_or(window.since_ms);
        window.since_ms = window.since_ms.max(newest.saturating_sub(10_000));
        printed.retain(|_, (t, _)| *t + 60_000 >= window.since_ms);
    }
}

fn render_policy(policy: &sdm_agent::policy::Policy) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<44} {:<8} {:<9} {:<16} {:<9} targets",
        "rule", "dir", "proto", "ports", "guide"
    );
    for r in &policy.rules {
        let protos: Vec<String> = r.protos.iter().map(|p| p.to_string()).collect();
        let ports: Vec<String> = r.ports.iter().map(|p| p.to_string()).collect();
        let targets: Vec<String> = r.targets.iter().map(|t| t.to_string()).collect();
        let _ = writeln!(
            o,
            "{:<44} {:<8} {:<9} {:<16} {:<9} {}",
            r.name,
            r.direction.to_string(),
            protos.join("+"),
            ports.join(","),
            if r.roles.is_empty() {
                "config"
            } else if r.required {
                "required"
            } else {
                "optional"
            },
            targets.join(" ")
        );
    }
    o
}
