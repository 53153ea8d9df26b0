//! The store, its schema and the writer thread, on temporary files.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use rusqlite::Connection;

use super::*;
use crate::flows::flow::{Flow, FlowKey, FlowQuery};

#[test]
fn a_store_being_created_reads_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    // An empty SQLite file: what the writer has made before its schema.
    drop(Connection::open(&path).unwrap());
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        Store::open_existing(&path),
        Err(StoreError::Missing { .. })
    ));
    // A database with someone else's tables is not mistaken for one.
    let other = dir.path().join("other.db");
    let c = Connection::open(&other).unwrap();
    c.execute_batch("CREATE TABLE t (x INTEGER);").unwrap();
    drop(c);
    assert!(matches!(
        Store::open_existing(&other),
        Err(StoreError::Outdated { .. })
    ));
}

fn flow(remote: &str, port: u16, comm: &str, t: u64, count: u64) -> Flow {
    Flow {
        key: FlowKey {
            direction: "egress".into(),
            proto: "tcp".into(),
            remote: remote.parse().unwrap(),
            port,
            comm: comm.into(),
            verdict: "dropped".into(),
        },
        hostname: None,
        reason: "no_rule".into(),
        local: Some("10.0.0.1".parse().unwrap()),
        remote_port: None,
        pid: 10,
        uid: 0,
        cgroup_id: u64::MAX - 1,
        first_seen: t,
        last_seen: t,
        count,
    }
}

fn all() -> FlowQuery {
    FlowQuery {
        since_ms: 0,
        direction: None,
        verdict: None,
        limit: usize::MAX,
    }
}

#[test]
fn round_trip_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/sub/flows.db");
    let mut a = flow("192.0.2.1", 443, "curl", 1_000, 2);
    a.hostname = Some("api.example.com".into());
    let b = flow("2001:db8::1", 22, "ssh", 2_000, 1);
    {
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.upsert([&a, &b]).unwrap(), 2);
        // The same flow again: counts add up, times widen, the name stays.
        let mut later = flow("192.0.2.1", 443, "curl", 5_000, 3);
        later.pid = 11;
        s.upsert([&later]).unwrap();
        let mut earlier = flow("192.0.2.1", 443, "curl", 500, 1);
        earlier.pid = 9;
        s.upsert([&earlier]).unwrap();
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let s = Store::open(&path).unwrap();
    let got = s.query(&all()).unwrap();
    assert_eq!(got.len(), 2);
    let ga = got.iter().find(|f| f.key.comm == "curl").unwrap();
    assert_eq!(
        (ga.first_seen, ga.last_seen, ga.count, ga.pid),
        (500, 5_000, 6, 11)
    );
    assert_eq!(ga.hostname.as_deref(), Some("api.example.com"));
    assert_eq!(ga.cgroup_id, u64::MAX - 1);
    assert_eq!(ga.local, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(got[0].key.comm, "curl", "most recent first");
    assert_eq!(got[1], b);
    assert_eq!(s.count().unwrap(), 2);
    // Readers see the same.
    let r = Store::open_existing(&path).unwrap();
    assert_eq!(r.query(&all()).unwrap().len(), 2);
    let mode: String = r
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn query_filters() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("flows.db")).unwrap();
    let mut fl = Vec::new();
    for i in 0..10u64 {
        let mut f = flow("192.0.2.1", 1000 + i as u16, "x", i * 100, 1);
        if i % 2 == 0 {
            f.key.verdict = "audit".into();
        }
        if i % 3 == 0 {
            f.key.direction = "ingress".into();
        }
        fl.push(f);
    }
    s.upsert(&fl).unwrap();
    let q = |since, d: Option<&str>, v: Option<&str>, limit| FlowQuery {
        since_ms: since,
        direction: d.map(String::from),
        verdict: v.map(String::from),
        limit,
    };
    assert_eq!(s.query(&q(500, None, None, 100)).unwrap().len(), 5);
    assert_eq!(s.query(&q(0, Some("ingress"), None, 100)).unwrap().len(), 4);
    assert_eq!(s.query(&q(0, None, Some("audit"), 100)).unwrap().len(), 5);
    let both = s
        .query(&q(0, Some("egress"), Some("dropped"), 100))
        .unwrap();
    assert!(both
        .iter()
        .all(|f| f.key.direction == "egress" && f.key.verdict == "dropped"));
    assert_eq!(both.len(), 3); // i = 1, 5, 7
    assert_eq!(
        s.query(&q(0, None, None, 3))
            .unwrap()
            .iter()
            .map(|f| f.last_seen)
            .collect::<Vec<_>>(),
        vec![900, 800, 700]
    );
    // Same answers as the in-memory table.
    let mut t = crate::flows::table::FlowTable::new(100, Duration::from_secs(3600));
    for f in &fl {
        t.record(f);
    }
    for query in [
        q(500, None, None, 100),
        q(0, Some("egress"), Some("dropped"), 100),
        q(0, None, None, 3),
    ] {
        assert_eq!(s.query(&query).unwrap(), t.query(&query));
    }
}

