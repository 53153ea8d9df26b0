//! RAII guards for everything the benchmark creates (network namespaces,
//! cgroups, bpffs pins, temporary folders), from the shared test kit
//! (`sdm-testkit`): each is removed when its guard drops, also on an error
//! or Ctrl-C. Every name starts with `sdmb<pid>x` ([`NAMING`]), so a later
//! run can sweep what a killed run left behind ([`sweep_stale`]).

use anyhow::{ensure, Result};
use sdm_testkit::names::{set_naming, Naming};
pub use sdm_testkit::{
    guards::{Cgroup, Netns, Pins, TempDir},
    sweep::sweep_stale,
};

/// How the benchmark names what it creates: with its pid, for the sweep.
pub const NAMING: Naming = Naming::Owned {
    prefix: "sdmb",
    program: "sdm-bench",
};

/// Chooses the benchmark's names; before anything is created.
pub fn use_bench_names() -> Result<()> {
    ensure!(
        set_naming(NAMING),
        "names were made before the benchmark chose its naming"
    );
    Ok(())
}

/// Fails unless running as root.
pub fn require_root() -> Result<()> {
    Ok(sdm_testkit::try_require_root(
        "the benchmark needs root: it loads eBPF programs and creates network namespaces and cgroups (run `cargo xtask bench` as root)",
    )?)
}
