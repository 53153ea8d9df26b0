//! Building the `.deb`: the staged files (the agent, the config, the unit,
//! the docs), conffiles and md5sums, then `dpkg-deb --build`.

use std::{
    collections::BTreeSet, fs, os::unix::fs::PermissionsExt as _, path::Path, process::Stdio,
};

use anyhow::{ensure, Context as _, Result};

use crate::{
    context::{self, Ctx},
    tasks::{self, Purpose},
};

use super::control::{check_control, depends_of, installed_size_kib, render_control};
use super::{
    dirs_under, install_file, read, write_file, Built, BINARY, CONFIG, DEPLOY_DIR, PACKAGE,
    SCRIPTS, UNIT,
};

/// Where a packaged file comes from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Source {
    /// The release build of sdm-agent, stripped.
    Agent,
    /// `sdm-agent default-config`: the built-in defaults, in audit mode.
    DefaultConfig,
    /// A file under deploy/debian.
    Deploy(&'static str),
    /// The workspace README, gzipped as Debian policy asks of documentation.
    Readme,
}

pub(super) struct Entry {
    pub(super) path: &'static str,
    pub(super) mode: u32,
    pub(super) source: Source,
}

/// Every file the package installs.
pub(super) const FILES: &[Entry] = &[
    Entry {
        path: BINARY,
        mode: 0o755,
        source: Source::Agent,
    },
    Entry {
        path: CONFIG,
        mode: 0o644,
        source: Source::DefaultConfig,
    },
    Entry {
        path: UNIT,
        mode: 0o644,
        source: Source::Deploy("sdm-agent.service"),
    },
    Entry {
        path: "/usr/share/doc/sdm-agent/copyright",
        mode: 0o644,
        source: Source::Deploy("copyright"),
    },
    Entry {
        path: "/usr/share/doc/sdm-agent/README.md.gz",
        mode: 0o644,
        source: Source::Readme,
    },
    Entry {
        path: "/usr/share/doc/sdm-agent/examples/sdm-proxy-sdm-agent.conf",
        mode: 0o644,
        source: Source::Deploy("sdm-proxy-sdm-agent.conf"),
    },
];