#[test]
fn retention_deletes_old_flows() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("flows.db")).unwrap();
    s.upsert([
        &flow("192.0.2.1", 1, "a", 1_000, 1),
        &flow("192.0.2.2", 1, "b", 5_000, 1),
    ])
    .unwrap();
    assert_eq!(s.retain(2_000).unwrap(), 1);
    let left = s.query(&all()).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key.comm, "b");
    assert_eq!(s.retain(2_000).unwrap(), 0);
}

/// Issue 16: the store had no size cap; a flood of new flows grew it
/// until the disk was full. Fed far more flows than fit, it stays under
/// the cap, the oldest gone first.
#[test]
fn the_store_stays_under_max_bytes_evicting_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    let mut s = Store::open(&path).unwrap();
    let cap: u64 = 256 << 10;
    let mut evicted = 0;
    let mut t = 1_000u64;
    for batch in 0..40u32 {
        let flows: Vec<Flow> = (0..500u32)
            .map(|i| {
                t += 1;
                let n = batch * 500 + i;
                let remote = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
                flow(&remote, 443, "flooder", t, 1)
            })
            .collect();
        s.upsert(&flows).unwrap();
        evicted += s.evict_to(cap).unwrap();
        assert!(
            s.used_bytes().unwrap() <= cap,
            "batch {batch}: over the cap"
        );
    }
    let left = s.count().unwrap();
    assert!(evicted > 0 && left > 0, "evicted {evicted}, left {left}");
    assert_eq!(evicted + left, 20_000);
    // The newest flow is kept, the oldest is gone.
    let kept = s.query(&all()).unwrap();
    assert_eq!(kept[0].last_seen, t);
    assert!(kept.iter().all(|f| f.last_seen > 1_000 + evicted));
    // Freed pages are reused: the file stays near the cap.
    drop(s);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size <= 2 * cap, "flows.db is {size} bytes");
}

#[test]
fn the_service_counts_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    let stats = StoreStats::default();
    let h = StoreHandle::spawn(
        StoreOptions {
            max_bytes: 128 << 10,
            ..StoreOptions::new(&path, Duration::from_secs(86400))
        },
        stats.clone(),
    );
    let now = now_ms();
    for batch in 0..10u32 {
        h.submit(
            (0..500u32)
                .map(|i| {
                    let n = batch * 500 + i;
                    // Recent: retention must not be what removes them.
                    let t = now + u64::from(n);
                    flow(&format!("10.9.{}.{}", n >> 8, n & 255), 22, "x", t, 1)
                })
                .collect(),
        );
        assert!(h.sync(Duration::from_secs(10)));
    }
    let evictions = stats.evictions.load(Ordering::Relaxed);
    assert!(evictions > 0);
    assert_eq!(
        evictions + stats.stored.load(Ordering::Relaxed),
        5_000,
        "every flow is stored or counted as evicted"
    );
    assert!(Store::open(&path).unwrap().used_bytes().unwrap() <= 128 << 10);
}

