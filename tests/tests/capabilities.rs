//! The Debian unit's capabilities, tried (README, Deploy, "Capabilities"):
//! the agent run as root with exactly the capabilities of
//! deploy/debian/sdm-agent.service, read from the unit, in a mount
//! namespace where `/`, `/sys`, the cgroup2 mount and `/sys/fs/bpf` are
//! read-only (see `sdm_tests::unit_sandbox`), in audit mode on the lab's
//! child cgroup: a fresh attach, a deny event in the flow store, `status`,
//! a restart that adopts the pins and one that replaces them (another
//! eBPF object) all work; without each of the capabilities the agent fails
//! with the error the README's table quotes.

use std::{
    collections::BTreeSet,
    io::Read as _,
    path::Path,
    time::{Duration, Instant},
};

use sdm_tests::{
    gateway::{self, expect_ok, sa, wait_for, GATEWAY_HOSTS, OK_MS, OTHER},
    lab::{denied_packets, Lab},
    programs::{recorded_hash, variant_hash, variant_object},
    unit_sandbox::{mount_read_only, process_caps, read_only_mounts, unit_capabilities, wrapper},
};
use serde_json::Value;

const README: &str = include_str!("../../README.md");

/// A lab whose agent commands all run in the unit's sandbox with these
/// capability sets. As the unit's `ExecStartPre=` mkdir and
/// `RuntimeDirectory=` do, the pin root and the run directory exist before
/// the agent starts: on read-only mounts it could not create them.
fn sandboxed_lab(bounding: &[String], ambient: &[String]) -> Lab {
    let mut lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    sandbox(&mut lab, bounding, ambient);
    lab
}

fn sandbox(lab: &mut Lab, bounding: &[String], ambient: &[String]) {
    let layout = lab.pins.layout.clone();
    for dir in [&layout.pin_root, &layout.run_dir] {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    // The config, the flow store and the audit log are in the lab's
    // directory (the unit's StateDirectory= and LogsDirectory=).
    lab.agent_wrapper = wrapper(
        bounding,
        ambient,
        &[
            layout.pin_root.as_path(),
            layout.run_dir.as_path(),
            lab.dir.path(),
        ],
    );
}

/// The flows `sdm-agent flows --json` prints (run in the sandbox too).
fn flows(lab: &Lab, config: &Path) -> Vec<Value> {
    lab.agent_ok(&[
        "flows",
        "--config",
        config.to_str().expect("utf-8"),
        "--json",
    ])
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("flows line {l:?}: {e}")))
    .collect()
}

fn sorted(caps: &[String]) -> BTreeSet<String> {
    caps.iter().cloned().collect()
}

/// With exactly the unit's capabilities and read-only mounts: a fresh
/// attach, a deny event that reaches the flow store, `status`, a restart
/// that adopts the pins and a restart with another eBPF object that
/// replaces them.
#[test]
fn the_units_capabilities_suffice_on_read_only_mounts() {
    let bounding = unit_capabilities("CapabilityBoundingSet");
    let ambient = unit_capabilities("AmbientCapabilities");
    let mut lab = sandboxed_lab(&bounding, &ambient);
    gateway::serve_all(&lab);
    gateway::gateway_dns(&lab, 300);
    let config = lab.write_config("gateway.toml", &gateway::gateway_config(&lab, "audit", ""));
    // Ready means: status (itself in the sandbox) shows this agent's policy.
    lab.start_agent(&config, "audit", &GATEWAY_HOSTS);

    // The agent really runs so: exactly these capabilities, these mounts
    // read-only and only its own directories writable.
    let pid = lab.agent_pid().expect("the agent runs");
    for (set, caps) in process_caps(pid) {
        let want = if set == "CapAmb" || set == "CapInh" {
            sorted(&ambient)
        } else {
            sorted(&bounding)
        };
        assert_eq!(caps, want, "the agent's {set}");
    }
    for m in read_only_mounts() {
        assert_eq!(
            mount_read_only(pid, &m),
            Some(true),
            "{} should be a read-only mount for the agent",
            m.display()
        );
    }
    let layout = lab.pins.layout.clone();
    for w in [&layout.pin_root, &layout.run_dir, &lab.dir.0] {
        let w = w.as_path();
        assert_eq!(
            mount_read_only(pid, w),
            Some(false),
            "{} should be writable for the agent",
            w.display()
        );
    }
    let log = lab.agent_log();
    assert!(
        log.contains("attached the egress and ingress programs") && log.contains("replaced=false"),
        "a fresh attach:\n{log}"
    );

    // A denied flow (audit mode: it passes) becomes a deny event, then a
    // row of the flow store.
    let other = sa(lab.net_ip(OTHER), 443);
    expect_ok(
        "an unlisted destination in audit mode",
        &lab.tcp(other, OK_MS),
    );
    let remote = other.ip().to_string();
    let stored = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        flows(&lab, &config)
            .into_iter()
            .find(|f| f["remote"] == remote.as_str() && f["port"] == 443)
    })
    .unwrap_or_else(|| panic!("the denied flow to {other} never reached the flow store"));
    assert_eq!(stored["verdict"], "audit", "{stored}");
    let s = lab.status();
    assert_eq!(s["mode"], "audit", "{s}");
    assert_eq!(s["cgroup"], lab.cgroup.path.to_str().expect("utf-8"), "{s}");
    assert!(
        denied_packets(&s, "audit", "egress", "no_rule") > 0,
        "status counts the denied packets: {s}"
    );

    // A restart adopts the pins.
    lab.stop_agent();
    let before = lab.agent_log().len();
    lab.restart_agent();
    let log = lab.agent_log();
    assert!(
        log[before..].contains("adopted the pinned programs"),
        "the restart should adopt the pins:\n{}",
        &log[before..]
    );

    // A restart with another object (an upgrade) replaces them.
    lab.kill_agent();
    let before = lab.agent_log().len();
    let variant = variant_object();
    lab.start_agent_with(
        &config,
        &["--object", variant.to_str().expect("utf-8")],
        "audit",
        &GATEWAY_HOSTS,
    );
    let log = lab.agent_log();
    assert!(
        log[before..].contains("replaced=true"),
        "the restart with another object should replace the pinned programs:\n{}",
        &log[before..]
    );
    assert_eq!(
        recorded_hash(&layout),
        variant_hash(),
        "attach.json should name the new object"
    );
}

