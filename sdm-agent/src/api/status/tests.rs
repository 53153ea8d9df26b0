use super::*;

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
