//! How many series a host serves: bounded by default whatever the number
//! of resources, one set per resource with `[metrics] per_resource`.

use std::{net::IpAddr, path::Path};

use super::*;
use crate::{
    api::status::{Count, LearnedStatus, RuleStatus},
    dns::resolver::HostReport,
    policy::{compile::compile, config::Config, Rule, Target},
};

/// The bound README.md states for a gateway with the defaults, whatever
/// the number of its `[[resource]]` and `[[secret_store]]` entries.
const README_GATEWAY_BOUND: usize = 160;

fn layout() -> Layout {
    Layout {
        pin_root: "/nonexistent/sdm-test".into(),
        run_dir: "/nonexistent/sdm-run".into(),
    }
}

fn config(text: &str) -> Config {
    Config::from_toml_str(text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn rule_status(r: &Rule, id: usize) -> RuleStatus {
    RuleStatus {
        name: r.name.clone(),
        id: u32::try_from(id).unwrap(),
        direction: Some(r.direction.to_string()),
        protos: r.protos.iter().map(|p| p.to_string()).collect(),
        ports: r.ports.iter().map(|p| p.to_string()).collect(),
        targets: r.targets.iter().map(|t| t.to_string()).collect(),
        required: Some(r.required),
        origin: Some(r.origin.clone()),
        active: true,
        addresses: vec![],
        egress: Count {
            packets: 3,
            bytes: 300,
        },
        ingress: Count {
            packets: 2,
            bytes: 200,
        },
    }
}

fn host_report(h: &str, resolved: bool) -> HostReport {
    HostReport {
        hostname: h.into(),
        addresses: if resolved {
            vec![IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2])]
        } else {
            vec![]
        },
        failures: 1,
        last_error: None,
        next_refresh_secs: 30,
        resolved,
    }
}

const VAULT: &str = "[[secret_store]]\nname = \"vault\"\ncidr = \"10.1.0.0/24\"\nport = 8200\n";

/// The `[[resource]]` entry `i`: the hostname `r{i}.db.internal`, also
/// named by `allow/shared` for entry 0.
fn resource(i: usize) -> String {
    format!("[[resource]]\nname = \"r{i}\"\nhost = \"r{i}.db.internal\"\nport = 5432\n")
}

/// A gateway with the defaults.
const DEFAULT: &str = "role = \"gateway\"\n";

/// A gateway that dials another, and an `[[allow]]` for a resource's name.
const GATEWAY: &str = "role = \"gateway\"\ngateways = [\"gw2.example:5000\"]\n\
    [[allow]]\nname = \"shared\"\ndirection = \"egress\"\nport = 5432\nto = \"r0.db.internal\"\n";

/// What the agent reports for a gateway of config `top` with `n`
/// resources: the policy compiled from the config (its own rules, a secret
/// store and two resources),
/// and the other entries' rules as the compiler names them (the
/// dataplane's rule cap is not this test's), every third name unresolved,
/// every hostname with one learned address (and one address of no name).
fn gateway_status(top: &str, n: usize) -> Status {
    let text = format!("{top}{VAULT}{}{}", resource(0), resource(1));
    let policy = compile(&config(&text), &[IpAddr::from([10, 0, 0, 2])]).unwrap();
    let mut rules: Vec<Rule> = policy.rules;
    let template = rules
        .iter()
        .find(|r| r.name == "gateway/egress/resource/r1")
        .unwrap_or_else(|| panic!("no rule of resource r1 in {rules:?}"))
        .clone();
    for i in 2..n {
        let mut r = template.clone();
        r.name = format!("gateway/egress/resource/r{i}");
        r.targets = vec![Target::Host(format!("r{i}.db.internal"))];
        rules.push(r);
    }
    let mut s = with_every_fixed_row(Status::sample());
    s.rules = rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule_status(r, i))
        .collect();
    let mut hosts: Vec<String> = Vec::new();
    for t in rules.iter().flat_map(|r| &r.targets) {
        if let Target::Host(h) = t {
            if !hosts.contains(h) {
                hosts.push(h.clone());
            }
        }
    }
    s.dns = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| host_report(h, i % 3 != 0))
        .collect();
    s.learned = hosts
        .iter()
        .map(|h| LearnedStatus {
            address: IpAddr::from([192, 0, 2, 9]),
            hostname: Some(h.clone()),
            expires_in_secs: 60,
        })
        .collect();
    // An address learned for a name no recorded rule has (a policy being
    // replaced): counted under "unknown".
    s.learned.push(LearnedStatus {
        address: IpAddr::from([192, 0, 2, 8]),
        hostname: None,
        expires_in_secs: 60,
    });
    s
}

