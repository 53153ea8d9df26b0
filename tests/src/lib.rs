//! Helpers for the privileged integration tests: RAII guards for the kernel
//! state a test creates (network namespaces, cgroups, bpffs pins, child
//! processes), each named with a unique prefix so parallel runs never
//! collide, and crafted packets for BPF_PROG_TEST_RUN.
//!
//! Tests panic with context rather than returning errors, and never skip:
//! the CI kernel has every feature these need.

pub mod gateway;
pub mod guards;
pub mod lab;
pub mod packets;
pub mod programs;
pub mod unit_sandbox;

use std::sync::atomic::{AtomicU32, Ordering};

/// A name unique to this process and call: `sdmt<pid>x<n>` (short, since
/// interface names are limited to 15 bytes).
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("st{}{}{}", std::process::id() % 100_000, tag, n)
}

/// Fails the test loudly unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the privileged tests need root (run them with `cargo xtask test` as root)"
    );
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
