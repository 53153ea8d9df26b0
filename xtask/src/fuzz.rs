//! `cargo xtask fuzz`: the cargo-fuzz targets under `fuzz/` (the agent's
//! parsers of config text, system files, HTTP input and kernel events),
//! built with nightly and AddressSanitizer, each run for a while. Installs
//! cargo-fuzz when it is missing. `cargo xtask test` runs every target
//! for [`SMOKE_SECS`] seconds.
//!
//! Corpora grow in `fuzz/corpus/<target>/` (not checked in), starting from
//! the seeds in `fuzz/seeds/<target>/`; a crash leaves its input in
//! `fuzz/artifacts/<target>/` and fails the run. Each crash fixed becomes a
//! unit test in the module it was found in.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{
    context::{self, describe, output, Ctx},
    toolchain::{self, NIGHTLY},
};

/// Seconds per target in `cargo xtask test`.
pub const SMOKE_SECS: u64 = 10;
/// The fuzz crate, outside the workspace.
const FUZZ_DIR: &str = "fuzz";

/// Builds the targets, then runs `only` (or every target) for `secs` each;
/// an error names each target that crashed and where its input is.
pub fn fuzz(ctx: &Ctx, secs: u64, only: Option<&str>) -> Result<()> {
    if !toolchain::ensure_nightly(ctx)? {
        bail!("cargo-fuzz needs the {NIGHTLY} toolchain");
    }
    ensure_cargo_fuzz(ctx)?;
    let all = targets(ctx)?;
    let chosen: Vec<String> = match only {
        Some(t) if all.iter().any(|a| a == t) => vec![t.to_owned()],
        Some(t) => bail!("no fuzz target {t:?}; there are: {}", all.join(", ")),
        None => all,
    };
    println!("xtask: building the fuzz targets (the first build takes minutes)...");
    let mut build = cargo_fuzz(ctx, "build");
    context::run(&mut build).context("building the fuzz targets failed")?;
    let mut crashed = Vec::new();
    for target in &chosen {
        let (corpus, seeds) = (dir("corpus", target), dir("seeds", target));
        fs::create_dir_all(ctx.root.join(&corpus))
            .with_context(|| format!("create {}", corpus.display()))?;
        let mut run = cargo_fuzz(ctx, "run");
        // The first corpus directory is where new inputs go; the seeds are
        // read only.
        run.arg(target).arg(&corpus);
        if ctx.root.join(&seeds).is_dir() {
            run.arg(&seeds);
        }
        run.arg("--").arg(format!("-max_total_time={secs}"));
        println!("xtask: fuzz {target} for {secs} s: {}", describe(&run));
        if !context::status(&mut run)?.success() {
            crashed.push(target.clone());
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzz target(s) {} failed: the input is in {}/artifacts/<target>/; reproduce with \
             `cargo +{NIGHTLY} fuzz run --fuzz-dir {FUZZ_DIR} <target> <input>` (with AYA_BUILD_SKIP=1), \
             fix it and add the input as a unit test",
            crashed.join(", "),
            FUZZ_DIR
        );
    }
    Ok(())
}

/// `fuzz/<what>/<target>`, relative to the workspace root.
fn dir(what: &str, target: &str) -> PathBuf {
    [FUZZ_DIR, what, target].iter().collect()
}

/// `cargo +nightly fuzz <subcommand> --fuzz-dir fuzz`, without building
/// the eBPF object (the fuzz targets load no programs).
fn cargo_fuzz(ctx: &Ctx, subcommand: &str) -> Command {
    // `rustup run` rather than `cargo +nightly`: it works whichever cargo
    // comes first on PATH (as for bpf-linker).
    let mut cmd = ctx.command("rustup");
    cmd.args([
        "run",
        NIGHTLY,
        "cargo",
        "fuzz",
        subcommand,
        "--fuzz-dir",
        FUZZ_DIR,
    ])
    .current_dir(&ctx.root);
    // One build cache for every checkout on this machine (CI's fresh clone
    // included): the sanitizer builds of the dependencies take minutes and
    // do not change with the project's own code. `list` takes no such flag.
    if subcommand != "list" {
        if let Ok(home) = crate::context::home_dir() {
            cmd.arg("--target-dir")
                .arg(home.join(".cache/sdm-egress/fuzz-target"));
        }
    }
    cmd.env("AYA_BUILD_SKIP", "1");
    cmd
}

/// The targets `fuzz/Cargo.toml` declares, as cargo-fuzz lists them.
fn targets(ctx: &Ctx) -> Result<Vec<String>> {
    let list = output(&mut cargo_fuzz(ctx, "list"))?;
    let targets: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` found no targets in {FUZZ_DIR}/");
    }
    Ok(targets)
}

/// Installs cargo-fuzz from crates.io when `cargo-fuzz` is not on PATH.
fn ensure_cargo_fuzz(ctx: &Ctx) -> Result<()> {
    if ctx.find_program("cargo-fuzz").is_some() {
        println!("xtask: cargo-fuzz ok");
        return Ok(());
    }
    println!("xtask: installing cargo-fuzz (about 2 min)...");
    ctx.run_or_show(
        ctx.command("cargo")
            .args(["install", "--locked", "cargo-fuzz"]),
    )
}
