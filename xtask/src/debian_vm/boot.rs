//! One run of the guest: the payload disk with what this run tests, qemu
//! booting the cached image as a snapshot, the `SDMVM:` lines read off its
//! console, and the verdict on them.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Instant,
};

use anyhow::{ensure, Context as _, Result};

use crate::context::{self, describe, Ctx};

use super::image::Image;
use super::{write, GUEST_CONFIG, GUEST_SCRIPT, GUEST_TIMEOUT, RESULT_PREFIX, SCENARIOS, STAND_IN};

/// A directory for one run's files, removed when dropped.
pub(super) struct WorkDir(pub(super) PathBuf);

impl WorkDir {
    pub(super) fn new(parent: &Path) -> Result<Self> {
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
pub(super) fn write_payload(ctx: &Ctx, work: &Path, first: &Path, next: &Path) -> Result<PathBuf> {
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
pub(super) struct Guest(pub(super) Child);

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
pub(super) fn boot(
    ctx: &Ctx,
    image: &Image,
    payload: &Path,
    console: &Path,
) -> Result<Vec<String>> {
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
pub(super) fn qemu_command(ctx: &Ctx, image: &Image, payload: &Path) -> Command {
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
pub(super) fn read_console(stdout: impl Read, mut log: fs::File) -> Vec<String> {
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

pub(super) fn drive(path: &Path, option: &str) -> String {
    // qemu's -drive splits on ',': a comma in the path is doubled.
    format!(
        "file={},format=raw,if=virtio,{option}",
        path.display().to_string().replace(',', ",,")
    )
}

/// Every scenario passed, and the guest said it was done.
pub(super) fn check_results(lines: &[String]) -> Result<()> {
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
