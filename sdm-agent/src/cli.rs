//! The arguments of every subcommand, and the dispatch to the module that
//! runs it (one file per subcommand under `cli/`).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use sdm_agent::{
    kernel::{
        cgroup::CgroupTarget,
        dataplane::{self, Layout},
    },
    policy::config::Config,
};

mod check;
mod detach;
mod flows;
mod mode;
mod policed;
mod policy;
mod run;
mod status;
mod suggest;

#[derive(Parser)]
#[command(
    name = "sdm-agent",
    version,
    about = "eBPF egress enforcer for hosts that run StrongDM components"
)]
pub struct Cli {
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
pub enum Command {
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
    Status(status::StatusArgs),
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
    sdm_agent::policy::config::parse_duration(s)
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Audit,
    Enforce,
}

/// Runs the subcommand; its exit code, or the error to print.
pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    if let Some(root) = cli.unit_root {
        sdm_agent::kernel::cgroup::set_unit_root(root);
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
        } => run::run(layout, config, cgroup, object.as_deref()),
        Command::Check {
            config,
            cgroup,
            kernel,
            json,
            object,
        } => check::run(config.as_deref(), cgroup, kernel, json, object.as_deref()),
        Command::Policy { config, json } => policy::run(config.as_deref(), json),
        Command::Status(args) => status::run(&layout, &args),
        Command::Mode { mode } => mode::set_mode(&layout, mode),
        Command::Trace { state } => mode::set_trace(&layout, state),
        Command::Detach => detach::run(&layout),
        Command::Policed { cgroup, enforce } => Ok(policed::run(&layout, cgroup, enforce)),
        Command::DefaultConfig => {
            print!("{}", Config::default_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Flows {
            config,
            since,
            json,
            follow,
        } => flows::run(config.as_deref(), since, json, follow),
        Command::Suggest { config, since } => suggest::run(config.as_deref(), since),
    }
}

/// The config at `path`, or the built-in default.
pub(crate) fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}
