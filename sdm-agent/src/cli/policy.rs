//! `sdm-agent policy`: the effective rules of a config, as a table or JSON.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use sdm_agent::{app, policy::Policy};

pub fn run(config: Option<&Path>, json: bool) -> Result<ExitCode> {
    let (_, policy, _) = app::prepare(config)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&policy)?);
    } else {
        print!("{}", render_policy(&policy));
    }
    Ok(ExitCode::SUCCESS)
}

fn render_policy(policy: &Policy) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<44} {:<8} {:<9} {:<16} {:<9} targets",
        "rule", "dir", "proto", "ports", "guide"
    );
    for r in &policy.rules {
        let protos: Vec<String> = r.protos.iter().map(|p| p.to_string()).collect();
        let ports: Vec<String> = r.ports.iter().map(|p| p.to_string()).collect();
        let targets: Vec<String> = r.targets.iter().map(|t| t.to_string()).collect();
        let _ = writeln!(
            o,
            "{:<44} {:<8} {:<9} {:<16} {:<9} {}",
            r.name,
            r.direction.to_string(),
            protos.join("+"),
            ports.join(","),
            if r.roles.is_empty() {
                "config"
            } else if r.required {
                "required"
            } else {
                "optional"
            },
            targets.join(" ")
        );
    }
    o
}
