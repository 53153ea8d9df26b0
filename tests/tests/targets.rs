//! Sidecar targets: `cgroup = "unit:NAME"` and `cgroup = "pid:N"` police
//! exactly that workload (a process outside it is unaffected), the agent
//! waits for a unit that has not started, and follows the target when its
//! cgroup is re-created (a service restart).
//!
//! The "unit" is a cgroup named like one (`<unique>.service`) inside the
//! lab's cgroup: the agent finds units by name in the cgroup2 tree, as
//! systemd lays them out, so no systemd is needed.

use std::{path::PathBuf, process::Command, time::Duration};

use sdm_tests::{
    gateway::{
        any, expect_ok, gateway_config, gateway_dns, sa, serve_all, wait_for, DB, GATEWAY_HOSTS,
        OK_MS, OTHER,
    },
    guards::{Cgroup, Proc},
    lab::{result, Lab},
    unique,
};
use serde_json::Value;

fn new_lab() -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_lab-probe"))
}

/// The gateway config in `mode` with `cgroup = "<target>"` instead of the
/// lab's cgroup.
fn config_with_target(lab: &Lab, mode: &str, target: &str) -> PathBuf {
    let text = lab.config_text(&gateway_config(lab, mode, ""));
    let lab_line = format!("cgroup = \"{}\"", lab.cgroup.path.display());
    assert!(
        text.contains(&lab_line),
        "the lab config sets cgroup: {text}"
    );
    let text = text.replace(&lab_line, &format!("cgroup = \"{target}\""));
    let path = lab.dir.path().join("target.toml");
    std::fs::write(&path, text).expect("write target.toml");
    path
}

fn probe_in(lab: &Lab, cg: &Cgroup, args: &[&str]) -> Value {
    lab.run_probe(&lab.host, Some(cg), args)
}

/// A denied destination (no rule for 7777) and an allowed one (db:5432).
fn denied_dest(lab: &Lab) -> String {
    sa(lab.net_ip(OTHER), 7777).to_string()
}

fn allowed_dest(lab: &Lab) -> String {
    sa(lab.net_ip(DB), 5432).to_string()
}

/// Inside `cg`: the denied destination is refused, the allowed one works.
/// Outside it (the lab's cgroup, its parent): both work.
#[track_caller]
fn expect_policed_exactly(lab: &Lab, cg: &Cgroup, when: &str) {
    let v = probe_in(lab, cg, &["tcp", &denied_dest(lab), "600"]);
    assert_eq!(result(&v), "eperm", "{when}: denied inside the target: {v}");
    let v = probe_in(lab, cg, &["tcp", &allowed_dest(lab), &OK_MS.to_string()]);
    expect_ok(&format!("{when}: allowed inside the target"), &v);
    let v = lab.probe(&["tcp", &denied_dest(lab), &OK_MS.to_string()]);
    expect_ok(
        &format!("{when}: a process outside the target is unaffected"),
        &v,
    );
}

/// Waits until the agent has attached to the re-created `cg`: a denied
/// connect from inside it is refused.
#[track_caller]
fn expect_reattached(lab: &Lab, cg: &Cgroup) {
    wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        let v = probe_in(lab, cg, &["tcp", &denied_dest(lab), "300"]);
        (result(&v) == "eperm").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the agent never attached to the re-created {}",
            cg.path.display()
        )
    });
}

fn attached_cgroup(lab: &Lab) -> String {
    lab.status()["cgroup"]
        .as_str()
        .unwrap_or_else(|| panic!("no cgroup in status"))
        .to_string()
}