#[test]
fn garbage_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let e = Store::open(&path).unwrap_err();
    assert!(e.is_corrupt(), "{e}");
    assert!(e.to_string().contains("flows.db"), "{e}");
    let e = Store::open_existing(&path).unwrap_err();
    assert!(e.is_corrupt(), "{e}");
    // Moved aside, a fresh store opens.
    let aside = quarantine(&path).unwrap().unwrap();
    assert_eq!(std::fs::read(&aside).unwrap(), vec![0x5a; 8192]);
    Store::open(&path).unwrap();
}

#[test]
fn schema_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    // A database from a newer agent: refused, untouched.
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('schema_version', '99'); CREATE TABLE flows_v99 (x);").unwrap();
    }
    let e = Store::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("newer"), "{e}");
    assert!(matches!(
        Store::open_existing(&path).unwrap_err(),
        StoreError::TooNew { .. }
    ));
    std::fs::remove_file(&path).unwrap();
    // An empty database (version 0) is migrated; a reader refuses to.
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE unrelated (x);")
        .unwrap();
    assert!(matches!(
        Store::open_existing(&path).unwrap_err(),
        StoreError::Outdated { found: 0, .. }
    ));
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    drop(s);
    // Reopening a current one migrates nothing.
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    let by: String = s
        .conn
        .query_row("SELECT value FROM meta WHERE key = 'written_by'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(by.starts_with("sdm-agent "), "{by}");
    assert!(matches!(
        Store::open_existing(&dir.path().join("nope.db")).unwrap_err(),
        StoreError::Missing { .. }
    ));
}

#[test]
fn locked_database_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    drop(Store::open(&path).unwrap());
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut s = Store::open_with(&path, Duration::from_millis(50)).unwrap();
    let e = s.upsert([&flow("192.0.2.1", 1, "a", 1, 1)]).unwrap_err();
    assert!(e.is_busy(), "{e}");
    holder.execute_batch("COMMIT").unwrap();
    s.upsert([&flow("192.0.2.1", 1, "a", 1, 1)]).unwrap();
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn service_recovers_from_a_corrupted_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    std::fs::write(&path, b"this is not a database, just garbage, long enough to have a header........................................").unwrap();
    let stats = StoreStats::default();
    let h = StoreHandle::spawn(
        StoreOptions::new(&path, Duration::from_secs(86400)),
        stats.clone(),
    );
    let now = now_ms();
    h.submit(vec![flow("192.0.2.1", 443, "curl", now, 1)]);
    wait_for("the flow to be stored", || {
        h.query(&all()).map(|f| f.len() == 1).unwrap_or(false)
    });
    assert!(
        stats.errors.load(Ordering::Relaxed) >= 1,
        "the corruption was counted"
    );
    assert!(stats.available.load(Ordering::Relaxed));
    assert_eq!(stats.stored.load(Ordering::Relaxed), 1);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("flows.db.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
}

#[test]
fn service_keeps_flows_while_the_store_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    // The state "directory" is a file: opening fails until it is fixed.
    let state = dir.path().join("state");
    std::fs::write(&state, "").unwrap();
    let path = state.join("flows.db");
    let stats = StoreStats::default();
    let mut opts = StoreOptions::new(&path, Duration::from_secs(86400));
    opts.retry = Duration::from_millis(100);
    let h = StoreHandle::spawn(opts, stats.clone());
    let now = now_ms();
    h.submit(vec![flow("192.0.2.1", 443, "curl", now, 2)]);
    wait_for("an error to be counted", || {
        stats.errors.load(Ordering::Relaxed) >= 1
    });
    assert!(!stats.available.load(Ordering::Relaxed));
    assert!(h.query(&all()).is_err());
    h.submit(vec![flow("192.0.2.1", 443, "curl", now + 1, 3)]);
    std::fs::remove_file(&state).unwrap();
    wait_for("the pending flow to be written", || {
        h.query(&all())
            .map(|f| f.len() == 1 && f[0].count == 5)
            .unwrap_or(false)
    });
    assert!(stats.available.load(Ordering::Relaxed));
}

