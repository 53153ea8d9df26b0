//! The guests: an initramfs of busybox, the smoke test and its fixtures
//! (one base, plus each kernel's veth module), booted under qemu; and the
//! same smoke test on the host's own kernel.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::context::{describe, output, Ctx};

use super::fetch::Fetched;
use super::report::{parse_results, KernelRow};
use super::{EXIT_MARK, GUEST_TIMEOUT, SMOKE_TEST};

/// The smoke test's executable, as `cargo test --no-run` built it.
pub(super) fn smoke_binary(ctx: &Ctx, release: bool) -> Result<PathBuf> {
    let mut cmd = ctx.cargo([
        "test",
        "--package",
        "sdm-tests",
        "--test",
        SMOKE_TEST,
        "--no-run",
        "--message-format=json",
    ]);
    if release {
        cmd.arg("--release");
    }
    cmd.env_remove("AYA_BUILD_SKIP").stderr(Stdio::inherit());
    let out = output(&mut cmd)?;
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|m| m["target"]["name"] == SMOKE_TEST && m["executable"].is_string())
        .and_then(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo test --no-run named no executable for the smoke lab")
}

/// The files every guest gets, mirrored at their host paths: the smoke
/// binary and what it runs, their libraries, busybox and `ip`.
pub(super) fn build_base_initramfs(ctx: &Ctx, smoke: &Path, out_dir: &Path) -> Result<PathBuf> {
    let stage = out_dir.join("stage");
    let _ = fs::remove_dir_all(&stage);
    let bin_dir = smoke
        .parent()
        .and_then(Path::parent)
        .context("the smoke binary is not in target/<profile>/deps")?;
    let executables = [
        smoke.to_path_buf(),
        bin_dir.join("sdm-agent"),
        bin_dir.join("lab-probe"),
        ctx.find_program("ip")
            .context("iproute2's ip is not installed")?,
    ];
    for exe in &executables {
        stage_stripped(ctx, exe, &stage)?;
        for lib in shared_libraries(ctx, exe)? {
            stage_copy(&lib, &stage)?;
        }
    }
    for fixture in refused_fixtures(bin_dir)? {
        stage_copy(&fixture, &stage)?;
    }
    let busybox = ctx
        .find_program("busybox")
        .context("busybox (Debian's busybox-static) is not installed")?;
    let bin = stage.join("bin");
    fs::create_dir_all(&bin)?;
    fs::copy(&busybox, bin.join("busybox"))?;
    for applet in output(ctx.command(&busybox).arg("--list"))?.lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" && applet != "ip" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    for dir in ["proc", "sys", "dev", "run", "tmp", "etc", "var/tmp"] {
        fs::create_dir_all(stage.join(dir))?;
    }
    fs::write(stage.join("etc/resolv.conf"), "nameserver 127.0.0.1\n")?;
    fs::write(
        stage.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
    )?;
    fs::write(stage.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    write_init(&stage.join("init"), smoke)?;
    let archive = out_dir.join("base.cpio");
    cpio(ctx, &stage, &archive)?;
    fs::remove_dir_all(&stage)?;
    Ok(archive)
}

/// The refused fixture beside sdm-agent's build output: every copy, since
/// the test binary names the one of its own build by path.
pub(super) fn refused_fixtures(bin_dir: &Path) -> Result<Vec<PathBuf>> {
    let build = bin_dir.join("build");
    let mut found = Vec::new();
    for entry in fs::read_dir(&build).with_context(|| format!("list {}", build.display()))? {
        let dir = entry?.path();
        let is_agent = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("sdm-agent-"));
        let path = dir.join("out/sdm-ebpf-refused");
        if is_agent && path.exists() {
            found.push(path);
        }
    }
    if found.is_empty() {
        bail!(
            "no sdm-ebpf-refused under {}: build the workspace first",
            build.display()
        );
    }
    Ok(found)
}

/// Copies `exe` to its own path under `stage`, without debug info (the
/// guest keeps the whole archive in memory).
pub(super) fn stage_stripped(ctx: &Ctx, exe: &Path, stage: &Path) -> Result<()> {
    let dest = staged(exe, stage);
    fs::create_dir_all(dest.parent().context("a file has a folder")?)?;
    crate::context::run(
        ctx.command("objcopy")
            .arg("--strip-debug")
            .arg(exe)
            .arg(&dest),
    )
}

pub(super) fn stage_copy(file: &Path, stage: &Path) -> Result<()> {
    let dest = staged(file, stage);
    fs::create_dir_all(dest.parent().context("a file has a folder")?)?;
    fs::copy(file, &dest).with_context(|| format!("copy {}", file.display()))?;
    Ok(())
}

pub(super) fn staged(file: &Path, stage: &Path) -> PathBuf {
    stage.join(file.strip_prefix("/").unwrap_or(file))
}

