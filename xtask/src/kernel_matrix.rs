//! The kernel matrix: the smoke lab (tests/tests/kernel_smoke.rs) on every
//! kernel the product supports, each booted under qemu.
//!
//! - Kernels: Debian's own cloud kernels, fetched with `apt-get download`
//!   through a private apt state directory whose sources are the machine's
//!   Debian mirror with the bullseye, bookworm and bookworm-backports suites,
//!   and kept under `~/.local/share/sdm-egress/kernels/<series>/` (the
//!   vmlinuz, the veth module, the release and package name), so a machine
//!   downloads each kernel once.
//! - Guest: an initramfs of busybox-static, iproute2's `ip`, the test binary,
//!   sdm-agent, lab-probe and the refused fixture, each at its host path
//!   (the test finds its helpers by the paths it was built with), with the
//!   libraries `ldd` names; an `/init` that mounts what the lab needs, loads
//!   veth, runs the test binary and powers off.
//! - qemu-system-x86_64 with TCG (no usable KVM here), one guest per kernel,
//!   all at once; their consoles are written to target/kernel-matrix/.
//! - The host's own kernel runs the same binary directly (no guest).
//!
//! A kernel that cannot be fetched or booted, or that prints no result, is a
//! failure of the matrix, never a skip.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::context::{describe, home_dir, output, Ctx};

/// One guest kernel: the series, the Debian suite that ships it, and the
/// hosts that run it.
pub struct GuestKernel {
    pub series: &'static str,
    pub suite: &'static str,
    pub hosts: &'static str,
}

/// The supported floor (5.10) and the kernels between it and the host's.
pub const KERNELS: [GuestKernel; 3] = [
    GuestKernel {
        series: "5.10",
        suite: "bullseye",
        hosts: "Amazon Linux 2, Debian 11",
    },
    GuestKernel {
        series: "6.1",
        suite: "bookworm",
        hosts: "Debian 12, Amazon Linux 2023",
    },
    GuestKernel {
        series: "6.12",
        suite: "bookworm-backports",
        hosts: "Debian 12 backports, RHEL 10 era",
    },
];

/// The smoke lab's test target (tests/tests/kernel_smoke.rs).
const SMOKE_TEST: &str = "kernel_smoke";
/// How long one guest may run: 5.10 under TCG verifies slowly.
const GUEST_TIMEOUT: Duration = Duration::from_secs(25 * 60);
/// The line the guest's /init prints with the test binary's exit status.
const EXIT_MARK: &str = "sdm-guest: exit ";

