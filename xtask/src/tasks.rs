//! The subcommands: setup, build, run, test, check, deploy-check.

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{bail, Context as _, Result};
use clap::ValueEnum;

use crate::{
    bench, bpf_linker,
    context::{self, describe, Ctx},
    debian_vm, deploy_check, fuzz, kernel_matrix, package, system, toolchain,
};

/// The eBPF crate is built for bpfel-unknown-none by sdm-agent's build.rs;
/// a host build of the workspace must leave it out.
const EBPF_PACKAGE: &str = "sdm-ebpf";
/// The privileged integration tests, run one at a time.
const PRIVILEGED_TESTS: &str = "sdm-tests";
/// The userspace agent binary.
const AGENT: &str = "sdm-agent";
/// The cargo-fuzz crate, outside the workspace.
const FUZZ_MANIFEST: &str = "fuzz/Cargo.toml";

/// What `setup` prepares the machine for.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Purpose {
    /// nightly rust-src and bpf-linker.
    Build,
    /// Also bpffs mounted at /sys/fs/bpf (needs root).
    Run,
    /// Also the Debian packages the privileged tests use (needs root).
    Test,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Self::Build => "build",
            Self::Run => "run",
            Self::Test => "test",
        }
    }
}

/// Puts in place what `purpose` needs; fast when everything is there.
pub fn setup(ctx: &Ctx, purpose: Purpose) -> Result<()> {
    if purpose != Purpose::Build && !ctx.dry_run {
        // Say so before spending a minute on bpf-linker.
        system::require_root(&format!("`cargo xtask {}`", purpose.name()))?;
    }
    if !toolchain::ensure_nightly(ctx)? {
        println!("xtask: [dry run] the later steps need the nightly toolchain; stopping here");
        return Ok(());
    }
    bpf_linker::ensure(ctx)?;
    if purpose != Purpose::Build {
        system::ensure_bpffs(ctx)?;
    }
    if purpose == Purpose::Test {
        system::ensure_test_packages(ctx)?;
    }
    Ok(())
}

pub fn build(ctx: &Ctx, release: bool) -> Result<()> {
    setup(ctx, Purpose::Build)?;
    context::run(&mut host_cargo(ctx, "build", release))
}

/// Builds, then replaces xtask with `sdm-agent run <args>`, so signals (Ctrl-C)
/// reach the agent directly and its exit status is the caller's.
pub fn run(ctx: &Ctx, release: bool, args: &[OsString]) -> Result<()> {
    setup(ctx, Purpose::Run)?;
    context::run(&mut host_cargo(ctx, "build", release))?;
    let agent = ctx.target_dir().join(profile(release)).join(AGENT);
    // The agent keeps the caller's working directory, so a relative
    // `--config` path means what the caller meant.
    let mut cmd = ctx.command(&agent);
    cmd.arg("run").args(args);
    println!("xtask: running {}", describe(&cmd));
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not start `{}`", describe(&cmd)))
}

/// Builds everything once, then runs the unit tests, rustfmt and clippy,
/// the privileged tests,
/// the kernel matrix, the deploy checks, a smoke run of the benchmark, a short run of every
/// fuzz target and the package check (build the .deb, install, check,
/// purge); each runs even if an earlier one failed, and a summary says
/// which failed.
pub fn test(ctx: &Ctx, release: bool, args: &[OsString]) -> Result<()> {
    setup(ctx, Purpose::Test)?;
    // rustfmt and clippy with the workspace lints (a SAFETY comment on
    // every unsafe block, a reason on every allow): held here, not by
    // review. First: clippy skips the eBPF build (AYA_BUILD_SKIP), and the
    // build below then makes the real object.
    let lint = check_step("lint", || check(ctx));
    // Builds the eBPF object once, before two `cargo test` runs need it.
    let mut build = host_cargo(ctx, "build", release);
    build.arg("--all-targets");
    context::run(&mut build).context("the build failed, so no test ran")?;

    // --no-fail-fast: one run shows every broken test binary, not the first.
    let mut unit = host_cargo(ctx, "test", release);
    unit.args(["--no-fail-fast", "--exclude", PRIVILEGED_TESTS, "--"])
        .args(args);
    let unit = test_step("unit tests", unit)?;

    let mut privileged = test_cargo(ctx, release);
    // One at a time: the tests share the kernel's cgroups, maps and bpffs.
    privileged
        .args([
            "--no-fail-fast",
            "--package",
            PRIVILEGED_TESTS,
            "--",
            "--test-threads=1",
        ])
        .args(args);
    let privileged = test_step("privileged tests", privileged)?;

    // The smoke lab on 5.10, 6.1, 6.12 (qemu guests) and this kernel.
    let kernels = check_step("kernel matrix", || kernel_matrix::run(ctx, release, None));

    // The agent built above parses the configs the manifests carry.
    let agent = ctx.target_dir().join(profile(release)).join(AGENT);
    let deploy = check_step("deploy manifests", || deploy_check::check(ctx, &agent));
    // Seconds per stage: that the benchmark still works, not how fast.
    let bench = check_step("bench smoke", || bench::smoke(ctx, release));
    let fuzz = check_step("fuzz smoke", || fuzz::fuzz(ctx, fuzz::SMOKE_SECS, None));

    // `cargo xtask package --install-check`: the .deb built (release mode),
    // installed, checked and purged.
    let package = check_step("package", || {
        package::package(ctx).and_then(|built| package::install_check(ctx, &built))
    });

    // The package under a running systemd, in a Debian guest.
    let debian_vm = check_step("debian vm", || debian_vm::run(ctx));

    let steps = [
        unit, lint, privileged, kernels, deploy, bench, fuzz, package, debian_vm,
    ];
    let summary: Vec<String> = steps.iter().map(StepResult::summary).collect();
    println!("xtask: test summary: {}", summary.join("; "));
    if steps.iter().any(|step| step.failure.is_some()) {
        bail!("some tests failed");
    }
    Ok(())
}

