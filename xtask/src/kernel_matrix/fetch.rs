//! Debian's cloud kernels into the cache: a private apt (its own state
//! folder, the machine's mirror), the newest `linux-image-<series>.*-cloud`
//! package, unpacked to its vmlinuz and veth module. The cache is shared by
//! parallel runs: fetching holds its lock.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cache_lock::CacheLock,
    context::{home_dir, output, Ctx},
};

use super::{GuestKernel, KERNELS};

/// A kernel fetched and unpacked into the cache.
pub(super) struct Fetched {
    pub(super) series: &'static str,
    /// The hosts that run this kernel series.
    pub(super) hosts: &'static str,
    /// `uname -r` of the kernel.
    pub(super) release: String,
    /// The Debian package it came from, with its version.
    pub(super) package: String,
    pub(super) vmlinuz: PathBuf,
    pub(super) veth: PathBuf,
}

/// The cache folder of the kernels and their apt state.
pub(super) fn cache_dir() -> Result<PathBuf> {
    Ok(home_dir()?.join(".local/share/sdm-egress/kernels"))
}

/// The kernels from the cache, or fetched into it, holding the cache's
/// lock: parallel runs share it (and apt runs without its own locking).
pub(super) fn fetch_kernels(ctx: &Ctx, kernels: &[&GuestKernel]) -> Result<Vec<Fetched>> {
    let cache = cache_dir()?;
    fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    let _lock = CacheLock::take("kernel matrix", &cache)?;
    let mut apt = None;
    kernels
        .iter()
        .map(|k| fetch_kernel(ctx, k, &mut apt))
        .collect()
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

/// The one folder under `dir` (`lib/modules/<release>`).
pub(super) fn single_entry(dir: &Path) -> Result<String> {
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
pub(super) fn extract_module(ctx: &Ctx, tree: &Path, name: &str, dest: &Path) -> Result<()> {
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
pub(super) struct PrivateApt {
    pub(super) root: PathBuf,
}

impl PrivateApt {
    pub(super) fn new(root: &Path) -> Result<Self> {
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

    pub(super) fn options(&self) -> Vec<String> {
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

    pub(super) fn update(&self, ctx: &Ctx) -> Result<()> {
        crate::context::run(
            ctx.command("apt-get")
                .args(self.options())
                .args(["-q", "update"])
                .stdout(Stdio::null()),
        )
        .context("apt-get update (private state) for the kernel suites")
    }

    /// The newest `linux-image-<series>.*-cloud-amd64` the suites hold.
    pub(super) fn newest_cloud_kernel(&self, ctx: &Ctx, series: &str) -> Result<String> {
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

    pub(super) fn download(&self, ctx: &Ctx, name: &str, into: &Path) -> Result<PathBuf> {
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
pub(super) fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The machine's Debian mirror: the first `URIs:` (deb822) or `deb` line
/// of the apt sources that serves the main archive (not security).
pub(super) fn debian_mirror() -> Result<String> {
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

pub(super) fn mirror_from_sources(texts: &[String]) -> Option<String> {
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
