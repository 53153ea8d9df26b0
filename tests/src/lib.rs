//! Helpers for the privileged integration tests: RAII guards (from the
//! shared test kit, `sdm-testkit`) for the kernel
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
pub mod shield;
pub mod unit_sandbox;

/// A name unique to this process and call (`st<pid mod 100000><tag><n>`:
/// short, since interface names are limited to 15 bytes); fails the test
/// loudly unless it runs as root; runs a command, panicking with its output
/// when it fails. All from the shared test kit.
pub use sdm_testkit::{names::unique, require_root, shell::sh};
