//! `cargo xtask bench`: installs what the benchmark needs, builds the agent
//! and the benchmark in release mode, and replaces xtask with
//! `sdm-bench run` (so Ctrl-C reaches it directly and it can clean up).
//!
//! `cargo xtask test` runs the smoke version ([`smoke`]): seconds per
//! stage, to check that the benchmark works; it asserts no timing.

use std::{ffi::OsString, os::unix::process::CommandExt as _, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{
    context::{self, describe, Ctx},
    kernel_matrix, system,
    tasks::{self, Purpose},
};

/// Debian packages the benchmark runs, and a command each installs.
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("iperf3", "iperf3"),
    ("iptables", "iptables-restore"),
    ("nftables", "nft"),
];

/// What `cargo xtask bench` builds and runs.
const BENCH: &str = "sdm-bench";
const AGENT: &str = "sdm-agent";

pub fn bench(ctx: &Ctx, smoke: bool, out: Option<&Path>, args: &[OsString]) -> Result<()> {
    let mut cmd = prepare(ctx, smoke, out, args)?;
    println!("xtask: running {}", describe(&cmd));
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not start `{}`", describe(&cmd)))
}

/// The smoke run as a step of `cargo xtask test`: every stage for a tiny
/// duration, to check that each works end to end; timings are written to
/// target/bench-smoke and asserted nowhere. It runs the binaries `test`
/// has just built (debug unless `--release`): no second build, and a smoke
/// run's numbers mean nothing anyway. A child, not exec'd, so the other
/// steps' results still show.
/// `test` has set the machine up already.
pub fn smoke(ctx: &Ctx, release: bool) -> Result<()> {
    ensure_packages(ctx)?;
    let bin = ctx
        .target_dir()
        .join(if release { "release" } else { "debug" });
    let out = ctx.target_dir().join("bench-smoke");
    let mut cmd = command(ctx, &bin, true, &out, &[]);
    println!("xtask: running {}", describe(&cmd));
    context::run(&mut cmd)
}

/// Installs what the benchmark needs, builds the agent and the benchmark
/// (release) and returns the `sdm-bench run` command.
fn prepare(ctx: &Ctx, smoke: bool, out: Option<&Path>, args: &[OsString]) -> Result<Command> {
    tasks::setup(ctx, Purpose::Run)?;
    ensure_packages(ctx)?;
    if !smoke && wants_verifier_figure(args) {
        kernel_matrix_first(ctx);
    }
    let mut build = ctx.cargo(["build", "--release", "-p", AGENT, "-p", BENCH]);
    build.env_remove("AYA_BUILD_SKIP");
    context::run(&mut build)?;
    let out = match out {
        Some(dir) => ctx.root.join(dir),
        None => ctx.target_dir().join("bench"),
    };
    Ok(command(
        ctx,
        &ctx.target_dir().join("release"),
        smoke,
        &out,
        args,
    ))
}

/// Whether the run measures figure 11 (no `--only`, or one that names 11).
fn wants_verifier_figure(args: &[OsString]) -> bool {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let only = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--only=")
            .map(str::to_owned)
            .or_else(|| (a == "--only").then(|| args.get(i + 1).cloned().unwrap_or_default()))
    });
    only.is_none_or(|v| v.split(',').any(|f| f.trim() == "11"))
}

/// Figure 11 quotes the kernel matrix's verifier statistics: reused when
/// they were measured on this very checkout, else the matrix runs first
/// (its kernels are cached; the guests take minutes under TCG). A matrix
/// that fails leaves what it measured; the benchmark goes on with that.
fn kernel_matrix_first(ctx: &Ctx) {
    if kernel_matrix::verifier_json_is_current(ctx) {
        println!(
            "xtask: bench: figure 11 uses the kernel matrix's statistics of this commit ({}); not rerun",
            kernel_matrix::verifier_json_path(ctx).display()
        );
        return;
    }
    println!(
        "xtask: bench: figure 11 needs the kernel matrix of this checkout: running `cargo xtask kernels` first \
         (5.10, 6.1 and 6.12 under qemu TCG: several minutes; kernels are cached)..."
    );
    if let Err(e) = tasks::kernels(ctx, false, None) {
        eprintln!(
            "xtask: bench: the kernel matrix failed ({e:#}); figure 11 shows what it measured"
        );
    }
}

/// `<bin>/sdm-bench run --out <out> --agent <bin>/sdm-agent ...`.
fn command(ctx: &Ctx, bin: &Path, smoke: bool, out: &Path, args: &[OsString]) -> Command {
    let mut cmd = ctx.command(bin.join(BENCH));
    cmd.arg("run")
        .arg("--out")
        .arg(out)
        .arg("--agent")
        .arg(bin.join(AGENT))
        // The kernel matrix's last report: BENCHMARKS.md quotes its
        // verifier statistics per kernel.
        .env(
            "SDM_KERNEL_MATRIX_REPORT",
            ctx.target_dir().join("kernel-matrix/report.md"),
        )
        // Figure 11: the verifier's statistics per kernel, as numbers.
        .env(
            "SDM_KERNEL_MATRIX_JSON",
            kernel_matrix::verifier_json_path(ctx),
        )
        .current_dir(&ctx.root);
    if smoke {
        // A smoke run's numbers mean nothing: they stay under --out.
        cmd.arg("--smoke");
    } else {
        cmd.arg("--report").arg(ctx.root.join("BENCHMARKS.md"));
    }
    cmd.args(args);
    cmd
}

/// Installs the packages whose command is not on PATH (as for the tests).
fn ensure_packages(ctx: &Ctx) -> Result<()> {
    let missing: Vec<&str> = BENCH_PACKAGES
        .iter()
        .filter(|(_, command)| ctx.find_program(command).is_none())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        println!("xtask: benchmark packages (iperf3, iptables, nftables) ok");
        return Ok(());
    }
    println!(
        "xtask: installing Debian packages {} (about 30 s)...",
        missing.join(" ")
    );
    system::require_root("installing Debian packages")?;
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "apt-get not found: install {} with this system's package manager",
            missing.join(" ")
        );
    }
    context::run(ctx.command("apt-get").arg("update"))?;
    context::run(
        ctx.command("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_11_is_wanted_unless_only_leaves_it_out() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(wants_verifier_figure(&args(&[])));
        assert!(wants_verifier_figure(&args(&["--only", "10,11"])));
        assert!(wants_verifier_figure(&args(&["--only=11"])));
        assert!(!wants_verifier_figure(&args(&["--only", "1,3"])));
        assert!(!wants_verifier_figure(&args(&[
            "--seed", "11", "--only", "10"
        ])));
    }
}