/// `sdm-agent run` in the lab's host namespace, run to its end (within
/// `within`, else killed and failed); its output.
fn run_to_exit(lab: &Lab, config: &Path, within: Duration) -> std::process::Output {
    let mut p = lab.spawn_agent_oneshot(&["run", "--config", config.to_str().expect("utf-8")]);
    // Read while it runs: a verifier log can be longer than a pipe holds.
    let mut stderr = p.0.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = p.0.try_wait().expect("wait for the agent") {
            break st;
        }
        assert!(
            start.elapsed() < within,
            "the agent kept running for {within:?}: it does not need what it lacks"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = Vec::new();
    if let Some(mut o) = p.0.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    std::process::Output {
        status,
        stdout,
        stderr: reader.join().expect("stderr reader"),
    }
}

/// The README table's row for `cap`: the texts in backquotes of its last
/// column ("without it").
fn readme_errors(cap: &str) -> Vec<String> {
    let row = README
        .lines()
        .find(|l| l.starts_with(&format!("| `{cap}` |")))
        .unwrap_or_else(|| {
            panic!("the unit names {cap}, the README's capability table has no row for it")
        });
    let without = row
        .trim_end_matches('|')
        .rsplit('|')
        .next()
        .unwrap_or_default();
    let quoted: Vec<String> = without
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!quoted.is_empty(), "no quoted error in {row:?}");
    quoted
}

/// Each capability of the unit removed in turn (from the bounding,
/// inheritable and ambient sets), on a fresh host (no pins), read-only
/// mounts as above: the agent exits non-zero with the error the README's
/// table quotes for it, and the errno it names.
#[test]
fn without_each_of_the_units_capabilities_the_agent_fails_as_the_readme_says() {
    let bounding = unit_capabilities("CapabilityBoundingSet");
    let ambient = unit_capabilities("AmbientCapabilities");
    let mut lab = sandboxed_lab(&bounding, &ambient);
    let config = lab.write_config("gateway.toml", &gateway::gateway_config(&lab, "audit", ""));
    for cap in &bounding {
        let without =
            |set: &[String]| -> Vec<String> { set.iter().filter(|c| *c != cap).cloned().collect() };
        // No pins: what an earlier case pinned (maps) goes first.
        sdm_agent::kernel::dataplane::detach(&lab.pins.layout)
            .unwrap_or_else(|e| panic!("detach the pins of the previous case: {e}"));
        sandbox(&mut lab, &without(&bounding), &without(&ambient));
        let out = run_to_exit(&lab, &config, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let error = stderr
            .lines()
            .find(|l| l.starts_with("sdm-agent: error:"))
            .unwrap_or_default();
        eprintln!(
            "without {cap}: {}",
            error.chars().take(400).collect::<String>()
        );
        assert!(
            !out.status.success(),
            "without {cap} the agent should fail; it exited with {}:\n{stderr}",
            out.status
        );
        for text in readme_errors(cap) {
            // The README writes errnos by name; the agent prints strerror.
            let text = match text.as_str() {
                "EPERM" => "Operation not permitted (os error 1)",
                "EACCES" => "Permission denied (os error 13)",
                other => other,
            };
            assert!(
                stderr.contains(text),
                "without {cap} the agent's error should contain {text:?} (README), it was:\n{stderr}"
            );
        }
    }
}
