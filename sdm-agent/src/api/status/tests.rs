use super::*;
use crate::dns::resolver::HostReport;

fn empty() -> Status {
    Status {
        rules: vec![],
        denied: vec![],
        dns: vec![],
        learned: vec![],
        ..Status::sample()
    }
}

#[test]
fn evictions_and_bypass_capable_processes_are_shown() {
    let quiet = render(&empty());
    assert!(
        !quiet.contains("evicted") && !quiet.contains("bypass"),
        "{quiet}"
    );
    let mut s = empty();
    s.flow_store_evictions = 1234;
    s.bypass_capable = vec![crate::kernel::caps::BypassCapable {
        pid: 4242,
        comm: "relay".into(),
        cgroup: "/sys/fs/cgroup/x".into(),
        caps: vec!["CAP_NET_RAW".into()],
    }];
    let text = render(&s);
    assert!(text.contains("1234 flows evicted"), "{text}");
    assert!(text.contains("can bypass the cgroup programs"), "{text}");
    assert!(text.contains("pid 4242"), "{text}");
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["flow_store_evictions"], 1234);
    assert_eq!(json["bypass_capable"][0]["caps"][0], "CAP_NET_RAW");
}

/// A state file of an older agent (no fingerprint, no evictions) still
/// reads; its DNS answers are not adopted.
#[test]
fn an_older_state_file_reads_without_a_fingerprint() {
    let old = r#"{"pid":1,"config":null,"rules":[],"dns":[],"updated":0}"#;
    let f: StateFile = serde_json::from_str(old).unwrap();
    assert_eq!(f.dns_fingerprint, None);
    assert_eq!(f.flow_store_evictions, 0);
    assert!(f.dns_for(&dns_fingerprint(&[], &[])).is_none());
}

/// The human view of 10,000 rules: a page, and how many more there are.
#[test]
fn a_large_status_renders_a_page_and_says_how_many_more() {
    let top = |q: &str| {
        let mut s = Status::sample_large(10_000);
        let p = PageParams {
            limit: Some("20"),
            q: Some(q).filter(|q| !q.is_empty()),
            sort: Some("hits"),
            ..PageParams::default()
        };
        s.paginate(&StatusPages {
            rules: PageQuery::parse::<RuleStatus>("", &p).unwrap(),
            dns: PageQuery::parse::<HostReport>(
                "",
                &PageParams {
                    sort: None,
                    ..p.clone()
                },
            )
            .unwrap(),
            learned: PageQuery::all::<LearnedStatus>(),
        });
        render(&s)
    };
    let text = top("");
    assert!(
        text.contains("RULES (20 of 10,000, by hits desc)"),
        "{text}"
    );
    assert!(
        text.contains("... and 9,980 more: use --all, --filter, --offset, or the API (/api/rules)"),
        "{text}"
    );
    assert!(
        text.contains("resource/db-00857"),
        "the rule with most hits: {text}"
    );
    assert!(
        text.contains("DNS (20 of 10,000, by failures desc)"),
        "{text}"
    );
    assert!(
        text.contains("db-00100.corp.example"),
        "failing hosts first: {text}"
    );
    assert!(text.lines().count() < 100, "{} lines", text.lines().count());

    let text = top("db-0999");
    assert!(
        text.contains("RULES (10 of 10 matching \"db-0999\" (of 10,000), by hits desc)"),
        "{text}"
    );
    assert!(!text.contains("more: use"), "all matches shown: {text}");
    let text = top("no-such-rule");
    assert!(text.contains("no rule matches"), "{text}");
    assert!(text.contains("no hostname matches"), "{text}");

    // Unpaged (the whole list): no counts in the titles.
    let text = render(&Status::sample());
    assert!(
        text.contains("\nRULES\n") && text.contains("\nDNS\n"),
        "{text}"
    );
}