/// Every row of the families that do not depend on the policy, as a
/// snapshot of the maps has them: a deny counter per mode, direction and
/// reason, every DNS answer result and query verdict.
fn with_every_fixed_row(mut s: Status) -> Status {
    s.denied = Vec::new();
    for mode in ["audit", "enforce"] {
        for dir in sdm_common::TrafficDir::ALL {
            for reason in sdm_common::DenyReason::ALL {
                s.denied.push(crate::api::status::DenyStatus {
                    mode: mode.into(),
                    direction: dir.name().into(),
                    reason: reason.name().into(),
                    packets: 1,
                    bytes: 1,
                });
            }
        }
    }
    s.dns_answers = sdm_common::DnsResult::ALL
        .map(|r| (r.name().to_string(), 1))
        .into_iter()
        .collect();
    s.dns_queries = sdm_common::DnsQueryVerdict::ALL
        .map(|v| (v.name().to_string(), 1))
        .into_iter()
        .collect();
    s
}

fn render_with(s: Status, per_resource: bool) -> String {
    render_snapshot_with(
        s,
        layout(),
        AgentStats::default(),
        &MetricsConfig { per_resource },
    )
}

/// Sample lines: everything but comments and blank lines.
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count()
}

/// The value of the sample `line_start` (name and labels) in `text`.
fn value(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn default_series_do_not_grow_with_resources() {
    let plain = render_with(gateway_status(DEFAULT, 10_000), false);
    let count = series(&plain);
    eprintln!("{count} series for a gateway with the defaults");
    assert!(
        count <= README_GATEWAY_BOUND,
        "{count} series, README.md says at most {README_GATEWAY_BOUND}:\n{plain}"
    );
    let few = render_with(gateway_status(GATEWAY, 10), false);
    let s = gateway_status(GATEWAY, 10_000);
    let text = render_with(s.clone(), false);
    let count = series(&text);
    assert_eq!(count, series(&few), "the series count grew with resources");
    // The formula of README.md: the fixed families, plus per rule and
    // hostname with series of their own, plus per guide row of entries.
    let fixed = series(&render_with(
        Status {
            rules: vec![],
            dns: vec![],
            learned: vec![],
            ..with_every_fixed_row(Status::sample())
        },
        false,
    ));
    eprintln!("{fixed} fixed series");
    let own_rules = s
        .rules
        .iter()
        .filter(|r| crate::policy::compile::listed_row(&r.name).is_none())
        .count();
    // Guide names, gw2.example and r0.db.internal (named by allow/shared).
    let own_hosts = 6;
    let rows = 2;
    // `+ 1`: learned addresses of no policy name, counted as "unknown".
    assert!(
        count
            <= fixed
                + SERIES_PER_RULE * own_rules
                + SERIES_PER_HOSTNAME * own_hosts
                + 1
                + SERIES_PER_LISTED_ROW * rows,
        "{count} series"
    );
    assert!(!text.contains("r9999"), "a resource's own series:\n{text}");
    assert!(!text.contains("hostname=\"r1.db.internal\""), "{text}");
}

#[test]
fn per_resource_series_scale_with_resources() {
    let text = render_with(gateway_status(GATEWAY, 10_000), true);
    let count = series(&text);
    // Four rule series, two hostname series and one learned per resource.
    assert!(count > 7 * 10_000, "{count} series");
    assert!(count > series(&render_with(gateway_status(GATEWAY, 5_000), true)) + 7 * 4_000);
    for want in [
        "sdm_rule_packets_total{rule=\"gateway/egress/resource/r9999\",direction=\"egress\",verdict=\"allow\"} 3",
        "sdm_hostname_addresses{hostname=\"r9999.db.internal\"} 2",
        "sdm_dns_failures_total{hostname=\"r9999.db.internal\"} 1",
        "sdm_dns_learned_addresses{hostname=\"r9999.db.internal\"} 1",
        // Served either way.
        "sdm_resource_rules{rule=\"gateway/egress/resource\"} 10000",
    ] {
        assert!(text.contains(want), "{want:?} not in the scrape");
    }
    assert!(!text.contains("rule=\"gateway/egress/resource\",direction"));
}

#[test]
fn resources_are_summed_by_their_guide_row() {
    let n = 10_000;
    let s = gateway_status(GATEWAY, n);
    let text = render_with(s.clone(), false);
    let row = |family: &str, row: &str| value(&text, &format!("{family}{{rule=\"{row}\"}}"));
    let res = "gateway/egress/resource";
    assert_eq!(row("sdm_resource_rules", res), n as f64);
    assert_eq!(
        row("sdm_resource_rules", "gateway/egress/secret-store"),
        1.0
    );
    assert_eq!(row("sdm_resource_hostnames", res), n as f64);
    let unresolved = s
        .dns
        .iter()
        .filter(|h| h.hostname.ends_with(".db.internal") && h.addresses.is_empty())
        .count();
    assert!(unresolved > 3000, "{unresolved}");
    assert_eq!(
        row("sdm_resource_hostnames_unresolved", res),
        unresolved as f64
    );
    assert_eq!(
        row("sdm_resource_hostname_addresses", res),
        2.0 * (n - unresolved) as f64
    );
    assert_eq!(row("sdm_resource_dns_failures_total", res), n as f64);
    assert_eq!(row("sdm_resource_dns_learned_addresses", res), n as f64);
    // The rule counters: the row's sum, each direction.
    let sum = |dir: &str, family: &str| {
        value(
            &text,
            &format!("{family}{{rule=\"{res}\",direction=\"{dir}\",verdict=\"allow\"}}"),
        )
    };
    assert_eq!(sum("egress", "sdm_rule_packets_total"), 3.0 * n as f64);
    assert_eq!(sum("ingress", "sdm_rule_bytes_total"), 200.0 * n as f64);
    // The guide's rules and [[allow]] keep theirs, and so does a resource's
    // hostname that an [[allow]] names too.
    for want in [
        "sdm_rule_packets_total{rule=\"gateway/egress/app\",direction=\"egress\",verdict=\"allow\"} 3",
        "sdm_rule_packets_total{rule=\"allow/shared\",direction=\"ingress\",verdict=\"allow\"} 2",
        "sdm_rule_bytes_total{rule=\"gateway/egress/gateway/gw2.example\",direction=\"egress\",verdict=\"allow\"} 300",
        "sdm_hostname_addresses{hostname=\"r0.db.internal\"} 2",
        "sdm_dns_failures_total{hostname=\"app.strongdm.com\"} 1",
        "sdm_dns_learned_addresses{hostname=\"r0.db.internal\"} 1",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}

#[test]
fn the_readme_states_the_bound() {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
    let want = format!("at most {README_GATEWAY_BOUND} series");
    assert!(readme.contains(&want), "README.md does not say {want:?}");
    for (what, n) in [
        ("per rule", SERIES_PER_RULE),
        ("per hostname", SERIES_PER_HOSTNAME),
        ("per guide row", SERIES_PER_LISTED_ROW),
    ] {
        let want = format!("{n} {what}");
        assert!(readme.contains(&want), "README.md does not say {want:?}");
    }
}
