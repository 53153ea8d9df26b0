//! `cargo xtask package`: the Debian package of the agent,
//! target/debian/sdm-agent_<version>_<arch>.deb, and the check that installs
//! it on this machine, looks at what it installed and purges it again.
//!
//! The package is a staged tree handed to `dpkg-deb --build
//! --root-owner-group`, which every Debian system has; no cargo-deb or
//! debhelper. Its source files are under deploy/debian; the binary is the
//! release build of sdm-agent (the eBPF object embedded by its build.rs), the
//! default config is what that binary prints with `default-config`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{
    context::{self, describe, Ctx},
    system,
    tasks::{self, Purpose},
};

/// The Debian package, the cargo package and the binary share the name.
const PACKAGE: &str = "sdm-agent";
/// Where the package's source files are, under the workspace root.
const DEPLOY_DIR: &str = "deploy/debian";
const BINARY: &str = "/usr/bin/sdm-agent";
const CONFIG: &str = "/etc/sdm-agent/config.toml";
const UNIT: &str = "/lib/systemd/system/sdm-agent.service";
const DOC_DIR: &str = "/usr/share/doc/sdm-agent";
/// Maintainer scripts, from deploy/debian to DEBIAN/.
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];
/// What deb-systemd-helper creates for the unit outside the package's files
/// (enable link, mask link): gone again after a purge.
const SYSTEMD_LINKS: &[&str] = &[
    "/etc/systemd/system/multi-user.target.wants/sdm-agent.service",
    "/etc/systemd/system/sdm-agent.service",
];
/// What the unit creates at run time and postrm removes on purge
/// (StateDirectory=, LogsDirectory=).
const PURGED_DIRS: &[&str] = &["/var/lib/sdm-agent", "/var/log/sdm-agent"];
/// Where deb-systemd-helper records what it enabled or masked, so that an
/// upgrade keeps an administrator's choice; a purge removes the records.
const DSH_STATE_DIRS: &[&str] = &[
    "/var/lib/systemd/deb-systemd-helper-enabled",
    "/var/lib/systemd/deb-systemd-helper-masked",
];
/// The unit's pin root: prerm detaches it when systemd runs.
const PIN_ROOT: &str = "/sys/fs/bpf/sdm";
/// The most `systemd-analyze security` may rate the unit's exposure, in its
/// internal scale of 0 to 100 (it prints a tenth of it: 2.1 is 21). The
/// unit is at 21 with systemd 252, offline here and online in the Debian VM
/// (debian_vm.rs); issue 13 holds it at 2.5 at most, which also catches a
/// lost hardening directive.
const MAX_EXPOSURE: u32 = 25;

/// Where a packaged file comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The release build of sdm-agent, stripped.
    Agent,
    /// `sdm-agent default-config`: the built-in defaults, in audit mode.
    DefaultConfig,
    /// A file under deploy/debian.
    Deploy(&'static str),
    /// The workspace README, gzipped as Debian policy asks of documentation.
    Readme,
}

struct Entry {
    path: &'static str,
    mode: u32,
    source: Source,
}

