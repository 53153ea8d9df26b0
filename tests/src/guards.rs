//! RAII guards: whatever a test creates is removed when the guard drops,
//! also when the test panics. They live in the shared test kit
//! (`sdm-testkit`); this path stays for the tests that name it.

pub use sdm_testkit::guards::{Cgroup, Netns, NetnsEntered, Pins, Proc, TempDir};
