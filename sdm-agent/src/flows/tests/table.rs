//! The in-memory flow table: aggregation, relogging, its bound.

use super::*;

/// The flow that [`table_is_bounded_and_evicts_the_oldest`] keeps hot.
fn hot_event(t: u64) -> Event {
    event("egress", "tcp", "203.0.113.1", 443, "hot", "dropped", t)
}

/// Every flow seen since `since_ms`, at most `limit`.
fn recent(since_ms: u64, limit: usize) -> FlowQuery {
    FlowQuery {
        since_ms,
        direction: None,
        verdict: None,
        limit,
    }
}

#[test]
fn aggregates_by_key() {
    let mut t = FlowTable::new(100, Duration::from_secs(3600));
    let e1 = event("egress", "tcp", "192.0.2.1", 443, "curl", "dropped", 1_000);
    let e2 = event("egress", "tcp", "192.0.2.1", 443, "curl", "dropped", 2_000);
    let other_port = event("egress", "tcp", "192.0.2.1", 80, "curl", "dropped", 2_000);
    let other_comm = event("egress", "tcp", "192.0.2.1", 443, "wget", "dropped", 2_000);
    let other_verdict = event("egress", "tcp", "192.0.2.1", 443, "curl", "audit", 2_000);
    let mut in1 = event(
        "ingress",
        "tcp",
        "198.51.100.7",
        22,
        "sshd",
        "dropped",
        3_000,
    );
    assert!(t.record(&Flow::from_event(&e1, Some("api.example".into()))));
    assert!(!t.record(&Flow::from_event(&e2, None)));
    for e in [&other_port, &other_comm, &other_verdict, &in1] {
        assert!(t.record(&Flow::from_event(e, None)));
    }
    // Ingress keys on the local port, not the client's ephemeral one.
    in1.remote_port = 50001;
    in1.time += Duration::from_secs(1);
    assert!(!t.record(&Flow::from_event(&in1, None)));
    assert_eq!(t.len(), 5);
    let f = t.get(&FlowKey::of(&e1)).unwrap();
    assert_eq!((f.first_seen, f.last_seen, f.count), (1_000, 2_000, 4));
    assert_eq!(
        f.hostname.as_deref(),
        Some("api.example"),
        "a later event without a name keeps it"
    );
    assert_eq!((f.pid, f.uid, f.cgroup_id), (4242, 1000, 7));
    let inf = t.get(&FlowKey::of(&in1)).unwrap();
    assert_eq!((inf.key.port, inf.count), (22, 4));

    let q = FlowQuery {
        since_ms: 0,
        direction: Some("egress".into()),
        verdict: Some("dropped".into()),
        limit: 10,
    };
    let got = t.query(&q);
    assert_eq!(got.len(), 3);
    assert!(got
        .iter()
        .all(|f| f.key.direction == "egress" && f.key.verdict == "dropped"));
    assert_eq!(t.query(&recent(2_500, 10)).len(), 1);
    assert_eq!(t.query(&recent(0, 2)).len(), 2);
    // Newest first.
    assert_eq!(t.query(&recent(0, 1))[0].key.comm, "sshd");
}

#[test]
fn relogs_after_a_long_silence() {
    let mut t = FlowTable::new(100, Duration::from_secs(60));
    let e = |ms| {
        Flow::from_event(
            &event("egress", "udp", "192.0.2.1", 53, "dig", "audit", ms),
            None,
        )
    };
    assert!(t.record(&e(0)));
    assert!(!t.record(&e(59_000)));
    assert!(!t.record(&e(100_000)));
    assert!(t.record(&e(200_000)));
}

#[test]
fn table_is_bounded_and_evicts_the_oldest() {
    let mut t = FlowTable::new(100, Duration::from_secs(3600));
    for i in 0..1000u32 {
        let remote = IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + i));
        let mut e = event(
            "egress",
            "tcp",
            "192.0.2.1",
            443,
            "x",
            "dropped",
            u64::from(i) * 10,
        );
        e.remote = remote;
        t.record(&Flow::from_event(&e, None));
        // Keep one flow hot.
        t.record(&Flow::from_event(&hot_event(u64::from(i) * 10 + 1), None));
        assert!(t.len() <= 100);
    }
    assert!(t.get(&FlowKey::of(&hot_event(0))).is_some());
    let mut newest = event("egress", "tcp", "192.0.2.1", 443, "x", "dropped", 0);
    newest.remote = IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + 999u32));
    assert!(t.get(&FlowKey::of(&newest)).is_some());
    // Every flow that is gone is counted: 1001 distinct flows went in.
    assert_eq!(t.evicted() + t.len() as u64, 1001);
}

/// A writer for a tracing subscriber that keeps what is logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A full flow table is not a silent loss: the evictions are counted
/// (`sdm_flows_evicted_total`) and logged, at most once a minute, and
/// every new flow still reaches the audit log.
#[test]
fn a_full_table_logs_and_counts_its_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("audit.jsonl");
    let table = FlowTable::shared(10);
    let mut p = Pipeline::new(
        table.clone(),
        HostnameIndex::default(),
        AuditLog::file(&log_path),
        None,
    );
    let logged = Captured::default();
    let writer = logged.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        for round in 0..3u32 {
            let events: Vec<Event> = (0..10u32)
                .map(|i| {
                    let mut e = event("egress", "tcp", "192.0.2.1", 443, "x", "dropped", 0);
                    e.remote = IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + round * 10 + i));
                    e.time = UNIX_EPOCH + Duration::from_millis(u64::from(round * 10 + i));
                    e
                })
                .collect();
            p.handle(&events);
        }
    });
    let t = table.lock().unwrap();
    assert!(t.len() <= 10, "{}", t.len());
    assert_eq!(t.evicted() + t.len() as u64, 30);
    assert_eq!(
        p.evicted.load(std::sync::atomic::Ordering::Relaxed),
        t.evicted(),
        "the pipeline's counter (the metric) follows the table"
    );
    let text = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("flow table is full"))
        .collect();
    assert_eq!(lines.len(), 1, "one warning, not one per eviction: {text}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("capacity=10"),
        "{text}"
    );
    let audit = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(
        audit.lines().count(),
        30,
        "every new flow is logged: {audit}"
    );
}
