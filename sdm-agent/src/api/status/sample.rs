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
            backstop: vec![],
            xdp: None,
            policy_error: None,
        }
    }
}
