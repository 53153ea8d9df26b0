//! `cargo xtask`: the one entry point for setting up, building, running and
//! testing sdm-egress, on a developer's machine and in CI alike.
//!
//! A fresh machine only needs rustup with a stable and a nightly toolchain;
//! everything else (rust-src, bpf-linker, bpffs, test packages) is put in
//! place by `setup`, which `build`, `run` and `test` run first.

mod bench;
mod bpf_linker;
mod cache_lock;
mod context;
mod debian_vm;
mod deploy_check;
mod fuzz;
mod kernel_matrix;
mod package;
mod system;
mod tasks;
mod toolchain;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{context::Ctx, tasks::Purpose};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run, test and package sdm-egress"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building (and, with --for, running or testing) needs.
    Setup {
        /// Only check; print the commands that would change the machine.
        #[arg(long)]
        dry_run: bool,
        /// What to prepare for: `run` adds bpffs, `test` adds test packages.
        #[arg(long = "for", value_enum, default_value_t = Purpose::Build)]
        purpose: Purpose,
    },
    /// Build the workspace (the eBPF object is built by sdm-agent's build.rs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `sdm-agent run <ARGS>` as root.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for `sdm-agent run`, after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run every test, including the privileged kernel tests (needs root).
    Test {
        #[arg(long)]
        release: bool,
        /// Arguments for the test binaries, after `--` (e.g. a name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Boot Debian's 5.10, 6.1 and 6.12 cloud kernels under qemu and run the
    /// smoke lab in each, and on this machine's kernel (needs root; part of
    /// `test`). Kernels are fetched once into ~/.local/share/sdm-egress.
    Kernels {
        #[arg(long)]
        release: bool,
        /// Only this series (5.10, 6.1 or 6.12).
        #[arg(long)]
        only: Option<String>,
    },
    /// rustfmt --check, clippy -D warnings and rustdoc -D warnings, also of fuzz/ (skips the eBPF build).
    Check,
    /// Validate deploy/: Kubernetes manifests (schemas), the Dockerfile
    /// (hadolint) and the agent configs there; part of `test`, no root needed.
    DeployCheck,
    /// Build the Debian package target/debian/sdm-agent_VERSION_ARCH.deb.
    Package {
        /// Then install it with dpkg, check what it installed and purge it
        /// again, as `cargo xtask test` does (needs root).
        #[arg(long)]
        install_check: bool,
    },
    /// Install the .deb in a Debian 12 qemu guest under systemd and run the
    /// issue 13 scenarios there (part of `test`; needs root).
    DebianVm,
    /// Run the benchmarks; write BENCHMARKS.md and target/bench/results.json (needs root).
    Bench {
        /// Every stage for a tiny duration: checks they work, asserts no timing.
        #[arg(long)]
        smoke: bool,
        /// Where results.json goes (default target/bench).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Arguments for `sdm-bench run`, after `--` (e.g. `--only 1,3`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run the cargo-fuzz targets under fuzz/ (nightly, AddressSanitizer);
    /// installs cargo-fuzz if missing. A crash fails it, its input is kept.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// One target (default: every target, one after the other).
        target: Option<String>,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The cause chain, without anyhow's backtrace: CI sets
            // RUST_BACKTRACE for the tests, not to debug xtask itself.
            eprintln!("xtask: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("xtask:   caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup { dry_run, purpose } => tasks::setup(&Ctx::new(dry_run)?, purpose),
        Task::Build { release } => tasks::build(&Ctx::new(false)?, release),
        Task::Run { release, args } => tasks::run(&Ctx::new(false)?, release, &args),
        Task::Test { release, args } => tasks::test(&Ctx::new(false)?, release, &args),
        Task::Check => tasks::check(&Ctx::new(false)?),
        Task::Kernels { release, only } => {
            tasks::kernels(&Ctx::new(false)?, release, only.as_deref())
        }
        Task::DeployCheck => tasks::deploy_check(&Ctx::new(false)?),
        Task::Package { install_check } => package::run(&Ctx::new(false)?, install_check),
        Task::DebianVm => debian_vm::run(&Ctx::new(false)?),
        Task::Bench { smoke, out, args } => {
            bench::bench(&Ctx::new(false)?, smoke, out.as_deref(), &args)
        }
        Task::Fuzz { secs, target } => fuzz::fuzz(&Ctx::new(false)?, secs, target.as_deref()),
    }
}