/// As [`package`](super::package), with `suffix` appended to the Debian version ("+1":
/// 0.1.0+1 sorts after 0.1.0), for an upgrade to a rebuilt package of the
/// same agent (the same binary and eBPF object; nothing is recompiled).
pub fn package_with_suffix(ctx: &Ctx, suffix: &str) -> Result<Built> {
    ensure!(
        suffix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.~".contains(c)),
        "a Debian version suffix may hold only letters, digits, '+', '.' and '~': {suffix:?}"
    );
    tasks::setup(ctx, Purpose::Build)?;
    println!("xtask: package: building {PACKAGE} in release mode");
    let mut build = ctx.cargo(["build", "--release", "--package", PACKAGE]);
    build.env_remove("AYA_BUILD_SKIP");
    context::run(&mut build)?;
    let agent = ctx.target_dir().join("release").join(PACKAGE);

    let version = agent_version(ctx, &agent)?;
    let arch = context::output(ctx.command("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let deb_version = format!("{}{suffix}", debian_version(&version));
    let name = format!("{PACKAGE}_{deb_version}_{arch}");
    let out = ctx.target_dir().join("debian");
    let stage = out.join(&name);
    let deb = out.join(format!("{name}.deb"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot remove {}", stage.display()))?;
    }
    println!(
        "xtask: package: staging the package tree in {}",
        stage.display()
    );
    let deploy = ctx.root.join(DEPLOY_DIR);
    for entry in FILES {
        stage_file(ctx, &stage, entry, &agent, &deploy)?;
    }

    let control_dir = stage.join("DEBIAN");
    fs::create_dir_all(&control_dir)
        .with_context(|| format!("cannot create {}", control_dir.display()))?;
    for script in SCRIPTS {
        let source = deploy.join(script);
        // dpkg runs them at install time; a syntax error must stop the build.
        context::run(ctx.command("sh").arg("-n").arg(&source))
            .with_context(|| format!("{} is not a valid shell script", source.display()))?;
        install_file(&source, &control_dir.join(script), 0o755)?;
    }
    let conffiles = read(&deploy.join("conffiles"))?;
    check_conffiles(&conffiles)?;
    write_file(&control_dir.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    write_md5sums(ctx, &stage, &conffiles)?;

    let binary = stage.join(BINARY.trim_start_matches('/'));
    let control = render_control(
        &read(&deploy.join("control"))?,
        &[
            ("VERSION", deb_version),
            ("ARCH", arch),
            ("INSTALLED_SIZE", installed_size_kib(&stage)?.to_string()),
            ("DEPENDS", depends_of(ctx, &binary)?),
        ],
    )?;
    check_control(&control)?;
    write_file(&control_dir.join("control"), control.as_bytes(), 0o644)?;
    // Directories as dpkg expects them, whatever the caller's umask.
    for dir in dirs_under(&stage)? {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod {}", dir.display()))?;
    }

    println!("xtask: package: building {}", deb.display());
    context::run(
        ctx.command("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&stage)
            .arg(&deb),
    )?;
    println!("xtask: package: wrote {}", deb.display());
    Ok(Built { deb, version })
}

/// The version `sdm-agent --version` prints ("sdm-agent 0.1.0").
pub(super) fn agent_version(ctx: &Ctx, agent: &Path) -> Result<String> {
    let printed = context::output(ctx.command(agent).arg("--version"))?;
    printed
        .trim()
        .strip_prefix(&format!("{PACKAGE} "))
        .map(str::to_owned)
        .with_context(|| format!("unexpected `{PACKAGE} --version` output: {printed:?}"))
}

/// A Cargo (semver) version as a Debian version of a native package: a
/// pre-release ("1.0.0-rc.1") sorts before its release only after '-'
/// becomes '~', and a version without revision may not hold '-' anyway.
pub(super) fn debian_version(version: &str) -> String {
    version.replace('-', "~")
}

pub(super) fn stage_file(
    ctx: &Ctx,
    stage: &Path,
    entry: &Entry,
    agent: &Path,
    deploy: &Path,
) -> Result<()> {
    let dest = stage.join(entry.path.trim_start_matches('/'));
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match entry.source {
        Source::Agent => {
            install_file(agent, &dest, entry.mode)?;
            // Symbols only: the eBPF object is data inside the binary and
            // keeps its BTF.
            context::run(ctx.command("strip").arg("--strip-unneeded").arg(&dest))?;
        }
        Source::DefaultConfig => {
            let config = context::output(ctx.command(agent).arg("default-config"))?;
            ensure!(
                top_level_value(&config, "mode").as_deref() == Some("\"audit\""),
                "`{PACKAGE} default-config` does not set mode = \"audit\"; the package must \
                 start in audit mode"
            );
            write_file(&dest, config.as_bytes(), entry.mode)?;
        }
        Source::Deploy(name) => install_file(&deploy.join(name), &dest, entry.mode)?,
        Source::Readme => {
            let readme = ctx.root.join("README.md");
            let file = fs::File::create(&dest)
                .with_context(|| format!("cannot create {}", dest.display()))?;
            // -n: no name or time stamp inside, so the same README gives the
            // same bytes.
            context::run(
                ctx.command("gzip")
                    .args(["-9", "-n", "-c"])
                    .arg(&readme)
                    .stdout(Stdio::from(file)),
            )?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(entry.mode))
                .with_context(|| format!("cannot chmod {}", dest.display()))?;
        }
    }
    Ok(())
}

/// The value of a top-level key of a TOML text, as written (before the first
/// table header; comments and blank lines skipped).
pub(super) fn top_level_value(toml: &str, key: &str) -> Option<String> {
    toml.lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with('['))
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, value)| {
            let value = value.split_once(" #").map_or(value, |(v, _)| v);
            value.trim().to_owned()
        })
}

/// The conffiles list must be exactly the files the package puts under /etc:
/// a config file missing from it would be overwritten by upgrades.
pub(super) fn check_conffiles(conffiles: &str) -> Result<()> {
    let listed: BTreeSet<&str> = conffiles
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let under_etc: BTreeSet<&str> = FILES
        .iter()
        .map(|entry| entry.path)
        .filter(|path| path.starts_with("/etc/"))
        .collect();
    ensure!(
        listed == under_etc,
        "deploy/debian/conffiles lists {listed:?}, but the package installs {under_etc:?} under /etc"
    );
    Ok(())
}

/// DEBIAN/md5sums for `dpkg --verify` and debsums: every file but the
/// conffiles, whose sums dpkg keeps itself.
pub(super) fn write_md5sums(ctx: &Ctx, stage: &Path, conffiles: &str) -> Result<()> {
    let conffiles: BTreeSet<&str> = conffiles.lines().map(str::trim).collect();
    let files: Vec<&str> = FILES
        .iter()
        .map(|entry| entry.path)
        .filter(|path| !conffiles.contains(path))
        .map(|path| path.trim_start_matches('/'))
        .collect();
    let sums = context::output(ctx.command("md5sum").args(&files).current_dir(stage))?;
    write_file(&stage.join("DEBIAN/md5sums"), sums.as_bytes(), 0o644)
}