/// Every file the package installs.
const FILES: &[Entry] = &[
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

/// A package built by [`package`].
pub struct Built {
    pub deb: PathBuf,
    /// The agent's own version (`sdm-agent --version`), not the Debian one.
    pub version: String,
}

/// `cargo xtask package [--install-check]`.
pub fn run(ctx: &Ctx, install: bool) -> Result<()> {
    let built = package(ctx)?;
    if install {
        install_check(ctx, &built)?;
    }
    Ok(())
}

/// Runs the build set-up, builds sdm-agent in release mode and writes
/// target/debian/sdm-agent_<version>_<arch>.deb.
pub fn package(ctx: &Ctx) -> Result<Built> {
    package_with_suffix(ctx, "")
}

/// As [`package`], with `suffix` appended to the Debian version ("+1":
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

/// The version `sdm-agent --version` prints ("sdm-agent 0.1.0").
fn agent_version(ctx: &Ctx, agent: &Path) -> Result<String> {
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
fn debian_version(version: &str) -> String {
    version.replace('-', "~")
}

fn stage_file(ctx: &Ctx, stage: &Path, entry: &Entry, agent: &Path, deploy: &Path) -> Result<()> {
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
fn top_level_value(toml: &str, key: &str) -> Option<String> {
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
fn check_conffiles(conffiles: &str) -> Result<()> {
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
fn write_md5sums(ctx: &Ctx, stage: &Path, conffiles: &str) -> Result<()> {
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

/// Fills the @NAME@ placeholders of deploy/debian/control.
fn render_control(template: &str, values: &[(&str, String)]) -> Result<String> {
    let mut text = template.to_owned();
    for (name, value) in values {
        let placeholder = format!("@{name}@");
        ensure!(
            text.contains(&placeholder),
            "deploy/debian/control has no {placeholder}"
        );
        text = text.replace(&placeholder, value);
    }
    // Any @NAME@ left (the Maintainer's e-mail address has an '@' too).
    for (at, _) in text.match_indices('@') {
        let rest = &text[at + 1..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(rest.len());
        if name_len > 0 && rest[name_len..].starts_with('@') {
            bail!(
                "deploy/debian/control: nothing fills @{}@",
                &rest[..name_len]
            );
        }
    }
    Ok(text)
}

/// Checks a binary package's control file the way dpkg-deb reads it (one
/// stanza of `Field: value` lines and space-led continuation lines), with
/// the fields dpkg needs and values it accepts.
fn check_control(control: &str) -> Result<()> {
    ensure!(control.ends_with('\n'), "control: must end with a newline");
    let mut fields: BTreeMap<&str, String> = BTreeMap::new();
    let mut last: Option<&str> = None;
    for (i, line) in control.lines().enumerate() {
        let n = i + 1;
        ensure!(
            !line.trim().is_empty(),
            "control: line {n} is blank (one stanza only)"
        );
        if line.starts_with(' ') || line.starts_with('\t') {
            let field = last.with_context(|| format!("control: line {n} continues nothing"))?;
            let value = fields.entry(field).or_default();
            value.push('\n');
            value.push_str(line);
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("control: line {n} is not `Field: value`"))?;
        ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "control: line {n}: bad field name {name:?}"
        );
        ensure!(
            fields.insert(name, value.trim().to_owned()).is_none(),
            "control: field {name} appears twice"
        );
        last = Some(name);
    }
    for required in [
        "Package",
        "Version",
        "Architecture",
        "Maintainer",
        "Description",
        "Installed-Size",
        "Depends",
    ] {
        let value = fields.get(required).map(String::as_str).unwrap_or("");
        ensure!(!value.is_empty(), "control: {required} is missing or empty");
    }
    let package = &fields["Package"];
    ensure!(
        package.len() >= 2
            && package.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && package
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c)),
        "control: bad package name {package:?}"
    );
    let version = &fields["Version"];
    ensure!(
        version.starts_with(|c: char| c.is_ascii_digit())
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~".contains(c)),
        "control: bad native version {version:?}"
    );
    ensure!(
        fields["Installed-Size"].parse::<u64>().is_ok(),
        "control: Installed-Size must be a number of KiB"
    );
    let description = &fields["Description"];
    ensure!(
        !description.starts_with('\n') && description.contains('\n'),
        "control: Description needs a synopsis and an extended description"
    );
    Ok(())
}

/// Installed-Size: the staged files in KiB, each rounded up, as
/// dpkg-gencontrol counts them (DEBIAN/ excluded).
fn installed_size_kib(stage: &Path) -> Result<u64> {
    let mut kib = 0;
    for entry in FILES {
        let path = stage.join(entry.path.trim_start_matches('/'));
        let len = fs::metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        kib += len.div_ceil(1024);
    }
    Ok(kib)
}

/// The Depends field for `binary`: the Debian packages of the shared
/// libraries it links, with the glibc version its symbols need (what
/// dpkg-shlibdeps would say, without needing dpkg-dev).
fn depends_of(ctx: &Ctx, binary: &Path) -> Result<String> {
    let dynamic = context::output(ctx.command("readelf").args(["-d", "-W"]).arg(binary))?;
    let versions = context::output(ctx.command("readelf").args(["-V", "-W"]).arg(binary))?;
    depends(&needed_libraries(&dynamic), max_glibc(&versions).as_deref())
        .with_context(|| format!("cannot work out the dependencies of {}", binary.display()))
}

/// The NEEDED entries of `readelf -d` output.
fn needed_libraries(readelf_dynamic: &str) -> Vec<String> {
    readelf_dynamic
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| {
            let start = line.find('[')?;
            let end = line.rfind(']')?;
            Some(line[start + 1..end].to_owned())
        })
        .collect()
}

/// The highest GLIBC_x.y symbol version in `readelf -V` output.
fn max_glibc(readelf_versions: &str) -> Option<String> {
    readelf_versions
        .split(|c: char| c.is_whitespace())
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|version| {
            let parts: Option<Vec<u32>> = version.split('.').map(|p| p.parse().ok()).collect();
            parts.map(|parts| (parts, version))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, version)| version.to_owned())
}

/// Maps sonames to Debian packages. Only what a Rust binary links is known;
/// anything else is an error rather than a package that installs and fails.
fn depends(needed: &[String], glibc: Option<&str>) -> Result<String> {
    let mut packages = BTreeMap::new();
    for library in needed {
        let package = match library.as_str() {
            "libc.so.6" | "libm.so.6" | "libpthread.so.0" | "libdl.so.2" | "librt.so.1"
            | "libutil.so.1" => "libc6",
            ld if ld.starts_with("ld-linux") => "libc6",
            // The package of libgcc_s.so.1 since gcc 10; it has every
            // GCC_x symbol version a toolchain of today links against.
            "libgcc_s.so.1" => "libgcc-s1",
            other => bail!(
                "it links {other}, whose Debian package xtask does not know: add it to \
                 `depends` in xtask/src/package.rs"
            ),
        };
        let version = match (package, glibc) {
            ("libc6", Some(v)) => Some(v.to_owned()),
            _ => None,
        };
        packages.insert(package, version);
    }
    ensure!(
        !packages.is_empty(),
        "it links no shared library (readelf found no NEEDED entry)"
    );
    Ok(packages
        .into_iter()
        .map(|(package, version)| match version {
            Some(v) => format!("{package} (>= {v})"),
            None => package.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// Paths the package would overwrite, or its purge delete, that are there
/// now: something other than this check put them there.
fn refuse_to_clobber(ctx: &Ctx) -> Result<()> {
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
fn leftovers() -> Result<Vec<PathBuf>> {
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

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The package's dpkg status abbreviation ("ii ", "rc ", ...), or None when
/// dpkg knows nothing of it or only that it is not installed.
fn dpkg_status(ctx: &Ctx) -> Result<Option<String>> {
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
fn install_and_check(ctx: &Ctx, built: &Built) -> Result<()> {
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
fn check_installed_files(ctx: &Ctx) -> Result<()> {
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
fn check_binary_and_config(ctx: &Ctx, built: &Built) -> Result<()> {
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
fn verify_unit(ctx: &Ctx) -> Result<()> {
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
fn rate_unit_security(ctx: &Ctx) -> Result<()> {
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
fn check_postinst_effects(ctx: &Ctx) -> Result<()> {
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
fn purge_and_verify(ctx: &Ctx) -> Result<()> {
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
fn agent_processes() -> Result<Vec<u32>> {
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

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

fn install_file(source: &Path, dest: &Path, mode: u32) -> Result<()> {
    fs::copy(source, dest)
        .with_context(|| format!("cannot copy {} to {}", source.display(), dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", dest.display()))
}

/// `root` and every directory below it.
fn dirs_under(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        let dir = dirs[i].clone();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        i += 1;
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT_FILE: &str = include_str!("../../deploy/debian/sdm-agent.service");
    const PROXY_DROP_IN: &str = include_str!("../../deploy/debian/sdm-proxy-sdm-agent.conf");
    const CONTROL: &str = include_str!("../../deploy/debian/control");
    const CONFFILES: &str = include_str!("../../deploy/debian/conffiles");

    /// The values of `key` in `[section]` of a unit file, in order.
    fn directive<'a>(unit: &'a str, section: &str, key: &str) -> Vec<&'a str> {
        let mut current = "";
        let mut values = Vec::new();
        for line in unit.lines().map(str::trim) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name;
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                if current == section && k == key {
                    values.push(v);
                }
            }
        }
        values
    }

    fn one<'a>(unit: &'a str, section: &str, key: &str) -> &'a str {
        match directive(unit, section, key).as_slice() {
            [value] => value,
            other => panic!("[{section}] {key}= should be set once, found {other:?}"),
        }
    }

    /// A `pub const NAME: &str = "...";` of the agent's source, wherever
    /// under `sdm-agent/src` it is defined (files move as the agent is
    /// reorganised; the constant must exist exactly once).
    fn agent_const(name: &str) -> String {
        let prefix = format!("pub const {name}: &str = \"");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdm-agent/src");
        let mut found = Vec::new();
        for file in rust_files(&src) {
            let text = fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            for l in text.lines() {
                if let Some(rest) = l.trim().strip_prefix(&prefix) {
                    let value = rest.split('"').next().unwrap_or_default().to_owned();
                    found.push((file.clone(), value));
                }
            }
        }
        match found.as_slice() {
            [(_, value)] => value.clone(),
            other => panic!("`{prefix}` should be in the agent's source once, found {other:?}"),
        }
    }

    /// The `.rs` files under `dir`, recursively.
    fn rust_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                out.extend(rust_files(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
        out
    }

    #[test]
    fn unit_is_hardened_with_exactly_the_needed_capabilities() {
        let caps = |key| {
            let mut caps: Vec<&str> = one(UNIT_FILE, "Service", key).split_whitespace().collect();
            caps.sort_unstable();
            caps
        };
        let needed = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];
        assert_eq!(caps("CapabilityBoundingSet"), needed);
        assert_eq!(caps("AmbientCapabilities"), needed);
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectControlGroups", "yes"),
            ("Restart", "on-failure"),
            ("Type", "notify"),
            ("StateDirectory", "sdm-agent"),
            ("RuntimeDirectory", "sdm-agent"),
        ] {
            assert_eq!(one(UNIT_FILE, "Service", key), value, "{key}=");
        }
        let filter = directive(UNIT_FILE, "Service", "SystemCallFilter").join(" ");
        assert!(
            filter.split_whitespace().any(|s| s == "bpf"),
            "bpf(2) is outside @system-service: {filter}"
        );
    }

    #[test]
    fn unit_runs_the_packaged_binary_on_the_shipped_config() {
        assert_eq!(
            one(UNIT_FILE, "Service", "ExecStart"),
            format!("{BINARY} run --config {CONFIG}")
        );
        assert!(FILES.iter().any(|entry| entry.path == UNIT));
    }

    #[test]
    fn unit_orders_itself_before_sdm_proxy_and_is_wanted_at_boot() {
        assert!(directive(UNIT_FILE, "Unit", "Before").contains(&"sdm-proxy.service"));
        assert_eq!(one(UNIT_FILE, "Install", "WantedBy"), "multi-user.target");
    }

    #[test]
    fn unit_directories_are_the_agents_defaults() {
        // The agent's run dir, state dir and pin root are where the unit
        // lets it write: RuntimeDirectory=, StateDirectory=, ReadWritePaths=.
        let run_dir = agent_const("DEFAULT_RUN_DIR");
        let state_dir = agent_const("DEFAULT_STATE_DIR");
        let pin_root = agent_const("DEFAULT_PIN_ROOT");
        assert_eq!(
            format!("/run/{}", one(UNIT_FILE, "Service", "RuntimeDirectory")),
            run_dir
        );
        assert_eq!(
            format!("/var/lib/{}", one(UNIT_FILE, "Service", "StateDirectory")),
            state_dir
        );
        assert_eq!(pin_root, PIN_ROOT);
        // Writable, and optional ("-"): systemd sets up the "+" mkdir's
        // mount namespace with the ReadWritePaths= too, and a missing path
        // there fails the mkdir that would create it (226/NAMESPACE on a
        // fresh host and after every reboot; issue 13).
        assert_eq!(
            directive(UNIT_FILE, "Service", "ReadWritePaths"),
            [format!("-{pin_root}").as_str()],
            "the pin root {pin_root} must be writable, and optional"
        );
        // The pin root is created first, outside the sandbox.
        assert_eq!(
            one(UNIT_FILE, "Service", "ExecStartPre"),
            format!("+/bin/mkdir -p {pin_root}")
        );
        // Nothing else of /sys/fs/bpf is writable.
        assert_eq!(one(UNIT_FILE, "Service", "ProtectKernelTunables"), "yes");
    }

    #[test]
    fn sdm_proxy_drop_in_refuses_to_run_unpoliced_without_tying_restarts() {
        // sdm-proxy pulls the agent in and waits for it, but a restart of
        // the agent (an upgrade) must not restart sdm-proxy.
        assert_eq!(one(PROXY_DROP_IN, "Unit", "Wants"), "sdm-agent.service");
        assert_eq!(one(PROXY_DROP_IN, "Unit", "After"), "sdm-agent.service");
        for tie in ["Requires", "BindsTo", "PartOf", "Requisite"] {
            assert!(
                directive(PROXY_DROP_IN, "Unit", tie).is_empty(),
                "{tie}= ties sdm-proxy's restarts to the agent's"
            );
        }
        // Its own cgroup must be policed before it runs; as root ("+")
        // whatever user sdm-proxy runs as.
        assert_eq!(
            one(PROXY_DROP_IN, "Service", "ExecStartPre"),
            format!("+{BINARY} policed")
        );
        assert_eq!(one(PROXY_DROP_IN, "Service", "Slice"), "sdm-proxy.slice");
    }

    #[test]
    fn conffiles_are_the_files_under_etc() {
        check_conffiles(CONFFILES).unwrap();
        assert!(CONFFILES.lines().any(|l| l == CONFIG));
        assert!(check_conffiles("").is_err());
        assert!(check_conffiles(&format!("{CONFIG}\n/etc/other.toml\n")).is_err());
    }

    fn sample_control() -> String {
        render_control(
            CONTROL,
            &[
                ("VERSION", "0.1.0".into()),
                ("ARCH", "amd64".into()),
                ("INSTALLED_SIZE", "9123".into()),
                ("DEPENDS", "libc6 (>= 2.34), libgcc-s1".into()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn control_template_renders_a_well_formed_control_file() {
        let control = sample_control();
        check_control(&control).unwrap();
        assert!(control.starts_with("Package: sdm-agent\n"), "{control}");
        assert!(control.contains("\nVersion: 0.1.0\n"));
        assert!(control.contains("\nDepends: libc6 (>= 2.34), libgcc-s1\n"));
    }

    #[test]
    fn control_check_rejects_what_dpkg_would() {
        let control = sample_control();
        let broken = [
            control.replace("Version: 0.1.0", "Version: 0.1.0-rc.1"),
            control.replace("Package: sdm-agent", "Package: SDM"),
            control.replace("Installed-Size: 9123", "Installed-Size: lots"),
            control.replace("\nArchitecture: amd64", ""),
            control.replace(" .\n", "\n"),
            control.trim_end().to_owned(),
        ];
        for text in broken {
            assert!(check_control(&text).is_err(), "accepted:\n{text}");
        }
        let unfilled = render_control(CONTROL, &[("VERSION", "1".into())]);
        assert!(unfilled.is_err());
        // A placeholder after the Maintainer's address is found too.
        let late = "Maintainer: a <a@b.example>\nDepends: @DEPENDS@\n@EXTRA@\n";
        let err = render_control(late, &[("DEPENDS", "libc6".into())]).unwrap_err();
        assert!(err.to_string().contains("@EXTRA@"), "{err}");
    }

    #[test]
    fn debian_versions_sort_pre_releases_first() {
        assert_eq!(debian_version("0.1.0"), "0.1.0");
        assert_eq!(debian_version("1.0.0-rc.1"), "1.0.0~rc.1");
    }

    #[test]
    fn depends_from_readelf() {
        let dynamic = " 0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]\n \
                       0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n \
                       0x0000000000000001 (NEEDED)             Shared library: [ld-linux-x86-64.so.2]\n \
                       0x000000000000000c (INIT)               0x1000\n";
        let versions = "  0x0070:   Name: GLIBC_2.29  Flags: none  Version: 8\n  \
                        0x0080:   Name: GLIBC_2.2.5  Flags: none  Version: 3\n  \
                        0x0090:   Name: GLIBC_2.34  Flags: none  Version: 21\n  \
                        0x00a0:   Name: GLIBC_2.4  Flags: none  Version: 14\n  \
                        0x00b0:   Name: GLIBC_PRIVATE  Flags: none  Version: 2\n";
        let needed = needed_libraries(dynamic);
        assert_eq!(
            needed,
            ["libgcc_s.so.1", "libc.so.6", "ld-linux-x86-64.so.2"]
        );
        assert_eq!(max_glibc(versions).as_deref(), Some("2.34"));
        assert_eq!(
            depends(&needed, Some("2.34")).unwrap(),
            "libc6 (>= 2.34), libgcc-s1"
        );
        assert!(depends(&["libssl.so.3".into()], None).is_err());
        assert!(depends(&[], None).is_err());
    }

    #[test]
    fn finds_the_mode_of_a_config() {
        let config = "# mode = \"enforce\"\nrole = [\"gateway\"]\nmode = \"audit\" # audit first\n\
                      [x]\nmode = \"enforce\"\n";
        assert_eq!(
            top_level_value(config, "mode").as_deref(),
            Some("\"audit\"")
        );
        assert_eq!(top_level_value("[x]\nmode = \"audit\"\n", "mode"), None);
        assert_eq!(
            top_level_value("mode=\"enforce\"\n", "mode").as_deref(),
            Some("\"enforce\"")
        );
    }

    fn script(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DEPLOY_DIR)
            .join(name);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Lines of a maintainer script that act on services or the dataplane,
    /// outside the guard `if [ -d /run/systemd/system ]`. Lines inside
    /// function definitions are judged where the function is called.
    fn unguarded_actions(text: &str) -> Vec<String> {
        let mut guards: Vec<bool> = Vec::new();
        let mut in_function = false;
        let mut found = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if line.ends_with("() {") {
                in_function = true;
                continue;
            }
            if in_function {
                in_function = line != "}";
                continue;
            }
            if line.starts_with("if ") {
                guards.push(line.contains("[ -d /run/systemd/system ]"));
            } else if line == "fi" {
                guards.pop();
            }
            let acts = line.starts_with("invoke ")
                || line.starts_with("systemctl ")
                || line.starts_with("/usr/bin/sdm-agent ");
            if acts && !guards.contains(&true) {
                found.push(line.to_owned());
            }
        }
        found
    }

    #[test]
    fn maintainer_scripts_touch_services_only_when_systemd_runs() {
        for name in SCRIPTS {
            let text = script(name);
            assert!(
                text.starts_with("#!/bin/sh\n"),
                "{name}: not a /bin/sh script"
            );
            assert!(text.contains("\nset -e\n"), "{name}: no set -e");
            assert_eq!(unguarded_actions(&text), Vec::<String>::new(), "{name}");
        }
        assert!(script("postinst").contains("invoke start"));
        assert!(script("prerm").contains("invoke stop"));
        let unguarded =
            "#!/bin/sh\nset -e\ncase \"$1\" in\nremove)\n    invoke stop x\n    ;;\nesac\n";
        assert_eq!(unguarded_actions(unguarded), ["invoke stop x"]);
    }

    #[test]
    fn maintainer_scripts_parse() {
        for name in SCRIPTS {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(DEPLOY_DIR)
                .join(name);
            let status = std::process::Command::new("sh")
                .arg("-n")
                .arg(&path)
                .status()
                .unwrap();
            assert!(status.success(), "sh -n {}: {status}", path.display());
        }
    }
}
