//! A gateway of a large organization (issue 14): thousands of `[[resource]]`
//! hostnames on port 5432, in enforce mode on the lab's cgroup. One of them
//! resolves to a server of the lab's `net` namespace and its flow passes;
//! an address or a port that no rule names is refused with EPERM at
//! `connect()`.
//!
//! Every other resource resolves to an address of 10.240.0.0/16, which is
//! routed nowhere and never sent to.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use sdm_tests::gateway::{self, expect_ok, sa, serve_all, APP, DB, OK_MS, OTHER};
use sdm_tests::lab::{dns_addresses, result, rule_packets, Lab};
use serde_json::Value;

/// Hostname resources of the gateway.
const RESOURCES: usize = 10_000;
/// The resource whose name resolves to a lab server (`net_ip(OTHER)`).
const REACHABLE: usize = RESOURCES / 2;
/// How long start-up may take before the test gives up: the target
/// is 5 s at 10,000 names; this only bounds a stuck agent.
const START_LIMIT: Duration = Duration::from_secs(180);

fn resource_name(i: usize) -> String {
    format!("r{i:05}")
}

fn resource_host(i: usize) -> String {
    format!("r{i:05}.scale.lab.test")
}

/// 10.240.x.y for resource `i`: distinct, and never contacted.
fn unreachable_addr(i: usize) -> IpAddr {
    let i = u32::try_from(i).expect("fewer than 2^32 resources") + 1;
    Ipv4Addr::from(u32::from_be_bytes([10, 240, 0, 0]) + i).into()
}

/// The `[[resource]]` tables of the `RESOURCES` names, port 5432 each.
fn resource_tables() -> String {
    let mut t = String::new();
    for i in 0..RESOURCES {
        t.push_str(&format!(
            "\n[[resource]]\nname = \"{}\"\nhost = \"{}\"\nport = 5432\n",
            resource_name(i),
            resource_host(i)
        ));
    }
    t
}

/// Polls `status --json` until this agent shows a policy, enforce mode and
/// the reachable resource's address; returns the status and the seconds it
/// took.
fn wait_enforcing(lab: &Lab, started: Instant) -> (Value, f64) {
    let host = resource_host(REACHABLE);
    let mut last = String::new();
    while started.elapsed() < START_LIMIT {
        let out = lab.agent_cmd(&["status", "--json"]);
        if out.status.success() {
            if let Ok(s) = serde_json::from_slice::<Value>(&out.stdout) {
                let ours = s["agent_pid"].as_u64().map(|p| p as u32) == lab.agent_pid();
                if ours
                    && s["generation"].as_u64().unwrap_or(0) > 0
                    && s["mode"] == "enforce"
                    && !dns_addresses(&s, &host).is_empty()
                {
                    return (s, started.elapsed().as_secs_f64());
                }
                last = format!(
                    "generation {}, mode {}, ours {ours}, {host}: {:?}",
                    s["generation"],
                    s["mode"],
                    dns_addresses(&s, &host)
                );
            }
        } else {
            last = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("the agent with {RESOURCES} resources was not enforcing within {START_LIMIT:?}: {last}");
}

#[track_caller]
fn expect_eperm(what: &str, v: &Value) {
    assert_eq!(
        result(v),
        "eperm",
        "{what}: expected EPERM at connect(), got {v}"
    );
}

/// `RESOURCES` hostname resources on one gateway in enforce mode: the one
/// that resolves to a lab server passes (its rule counts the packets),
/// while an address no rule names, and the resource's address on a port no
/// rule names, are refused with EPERM at `connect()`.
#[test]
fn a_gateway_with_thousands_of_resources_enforces() {
    let mut lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    serve_all(&lab);
    gateway::gateway_dns(&lab, 300);
    for i in 0..RESOURCES {
        let addr = if i == REACHABLE {
            lab.net_ip(OTHER)
        } else {
            unreachable_addr(i)
        };
        lab.dns().set(&resource_host(i), &[addr], 300);
    }
    let mut config = gateway::gateway_config(&lab, "enforce", "");
    config.tables.push_str(&resource_tables());
    let path = lab.write_config("scale.toml", &config);
    let out = lab.agent_cmd_in_host(&["check", "--config", &path.display().to_string()]);
    assert!(
        out.status.success(),
        "check refused {RESOURCES} resources: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let started = Instant::now();
    lab.spawn_agent(&path, "enforce", &[]);
    let (before, secs) = wait_enforcing(&lab, started);
    eprintln!("scale: {RESOURCES} resources enforcing after {secs:.2} s");
    let name = format!("gateway/egress/resource/{}", resource_name(REACHABLE));

    let other = lab.net_ip(OTHER);
    expect_ok(
        "the reachable resource on 5432",
        &lab.tcp(sa(other, 5432), OK_MS),
    );
    let after = lab.status();
    assert!(
        rule_packets(&after, &name, "egress") > rule_packets(&before, &name, "egress"),
        "the flow passed by the resource's rule {name}"
    );
    expect_eperm(
        "an address no rule names, on the resources' port",
        &lab.tcp(sa(lab.net_ip(APP), 5432), OK_MS),
    );
    expect_eperm(
        "the resource's address on a port no rule names",
        &lab.tcp(sa(other, 8443), OK_MS),
    );
    // The fixture's own resource still passes among the thousands.
    expect_ok("the db resource", &lab.tcp(sa(lab.net_ip(DB), 5432), OK_MS));
}
