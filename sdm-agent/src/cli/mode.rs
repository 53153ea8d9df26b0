//! `sdm-agent mode` and `sdm-agent trace`: each stores one field of the
//! pinned, mmapped config entry, so neither undoes a policy update in
//! flight (kernel/config_map.rs).

use std::process::ExitCode;

use anyhow::Result;
use sdm_agent::kernel::dataplane::{Layout, Maps};

use super::{ModeArg, OnOff};

pub fn set_mode(layout: &Layout, mode: ModeArg) -> Result<ExitCode> {
    let mut maps = Maps::open(layout)?;
    let m = match mode {
        ModeArg::Audit => sdm_common::KernelMode::Audit,
        ModeArg::Enforce => sdm_common::KernelMode::Enforce,
    };
    maps.set_mode(m)?;
    println!(
        "mode: {} (a running agent keeps it; a restarted agent applies its config's mode)",
        m.name()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn set_trace(layout: &Layout, state: OnOff) -> Result<ExitCode> {
    let mut maps = Maps::open(layout)?;
    let on = matches!(state, OnOff::On);
    maps.set_log_verdicts(on);
    println!(
        "verdict tracing {}",
        if on {
            "on: verdicts appear in the log of the agent that loaded the programs"
        } else {
            "off"
        }
    );
    Ok(ExitCode::SUCCESS)
}
