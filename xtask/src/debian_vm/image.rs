//! The guest's disk image, built once and cached (under the cache's lock):
//! debootstrap, the backports kernel and bpftool in a chroot, the files
//! baked in, then the kernel, initrd and an ext4 image of the tree.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{
    cache_lock::CacheLock,
    context::{self, describe, Ctx},
};

use super::{append, symlink, write, RUNNER_UNIT};

/// Names the cached image: bump it whenever the package list, the mirror
/// suites or the files baked into the image (`bake`) change, so a stale
/// image is never booted. Older versions are removed when a new one is built.
pub(super) const ROOTFS_VERSION: &str = "bookworm-6.12-v1";
pub(super) const SUITE: &str = "bookworm";
/// The host's Debian mirror (this machine reaches no other).
pub(super) const MIRROR: &str = "http://deb.debian.org/debian";
/// What debootstrap installs besides the minimal base (issue 13's list);
/// bpftool lets the scenarios see which programs are loaded and attached.
pub(super) const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "iproute2",
    "python3",
    "initramfs-tools",
    "kmod",
    "udev",
    "procps",
];
/// From bookworm-backports: 6.12, whose verifier takes the programs.
pub(super) const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
pub(super) const EXTRA_PACKAGES: &[&str] = &["bpftool"];
/// The image's size: sparse, about 0.4 GB of it used.
pub(super) const IMAGE_SIZE: &str = "3G";

/// The cached kernel, initrd and disk image.
pub(super) struct Image {
    pub(super) kernel: PathBuf,
    pub(super) initrd: PathBuf,
    pub(super) disk: PathBuf,
}

impl Image {
    pub(super) fn in_dir(dir: &Path) -> Self {
        Self {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            disk: dir.join("disk.img"),
        }
    }
    pub(super) fn complete(&self) -> bool {
        [&self.kernel, &self.initrd, &self.disk]
            .iter()
            .all(|p| p.is_file())
    }
}

pub(super) fn cache_root() -> Result<PathBuf> {
    Ok(context::home_dir()?.join(".local/share/sdm-egress/debian-vm"))
}

/// The image of ROOTFS_VERSION, built first if it is not in the cache. It
/// is built in `<version>.partial` and renamed into place only when
/// complete, so an interrupted build is never booted.
pub(super) fn cached_image(ctx: &Ctx) -> Result<Image> {
    let root = cache_root()?;
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    // Two runs at once (CI and a developer, two worktrees) would build into
    // the same .partial directory: the second waits for the first's image.
    let _lock = CacheLock::take("debian-vm", &root)?;
    let dir = root.join(ROOTFS_VERSION);
    let image = Image::in_dir(&dir);
    if image.complete() {
        println!(
            "xtask: debian-vm: using the cached Debian image in {}",
            dir.display()
        );
        return Ok(image);
    }
    println!(
        "xtask: debian-vm: building the Debian rootfs with debootstrap (a few minutes, once)..."
    );
    let started = Instant::now();
    let partial = root.join(format!("{ROOTFS_VERSION}.partial"));
    if partial.exists() {
        remove_tree(ctx, &partial)?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let built = build_image(ctx, &partial);
    // The rootfs tree is only the image's source: the image is the cache.
    let rootfs = partial.join("rootfs");
    if rootfs.exists() {
        remove_tree(ctx, &rootfs)?;
    }
    built.context("could not build the Debian VM image")?;
    if dir.exists() {
        remove_tree(ctx, &dir)?;
    }
    fs::rename(&partial, &dir).with_context(|| format!("cannot create {}", dir.display()))?;
    remove_stale_versions(ctx, &root)?;
    println!(
        "xtask: debian-vm: built the image in {} s: {}",
        started.elapsed().as_secs(),
        dir.display()
    );
    Ok(image)
}

/// Older image versions: a few GB each, never booted again.
pub(super) fn remove_stale_versions(ctx: &Ctx, root: &Path) -> Result<()> {
    for entry in fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && entry.file_name() != ROOTFS_VERSION {
            println!(
                "xtask: debian-vm: removing the stale image {}",
                entry.path().display()
            );
            remove_tree(ctx, &entry.path())?;
        }
    }
    Ok(())
}