/// The kernel matrix alone: builds the workspace's tests, then boots each
/// kernel (see kernel_matrix/).
pub fn kernels(ctx: &Ctx, release: bool, only: Option<&str>) -> Result<()> {
    setup(ctx, Purpose::Test)?;
    let mut build = host_cargo(ctx, "build", release);
    build.arg("--all-targets");
    context::run(&mut build)?;
    kernel_matrix::run(ctx, release, only)
}

/// The deploy/ checks alone: builds the agent (whose parser checks the
/// configs there), then validates the manifests, configs and Dockerfile.
pub fn deploy_check(ctx: &Ctx) -> Result<()> {
    setup(ctx, Purpose::Build)?;
    let mut build = ctx.cargo(["build", "--package", AGENT]);
    build.env_remove("AYA_BUILD_SKIP");
    context::run(&mut build)?;
    deploy_check::check(ctx, &ctx.target_dir().join(profile(false)).join(AGENT))
}

/// rustfmt, clippy and rustdoc (warnings denied) over the host crates, and
/// rustfmt and clippy over the fuzz targets, without
/// building the eBPF object (AYA_BUILD_SKIP), so it needs neither nightly
/// nor bpf-linker.
pub fn check(ctx: &Ctx) -> Result<()> {
    context::run(&mut ctx.cargo(["fmt", "--all", "--", "--check"]))?;
    let mut clippy = ctx.cargo(["clippy", "--workspace", "--exclude", EBPF_PACKAGE]);
    clippy
        .args(["--all-targets", "--", "-D", "warnings"])
        .env("AYA_BUILD_SKIP", "1");
    context::run(&mut clippy)?;
    // Doc comments that link to nothing, or read as HTML, fail too.
    let mut doc = ctx.cargo(["doc", "--workspace", "--exclude", EBPF_PACKAGE, "--no-deps"]);
    doc.env("AYA_BUILD_SKIP", "1")
        .env("RUSTDOCFLAGS", "-D warnings");
    context::run(&mut doc)?;
    // The fuzz targets are a workspace of their own (see fuzz.rs); plain
    // stable builds of them lint fine.
    context::run(&mut ctx.cargo(["fmt", "--manifest-path", FUZZ_MANIFEST, "--", "--check"]))?;
    let mut clippy = ctx.cargo(["clippy", "--manifest-path", FUZZ_MANIFEST]);
    clippy
        .args(["--all-targets", "--", "-D", "warnings"])
        .env("AYA_BUILD_SKIP", "1");
    context::run(&mut clippy)
}

/// `cargo <subcommand> --workspace --exclude sdm-ebpf [--release]`, with the
/// eBPF build switched on even if the caller's shell had switched it off.
fn host_cargo(ctx: &Ctx, subcommand: &str, release: bool) -> Command {
    let mut cmd = ctx.cargo([subcommand, "--workspace", "--exclude", EBPF_PACKAGE]);
    if release {
        cmd.arg("--release");
    }
    cmd.env_remove("AYA_BUILD_SKIP");
    cmd
}

/// `cargo test [--release]` for one package.
fn test_cargo(ctx: &Ctx, release: bool) -> Command {
    let mut cmd = ctx.cargo(["test"]);
    if release {
        cmd.arg("--release");
    }
    cmd.env_remove("AYA_BUILD_SKIP");
    cmd
}

struct StepResult {
    name: &'static str,
    /// What went wrong, if it did.
    failure: Option<String>,
    took: std::time::Duration,
}

impl StepResult {
    fn summary(&self) -> String {
        let secs = self.took.as_secs();
        match &self.failure {
            None => format!("{} passed ({secs} s)", self.name),
            Some(why) => format!("{} FAILED ({why}; {secs} s)", self.name),
        }
    }
}

/// Runs one `cargo test`; a failing test is a result, not an error, so the
/// next step still runs. CARGO_TERM_COLOR is inherited as it is.
fn test_step(name: &'static str, mut cmd: Command) -> Result<StepResult> {
    cmd.env("RUST_BACKTRACE", "1");
    println!("xtask: {name}: {}", describe(&cmd));
    let start = std::time::Instant::now();
    let status = context::status(&mut cmd)?;
    Ok(StepResult {
        name,
        failure: (!status.success()).then(|| status.to_string()),
        took: start.elapsed(),
    })
}

/// Runs a check that is not a `cargo test`; its error is printed and
/// becomes the step's failure, so the other steps' results still show.
fn check_step(name: &'static str, check: impl FnOnce() -> Result<()>) -> StepResult {
    println!("xtask: {name}");
    let start = std::time::Instant::now();
    let failure = check().err().map(|err| {
        println!("xtask: {name} failed: {err:#}");
        "see above".to_owned()
    });
    StepResult {
        name,
        failure,
        took: start.elapsed(),
    }
}

/// The folder under the target dir that cargo's profile writes to.
fn profile(release: bool) -> &'static str {
    if release {
        "release"
    } else {
        "debug"
    }
}