/// The libraries `ldd` lists for `exe`, and its loader.
pub(super) fn shared_libraries(ctx: &Ctx, exe: &Path) -> Result<Vec<PathBuf>> {
    let out = output(ctx.command("ldd").arg(exe))?;
    Ok(out
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// The guest's /init: mounts, veth, the smoke binary, power off. Nothing
/// is mounted over /tmp: the initramfs is writable as it is, and the
/// checkout (hence the staged binaries) may itself live under /tmp.
pub(super) fn write_init(path: &Path, smoke: &Path) -> Result<()> {
    let script = format!(
        "#!/bin/sh\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mkdir -p /sys/fs/cgroup /sys/fs/bpf\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t tmpfs tmpfs /run\n\
         ip link set lo up\n\
         insmod /veth.ko || echo 'sdm-guest: insmod veth failed'\n\
         echo \"sdm-guest: kernel $(uname -r)\"\n\
         SDM_KERNEL_GUEST=1 SDM_LAB_READY_SECS=900 RUST_BACKTRACE=1 {smoke} --test-threads=1 --nocapture\n\
         echo \"{EXIT_MARK}$?\"\n\
         poweroff -f\n",
        smoke = smoke.display()
    );
    fs::write(path, script)?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `find . | cpio -o -H newc` of `dir` into `archive`.
pub(super) fn cpio(ctx: &Ctx, dir: &Path, archive: &Path) -> Result<()> {
    let out = fs::File::create(archive).with_context(|| format!("create {}", archive.display()))?;
    crate::context::run(
        ctx.command("sh")
            .args(["-c", "find . | cpio -o -H newc --quiet"])
            .current_dir(dir)
            .stdout(out),
    )
}

/// The base archive with this kernel's veth module appended (the kernel
/// unpacks concatenated newc archives one after the other).
pub(super) fn guest_initramfs(base: &Path, k: &Fetched, out_dir: &Path) -> Result<PathBuf> {
    let extra = out_dir.join(format!("extra-{}", k.series));
    let _ = fs::remove_dir_all(&extra);
    fs::create_dir_all(&extra)?;
    fs::copy(&k.veth, extra.join("veth.ko"))?;
    let extra_cpio = out_dir.join(format!("extra-{}.cpio", k.series));
    let status = Command::new("sh")
        .args(["-c", "find . | cpio -o -H newc --quiet"])
        .current_dir(&extra)
        .stdout(fs::File::create(&extra_cpio)?)
        .status()
        .context("run cpio")?;
    if !status.success() {
        bail!("cpio of {} failed ({status})", extra.display());
    }
    let initrd = out_dir.join(format!("initrd-{}.cpio", k.series));
    let mut bytes = fs::read(base)?;
    bytes.extend(fs::read(&extra_cpio)?);
    fs::write(&initrd, bytes)?;
    fs::remove_dir_all(&extra)?;
    fs::remove_file(&extra_cpio)?;
    Ok(initrd)
}

pub(super) fn run_on_host(smoke: &Path, out_dir: &Path) -> Result<KernelRow> {
    let start = Instant::now();
    let out = Command::new(smoke)
        .args(["--test-threads=1", "--nocapture"])
        .output()
        .with_context(|| format!("run {}", smoke.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(out_dir.join("host.log"), &text)?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok(parse_results(
        &release,
        super::report::HOST.to_owned(),
        &text,
        out.status.success(),
        start.elapsed(),
    ))
}

pub(super) fn boot_guest(k: &Fetched, initrd: &Path, log: &Path) -> Result<KernelRow> {
    let start = Instant::now();
    let console = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    // Not `-cpu max`: this qemu's TCG double-faults the guest in SLUB's
    // cmpxchg16b path (seen with 6.12 at boot), so no cx16.
    cmd.args([
        "-machine",
        "q35",
        "-cpu",
        "qemu64,-cx16",
        "-m",
        "2048",
        "-smp",
        "1",
    ])
    .args(["-nographic", "-no-reboot", "-nic", "none"])
    .arg("-kernel")
    .arg(&k.vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
    .stdin(Stdio::null())
    .stdout(console.try_clone()?)
    .stderr(console);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start `{}`", describe(&cmd)))?;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the guest did not power off within {GUEST_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(500));
    };
    let text = fs::read_to_string(log).unwrap_or_default();
    let Some(code) = text.lines().find_map(|l| {
        l.find(EXIT_MARK)
            .map(|at| l[at + EXIT_MARK.len()..].trim().to_owned())
    }) else {
        bail!("qemu exited ({status}) without the smoke binary's exit status: the guest did not boot or crashed");
    };
    println!(
        "xtask: kernel matrix: {} done in {} s",
        k.release,
        start.elapsed().as_secs()
    );
    Ok(parse_results(
        &k.release,
        format!("{} ({})", k.package, k.hosts),
        &text,
        code == "0",
        start.elapsed(),
    ))
}
