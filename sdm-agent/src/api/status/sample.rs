//! [`Status::sample`]: one status for every test that renders one.

use std::{net::IpAddr, path::PathBuf};

use super::{Count, DenyStatus, HostReport, LearnedStatus, RuleStatus, Status};

impl Status {
    /// A status with a row in every family (rules, denied, DNS, answers,
    /// queries, learned), for the tests that render it: the HTTP API, the
    /// metrics and the Grafana dashboard's series check. Not used by the
    /// agent itself.
    #[doc(hidden)]
    pub fn sample() -> Status {
        Status {
            mode: "audit".into(),
            loopback: "pass".into(),
            generation: 4,
            cgroup: Some(PathBuf::from("/sys/fs/cgroup/test")),
            pin_root: PathBuf::from("/sys/fs/bpf/sdm"),
            agent_pid: Some(1),
            agent_running: true,
            rules: vec![RuleStatus {
                name: "gateway/egress/app".into(),
                id: 1,
                direction: Some("egress".into()),
                protos: vec!["tcp".into()],
                ports: vec!["443".into()],
                targets: vec!["app.strongdm.com".into()],
                required: Some(true),
                origin: Some("guide".into()),
                active: true,
                addresses: vec!["192.0.2.10".into()],
                egress: Count {
                    packets: 5,
                    bytes: 500,
                },
                ingress: Count {
                    packets: 4,
                    bytes: 400,
                },
            }],
            denied: vec![DenyStatus {
                mode: "audit".into(),
                direction: "egress".into(),
                reason: "no_rule".into(),
                packets: 7,
                bytes: 700,
            }],
            dns: vec![HostReport {
                hostname: "app.strongdm.com".into(),
                addresses: vec![IpAddr::from([192, 0, 2, 10])],
                failures: 2,
                last_error: None,
                next_refresh_secs: 30,
                resolved: true,
            }],
            dns_answers: [("learned".to_string(), 3), ("unasked".to_string(), 1)]
                .into_iter()
                .collect(),
            dns_learn_table_full: 0,
            dns_queries_mode: "policy".into(),
            dns_queries: [("allowed".to_string(), 5), ("refused".to_string(), 2)]
                .into_iter()
                .collect(),
            learned: vec![LearnedStatus {
                address: IpAddr::from([192, 0, 2, 11]),
                hostname: Some("app.strongdm.com".into()),
                expires_in_secs: 60,
            }],
            bypass_capable: vec![],
            flow_store_evictions: 0,
            rule_capacity: 1024,
            backstop: vec![],
            xdp: None,
            policy_error: None,
            last_reload: None,
            rules_active: 1,
            rules_page: None,
            dns_page: None,
            learned_page: None,
        }
    }

    /// A gateway's status with `n` resource rules and as many hostnames,
    /// for the tests of paging at scale (the HTTP API, the dashboard in
    /// Chromium). Rule `i` (from 1) is `resource/db-<i, 5 digits>`, to
    /// `db-<i>.corp.example:5432`, with `i * 7 % 1000` egress packets;
    /// every 100th hostname has failures. Not used by the agent itself.
    #[doc(hidden)]
    pub fn sample_large(n: usize) -> Status {
        let rules = (1..=n)
            .map(|i| {
                let host = format!("db-{i:05}.corp.example");
                let addr = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                let hits = (i as u64 * 7) % 1000;
                RuleStatus {
                    name: format!("resource/db-{i:05}"),
                    id: i as u32,
                    direction: Some("egress".into()),
                    protos: vec!["tcp".into()],
                    ports: vec!["5432".into()],
                    targets: vec![host],
                    required: Some(false),
                    origin: Some("resource".into()),
                    active: true,
                    addresses: vec![addr],
                    egress: Count {
                        packets: hits,
                        bytes: hits * 100,
                    },
                    ingress: Count {
                        packets: hits / 2,
                        bytes: hits * 50,
                    },
                }
            })
            .collect::<Vec<_>>();
        let dns = rules
            .iter()
            .enumerate()
            .map(|(i, r)| HostReport {
                hostname: r.targets[0].clone(),
                addresses: r.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                failures: if (i + 1) % 100 == 0 { 3 } else { 0 },
                last_error: ((i + 1) % 100 == 0).then(|| "timed out".to_string()),
                next_refresh_secs: 30,
                resolved: true,
            })
            .collect();
        Status {
            rules_active: rules.len(),
            rules,
            dns,
            learned: vec![],
            ..Status::sample()
        }
    }
}