#[test]
fn unit_target_waits_polices_only_the_unit_and_follows_a_restart() {
    let mut lab = new_lab();
    serve_all(&lab);
    lab.serve_tcp(&[any(7777)]);
    gateway_dns(&lab, 300);
    let unit = format!("{}.service", unique("u"));
    let config = config_with_target(&lab, "enforce", &format!("unit:{unit}"));

    // The unit has not started: the agent says it waits.
    lab.spawn_agent(&config, "enforce", &GATEWAY_HOSTS);
    wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        lab.agent_log()
            .contains("the target cgroup does not exist yet; waiting for it")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the agent did not say it waits:\n{}", lab.agent_log()));
    let v = lab.probe(&["tcp", &denied_dest(&lab), &OK_MS.to_string()]);
    expect_ok("nothing is policed while the agent waits", &v);

    // The unit starts: the agent attaches to it, in enforce mode.
    let svc = lab.cgroup.child(&unit);
    lab.wait_ready("enforce", &GATEWAY_HOSTS);
    assert_eq!(attached_cgroup(&lab), svc.path.display().to_string());
    expect_policed_exactly(&lab, &svc, "unit started");

    // The service restarts: its cgroup is removed and created anew.
    drop(svc);
    let svc = lab.cgroup.child(&unit);
    expect_reattached(&lab, &svc);
    expect_policed_exactly(&lab, &svc, "after the restart");
    assert!(
        lab.agent_log().contains("the target cgroup was re-created"),
        "{}",
        lab.agent_log()
    );

    // An agent restarted after the unit was re-created while it was down
    // does not adopt links of the dead cgroup.
    lab.kill_agent();
    drop(svc);
    let svc = lab.cgroup.child(&unit);
    lab.restart_agent();
    expect_policed_exactly(&lab, &svc, "agent restarted after a unit restart");
}

#[test]
fn pid_target_polices_that_process_cgroup_only_and_follows_it() {
    let mut lab = new_lab();
    serve_all(&lab);
    lab.serve_tcp(&[any(7777)]);
    gateway_dns(&lab, 300);
    let name = unique("w");
    let work = lab.cgroup.child(&name);
    let mut sleeper = Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("spawn sleep");
    work.add(sleeper.id());
    let config = config_with_target(&lab, "enforce", &format!("pid:{}", sleeper.id()));
    lab.start_agent(&config, "enforce", &GATEWAY_HOSTS);
    assert_eq!(attached_cgroup(&lab), work.path.display().to_string());
    expect_policed_exactly(&lab, &work, "pid target");

    // The workload restarts: the process is gone, its cgroup re-created.
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    drop(work);
    let work = lab.cgroup.child(&name);
    let next = Proc(
        Command::new("sleep")
            .arg("300")
            .spawn()
            .expect("spawn sleep"),
    );
    work.add(next.0.id());
    expect_reattached(&lab, &work);
    expect_policed_exactly(&lab, &work, "after the workload restarted");
}

#[test]
fn bad_targets_are_refused_with_the_key() {
    let lab = new_lab();
    for (target, want) in [
        ("unit:../etc", "not a unit name"),
        ("pid:0", "process id"),
        ("unit:x.socket", "have a cgroup"),
    ] {
        let config = config_with_target(&lab, "audit", target);
        let out = lab.agent_cmd(&["check", "--config", &config.display().to_string()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{target} passed check");
        assert!(
            err.contains("cgroup") && err.contains(want),
            "{target}: {err}"
        );
    }
    // A unit that is not running is not an error for check: run waits.
    let config = config_with_target(&lab, "audit", "unit:sdm-not-running-here.service");
    let out = lab.agent_cmd(&["check", "--config", &config.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("will wait"));
}

/// A service in a slice of its own, the slice targeted: every new instance
/// of the service (a new cgroup, as systemd creates on each restart) is
/// policed from its very first connect, because a new cgroup inherits its
/// parent's programs when it is created. No gap, whatever the agent does.
#[test]
fn slice_target_polices_every_restart_from_its_first_packet() {
    let mut lab = new_lab();
    serve_all(&lab);
    lab.serve_tcp(&[any(7777)]);
    gateway_dns(&lab, 300);
    let slice_name = format!("{}.slice", unique("s"));
    let slice = lab.cgroup.child(&slice_name);
    let config = config_with_target(&lab, "enforce", &format!("unit:{slice_name}"));
    lab.start_agent(&config, "enforce", &GATEWAY_HOSTS);
    let service = format!("{}.service", unique("svc"));
    for round in 0..20 {
        // mkdir, then a process in it connects at once: no time for the
        // agent to do anything.
        let svc = slice.child(&service);
        let v = probe_in(&lab, &svc, &["tcp", &denied_dest(&lab), "600"]);
        assert_eq!(
            result(&v),
            "eperm",
            "restart {round}: the first connect: {v}"
        );
        let v = probe_in(
            &lab,
            &svc,
            &["tcp", &allowed_dest(&lab), &OK_MS.to_string()],
        );
        expect_ok(&format!("restart {round}: allowed"), &v);
        drop(svc);
    }
    let v = lab.probe(&["tcp", &denied_dest(&lab), &OK_MS.to_string()]);
    expect_ok("outside the slice", &v);
}
