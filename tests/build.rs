//! Builds the upgrade tests' second eBPF object: the programs of sdm-ebpf
//! again, with its feature `upgrade-variant` (one unused helper call more
//! in sdm_egress), left in OUT_DIR as `sdm-ebpf` for
//! `sdm_tests::objects::VARIANT`. The agent runs it with `run --object`.
//!
//! Built here and not by sdm-agent's build.rs so that only builds of the
//! tests pay for it (and builds of the agent alone, release and package
//! included, do not); cargo runs this build script beside the agent's, and
//! again only when sdm-ebpf changes. `AYA_BUILD_SKIP=1` (lint-only builds)
//! leaves an empty placeholder, which the tests refuse to use. The build is
//! quiet unless it fails (see sdm-ebpf-build).

fn main() -> anyhow::Result<()> {
    sdm_ebpf_build::build_ebpf(&["upgrade-variant"])
}
