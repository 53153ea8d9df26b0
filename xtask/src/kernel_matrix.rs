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

mod fetch;
mod guest;
mod report;
#[cfg(test)]
mod tests;

use std::{fs, thread, time::Duration};

use anyhow::{bail, Context as _, Result};

use crate::context::Ctx;

use fetch::fetch_kernels;
use guest::{boot_guest, build_base_initramfs, guest_initramfs, run_on_host, smoke_binary};
use report::{render, verifier_json, KernelRow};

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

/// Where the matrix writes its verifier statistics as JSON (figure 11 of
/// `cargo xtask bench` reads them).
pub fn verifier_json_path(ctx: &Ctx) -> std::path::PathBuf {
    ctx.target_dir().join("kernel-matrix/verifier.json")
}

/// The checkout's commit (`git rev-parse HEAD`) and whether tracked files
/// have changes; ("unknown", true) outside git.
pub fn checkout(ctx: &Ctx) -> (String, bool) {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&ctx.root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_none_or(|s| !s.is_empty());
            (commit, dirty)
        }
        None => ("unknown".to_owned(), true),
    }
}

/// Whether verifier.json was measured on this very checkout (same commit,
/// neither dirty) and holds every kernel of the matrix.
pub fn verifier_json_is_current(ctx: &Ctx) -> bool {
    let Ok(text) = fs::read_to_string(verifier_json_path(ctx)) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let (commit, dirty) = checkout(ctx);
    let releases: Vec<&str> = v["kernels"]
        .as_array()
        .map(|k| k.iter().filter_map(|k| k["release"].as_str()).collect())
        .unwrap_or_default();
    let every_kernel = KERNELS.iter().all(|k| {
        releases
            .iter()
            .any(|r| r.starts_with(&format!("{}.", k.series)))
    });
    !dirty && v["dirty"] == false && v["commit"] == commit.as_str() && every_kernel
}

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
    let fetched = fetch_kernels(ctx, &kernels)?;
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
    let (commit, dirty) = checkout(ctx);
    let json = verifier_json(&rows, &commit, dirty);
    let json_path = verifier_json_path(ctx);
    fs::write(&json_path, format!("{json:#}\n"))
        .with_context(|| format!("write {}", json_path.display()))?;
    failures.extend(rows.iter().filter_map(KernelRow::failure));
    if !failures.is_empty() {
        bail!("kernel matrix failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}