/// What `cargo xtask kernels` and the test step run.
pub fn run(ctx: &Ctx, release: bool, only: Option<&str>) -> Result<()> {
    let kernels: Vec<&GuestKernel> = KERNELS
        .iter()
        .filter(|k| only.is_none_or(|o| o == k.series))
        .collect();
    if kernels.is_empty() {
        bail!(
            "no kernel series {:?}; the matrix has {}",
            only.unwrap_or(""),
            KERNELS
                .iter()
                .map(|k| k.series)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let out_dir = ctx.target_dir().join("kernel-matrix");
    fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let smoke = smoke_binary(ctx, release)?;
    let mut apt = None;
    let fetched: Vec<Fetched> = kernels
        .iter()
        .map(|k| fetch_kernel(ctx, k, &mut apt))
        .collect::<Result<_>>()?;
    let base = build_base_initramfs(ctx, &smoke, &out_dir)?;

    let mut rows = Vec::new();
    println!("xtask: kernel matrix: the host's kernel runs the smoke lab directly");
    rows.push(run_on_host(&smoke, &out_dir)?);
    println!(
        "xtask: kernel matrix: booting {} guests under qemu (TCG; 5.10 takes several minutes)...",
        fetched.len()
    );
    let guests: Vec<_> = fetched
        .iter()
        .map(|k| {
            let initrd = guest_initramfs(&base, k, &out_dir)?;
            let log = out_dir.join(format!("guest-{}.log", k.series));
            Ok((k, initrd, log))
        })
        .collect::<Result<_>>()?;
    let results: Vec<Result<KernelRow>> = thread::scope(|s| {
        let handles: Vec<_> = guests
            .iter()
            .map(|(k, initrd, log)| s.spawn(move || boot_guest(k, initrd, log)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a guest thread panicked")))
            })
            .collect()
    });
    let mut failures = Vec::new();
    for (result, (k, _, log)) in results.into_iter().zip(&guests) {
        match result {
            Ok(row) => rows.push(row),
            Err(e) => {
                failures.push(format!("{}: {e:#} (console: {})", k.release, log.display()));
                rows.push(KernelRow::failed(&k.release));
            }
        }
    }
    let report = render(&rows);
    print!("{report}");
    let report_path = out_dir.join("report.md");
    fs::write(&report_path, &report).with_context(|| format!("write {}", report_path.display()))?;
    println!("xtask: kernel matrix report: {}", report_path.display());
    failures.extend(rows.iter().filter_map(KernelRow::failure));
    if !failures.is_empty() {
        bail!("kernel matrix failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// A kernel fetched and unpacked into the cache.
struct Fetched {
    series: &'static str,
    /// The hosts that run this kernel series.
    hosts: &'static str,
    /// `uname -r` of the kernel.
    release: String,
    /// The Debian package it came from, with its version.
    package: String,
    vmlinuz: PathBuf,
    veth: PathBuf,
}

/// The cache folder of the kernels and their apt state.
fn cache_dir() -> Result<PathBuf> {
    Ok(home_dir()?.join(".local/share/sdm-egress/kernels"))
}

/// The kernel of `k` from the cache, or fetched into it; `apt` is the
/// private apt, updated once for all the kernels a run fetches.
fn fetch_kernel(ctx: &Ctx, k: &GuestKernel, apt: &mut Option<PrivateApt>) -> Result<Fetched> {
    let dir = cache_dir()?.join(k.series);
    let cached = |name: &str| dir.join(name);
    if let (Ok(release), Ok(package)) = (
        fs::read_to_string(cached("release")),
        fs::read_to_string(cached("package")),
    ) {
        if cached("vmlinuz").exists() && cached("veth.ko").exists() {
            return Ok(Fetched {
                series: k.series,
                hosts: k.hosts,
                release: release.trim().to_owned(),
                package: package.trim().to_owned(),
                vmlinuz: cached("vmlinuz"),
                veth: cached("veth.ko"),
            });
        }
    }
    println!(
        "xtask: kernel matrix: fetching Debian's {} cloud kernel ({}), once...",
        k.series, k.suite
    );
    let apt = match apt {
        Some(apt) => apt,
        None => {
            let fresh = PrivateApt::new(&cache_dir()?.join("apt"))?;
            fresh.update(ctx)?;
            apt.insert(fresh)
        }
    };
    let name = apt.newest_cloud_kernel(ctx, k.series)?;
    let work = dir.join("unpack");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let deb = apt.download(ctx, &name, &work)?;
    let tree = work.join("tree");
    crate::context::run(ctx.command("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let modules = tree.join("lib/modules");
    let release = single_entry(&modules)?;
    let boot = tree.join("boot").join(format!("vmlinuz-{release}"));
    fs::copy(&boot, cached("vmlinuz")).with_context(|| format!("copy {}", boot.display()))?;
    extract_module(ctx, &modules.join(&release), "veth", &cached("veth.ko"))?;
    let version = deb
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('_').nth(1))
        .unwrap_or("?")
        .to_owned();
    let package = format!("{name} {version}");
    fs::write(cached("package"), &package)?;
    fs::write(cached("release"), &release)?;
    fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    Ok(Fetched {
        series: k.series,
        hosts: k.hosts,
        release,
        package,
        vmlinuz: cached("vmlinuz"),
        veth: cached("veth.ko"),
    })
}

/// The one folder under `dir` (lib/modules/<release>).
fn single_entry(dir: &Path) -> Result<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one kernel under {}, found {names:?}",
            dir.display()
        ),
    }
}

/// Copies module `name` (`.ko` or `.ko.xz`) out of a kernel's module tree.
fn extract_module(ctx: &Ctx, tree: &Path, name: &str, dest: &Path) -> Result<()> {
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let path = entry?.path();
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                stack.push(path.clone());
            } else if file == format!("{name}.ko") {
                fs::copy(&path, dest).with_context(|| format!("copy {}", path.display()))?;
                return Ok(());
            } else if file == format!("{name}.ko.xz") {
                let bytes = ctx
                    .command("xz")
                    .args(["-dc"])
                    .arg(&path)
                    .output()
                    .with_context(|| format!("xz -dc {}", path.display()))?;
                if !bytes.status.success() {
                    bail!("xz -dc {} failed ({})", path.display(), bytes.status);
                }
                fs::write(dest, bytes.stdout)?;
                return Ok(());
            }
        }
    }
    bail!("no {name}.ko in {}", tree.display())
}

