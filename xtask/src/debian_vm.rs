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

use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{
    cache_lock::CacheLock,
    context::{self, describe, Ctx},
    package, system,
};

/// Names the cached image: bump it whenever the package list, the mirror
/// suites or the files baked into the image (`bake`) change, so a stale
/// image is never booted. Older versions are removed when a new one is built.
const ROOTFS_VERSION: &str = "bookworm-6.12-v1";
const SUITE: &str = "bookworm";
/// The host's Debian mirror (this machine reaches no other).
const MIRROR: &str = "http://deb.debian.org/debian";
/// What debootstrap installs besides the minimal base (issue 13's list);
/// bpftool lets the scenarios see which programs are loaded and attached.
const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "iproute2",
    "python3",
    "initramfs-tools",
    "kmod",
    "udev",
    "procps",
];
/// From bookworm-backports: 6.12, whose verifier takes the programs.
const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
const EXTRA_PACKAGES: &[&str] = &["bpftool"];
/// The image's size: sparse, about 0.4 GB of it used.
const IMAGE_SIZE: &str = "3G";

/// The Debian version suffix of the rebuilt package the upgrade installs.
const NEXT_SUFFIX: &str = "+1";
/// Every scenario guest.sh runs, in order: each must print PASS.
const SCENARIOS: &[&str] = &[
    "install",
    "first-connect",
    "restart",
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

/// The cached kernel, initrd and disk image.
struct Image {
    kernel: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
}

impl Image {
    fn in_dir(dir: &Path) -> Self {
        Self {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            disk: dir.join("disk.img"),
        }
    }
    fn complete(&self) -> bool {
        [&self.kernel, &self.initrd, &self.disk]
            .iter()
            .all(|p| p.is_file())
    }
}

fn cache_root() -> Result<PathBuf> {
    Ok(context::home_dir()?.join(".local/share/sdm-egress/debian-vm"))
}

/// The image of ROOTFS_VERSION, built first if it is not in the cache. It
/// is built in `<version>.partial` and renamed into place only when
/// complete, so an interrupted build is never booted.
fn cached_image(ctx: &Ctx) -> Result<Image> {
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
fn remove_stale_versions(ctx: &Ctx, root: &Path) -> Result<()> {
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
fn build_image(ctx: &Ctx, dir: &Path) -> Result<()> {
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
fn bake(rootfs: &Path) -> Result<()> {
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
fn remove_tree(ctx: &Ctx, dir: &Path) -> Result<()> {
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
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mount_points_under(&mounts, dir))
}

fn mount_points_under(mounts: &str, dir: &Path) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        // /proc/mounts writes a space in a path as \040.
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// The one file in `dir` whose name starts with `prefix` (one kernel).
fn only_file(dir: &Path, prefix: &str) -> Result<PathBuf> {
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
struct ChrootMounts<'a> {
    ctx: &'a Ctx,
    mounted: Vec<PathBuf>,
}

impl<'a> ChrootMounts<'a> {
    fn new(ctx: &'a Ctx, rootfs: &Path) -> Result<Self> {
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

/// A directory for one run's files, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(parent: &Path) -> Result<Self> {
        let dir = parent.join(format!("run-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("xtask: debian-vm: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// The payload disk: a small ext4 image of both packages, the config, the
/// scenario script, the stand-in and the versions the scenarios expect.
fn write_payload(ctx: &Ctx, work: &Path, first: &Path, next: &Path) -> Result<PathBuf> {
    let dir = work.join("payload");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = |deb: &Path| -> Result<String> {
        deb.file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .with_context(|| format!("odd package file name {}", deb.display()))
    };
    let (first_name, next_name) = (name(first)?, name(next)?);
    for (deb, file) in [(first, &first_name), (next, &next_name)] {
        fs::copy(deb, dir.join(file)).with_context(|| format!("cannot copy {}", deb.display()))?;
    }
    let next_version = context::output(
        ctx.command("dpkg-deb")
            .args(["--field"])
            .arg(next)
            .arg("Version"),
    )?;
    write(
        &dir.join("versions"),
        &format!(
            "DEB={first_name}\nDEB_NEXT={next_name}\nVERSION_NEXT={}\n",
            next_version.trim()
        ),
    )?;
    write(&dir.join("config.toml"), GUEST_CONFIG)?;
    write(&dir.join("guest.sh"), GUEST_SCRIPT)?;
    write(&dir.join("proxy.py"), STAND_IN)?;
    let drop_in = ctx.root.join("deploy/debian/sdm-proxy-sdm-agent.conf");
    fs::copy(&drop_in, dir.join("sdm-proxy-sdm-agent.conf"))
        .with_context(|| format!("cannot copy {}", drop_in.display()))?;
    let disk = work.join("payload.img");
    context::run(
        ctx.command("mkfs.ext4")
            .args(["-q", "-F", "-L", "payload", "-d"])
            .arg(&dir)
            .arg(&disk)
            .arg("64M"),
    )?;
    Ok(disk)
}

/// A child process killed (and reaped) when dropped: qemu never outlives
/// the step, whatever failed.
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Boots the guest and returns its `SDMVM:` lines (without the prefix),
/// printing them as they come and the whole console to `console`.
fn boot(ctx: &Ctx, image: &Image, payload: &Path, console: &Path) -> Result<Vec<String>> {
    let mut qemu = qemu_command(ctx, image, payload);
    println!("xtask: debian-vm: booting the guest: {}", describe(&qemu));
    let started = Instant::now();
    let mut guest = Guest(
        qemu.spawn()
            .with_context(|| format!("could not start `{}`", describe(&qemu)))?,
    );
    let stdout = guest
        .0
        .stdout
        .take()
        .context("qemu's stdout was not piped")?;
    if let Some(parent) = console.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let log = fs::File::create(console)
        .with_context(|| format!("cannot create {}", console.display()))?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let lines = read_console(stdout, log);
        let _ = tx.send(());
        lines
    });
    let ended = rx.recv_timeout(GUEST_TIMEOUT);
    drop(guest);
    let lines = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the console reader panicked"))?;
    ensure!(
        ended.is_ok(),
        "the guest did not power off within {} minutes (the console is in {})",
        GUEST_TIMEOUT.as_secs() / 60,
        console.display()
    );
    println!(
        "xtask: debian-vm: the guest powered off after {} s",
        started.elapsed().as_secs()
    );
    Ok(lines)
}

/// The qemu command line of the guest: the image's kernel and disk (as a
/// snapshot) and the payload disk, the serial console on stdout.
fn qemu_command(ctx: &Ctx, image: &Image, payload: &Path) -> Command {
    let mut qemu = ctx.command("qemu-system-x86_64");
    // -cpu max double-faults in SLUB's cmpxchg16b path under disk writes
    // with this qemu's TCG; qemu64 without cx16 runs reliably. No
    // -no-reboot: a reboot scenario resets the machine within this qemu,
    // whose snapshot overlay keeps the guest's writes across it.
    qemu.args([
        "-machine",
        "q35",
        "-cpu",
        "qemu64,-cx16",
        "-m",
        "1024",
        "-smp",
        "1",
    ])
    .args(["-display", "none", "-vga", "none", "-monitor", "none"])
    .args(["-serial", "stdio", "-nic", "none"])
    .arg("-kernel")
    .arg(&image.kernel)
    .arg("-initrd")
    .arg(&image.initrd)
    .arg("-drive")
    .arg(drive(&image.disk, "snapshot=on"))
    .arg("-drive")
    .arg(drive(payload, "readonly=on"))
    .args([
        "-append",
        "console=ttyS0 root=/dev/vda rw quiet loglevel=3 systemd.show_status=false \
             panic=-1",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    qemu
}

/// Copies the guest's console to `log` and returns its `SDMVM:` lines,
/// printing them as they come; ends when qemu exits (its stdout closes).
fn read_console(stdout: impl Read, mut log: fs::File) -> Vec<String> {
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    // Bytes, not UTF-8 lines: the console carries whatever the guest
    // prints.
    while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
        let _ = log.write_all(&buf);
        let line = String::from_utf8_lossy(&buf).trim().to_owned();
        buf.clear();
        if let Some(result) = line
            .find(RESULT_PREFIX)
            .map(|at| line[at + RESULT_PREFIX.len()..].to_owned())
        {
            println!("xtask: debian-vm: guest: {result}");
            lines.push(result);
        }
    }
    lines
}

fn drive(path: &Path, option: &str) -> String {
    // qemu's -drive splits on ',': a comma in the path is doubled.
    format!(
        "file={},format=raw,if=virtio,{option}",
        path.display().to_string().replace(',', ",,")
    )
}

/// Every scenario passed, and the guest said it was done.
fn check_results(lines: &[String]) -> Result<()> {
    ensure!(
        !lines.is_empty(),
        "the guest printed no scenario result: it did not boot, or the scenario unit did not run"
    );
    let failed: Vec<&String> = lines.iter().filter(|l| l.starts_with("FAIL ")).collect();
    ensure!(
        failed.is_empty(),
        "scenarios failed in the guest:\n  {}",
        failed
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    let missing: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| {
            !lines
                .iter()
                .any(|l| l == &format!("PASS {s}") || l.starts_with(&format!("PASS {s} (")))
        })
        .collect();
    ensure!(
        missing.is_empty(),
        "scenarios that never reported: {missing:?}"
    );
    ensure!(
        lines.iter().any(|l| l.starts_with("DONE ")),
        "the guest did not finish its scenarios (no DONE line)"
    );
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn every_scenario_must_pass_and_the_guest_finish() {
        let all: String = SCENARIOS
            .iter()
            .map(|s| format!("PASS {s} (detail)\n"))
            .collect();
        check_results(&lines(&format!("{all}DONE 8 passed, 0 failed"))).unwrap();
        // No DONE: the guest stopped half way.
        assert!(check_results(&lines(&all)).is_err());
        // A failure, a missing scenario, nothing at all.
        let failed = all.replace("PASS purge (detail)", "FAIL purge: left /run/sdm-agent");
        assert!(check_results(&lines(&format!("{failed}DONE"))).is_err());
        let missing = all.replace("PASS reboot (detail)\n", "");
        assert!(check_results(&lines(&format!("{missing}DONE 7 passed, 0 failed"))).is_err());
        assert!(check_results(&[]).is_err());
        // A prefix of another scenario's name is not that scenario.
        let odd = all.replace("PASS restart (detail)", "PASS restarted");
        assert!(check_results(&lines(&format!("{odd}DONE"))).is_err());
    }

    #[test]
    fn the_guest_script_runs_every_scenario() {
        for s in SCENARIOS {
            assert!(
                GUEST_SCRIPT.contains(&format!("scenario {s} ")),
                "guest.sh does not run {s}"
            );
        }
    }

    #[test]
    fn finds_what_a_killed_build_left_mounted() {
        let mounts = "proc /proc proc rw 0 0\n\
                      proc /c/v1.partial/rootfs/proc proc rw 0 0\n\
                      udev /c/v1.partial/rootfs/dev devtmpfs rw 0 0\n\
                      udev /c/v1.partial2/dev devtmpfs rw 0 0\n\
                      x /c/a\\040b/dev tmpfs rw 0 0\n";
        assert_eq!(
            mount_points_under(mounts, Path::new("/c/v1.partial")),
            [
                PathBuf::from("/c/v1.partial/rootfs/proc"),
                PathBuf::from("/c/v1.partial/rootfs/dev")
            ]
        );
        assert_eq!(
            mount_points_under(mounts, Path::new("/c/a b")),
            [PathBuf::from("/c/a b/dev")]
        );
        assert!(mount_points_under(mounts, Path::new("/c/v2")).is_empty());
    }

    #[test]
    fn drive_paths_with_commas_are_escaped() {
        assert_eq!(
            drive(Path::new("/a,b/disk.img"), "snapshot=on"),
            "file=/a,,b/disk.img,format=raw,if=virtio,snapshot=on"
        );
    }
}
