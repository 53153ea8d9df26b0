//! Reload (SIGHUP, `systemctl reload`): the agent reads its config file
//! again and applies the difference with the policy's slot flip; a bad
//! file, or one that changes a setting only a restart applies, is refused
//! with the file, line and key, logged, counted, and the running policy
//! stays whole. In the lab (see `sdm_tests::lab`), in enforce mode.

use std::{net::SocketAddr, path::Path, time::Duration};

use sdm_tests::gateway::{self, expect_ok, sa, wait_for, APP, DB, DENY_MS, OK_MS, OTHER};
use sdm_tests::lab::{generation, metric, names_line, result, rule, Lab};
use serde_json::Value;

/// The rule the reload adds: the unlisted address, by a name the fake DNS
/// answers only for this test (resolved before the new policy is live).
const ADDED: &str = "\n[[allow]]\n\
                     name = \"reloaded\"\n\
                     direction = \"egress\"\n\
                     proto = \"tcp\"\n\
                     port = 443\n\
                     to = \"other.lab.test\"\n";

/// `last_reload`'s (applied, refused) counts in `status --json`.
fn reload_counts(s: &Value) -> (u64, u64) {
    let r = &s["last_reload"];
    (
        r["applied"].as_u64().unwrap_or(0),
        r["refused"].as_u64().unwrap_or(0),
    )
}

/// Sends SIGHUP to the agent and waits until its status records one more
/// reload; returns that status.
fn sighup(lab: &Lab, what: &str) -> Value {
    let (a, r) = reload_counts(&lab.status());
    let pid = lab.agent_pid().expect("the agent runs");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0, "SIGHUP");
    wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        let s = lab.status();
        let (a2, r2) = reload_counts(&s);
        (a2 + r2 > a + r).then_some(s)
    })
    .unwrap_or_else(|| panic!("{what}: the agent recorded no reload within 10 s of SIGHUP"))
}

/// A connect from the cgroup that must be refused at connect(2) (enforce
/// mode: EPERM, no packet sent).
#[track_caller]
fn expect_eperm(lab: &Lab, what: &str, addr: SocketAddr) {
    let v = lab.tcp(addr, DENY_MS);
    assert_eq!(result(&v), "eperm", "{what}: expected EPERM, got {v}");
}

