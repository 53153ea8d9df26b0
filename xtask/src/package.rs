//! `cargo xtask package`: the Debian package of the agent,
//! `target/debian/sdm-agent_<version>_<arch>.deb`, and the check that installs
//! it on this machine, looks at what it installed and purges it again.
//!
//! The package is a staged tree handed to `dpkg-deb --build
//! --root-owner-group`, which every Debian system has; no cargo-deb or
//! debhelper. Its source files are under deploy/debian; the binary is the
//! release build of sdm-agent (the eBPF object embedded by its build.rs), the
//! default config is what that binary prints with `default-config`.

mod control;
mod deb;
mod install_check;
#[cfg(test)]
mod tests;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::context::Ctx;

pub use deb::package_with_suffix;
pub use install_check::install_check;

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
/// (debian_vm/); issue 13 holds it at 2.5 at most, which also catches a
/// lost hardening directive.
const MAX_EXPOSURE: u32 = 25;

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
/// `target/debian/sdm-agent_<version>_<arch>.deb`.
pub fn package(ctx: &Ctx) -> Result<Built> {
    package_with_suffix(ctx, "")
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
