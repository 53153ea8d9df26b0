//! `sdm-agent detach`: removes every link, map and record the agent pinned.

use std::process::ExitCode;

use anyhow::Result;
use sdm_agent::kernel::dataplane::{self, Layout};

pub fn run(layout: &Layout) -> Result<ExitCode> {
    let removed = dataplane::detach(layout)?;
    if removed.is_empty() {
        println!("nothing was attached under {}", layout.pin_root.display());
    } else {
        println!(
            "detached: removed {} pins and records under {}",
            removed.len(),
            layout.pin_root.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
