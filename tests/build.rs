//! Builds the upgrade tests' second eBPF object: the programs of sdm-ebpf
//! again, with its feature `upgrade-variant` (one unused helper call more
//! in sdm_egress), left in OUT_DIR as `sdm-ebpf` for
//! `sdm_tests::objects::VARIANT`. The agent runs it with `run --object`.
//!
//! Built here and not by sdm-agent's build.rs so that only builds of the
//! tests pay for it (and builds of the agent alone, release and package
//! included, do not); cargo runs this build script beside the agent's, and
//! again only when sdm-ebpf changes. `AYA_BUILD_SKIP=1` (lint-only builds)
//! leaves an empty placeholder, which the tests refuse to use.
use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = std::env::var("AYA_BUILD_SKIP")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if skip {
        let object = out_dir.join("sdm-ebpf");
        if !object.exists() {
            std::fs::write(&object, b"").context("write placeholder eBPF object")?;
        }
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "sdm-ebpf")
        .ok_or_else(|| anyhow!("sdm-ebpf package not found"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?
        .as_str()
        .to_owned();
    let package = aya_build::Package {
        name: ebpf_package.name.as_str(),
        root_dir: &root_dir,
        features: &["upgrade-variant"],
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
