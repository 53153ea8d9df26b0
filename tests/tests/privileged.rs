//! The privileged integration tests in one harness: one test binary
//! instead of one per scenario file, so a change to the lab links once,
//! not fifteen times. Each scenario file of this folder is a module here;
//! a test's name is `<file>::<test>` (run one with
//! `cargo test -p sdm-tests --test privileged -- --exact <file>::<test>`).
//!
//! `kernel_smoke.rs` stays a binary of its own: the kernel matrix runs that
//! very binary inside emulated guests (xtask/src/kernel_matrix.rs).
//!
//! A privileged test is one scenario read top to bottom (README.md in this
//! crate), hence the allow below.
#![allow(
    clippy::too_many_lines,
    reason = "a privileged test reads as one scenario, top to bottom"
)]

mod backstop;
mod capabilities;
mod capacity;
mod containment;
mod dashboard;
mod dns;
mod dns_queries;
mod dns_race;
mod dns_scale;
mod faults;
mod flows;
mod lab;
mod prometheus;
mod ranges;
mod reload;
mod sockets;
mod targets;
mod upgrade;
mod verdicts;
mod xdp;

/// Every scenario file of tests/tests/ is a module of this harness (else
/// its tests would silently never run), except the ones that are binaries
/// of their own.
#[test]
fn every_scenario_file_is_in_the_harness() {
    const OWN_BINARIES: &[&str] = &["privileged", "kernel_smoke"];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let harness = std::fs::read_to_string(dir.join("privileged.rs")).expect("read privileged.rs");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read tests/tests") {
        let path = entry.expect("a directory entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs")
            && !OWN_BINARIES.contains(&stem)
            && !harness.lines().any(|l| l.trim() == format!("mod {stem};"))
        {
            missing.push(stem.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "scenario files not in tests/tests/privileged.rs (add `mod <file>;`): {missing:?}"
    );
}
