//! `sdm-agent check`: validates a config, warns about lock-outs and
//! processes that could bypass the programs; with `--kernel`, puts every
//! program through the running kernel's verifier.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use sdm_agent::{
    app,
    kernel::{backstop, caps, cgroup, cgroup::CgroupTarget, check, dataplane, xdp},
    policy::compile,
};

pub fn run(
    config: Option<&Path>,
    cgroup: Option<CgroupTarget>,
    kernel: bool,
    json: bool,
    object: Option<&Path>,
) -> Result<ExitCode> {
    let (mut cfg, policy, _) = app::prepare(config)?;
    if let Some(t) = cgroup {
        cfg.cgroup = Some(t);
    }
    // `[backstop] interfaces` must name interfaces of this host.
    backstop::resolve(&cfg, config)?;
    // The XDP shield judges every packet of its interfaces: only with the
    // whole host as target.
    if !cfg.xdp.interfaces.is_empty() {
        xdp::check_target(&cfg, &cgroup::cgroup2_mount()?, &app::config_label(config))?;
        xdp::check_interfaces(&cfg, config)?;
    }
    let mut warnings = compile::lockout_warnings(&cfg, &policy);
    match app::target_cgroup(&cfg, config)? {
        // Not an error: `run` waits for a unit that has not started.
        Err(e) => eprintln!("sdm-agent: note: {e}; `run` will wait for it to appear"),
        Ok(cg) => {
            let bypass = caps::bypass_capable(&cg, None);
            if !bypass.is_empty() {
                eprint!("{}", caps::render(&bypass));
                warnings.push(format!(
                    "{} process(es) in {} hold CAP_NET_RAW or CAP_NET_ADMIN and can bypass the cgroup programs (listed above){}",
                    bypass.len(),
                    cg.display(),
                    if cfg.backstop.interfaces.is_empty() {
                        "; set [backstop] interfaces to judge their packet sockets' frames"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let summary = format!(
        "{}: ok, {} rules{}",
        app::config_label(config),
        policy.rules.len(),
        if warnings.is_empty() {
            String::new()
        } else {
            format!(", {} warning(s)", warnings.len())
        }
    );
    if json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if kernel {
        return check_kernel(object, json);
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit status of `check --kernel` when BPF cannot be used from here at
/// all (no CAP_BPF, a container without it): nothing was learnt of the
/// kernel, which the .deb's postinst tells apart from a refusal.
const EXIT_NO_BPF: u8 = 3;

/// `check --kernel`: the verifier's verdict on every program.
fn check_kernel(object: Option<&Path>, json: bool) -> Result<ExitCode> {
    let bytes = match object {
        Some(path) => check::read_object(path)?,
        None => dataplane::EBPF_OBJECT.to_vec(),
    };
    let report = match check::verify(&bytes) {
        Ok(report) => report,
        Err(e) if e.is_permission() => {
            eprintln!(
                "sdm-agent: cannot use BPF here ({e}); run `check --kernel` as root \
                 (CAP_BPF and CAP_NET_ADMIN) on the host that runs the agent"
            );
            return Ok(ExitCode::from(EXIT_NO_BPF));
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.render());
    }
    if report.all_ok() {
        return Ok(ExitCode::SUCCESS);
    }
    let refused: Vec<&str> = report
        .programs
        .iter()
        .filter(|p| !p.ok)
        .map(|p| p.program.as_str())
        .collect();
    eprintln!(
        "sdm-agent: error: kernel {} refuses {} of the programs enforcement needs: {}",
        report.kernel,
        refused.len(),
        refused.join(", ")
    );
    Ok(ExitCode::FAILURE)
}