/// apt with a state folder of its own: the machine's apt configuration and
/// package lists stay as they are.
struct PrivateApt {
    root: PathBuf,
}

impl PrivateApt {
    fn new(root: &Path) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "etc"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("create {}", root.join(sub).display()))?;
        }
        let mirror = debian_mirror()?;
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let sources: String = KERNELS
            .iter()
            .map(|k| format!("deb [signed-by={keyring}] {mirror} {} main\n", k.suite))
            .collect();
        fs::write(root.join("etc/sources.list"), sources)?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    fn options(&self) -> Vec<String> {
        let r = self.root.display();
        vec![
            format!("-oDir::State={r}"),
            format!("-oDir::State::Lists={r}/lists"),
            format!("-oDir::Cache={r}/cache"),
            format!("-oDir::Etc::SourceList={r}/etc/sources.list"),
            "-oDir::Etc::SourceParts=/dev/null".to_owned(),
            "-oDebug::NoLocking=1".to_owned(),
            // Root downloads into root's folders; apt's _apt user could not.
            "-oAPT::Sandbox::User=root".to_owned(),
        ]
    }

    fn update(&self, ctx: &Ctx) -> Result<()> {
        crate::context::run(
            ctx.command("apt-get")
                .args(self.options())
                .args(["-q", "update"])
                .stdout(Stdio::null()),
        )
        .context("apt-get update (private state) for the kernel suites")
    }

    /// The newest `linux-image-<series>.*-cloud-amd64` the suites hold.
    fn newest_cloud_kernel(&self, ctx: &Ctx, series: &str) -> Result<String> {
        let pattern = format!(
            "^linux-image-{}[.-][0-9].*-cloud-amd64$",
            series.replace('.', "\\.")
        );
        let found = output(ctx.command("apt-cache").args(self.options()).args([
            "search",
            "--names-only",
            &pattern,
        ]))?;
        let names: Vec<&str> = found
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| !n.contains("-dbg") && !n.contains("unsigned"))
            .collect();
        names
            .into_iter()
            .max_by_key(|n| version_key(n))
            .map(str::to_owned)
            .with_context(|| format!("no package matches {pattern} in the Debian suites"))
    }

    fn download(&self, ctx: &Ctx, name: &str, into: &Path) -> Result<PathBuf> {
        crate::context::run(
            ctx.command("apt-get")
                .args(self.options())
                .args(["-q", "download", name])
                .current_dir(into),
        )?;
        fs::read_dir(into)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download {name} left no .deb"))
    }
}

