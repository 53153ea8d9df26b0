//! The eBPF build shared by `sdm-agent/build.rs` (the object the agent
//! embeds) and `tests/build.rs` (the upgrade tests' variant): builds the
//! programs of `sdm-ebpf` with aya-build and leaves the object in OUT_DIR
//! as `sdm-ebpf`.
//!
//! aya-build relays every line of the nested cargo build as a
//! `cargo:warning` line, so that each build of the agent printed the whole
//! eBPF build as warnings. Here its output is captured, and the nested
//! build's lines are shown only when it fails.
//!
//! `AYA_BUILD_SKIP=1` (lint-only builds) leaves an empty placeholder
//! object instead, which the agent and the tests refuse to load.

use std::{
    fs,
    io::Write as _,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _, Result};
use aya_build::Toolchain;

/// The eBPF package's name in the workspace.
const EBPF_PACKAGE: &str = "sdm-ebpf";

/// Builds `sdm-ebpf` with `features` into OUT_DIR (see the crate header).
pub fn build_ebpf(features: &[&str]) -> Result<()> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if skipped() {
        let object = out_dir.join(EBPF_PACKAGE);
        if !object.exists() {
            fs::write(&object, b"").context("write placeholder eBPF object")?;
        }
    }
    let root_dir = ebpf_root_dir()?;
    let package = aya_build::Package {
        name: EBPF_PACKAGE,
        root_dir: &root_dir,
        features,
        ..Default::default()
    };
    let log = out_dir.join("aya-build.log");
    let result = with_stdout_to(&log, || {
        aya_build::build_ebpf([package], Toolchain::default())
    })?;
    relay(&log, result.is_err())?;
    result
}

fn skipped() -> bool {
    std::env::var("AYA_BUILD_SKIP")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false)
}

/// The folder of the eBPF package, from `cargo metadata`.
fn ebpf_root_dir() -> Result<String> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let package = packages
        .into_iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} package not found"))?;
    let dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    Ok(dir.as_str().to_owned())
}

/// Runs `f` with this process's standard output (fd 1, where aya-build's
/// `println!`s go) sent to the file `log`, and restores it afterwards.
fn with_stdout_to<T>(log: &Path, f: impl FnOnce() -> T) -> Result<T> {
    let file = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    std::io::stdout().flush().context("flush stdout")?;
    // SAFETY: dup(2) of fd 1, which is open for the whole build script; the
    // new fd is owned at once.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 {
        return Err(std::io::Error::last_os_error()).context("dup stdout");
    }
    // SAFETY: a new fd we own.
    let saved = unsafe { OwnedFd::from_raw_fd(saved) };
    redirect(&file, 1)?;
    let result = f();
    let flushed = std::io::stdout().flush();
    redirect(&saved, 1)?;
    flushed.context("flush captured stdout")?;
    Ok(result)
}

/// Makes fd `to` a copy of `from`.
fn redirect(from: &impl std::os::fd::AsRawFd, to: libc::c_int) -> Result<()> {
    // SAFETY: dup2(2) on two open fds; fd `to` is replaced atomically.
    if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
        return Err(std::io::Error::last_os_error()).context("dup2");
    }
    Ok(())
}

/// Passes aya-build's instructions to cargo (rerun-if-changed and the
/// like), drops its relayed output unless the build `failed`, in which
/// case it goes to standard error (cargo shows that of a failed build
/// script).
fn relay(log: &Path, failed: bool) -> Result<()> {
    let text = fs::read_to_string(log).with_context(|| format!("read {}", log.display()))?;
    for line in text.lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(output) if failed => eprintln!("{output}"),
            Some(_) => {}
            None => println!("{line}"),
        }
    }
    Ok(())
}
