//! Issue 14: a gateway with a thousand hostname resources. The real agent
//! resolves them against the lab's fake DNS server (a single-threaded
//! responder, as the measurement used), paced to `[dns] max_qps`:
//! the server never sees more than the ceiling in a second, every name
//! resolves, the policy applies within seconds, and a resource's flow
//! passes while another address is refused.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use sdm_tests::gateway::{
    self, expect_denied, expect_ok, sa, serve_all, DB, DENY_MS, GATEWAY_HOSTS, OK_MS, OTHER,
};
use sdm_tests::lab::{dns_addresses, Lab};
use serde_json::Value;

const NAMES: usize = 1_000;
const MAX_QPS: u64 = 600;

fn name(i: usize) -> String {
    format!("r{i}.scale.lab.test")
}

#[test]
fn a_thousand_hostnames_resolve_paced_and_apply_within_seconds() {
    let mut lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    serve_all(&lab);
    gateway::gateway_dns(&lab, 300);
    let db: Vec<IpAddr> = vec![lab.net_ip(DB)];
    let mut resources = String::new();
    for i in 0..NAMES {
        lab.dns().set(&name(i), &db, 300);
        resources.push_str(&format!(
            "\n[[resource]]\nname = \"scale-{i}\"\nhost = \"{}\"\nport = 5432\n",
            name(i)
        ));
    }
    let mut config = gateway::gateway_config(&lab, "enforce", &format!("max_qps = {MAX_QPS}"));
    config.tables.push_str(&resources);
    let path = lab.write_config("scale.toml", &config);

    // The queries the server answered, sampled every 50 ms while the agent
    // starts.
    let before = lab.dns().queries();
    let started = Instant::now();
    lab.spawn_agent(&path, "enforce", &GATEWAY_HOSTS);
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let ready = loop {
        samples.push((Instant::now(), lab.dns().queries() - before));
        // Not `lab.status()`: nothing is pinned until the agent attaches.
        let out = lab.agent_cmd(&["status", "--json"]);
        let st: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let resolved = (0..NAMES)
            .filter(|i| !dns_addresses(&st, &name(*i)).is_empty())
            .count();
        if st["generation"].as_u64().unwrap_or(0) > 0 && resolved == NAMES {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready after 60 s: {resolved} of {NAMES} names resolved, generation {}",
            st["generation"]
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    lab.wait_ready("enforce", &GATEWAY_HOSTS);
    let total = lab.dns().queries() - before;
    // The most queries in any window of one second between two samples
    // (at most 1 s + 50 ms apart: one sample's worth of slack).
    let mut most = 0;
    for (i, (t0, q0)) in samples.iter().enumerate() {
        for (t1, q1) in &samples[i..] {
            if *t1 - *t0 <= Duration::from_secs(1) {
                most = most.max(q1 - q0);
            }
        }
    }
    println!(
        "{NAMES} hostnames: ready in {ready:.2?}; {total} queries, at most {most} within a second (max_qps {MAX_QPS})"
    );
    assert!(
        total >= 2 * NAMES as u64,
        "A and AAAA for every name: {total} queries"
    );
    assert!(
        most <= MAX_QPS + MAX_QPS / 10,
        "{most} queries within a second, above max_qps {MAX_QPS}"
    );
    // 2,000 queries at 600 a second take 3.3 s; the rest is the agent's
    // own start.
    assert!(
        ready >= Duration::from_secs(3) && ready <= Duration::from_secs(30),
        "ready after {ready:?}"
    );

    expect_ok(
        "a resource's address",
        &lab.tcp(sa(lab.net_ip(DB), 5432), OK_MS),
    );
    expect_denied(
        "an address no rule names",
        &lab.tcp(sa(lab.net_ip(OTHER), 5432), DENY_MS),
    );
}
