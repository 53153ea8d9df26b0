//! The install check on this machine: refuse to clobber an existing
//! install, install the package with dpkg, check what it installed and
//! what postinst did, then purge it and check nothing is left.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{
    context::{self, describe, Ctx},
    system,
};

use super::deb::{top_level_value, FILES};
use super::{
    dirs_under, read, Built, BINARY, CONFIG, DOC_DIR, DSH_STATE_DIRS, MAX_EXPOSURE, PACKAGE,
    PIN_ROOT, PURGED_DIRS, SYSTEMD_LINKS, UNIT,
};

/// Installs the package with dpkg, checks what it installed (file list,
/// conffiles, `sdm-agent check` on the shipped config, `systemd-analyze
/// verify` and `security` on the unit, the maintainer scripts' work) and
/// purges it again, also when a check failed. Refuses to run when anything
/// the package would overwrite or the purge would delete is already there.
pub fn install_check(ctx: &Ctx, built: &Built) -> Result<()> {
    system::require_root("installing the package with dpkg")?;
    refuse_to_clobber(ctx)?;
    println!("xtask: package: installing {}", built.deb.display());
    let checked = install_and_check(ctx, built);
    if checked.is_err() {
        println!("xtask: package: a check failed (the error follows); cleaning up first");
    }
    println!("xtask: package: purging {PACKAGE}");
    let cleaned = purge_and_verify(ctx);
    match (checked, cleaned) {
        (Ok(()), Ok(())) => {
            println!("xtask: package: installed, checked and purged {PACKAGE}");
            Ok(())
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(c)) => Err(c),
        (Err(e), Err(c)) => Err(e.context(format!("and the clean-up failed too: {c:#}"))),
    }
}

/// Paths the package would overwrite, or its purge delete, that are there
/// now: something other than this check put them there.
pub(super) fn refuse_to_clobber(ctx: &Ctx) -> Result<()> {
    if let Some(status) = dpkg_status(ctx)? {
        bail!(
            "the Debian package {PACKAGE} is already on this machine (dpkg status {status:?}); \
             the package check installs and purges its own copy and leaves an existing one alone. \
             Remove it (`dpkg --purge {PACKAGE}`) or run the check elsewhere."
        );
    }
    let mut present = leftovers()?;
    // With systemd running the maintainer scripts start the unit and, on
    // removal, detach its pin root: it must not belong to another agent.
    if systemd_running() && Path::new(PIN_ROOT).exists() {
        present.push(PIN_ROOT.into());
    }
    if !present.is_empty() {
        let present: Vec<String> = present.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "{} already exist(s), not installed by the {PACKAGE} package: installing it would \
             overwrite them, or its purge delete them. Remove them or run the package check \
             on another machine.",
            present.join(", ")
        );
    }
    Ok(())
}

/// What of the package, its maintainer scripts and its unit is on the
/// machine: nothing before the check installs it, nothing after the purge.
pub(super) fn leftovers() -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = FILES
        .iter()
        .map(|entry| entry.path)
        .chain(["/etc/sdm-agent", DOC_DIR])
        .chain(SYSTEMD_LINKS.iter().copied())
        .chain(PURGED_DIRS.iter().copied())
        .map(PathBuf::from)
        .filter(|path| path.symlink_metadata().is_ok())
        .collect();
    for dir in DSH_STATE_DIRS {
        if !Path::new(dir).is_dir() {
            continue;
        }
        for sub in dirs_under(Path::new(dir))? {
            for entry in
                fs::read_dir(&sub).with_context(|| format!("cannot list {}", sub.display()))?
            {
                let entry = entry.with_context(|| format!("cannot list {}", sub.display()))?;
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("sdm-agent.service")
                {
                    found.push(entry.path());
                }
            }
        }
    }
    Ok(found)
}

pub(super) fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The package's dpkg status abbreviation ("ii ", "rc ", ...), or None when
/// dpkg knows nothing of it or only that it is not installed.
pub(super) fn dpkg_status(ctx: &Ctx) -> Result<Option<String>> {
    let mut query = ctx.command("dpkg-query");
    query.args(["-W", "-f=${db:Status-Abbrev}", PACKAGE]);
    let out = query
        .output()
        .with_context(|| format!("could not start `{}`", describe(&query)))?;
    // dpkg-query exits 1 for a package it has never heard of.
    if !out.status.success() {
        return Ok(None);
    }
    let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok((!status.is_empty() && !status.starts_with("un")).then_some(status))
}

