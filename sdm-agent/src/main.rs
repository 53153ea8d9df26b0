//! The `sdm-agent` command line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sdm_agent::{
    app, compile,
    dataplane::{self, Layout, Maps},
    status,
};
use sdm_common::{MODE_AUDIT, MODE_ENFORCE};

#[derive(Parser)]
#[command(name = "sdm-agent", version, about = "eBPF egress enforcer for hosts that run StrongDM components")]
struct Cli {
    /// Where maps and links are pinned (bpffs).
    #[arg(long, global = true, env = "SDM_PIN_ROOT", default_value = dataplane::DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// Where the agent records what it attached and resolved (tmpfs).
    #[arg(long, global = true, env = "SDM_RUN_DIR", default_value = dataplane::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
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
    },
    /// Validate a config and warn about lock-outs; changes nothing.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
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
    /// Log every verdict from the kernel (through the running agent's log);
    /// off by default: it costs time on every packet.
    Trace {
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Print the default config, commented.
    DefaultConfig,
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

fn real_main(cli: Cli) -> Result<ExitCode> {
    let layout = Layout {
        pin_root: cli.pin_root,
        run_dir: cli.run_dir,
    };
    match cli.command {
        Command::Run { config } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("start the tokio runtime")?;
            rt.block_on(app::run(layout, config))?;
        }
        Command::Check { config } => {
            let (cfg, policy, _) = app::prepare(config.as_deref())?;
            app::target_cgroup(&cfg, config.as_deref())?;
            let warnings = compile::lockout_warnings(&cfg, &policy);
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok, {} rules{}",
                app::config_label(config.as_deref()),
                policy.rules.len(),
                if warnings.is_empty() { String::new() } else { format!(", {} warning(s)", warnings.len()) }
            );
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
            let s = status::snapshot(&layout, &mut maps)?;
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
            println!("mode: {} (a running agent keeps it; a restarted agent applies its config's mode)", status::mode_name(m));
        }
        Command::Trace { state } => {
            let mut maps = Maps::open(&layout)?;
            let mut cfg = maps.config()?;
            cfg.log_verdicts = u32::from(matches!(state, OnOff::On));
            maps.write_config(&cfg)?;
            println!(
                "verdict tracing {}",
                if cfg.log_verdicts != 0 { "on: verdicts appear in the log of the agent that loaded the programs" } else { "off" }
            );
        }
        Command::Detach => {
            let removed = dataplane::detach(&layout)?;
            if removed.is_empty() {
                println!("nothing was attached under {}", layout.pin_root.display());
            } else {
                println!("detached: removed {} pins and records under {}", removed.len(), layout.pin_root.display());
            }
        }
        Command::DefaultConfig => print!("{}", sdm_agent::config::Config::default_toml()),
    }
    Ok(ExitCode::SUCCESS)
}

fn render_policy(policy: &sdm_agent::policy::Policy) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "{:<44} {:<8} {:<9} {:<16} {:<9} targets", "rule", "dir", "proto", "ports", "guide");
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
            if r.roles.is_empty() { "config" } else if r.required { "required" } else { "optional" },
            targets.join(" ")
        );
    }
    o
}