/// The numbers in a package name, in order, to compare kernel versions.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The machine's Debian mirror: the first `URIs:` (deb822) or `deb` line
/// of the apt sources that serves the main archive (not security).
fn debian_mirror() -> Result<String> {
    let mut texts = Vec::new();
    for path in ["/etc/apt/sources.list"] {
        if let Ok(t) = fs::read_to_string(path) {
            texts.push(t);
        }
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sources" || x == "list") {
                texts.push(fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    mirror_from_sources(&texts)
        .context("no Debian mirror in /etc/apt/sources.list(.d): the kernel matrix fetches Debian's kernels from it")
}

fn mirror_from_sources(texts: &[String]) -> Option<String> {
    let is_main = |uri: &str| uri.contains("debian") && !uri.contains("security");
    for text in texts {
        for line in text.lines().map(str::trim) {
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(uri) = uri.filter(|u| is_main(u)) {
                return Some(uri.trim_end_matches('/').to_owned());
            }
        }
    }
    None
}

/// The smoke test's executable, as `cargo test --no-run` built it.
fn smoke_binary(ctx: &Ctx, release: bool) -> Result<PathBuf> {
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
fn build_base_initramfs(ctx: &Ctx, smoke: &Path, out_dir: &Path) -> Result<PathBuf> {
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
fn refused_fixtures(bin_dir: &Path) -> Result<Vec<PathBuf>> {
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
fn stage_stripped(ctx: &Ctx, exe: &Path, stage: &Path) -> Result<()> {
    let dest = staged(exe, stage);
    fs::create_dir_all(dest.parent().context("a file has a folder")?)?;
    crate::context::run(
        ctx.command("objcopy")
            .arg("--strip-debug")
            .arg(exe)
            .arg(&dest),
    )
}

fn stage_copy(file: &Path, stage: &Path) -> Result<()> {
    let dest = staged(file, stage);
    fs::create_dir_all(dest.parent().context("a file has a folder")?)?;
    fs::copy(file, &dest).with_context(|| format!("copy {}", file.display()))?;
    Ok(())
}

fn staged(file: &Path, stage: &Path) -> PathBuf {
    stage.join(file.strip_prefix("/").unwrap_or(file))
}

/// The libraries `ldd` lists for `exe`, and its loader.
fn shared_libraries(ctx: &Ctx, exe: &Path) -> Result<Vec<PathBuf>> {
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
fn write_init(path: &Path, smoke: &Path) -> Result<()> {
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
         SDM_LAB_READY_SECS=900 RUST_BACKTRACE=1 {smoke} --test-threads=1 --nocapture\n\
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
fn cpio(ctx: &Ctx, dir: &Path, archive: &Path) -> Result<()> {
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
fn guest_initramfs(base: &Path, k: &Fetched, out_dir: &Path) -> Result<PathBuf> {
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

/// One column of the matrix: a kernel and its results.
struct KernelRow {
    release: String,
    /// How it ran: "host", or the Debian package it came from.
    how: String,
    checks: BTreeMap<String, String>,
    verifier: BTreeMap<String, String>,
    passed: bool,
    took: Duration,
}

impl KernelRow {
    fn failed(release: &str) -> Self {
        Self {
            release: release.to_owned(),
            how: "did not finish".to_owned(),
            checks: BTreeMap::new(),
            verifier: BTreeMap::new(),
            passed: false,
            took: Duration::ZERO,
        }
    }

    fn failure(&self) -> Option<String> {
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|(_, v)| !v.starts_with("ok"))
            .map(|(k, _)| k.as_str())
            .collect();
        if self.passed && failed.is_empty() {
            return None;
        }
        Some(format!(
            "{}: {}",
            self.release,
            if failed.is_empty() {
                "the smoke binary failed".to_owned()
            } else {
                format!("failed: {}", failed.join(", "))
            }
        ))
    }
}

/// Reads the smoke binary's lines (`smoke: ...`, `verifier: ...`, the test
/// results) out of a console or a test run's output.
fn parse_results(
    release: &str,
    how: String,
    text: &str,
    exit_ok: bool,
    took: Duration,
) -> KernelRow {
    let mut checks = BTreeMap::new();
    let mut verifier = BTreeMap::new();
    for line in text.lines() {
        if let Some(at) = line.find("smoke: ") {
            let rest = &line[at + "smoke: ".len()..];
            if let Some((check, outcome)) = rest.split_once(": ") {
                let verdict = if outcome.starts_with("ok") {
                    "ok"
                } else {
                    "FAILED"
                };
                checks.insert(check.trim().to_owned(), verdict.to_owned());
            }
        }
        if let Some(at) = line.find("verifier: ") {
            let rest = &line[at + "verifier: ".len()..];
            let mut words = rest.split_whitespace();
            if let Some(program) = words.next() {
                let fields: BTreeMap<&str, &str> =
                    words.filter_map(|w| w.split_once('=')).collect();
                let insns = match fields.get("insns").copied() {
                    Some("n/a") | None => "n/a".to_owned(),
                    Some(n) => format!("{n} insns"),
                };
                let cell = format!(
                    "{insns}, {} ms{}",
                    fields.get("ms").copied().unwrap_or("?"),
                    if fields.get("ok") == Some(&"true") {
                        ""
                    } else {
                        " REFUSED"
                    }
                );
                verifier.insert(program.to_owned(), cell);
            }
        }
        for (test, check) in [
            ("every_program_passes_this_kernels_verifier", "verifier"),
            (
                "check_names_the_program_the_verifier_refuses_and_fails",
                "check-refuses",
            ),
        ] {
            if line.contains(&format!("test {test} ... "))
                || line.contains(&format!("test {test} "))
            {
                if line.trim_end().ends_with("ok") {
                    checks.insert(check.to_owned(), "ok".to_owned());
                } else if line.contains("FAILED") {
                    checks.insert(check.to_owned(), "FAILED".to_owned());
                }
            }
        }
    }
    // The verifier test prints its lines between "test ... " and "ok".
    if !checks.contains_key("verifier") && !verifier.is_empty() {
        let all_ok = verifier.values().all(|v| !v.contains("REFUSED"));
        checks.insert(
            "verifier".to_owned(),
            if all_ok { "ok" } else { "FAILED" }.to_owned(),
        );
    }
    KernelRow {
        release: release.to_owned(),
        how,
        checks,
        verifier,
        passed: exit_ok,
        took,
    }
}

fn run_on_host(smoke: &Path, out_dir: &Path) -> Result<KernelRow> {
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
        "this machine".to_owned(),
        &text,
        out.status.success(),
        start.elapsed(),
    ))
}

fn boot_guest(k: &Fetched, initrd: &Path, log: &Path) -> Result<KernelRow> {
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

/// The matrix as Markdown: kernel x check, then the verifier's statistics.
fn render(rows: &[KernelRow]) -> String {
    let mut checks: Vec<String> = Vec::new();
    let mut programs: Vec<String> = Vec::new();
    for r in rows {
        for c in r.checks.keys() {
            if !checks.contains(c) {
                checks.push(c.clone());
            }
        }
        for p in r.verifier.keys() {
            if !programs.contains(p) {
                programs.push(p.clone());
            }
        }
    }
    let header = |first: &str| {
        let mut s = format!("| {first} |");
        for r in rows {
            s.push_str(&format!(" {} |", r.release));
        }
        s.push('\n');
        s.push_str(&"|---".repeat(rows.len() + 1));
        s.push_str("|\n");
        s
    };
    let mut out = String::from("\n### Kernel matrix: smoke lab\n\n");
    out.push_str(&header("check"));
    for c in &checks {
        out.push_str(&format!("| {c} |"));
        for r in rows {
            out.push_str(&format!(
                " {} |",
                r.checks.get(c).map_or("not run", String::as_str)
            ));
        }
        out.push('\n');
    }
    out.push_str("| source |");
    for r in rows {
        out.push_str(&format!(" {} |", r.how));
    }
    out.push_str("\n| time |");
    for r in rows {
        out.push_str(&format!(" {} s |", r.took.as_secs()));
    }
    out.push_str(
        "\n\n### Kernel matrix: verifier statistics (instructions processed, load time)\n\n",
    );
    out.push_str(&header("program"));
    for p in &programs {
        out.push_str(&format!("| {p} |"));
        for r in rows {
            out.push_str(&format!(
                " {} |",
                r.verifier.get(p).map_or("-", String::as_str)
            ));
        }
        out.push('\n');
    }
    out.push_str(
        "\nTimes in the guests are under qemu's TCG emulation, 10 to 50 times slower than \
         hardware; 5.10 reports no instruction count for a loaded program (verified_insns \
         came in 5.16).\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mirror_in_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(
            mirror_from_sources(&[deb822.to_owned()]).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let list = "deb [arch=amd64] http://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            mirror_from_sources(&[list.to_owned()]).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_from_sources(&["# nothing\n".to_owned()]), None);
    }

    #[test]
    fn picks_the_newest_kernel_by_its_numbers() {
        let names = [
            "linux-image-6.12.9+deb12-cloud-amd64",
            "linux-image-6.12.74+deb12-cloud-amd64",
            "linux-image-6.12.43+deb12-cloud-amd64",
        ];
        let newest = names.iter().max_by_key(|n| version_key(n));
        assert_eq!(newest, Some(&"linux-image-6.12.74+deb12-cloud-amd64"));
        assert!(
            version_key("linux-image-5.10.0-32-cloud-amd64")
                > version_key("linux-image-5.10.0-30-cloud-amd64")
        );
    }

    #[test]
    fn reads_checks_and_verifier_lines_off_a_console() {
        let console = "[  1.0] random kernel line\n\
            test every_program_passes_this_kernels_verifier ... verifier: sdm_egress ok=true insns=39929 ms=40\n\
            verifier: sdm_refused ok=false insns=3230 ms=20\n\
            ok\n\
            test check_names_the_program_the_verifier_refuses_and_fails ... ok\n\
            test smoke_lab ... smoke: attach: ok programs loaded\n\
            smoke: allowed: ok \n\
            smoke: denied-eperm: FAILED\n";
        let row = parse_results(
            "6.1.0-50-cloud-amd64",
            "pkg".into(),
            console,
            false,
            Duration::ZERO,
        );
        assert_eq!(row.checks["attach"], "ok");
        assert_eq!(row.checks["allowed"], "ok");
        assert_eq!(row.checks["denied-eperm"], "FAILED");
        assert_eq!(row.checks["check-refuses"], "ok");
        assert_eq!(
            row.checks["verifier"], "FAILED",
            "a REFUSED program fails the verifier check"
        );
        assert_eq!(row.verifier["sdm_egress"], "39929 insns, 40 ms");
        assert!(row.failure().is_some());
        let table = render(&[row]);
        assert!(table.contains("| denied-eperm | FAILED |"), "{table}");
    }
}
