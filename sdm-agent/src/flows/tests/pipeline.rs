//! The pipeline from events to the audit log and the store.

use super::*;

#[tokio::test]
async fn pipeline_logs_new_flows_once_and_stores_them() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("audit.jsonl");
    let db = dir.path().join("state/flows.db");
    let stats = StoreStats::default();
    let store = StoreHandle::spawn(
        StoreOptions::new(&db, Duration::from_secs(86400)),
        stats.clone(),
    );
    let table = FlowTable::shared(100);
    let idx = index(&[("api.example.com", &["192.0.2.1"])]);
    let mut p = Pipeline::new(
        table.clone(),
        idx,
        AuditLog::file(&log_path),
        Some(store.clone()),
    );
    p.flush_every = Duration::from_millis(50);
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(p.run(rx));
    let now = now_ms();
    for i in 0..3 {
        tx.send(event(
            "egress",
            "tcp",
            "192.0.2.1",
            443,
            "curl",
            "dropped",
            now + i,
        ))
        .await
        .unwrap();
    }
    tx.send(event(
        "egress",
        "udp",
        "198.51.100.1",
        53,
        "dig",
        "audit",
        now + 5,
    ))
    .await
    .unwrap();
    drop(tx);
    task.await.unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["hostname"], "api.example.com");
    assert_eq!(lines[0]["comm"], "curl");
    assert_eq!(lines[1]["hostname"], serde_json::Value::Null);
    assert_eq!(table.lock().unwrap().len(), 2);
    // The store gets them (the writer thread commits within a second).
    let mut got = Vec::new();
    for _ in 0..100 {
        got = store
            .query(&FlowQuery::within(Duration::from_secs(3600)))
            .unwrap_or_default();
        if got.len() == 2 && got.iter().any(|f| f.count == 6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let curl = got
        .iter()
        .find(|f| f.key.comm == "curl")
        .expect("curl flow stored");
    assert_eq!(
        (curl.count, curl.hostname.as_deref(), curl.pid),
        (6, Some("api.example.com"), 4242)
    );
    assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
}
