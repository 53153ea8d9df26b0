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
    system,
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
/// duration, run as a child (not exec'd) so the other steps' results still
/// show. It checks that each stage works end to end; timings are written
/// to target/bench-smoke and asserted nowhere.
pub fn smoke(ctx: &Ctx) -> Result<()> {
    let out = ctx.target_dir().join("bench-smoke");
    let mut cmd = prepare(ctx, true, Some(&out), &[])?;
    println!("xtask: running {}", describe(&cmd));
    context::run(&mut cmd)
}

/// Installs what the benchmark needs, builds the agent and the benchmark
/// (release) and returns the `sdm-bench run` command.
fn prepare(ctx: &Ctx, smoke: bool, out: Option<&Path>, args: &[OsString]) -> Result<Command> {
    tasks::setup(ctx, Purpose::Run)?;
    ensure_packages(ctx)?;
    let mut build = ctx.cargo(["build", "--release", "-p", AGENT, "-p", BENCH]);
    build.env_remove("AYA_BUILD_SKIP");
    context::run(&mut build)?;

    let release = ctx.target_dir().join("release");
    let out = match out {
        Some(dir) => ctx.root.join(dir),
        None => ctx.target_dir().join("bench"),
    };
    let mut cmd = ctx.command(release.join(BENCH));
    cmd.arg("run")
        .arg("--out")
        .arg(&out)
        .arg("--agent")
        .arg(release.join(AGENT))
        .current_dir(&ctx.root);
    if smoke {
        // A smoke run's numbers mean nothing: they stay under --out.
        cmd.arg("--smoke");
    } else {
        cmd.arg("--report").arg(ctx.root.join("BENCHMARKS.md"));
    }
    cmd.args(args);
    Ok(cmd)
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
