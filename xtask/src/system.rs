//! Machine state that running and testing the agent need: root, bpffs, and
//! the Debian packages the privileged tests call.

use std::{fs, path::Path};

use anyhow::{bail, Context as _, Result};

use crate::context::Ctx;

/// Where aya pins maps and the kernel tests look for them.
const BPFFS: &str = "/sys/fs/bpf";

/// A Debian package the privileged tests need, and a command it installs
/// that tells whether it is there.
pub struct DebianPackage {
    pub name: &'static str,
    pub command: &'static str,
}

/// What the privileged tests run besides the agent (add e.g. chromium here).
pub const TEST_PACKAGES: &[DebianPackage] = &[
    DebianPackage {
        name: "iproute2",
        command: "ip",
    },
    // The kernel matrix boots Debian's kernels under qemu with an
    // initramfs of busybox and the test binaries.
    DebianPackage {
        name: "qemu-system-x86",
        command: "qemu-system-x86_64",
    },
    DebianPackage {
        name: "busybox-static",
        command: "busybox",
    },
    DebianPackage {
        name: "cpio",
        command: "cpio",
    },
    DebianPackage {
        name: "xz-utils",
        command: "xz",
    },
    // The capabilities test names a process's capability sets with capsh
    // (setpriv and unshare are util-linux's, always installed).
    DebianPackage {
        name: "libcap2-bin",
        command: "capsh",
    },
    // The dashboard test drives the page in headless Chromium.
    DebianPackage {
        name: "chromium",
        command: "chromium",
    },
    // The prometheus test checks a live scrape with promtool and runs a
    // real Prometheus against a lab agent.
    DebianPackage {
        name: "prometheus",
        command: "promtool",
    },
];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails unless xtask runs as root, which `what` needs.
pub fn require_root(what: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    bail!(
        "{what} needs root: it loads eBPF programs, attaches them to cgroups and \
         mounts bpffs. Run it as root (for example `sudo -E env PATH=\"$PATH\" cargo xtask ...`)."
    )
}

/// Mounts bpffs at /sys/fs/bpf unless it is there already.
pub fn ensure_bpffs(ctx: &Ctx) -> Result<()> {
    let mounts =
        fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts to look for bpffs")?;
    if bpffs_mounted(&mounts) {
        println!("xtask: bpffs at {BPFFS} ok");
        return Ok(());
    }
    println!("xtask: mounting bpffs at {BPFFS}");
    if ctx.dry_run {
        println!("xtask: [dry run] would create {BPFFS} if missing");
    } else {
        require_root("mounting bpffs")?;
        fs::create_dir_all(BPFFS).with_context(|| format!("cannot create {BPFFS}"))?;
    }
    ctx.run_or_show(ctx.command("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

/// Whether a /proc/mounts listing has a bpf filesystem at /sys/fs/bpf.
fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    })
}

/// Installs the packages in TEST_PACKAGES whose command is not on PATH.
pub fn ensure_test_packages(ctx: &Ctx) -> Result<()> {
    ensure_packages(ctx, TEST_PACKAGES, "test packages")
}

/// Installs those of `packages` whose command is not on PATH; `what` names
/// them in messages.
pub fn ensure_packages(ctx: &Ctx, packages: &[DebianPackage], what: &str) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|package| ctx.find_program(package.command).is_none())
        .map(|package| package.name)
        .collect();
    let all: Vec<&str> = packages.iter().map(|package| package.name).collect();
    if missing.is_empty() {
        println!("xtask: {what} ({}) ok", all.join(", "));
        return Ok(());
    }
    println!(
        "xtask: installing Debian packages {} (about 30 s)...",
        missing.join(" ")
    );
    if !ctx.dry_run {
        require_root("installing Debian packages")?;
        if !Path::new("/usr/bin/apt-get").exists() {
            bail!(
                "apt-get not found: install {} with this system's package manager",
                missing.join(" ")
            );
        }
    }
    // A fresh machine's package lists may be empty or old.
    ctx.run_or_show(ctx.command("apt-get").arg("update"))?;
    ctx.run_or_show(
        ctx.command("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            // CI has no standard input to answer debconf's questions.
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpffs_in_proc_mounts() {
        let with = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        let without = "sysfs /sys sysfs rw 0 0\nnone /sys/fs/bpf tmpfs rw 0 0\n";
        assert!(bpffs_mounted(with));
        assert!(!bpffs_mounted(without));
        assert!(!bpffs_mounted(""));
    }
}
