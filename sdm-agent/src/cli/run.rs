//! `sdm-agent run`: the agent itself ([`sdm_agent::app::run`]) on a small
//! tokio runtime.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use sdm_agent::{
    app,
    kernel::{cgroup::CgroupTarget, check, dataplane::Layout},
};

pub fn run(
    layout: Layout,
    config: Option<PathBuf>,
    cgroup: Option<CgroupTarget>,
    object: Option<&Path>,
) -> Result<ExitCode> {
    // Hidden `--object`: another build of the programs, for upgrade tests.
    let object = match object {
        Some(path) => {
            tracing::warn!(object = %path.display(), "--object: loading this eBPF object instead of the embedded one");
            Some(check::read_object(path)?)
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(app::run(layout, config, cgroup, object))?;
    Ok(ExitCode::SUCCESS)
}