/// A store down for long with more pending flows than it may keep:
/// the oldest are dropped, counted (`sdm_store_dropped_flows_total`)
/// and logged; the newest are written once the store is back.
#[test]
fn pending_flows_over_the_cap_are_counted_and_the_newest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::write(&state, "").unwrap();
    let stats = StoreStats::default();
    let mut opts = StoreOptions::new(state.join("flows.db"), Duration::from_secs(86400));
    opts.retry = Duration::from_millis(100);
    opts.max_pending = 5;
    let h = StoreHandle::spawn(opts, stats.clone());
    let now = now_ms();
    h.submit(
        (0..12u16)
            .map(|i| flow("192.0.2.1", 1000 + i, "x", now + u64::from(i), 1))
            .collect(),
    );
    wait_for("the dropped flows to be counted", || {
        stats.dropped.load(Ordering::Relaxed) == 7
    });
    std::fs::remove_file(&state).unwrap();
    wait_for("the kept flows to be written", || {
        h.query(&all()).map(|f| f.len() == 5).unwrap_or(false)
    });
    let mut ports: Vec<u16> = h
        .query(&all())
        .unwrap()
        .iter()
        .map(|f| f.key.port)
        .collect();
    ports.sort();
    assert_eq!(ports, [1007, 1008, 1009, 1010, 1011], "the newest are kept");
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 7);
}

#[test]
fn service_applies_retention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    {
        let mut s = Store::open(&path).unwrap();
        s.upsert([&flow("192.0.2.1", 1, "old", 1_000, 1)]).unwrap();
    }
    let stats = StoreStats::default();
    let h = StoreHandle::spawn(
        StoreOptions::new(&path, Duration::from_secs(3600)),
        stats.clone(),
    );
    h.submit(vec![flow("192.0.2.2", 1, "new", now_ms(), 1)]);
    wait_for("retention and the write", || {
        h.query(&all())
            .map(|f| f.len() == 1 && f[0].key.comm == "new")
            .unwrap_or(false)
    });
    assert_eq!(stats.stored.load(Ordering::Relaxed), 1);
}

/// A store written by an agent before schema 2 keeps its flows: the column
/// for the remote's port is added empty, and new flows fill it.
#[test]
fn schema_1_store_migrates_and_keeps_its_flows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch(
            "INSERT INTO meta VALUES ('schema_version', '1');
             INSERT INTO flows (direction, proto, remote, port, comm, verdict, hostname, reason,
                                local, pid, uid, cgroup_id, first_seen, last_seen, count)
             VALUES ('ingress', 'udp', '192.0.2.53', 41000, 'dig', 'audit', NULL, 'no_rule',
                     '10.0.0.1', 7, 0, 1, 1000, 1000, 4);",
        )
        .unwrap();
    }
    assert!(matches!(
        Store::open_existing(&path).unwrap_err(),
        StoreError::Outdated { found: 1, .. }
    ));
    let mut s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    let old = s.query(&all()).unwrap();
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!((old[0].key.port, old[0].count), (41000, 4));
    assert_eq!(old[0].remote_port, None);

    // The same flow seen again with its remote's port, and a new one.
    let mut again = old[0].clone();
    again.remote_port = Some(53);
    again.last_seen = 2_000;
    again.count = 1;
    let mut reply = flow("192.0.2.53", 41001, "dig", 2_000, 1);
    reply.key.direction = "ingress".into();
    reply.remote_port = Some(53);
    s.upsert([&again, &reply]).unwrap();
    let mut got: Vec<(u16, Option<u16>, u64)> = s
        .query(&all())
        .unwrap()
        .iter()
        .map(|f| (f.key.port, f.remote_port, f.count))
        .collect();
    got.sort_unstable();
    assert_eq!(got, vec![(41000, Some(53), 5), (41001, Some(53), 1)]);
    // An older observation without the port does not erase it.
    let mut older = again.clone();
    older.remote_port = None;
    older.last_seen = 1_500;
    s.upsert([&older]).unwrap();
    let kept = s.query(&all()).unwrap();
    assert!(kept.iter().all(|f| f.remote_port == Some(53)), "{kept:?}");
}