/// debootstrap, the backports kernel and bpftool inside a chroot, the baked
/// files, then the kernel, initrd and `mkfs.ext4 -d` image into `dir`.
pub(super) fn build_image(ctx: &Ctx, dir: &Path) -> Result<()> {
    let rootfs = dir.join("rootfs");
    let mut debootstrap = ctx.command("debootstrap");
    debootstrap
        .args(["--variant=minbase", "--include"])
        .arg(BASE_PACKAGES.join(","))
        .arg(SUITE)
        .arg(&rootfs)
        .arg(MIRROR);
    println!("xtask: debian-vm: {}", describe(&debootstrap));
    context::run(&mut debootstrap)?;

    // The cloud kernel builds virtio_blk as a module: the initrd needs it
    // to find the root disk. Written before the kernel is installed, whose
    // postinst makes the initrd.
    append(
        &rootfs.join("etc/initramfs-tools/modules"),
        "virtio_pci\nvirtio_blk\next4\n",
    )?;
    write(
        &rootfs.join("etc/apt/sources.list.d/backports.list"),
        &format!("deb {MIRROR} {SUITE}-backports main\n"),
    )?;
    {
        let _mounts = ChrootMounts::new(ctx, &rootfs)?;
        let script = format!(
            "set -e; apt-get update -q; \
             apt-get install -y -q --no-install-recommends -t {SUITE}-backports {KERNEL_PACKAGE}; \
             apt-get install -y -q --no-install-recommends {}; apt-get clean; \
             rm -rf /var/lib/apt/lists/*",
            EXTRA_PACKAGES.join(" ")
        );
        context::run(
            ctx.command("chroot")
                .arg(&rootfs)
                .args(["/bin/sh", "-c", &script])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("installing the kernel in the chroot failed")?;
    }
    bake(&rootfs)?;

    let boot = rootfs.join("boot");
    let kernel = only_file(&boot, "vmlinuz-")?;
    let initrd = only_file(&boot, "initrd.img-")?;
    let image = Image::in_dir(dir);
    fs::copy(&kernel, &image.kernel)
        .with_context(|| format!("cannot copy {}", kernel.display()))?;
    fs::copy(&initrd, &image.initrd)
        .with_context(|| format!("cannot copy {}", initrd.display()))?;
    context::run(
        ctx.command("mkfs.ext4")
            .args(["-q", "-F", "-L", "sdmvm", "-d"])
            .arg(&rootfs)
            .arg(&image.disk)
            .arg(IMAGE_SIZE),
    )
}

/// The files the image carries besides Debian's: the scenario runner unit,
/// enabled; no login prompts on the console the results are read from.
pub(super) fn bake(rootfs: &Path) -> Result<()> {
    let units = rootfs.join("etc/systemd/system");
    write(&units.join("sdmvm.service"), RUNNER_UNIT)?;
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants).with_context(|| format!("cannot create {}", wants.display()))?;
    symlink(
        "/etc/systemd/system/sdmvm.service",
        &wants.join("sdmvm.service"),
    )?;
    for getty in ["serial-getty@ttyS0.service", "getty@tty1.service"] {
        symlink("/dev/null", &units.join(getty))?;
    }
    write(&rootfs.join("etc/hostname"), "sdmvm\n")?;
    write(
        &rootfs.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1 sdmvm\n",
    )?;
    write(&rootfs.join("etc/fstab"), "/dev/vda / ext4 rw 0 1\n")
}

/// Removes a cached tree, after unmounting (lazily) whatever a build that
/// was killed left mounted in it: removing the files of a chroot whose /dev
/// is still the host's bind mount would remove the host's device nodes.
pub(super) fn remove_tree(ctx: &Ctx, dir: &Path) -> Result<()> {
    for target in mounts_under(dir)?.iter().rev() {
        let mut umount = ctx.command("umount");
        context::run(umount.arg("-l").arg(target))?;
    }
    let left = mounts_under(dir)?;
    ensure!(
        left.is_empty(),
        "{left:?} are still mounted: not removing {}",
        dir.display()
    );
    fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// Mount points at or below `dir`, from /proc/mounts, outermost first.
pub(super) fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mount_points_under(&mounts, dir))
}

pub(super) fn mount_points_under(mounts: &str, dir: &Path) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        // /proc/mounts writes a space in a path as \040.
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// The one file in `dir` whose name starts with `prefix` (one kernel).
pub(super) fn only_file(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            found.push(entry.path());
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!(
            "expected one {prefix}* in {}, found {other:?}",
            dir.display()
        ),
    }
}

/// proc, sys and dev mounted in a chroot for apt and initramfs-tools;
/// unmounted when dropped, also when the installation failed.
pub(super) struct ChrootMounts<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) mounted: Vec<PathBuf>,
}

impl<'a> ChrootMounts<'a> {
    pub(super) fn new(ctx: &'a Ctx, rootfs: &Path) -> Result<Self> {
        let mut mounts = Self {
            ctx,
            mounted: Vec::new(),
        };
        for (what, fstype, at) in [
            ("proc", Some("proc"), "proc"),
            ("sysfs", Some("sysfs"), "sys"),
            ("/dev", None, "dev"),
        ] {
            let target = rootfs.join(at);
            let mut mount = ctx.command("mount");
            match fstype {
                Some(t) => mount.args(["-t", t, what]),
                None => mount.args(["--bind", what]),
            };
            context::run(mount.arg(&target))?;
            mounts.mounted.push(target);
        }
        Ok(mounts)
    }
}

impl Drop for ChrootMounts<'_> {
    fn drop(&mut self) {
        for target in self.mounted.iter().rev() {
            // Lazy: a process the chroot left behind must not keep the
            // host's /dev mounted inside the cache.
            let mut umount = self.ctx.command("umount");
            umount.arg("-l").arg(target);
            if let Err(e) = context::run(&mut umount) {
                eprintln!("xtask: debian-vm: {e:#}");
            }
        }
    }
}
