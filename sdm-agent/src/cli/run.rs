//! `sdm-agent run`: the agent itself ([`sdm_agent::app::run`]) on a small
//! tokio runtime.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use sdm_agent::{
    app,
    kernel::{cgroup::CgroupTarget, dataplane::Layout},
};

pub fn run(
    layout: Layout,
    config: Option<PathBuf>,
    cgroup: Option<CgroupTarget>,
) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(app::run(layout, config, cgroup))?;
    Ok(ExitCode::SUCCESS)
}