fn counter(lab: &Lab, name: &str) -> f64 {
    let text = lab.metrics();
    metric(&text, name, &[]).unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn sighup_applies_a_good_config_and_refuses_a_bad_one_whole() {
    let mut lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    let config = gateway::start(&mut lab, "enforce", "");
    let original = std::fs::read_to_string(&config).expect("read the config");
    let other = sa(lab.net_ip(OTHER), 443);
    let other_8443 = sa(lab.net_ip(OTHER), 8443);
    let app = sa(lab.net_ip(APP), 443);
    let db = sa(lab.net_ip(DB), 5432);
    let db_443 = sa(lab.net_ip(DB), 443);
    lab.dns().set("other.lab.test", &[lab.net_ip(OTHER)], 300);

    // Before: the unlisted address is refused.
    expect_eperm(&lab, "other:443 before the reload", other);
    let g0 = generation(&lab.status());

    // A good config that adds a rule for a new name: live after one SIGHUP,
    // the name resolved before the flip (the first connect after it passes).
    let with_rule = format!("{original}{ADDED}");
    write(&config, &with_rule);
    let s = sighup(&lab, "the added rule");
    assert_eq!(s["last_reload"]["ok"], true, "{s}");
    assert_eq!(reload_counts(&s), (1, 0), "{s}");
    let g1 = generation(&s);
    assert!(g1 > g0, "the generation did not flip: {g0} -> {g1}");
    assert_eq!(rule(&s, "allow/reloaded")["active"], true, "{s}");
    expect_ok("other:443 after the reload", &lab.tcp(other, OK_MS));
    // The old policy's rules still hold, and what no rule allows is refused.
    expect_ok("app:443 after the reload", &lab.tcp(app, OK_MS));
    expect_ok("db:5432 after the reload", &lab.tcp(db, OK_MS));
    expect_eperm(&lab, "other:8443 after the reload", other_8443);
    expect_eperm(&lab, "db:443 after the reload", db_443);
    assert_eq!(counter(&lab, "sdm_config_reloads_total"), 1.0);
    assert_eq!(counter(&lab, "sdm_config_reload_errors_total"), 0.0);

    // The same file again: a no-op (no map write, no flip).
    let s = sighup(&lab, "the unchanged config");
    assert_eq!(reload_counts(&s), (2, 0), "{s}");
    assert_eq!(
        generation(&s),
        g1,
        "an unchanged config flipped the generation"
    );
    assert!(
        lab.agent_log().contains("config reloaded: unchanged"),
        "the log does not say the reload changed nothing"
    );

    // A bad key: refused with file, line and key; the previous policy whole.
    let mut lines: Vec<&str> = with_rule.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("optional = "))
        .expect("an `optional` line")
        + 1;
    lines.insert(at, "colour = \"blue\"");
    write(&config, &(lines.join("\n") + "\n"));
    let s = sighup(&lab, "the bad key");
    assert_eq!(s["last_reload"]["ok"], false, "{s}");
    assert_eq!(reload_counts(&s), (2, 1), "{s}");
    assert_eq!(
        generation(&s),
        g1,
        "a refused reload flipped the generation"
    );
    let log = lab.agent_log();
    let refused = log
        .lines()
        .rev()
        .find(|l| l.contains("reloading the config failed"))
        .unwrap_or_else(|| panic!("no reload error in the agent's log"));
    assert!(refused.contains("ERROR"), "not logged at error: {refused}");
    for want in [config.display().to_string(), "`colour`".to_string()] {
        assert!(
            refused.contains(&want),
            "the error does not name {want}: {refused}"
        );
    }
    assert!(
        names_line(refused, at + 1),
        "the error does not name line {}: {refused}",
        at + 1
    );
    assert_eq!(counter(&lab, "sdm_config_reload_errors_total"), 1.0);
    expect_ok("other:443 after the refused reload", &lab.tcp(other, OK_MS));
    expect_ok("app:443 after the refused reload", &lab.tcp(app, OK_MS));
    expect_eperm(&lab, "other:8443 after the refused reload", other_8443);
    assert_eq!(lab.status()["mode"], "enforce");

    // A setting only a restart applies ([state] dir), beside a policy
    // change: refused whole, with what to do.
    let moved = with_rule.replace("/state\"", "/state-moved\"");
    assert_ne!(moved, with_rule, "no [state] dir line in the config");
    write(
        &config,
        &format!("{moved}{}", ADDED.replace("reloaded", "second")),
    );
    let s = sighup(&lab, "the [state] dir change");
    assert_eq!(reload_counts(&s), (2, 2), "{s}");
    let error = s["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("`[state] dir`") && error.contains("restart"),
        "the refusal does not name the key and the restart: {s}"
    );
    assert_eq!(generation(&s), g1);
    assert!(
        s["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r["name"] != "allow/second"),
        "a rule of the refused config is in the status: {s}"
    );
    expect_ok(
        "other:443 after the refused restart",
        &lab.tcp(other, OK_MS),
    );

    // Back to the original file, in audit mode and with per-resource
    // series: the added rule is gone (its flow would be refused), the mode
    // changed live (nothing is), and so did `[metrics]` (the next scrape).
    assert!(
        !lab.metrics().contains("hostname=\"db.lab.test\""),
        "per-resource series before [metrics] per_resource was set"
    );
    write(
        &config,
        &format!(
            "{}\n[metrics]\nper_resource = true\n",
            original.replace("mode = \"enforce\"", "mode = \"audit\"")
        ),
    );
    let s = sighup(&lab, "the original config in audit mode");
    assert_eq!(reload_counts(&s), (3, 2), "{s}");
    assert_eq!(s["mode"], "audit", "{s}");
    assert!(generation(&s) > g1, "{s}");
    let reloaded = s["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "allow/reloaded");
    assert!(
        reloaded.is_none_or(|r| r["active"] == false),
        "the removed rule is live: {reloaded:?}"
    );
    assert!(
        lab.metrics().contains("hostname=\"db.lab.test\""),
        "[metrics] per_resource = true did not apply at the reload"
    );
    expect_ok("other:8443 in audit mode", &lab.tcp(other_8443, OK_MS));
    // No rule allows other:443 any more: let through in audit mode, and
    // counted as denied.
    let before = audit_denied(&lab.status());
    expect_ok("other:443 in audit mode", &lab.tcp(other, OK_MS));
    let after = audit_denied(&lab.status());
    assert!(
        after > before,
        "other:443 was not counted as denied once its rule was removed ({before} -> {after})"
    );
}

/// Egress packets counted as denied in audit mode.
fn audit_denied(s: &Value) -> u64 {
    s["denied"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["mode"] == "audit" && d["direction"] == "egress")
        .filter_map(|d| d["packets"].as_u64())
        .sum()
}
