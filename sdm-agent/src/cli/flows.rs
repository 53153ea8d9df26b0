//! `sdm-agent flows`: denied flows from the flow store, oldest first.

use std::{collections::HashMap, path::Path, process::ExitCode, time::Duration};

use anyhow::Result;
use sdm_agent::flows::{
    self,
    store::{self, Store, StoreError},
    Flow, FlowKey, FlowQuery,
};

use super::load_config;

pub fn run(config: Option<&Path>, since: Duration, json: bool, follow: bool) -> Result<ExitCode> {
    let cfg = load_config(config)?;
    list_flows(&store::db_path(&cfg.state.dir), since, json, follow)?;
    Ok(ExitCode::SUCCESS)
}

fn flow_line(f: &Flow) -> String {
    let process = if f.key.comm.is_empty() {
        "?".to_string()
    } else {
        f.key.comm.escape_debug().to_string()
    };
    let process = if f.pid != 0 {
        format!("{process} ({})", f.pid)
    } else {
        process
    };
    format!(
        "{:<24} {:<7} {:<7} {:<6} {:<39} {:>5}  {:<30} {:<22} {:>9}  {}",
        flows::rfc3339(f.last_seen),
        f.key.direction,
        f.key.verdict,
        f.key.proto,
        f.key.remote,
        f.key.port,
        f.hostname.as_deref().unwrap_or("-"),
        process,
        f.count,
        f.reason
    )
}

fn flow_header() -> String {
    format!(
        "{:<24} {:<7} {:<7} {:<6} {:<39} {:>5}  {:<30} {:<22} {:>9}  reason",
        "last seen (UTC)",
        "dir",
        "verdict",
        "proto",
        "remote",
        "port",
        "hostname",
        "process (pid)",
        "packets"
    )
}

/// `sdm-agent flows`: oldest first; with `follow`, polls every second and
/// prints the flows that appear or change. A closed pipe (`| head`) ends it.
fn list_flows(path: &Path, since: Duration, json: bool, follow: bool) -> Result<()> {
    match list_flows_to(&mut std::io::stdout(), path, since, json, follow) {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        r => r,
    }
}

fn list_flows_to(
    out: &mut impl std::io::Write,
    path: &Path,
    since: Duration,
    json: bool,
    follow: bool,
) -> Result<()> {
    let mut store = None;
    let mut printed: HashMap<FlowKey, (u64, u64)> = HashMap::new();
    let mut header = !json;
    let mut window = FlowQuery::within(since);
    let mut warned = false;
    loop {
        if store.is_none() {
            match Store::open_existing(path) {
                Ok(s) => store = Some(s),
                Err(StoreError::Missing { .. }) if !warned || !follow => {
                    eprintln!(
                        "no flows recorded yet: {} does not exist (the agent creates it)",
                        path.display()
                    );
                    warned = true;
                }
                Err(StoreError::Missing { .. }) => {}
                Err(e) if follow => eprintln!("sdm-agent: {e}; retrying"),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(s) = &store {
            match s.query(&window) {
                Ok(mut found) => {
                    found.reverse();
                    for f in found {
                        let seen = (f.last_seen, f.count);
                        if printed.get(&f.key) == Some(&seen) {
                            continue;
                        }
                        if header {
                            writeln!(out, "{}", flow_header())?;
                            header = false;
                        }
                        if json {
                            writeln!(out, "{}", serde_json::to_string(&f)?)?;
                        } else {
                            writeln!(out, "{}", flow_line(&f))?;
                        }
                        printed.insert(f.key.clone(), seen);
                    }
                }
                Err(e) if follow => {
                    eprintln!("sdm-agent: {e}; retrying");
                    store = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !follow {
            return Ok(());
        }
        out.flush()?;
        std::thread::sleep(Duration::from_secs(1));
        // Look back a little: the agent writes in batches, and events of
        // different CPUs are not strictly ordered.
        let newest = printed
            .values()
            .map(|(t, _)| *t)
            .max()
            .unwrap_or(window.since_ms);
        window.since_ms = window.since_ms.max(newest.saturating_sub(10_000));
        printed.retain(|_, (t, _)| *t + 60_000 >= window.since_ms);
    }
}