/// Installs the package with dpkg and checks what it installed: the files,
/// the binary and config, the unit (offline), and what postinst did.
pub(super) fn install_and_check(ctx: &Ctx, built: &Built) -> Result<()> {
    context::run(
        ctx.command("dpkg")
            .arg("-i")
            .arg(&built.deb)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    check_installed_files(ctx)?;
    check_binary_and_config(ctx, built)?;
    verify_unit(ctx)?;
    rate_unit_security(ctx)?;
    check_postinst_effects(ctx)
}

/// dpkg lists exactly the package's files, all installed, and records the
/// config as its only conffile.
pub(super) fn check_installed_files(ctx: &Ctx) -> Result<()> {
    println!("xtask: package: checking the installed files (dpkg -L)");
    let listed = context::output(ctx.command("dpkg").args(["-L", PACKAGE]))?;
    let listed: BTreeSet<&str> = listed.lines().map(str::trim).collect();
    let expected: BTreeSet<&str> = FILES.iter().map(|entry| entry.path).collect();
    for path in &expected {
        ensure!(
            listed.contains(path),
            "dpkg -L {PACKAGE} does not list {path}"
        );
        ensure!(
            Path::new(path).is_file(),
            "{path} is listed but not installed"
        );
    }
    let strays: Vec<&&str> = listed
        .iter()
        .filter(|path| !Path::new(path).is_dir() && !expected.contains(*path))
        .collect();
    ensure!(
        strays.is_empty(),
        "the package installs unexpected files: {strays:?}"
    );
    let conffiles =
        context::output(
            ctx.command("dpkg-query")
                .args(["-W", "-f=${Conffiles}", PACKAGE]),
        )?;
    let conffiles: Vec<&str> = conffiles
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    ensure!(
        conffiles == [CONFIG],
        "dpkg records conffiles {conffiles:?}, expected [{CONFIG}]"
    );
    Ok(())
}

/// The installed binary prints the package's version, and the shipped
/// config starts in audit mode and passes `check`.
pub(super) fn check_binary_and_config(ctx: &Ctx, built: &Built) -> Result<()> {
    let printed = context::output(ctx.command(BINARY).arg("--version"))?;
    ensure!(
        printed.trim() == format!("{PACKAGE} {}", built.version),
        "{BINARY} --version says {:?}, expected version {}",
        printed.trim(),
        built.version
    );
    let config = read(Path::new(CONFIG))?;
    ensure!(
        top_level_value(&config, "mode").as_deref() == Some("\"audit\""),
        "{CONFIG} does not start in audit mode"
    );
    println!("xtask: package: {BINARY} check --config {CONFIG}");
    context::run(ctx.command(BINARY).args(["check", "--config", CONFIG]))?;
    Ok(())
}

/// `systemd-analyze verify` finds nothing to say about the unit.
pub(super) fn verify_unit(ctx: &Ctx) -> Result<()> {
    println!("xtask: package: systemd-analyze verify {UNIT}");
    // Offline: it loads the unit and its dependencies from disk and needs no
    // running systemd. Ordering against a unit that does not exist
    // (sdm-proxy.service on this machine) is fine; a warning about our unit
    // (an unknown key, a missing command) is an error here.
    let mut verify = ctx.command("systemd-analyze");
    verify
        .args(["verify", "--man=no", UNIT])
        .env("SYSTEMD_LOG_LEVEL", "warning");
    let out = verify
        .output()
        .with_context(|| format!("could not start `{}`", describe(&verify)))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && !said.contains(PACKAGE),
        "`{}` found problems ({}):\n{}",
        describe(&verify),
        out.status,
        said.trim()
    );
    Ok(())
}

/// `systemd-analyze security` rates the unit at most [`MAX_EXPOSURE`].
pub(super) fn rate_unit_security(ctx: &Ctx) -> Result<()> {
    let mut security = ctx.command("systemd-analyze");
    security
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--threshold={MAX_EXPOSURE}"))
        .arg(UNIT);
    let out = security
        .output()
        .with_context(|| format!("could not start `{}`", describe(&security)))?;
    let report = String::from_utf8_lossy(&out.stdout);
    let overall = report
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .unwrap_or("(no overall exposure level printed)");
    println!(
        "xtask: package: systemd-analyze security: {}",
        overall.trim()
    );
    ensure!(
        out.status.success(),
        "`{}` rates the unit above {MAX_EXPOSURE} ({}); a hardening directive was lost:\n{}{}",
        describe(&security),
        out.status,
        report.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// postinst enabled the unit, and started it exactly when systemd runs.
pub(super) fn check_postinst_effects(ctx: &Ctx) -> Result<()> {
    // postinst enables the unit even without a running systemd, through
    // deb-systemd-helper: without it, that step would go untested.
    ensure!(
        Path::new("/usr/bin/deb-systemd-helper").exists(),
        "deb-systemd-helper is missing (Debian's init-system-helpers): the unit's enabling \
         cannot be checked; install it"
    );
    let wants = SYSTEMD_LINKS[0];
    ensure!(
        Path::new(wants).symlink_metadata().is_ok(),
        "postinst did not enable the unit: {wants} is missing"
    );
    if systemd_running() {
        // postinst started it: a Type=notify unit is active only once the
        // agent reported that enforcement is live.
        context::run(
            ctx.command("systemctl")
                .args(["is-active", "sdm-agent.service"]),
        )
        .context("postinst did not start sdm-agent.service")?;
    } else {
        let running = agent_processes()?;
        ensure!(
            running.is_empty(),
            "postinst started {BINARY} (pids {running:?}) though systemd is not running"
        );
    }
    Ok(())
}

/// Purges the package (if dpkg has any record of it) and checks that
/// nothing of it is left.
pub(super) fn purge_and_verify(ctx: &Ctx) -> Result<()> {
    if dpkg_status(ctx)?.is_some() {
        context::run(
            ctx.command("dpkg")
                .args(["--purge", PACKAGE])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if let Some(status) = dpkg_status(ctx)? {
        bail!("after `dpkg --purge {PACKAGE}` dpkg still has it as {status:?}");
    }
    let left = leftovers()?;
    ensure!(left.is_empty(), "the purge left {left:?} behind");
    let running = agent_processes()?;
    ensure!(
        running.is_empty(),
        "{BINARY} still runs after the purge (pids {running:?})"
    );
    Ok(())
}

/// Pids of processes running the packaged binary.
pub(super) fn agent_processes() -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").context("cannot list /proc")? {
        let entry = entry.context("cannot list /proc")?;
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A process that ended meanwhile, or a kernel thread, has no exe.
        if fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == Path::new(BINARY)) {
            pids.push(pid);
        }
    }
    Ok(pids)
}
