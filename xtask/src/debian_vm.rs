//! `cargo xtask debian-vm`: the Debian package on a real Debian 12 host
//! under a running systemd (issue 13), in a qemu guest.
//!
//! The guest is Debian bookworm made with debootstrap (systemd-sysv as PID
//! 1, the bookworm-backports cloud kernel so the programs load), booted
//! under qemu's TCG (no KVM here) with no network interface (`-nic none`).
//! Its disk image is built once and cached under
//! `~/.local/share/sdm-egress/debian-vm/<ROOTFS_VERSION>/`; every run boots
//! it with `snapshot=on`, so the cache is never written, and a second,
//! read-only disk (the payload: both .deb files, the config, the scenario
//! script debian_vm/guest.sh and the stand-in sdm-proxy debian_vm/proxy.py)
//! carries what this run tests. A oneshot unit baked into the image mounts
//! the payload and runs the scenarios; they print `SDMVM:` lines on the
//! serial console, which this reads, and power the guest off. Everything
//! that enforces runs inside the guest; nothing here touches this host's
//! cgroups or bpffs.

mod boot;
mod image;
#[cfg(test)]
mod tests;

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{context::Ctx, package, system};

use boot::{boot, check_results, write_payload, WorkDir};
use image::cached_image;

/// The Debian version suffix of the rebuilt package the upgrade installs.
const NEXT_SUFFIX: &str = "+1";
/// Every scenario guest.sh runs, in order: each must print PASS.
const SCENARIOS: &[&str] = &[
    "install",
    "first-connect",
    "restart",
    "reload",
    "reboot",
    "upgrade",
    "journal-security",
    "broken-config",
    "purge",
];
/// Both boots and every scenario under TCG take 3 to 5 minutes here; this
/// only catches a guest that hangs.
const GUEST_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The prefix of the scenario lines on the serial console.
const RESULT_PREFIX: &str = "SDMVM: ";

const GUEST_SCRIPT: &str = include_str!("debian_vm/guest.sh");
const STAND_IN: &str = include_str!("debian_vm/proxy.py");
/// The agent's config in the guest: enforce on sdm-proxy.slice, with one
/// rule for the stand-in's allowed address. The resolver is on loopback,
/// where nothing answers: the policy's hostnames simply stay unresolved.
const GUEST_CONFIG: &str = r#"role = ["gateway"]
region = "us"
mode = "enforce"
cgroup = "unit:sdm-proxy.slice"

[dns]
servers = ["127.0.0.1"]

[[allow]]
name = "peer"
direction = "egress"
to = "10.77.0.2/32"
port = 443
proto = "tcp"
"#;

/// The unit baked into the image that runs the payload's scenarios.
const RUNNER_UNIT: &str = "\
[Unit]
Description=sdm-egress Debian VM scenarios (payload on /dev/vdb)
After=multi-user.target

[Service]
Type=oneshot
TimeoutStartSec=infinity
StandardOutput=journal
ExecStart=/bin/sh -c 'mkdir -p /payload && mount -o ro /dev/vdb /payload && exec /bin/bash /payload/guest.sh || { echo \"SDMVM: FAIL payload: cannot run /payload/guest.sh\" >/dev/ttyS0; systemctl poweroff; }'

[Install]
WantedBy=multi-user.target
";

/// `cargo xtask debian-vm`: builds both packages, the image if it is not
/// cached, boots the guest and checks every scenario's result.
pub fn run(ctx: &Ctx) -> Result<()> {
    system::require_root("the Debian VM test (debootstrap, chroot, mkfs.ext4 -d)")?;
    system::ensure_packages(ctx, HOST_PACKAGES, "Debian VM tools")?;
    let start = Instant::now();
    let first = package::package(ctx)?;
    // The same release binary, eBPF object included: only the version differs.
    let next = package::package_with_suffix(ctx, NEXT_SUFFIX)?;
    let image = cached_image(ctx)?;
    let work = WorkDir::new(&ctx.target_dir().join("debian-vm"))?;
    let payload = write_payload(ctx, &work.0, &first.deb, &next.deb)?;
    let console = ctx.target_dir().join("debian-vm").join("console.log");
    let results = boot(ctx, &image, &payload, &console)?;
    check_results(&results)
        .with_context(|| format!("the whole console output is in {}", console.display()))?;
    println!(
        "xtask: debian-vm: all {} scenarios passed ({} s)",
        SCENARIOS.len(),
        start.elapsed().as_secs()
    );
    Ok(())
}

/// Host commands this needs, and their packages.
const HOST_PACKAGES: &[system::DebianPackage] = &[
    system::DebianPackage {
        name: "qemu-system-x86",
        command: "qemu-system-x86_64",
    },
    system::DebianPackage {
        name: "debootstrap",
        command: "debootstrap",
    },
    system::DebianPackage {
        name: "e2fsprogs",
        command: "mkfs.ext4",
    },
];

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

fn append(path: &Path, text: &str) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot link {} to {target}", link.display()))
}
