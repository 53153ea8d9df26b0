//! `sdm-agent policed`: whether a cgroup is policed now, for an
//! `ExecStartPre=` of the policed service.

use std::process::ExitCode;

use sdm_agent::kernel::{cgroup::CgroupTarget, dataplane::Layout, policed};

/// `sdm-agent policed`: one line on stdout when policed (exit 0), the reason
/// on stderr when not (exit 1), so a refused ExecStartPre= says why.
pub fn run(layout: &Layout, cgroup: Option<CgroupTarget>, enforce: bool) -> ExitCode {
    match policed::check(layout, cgroup.as_ref(), enforce) {
        Ok(p) => {
            println!(
                "policed: {} (programs on {}, mode {}, policy generation {})",
                p.target.display(),
                p.attached.display(),
                p.mode,
                p.generation
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sdm-agent: not policed: {e}");
            ExitCode::FAILURE
        }
    }
}
