//! Tests of the flows pipeline, table, audit log and suggestions.

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, UNIX_EPOCH},
};

use tokio::sync::mpsc;

use crate::{
    flows::events::Event,
    flows::store::StoreHandle,
    policy::config::{Config, MAX_NAME_LEN},
    policy::{Policy, Proto, Target},
};

use super::{audit::*, flow::*, pipeline::*, suggest::*, table::*};
use crate::flows::store::{Store, StoreOptions, StoreStats};

fn event(
    dir: &'static str,
    proto: &str,
    remote: &str,
    port: u16,
    comm: &str,
    verdict: &'static str,
    t: u64,
) -> Event {
    Event {
        time: UNIX_EPOCH + Duration::from_millis(t),
        direction: dir,
        proto: proto.into(),
        local: "10.0.0.5".parse().unwrap(),
        local_port: if dir == "ingress" { port } else { 40000 },
        remote: remote.parse().unwrap(),
        remote_port: if dir == "ingress" { 50000 } else { port },
        verdict,
        reason: "no_rule",
        cgroup_id: 7,
        uid: 1000,
        pid: 4242,
        comm: comm.into(),
        packets: 2,
        len: 60,
        qname: None,
    }
}

fn index(pairs: &[(&str, &[&str])]) -> HostnameIndex {
    let owned: Vec<(String, Vec<IpAddr>)> = pairs
        .iter()
        .map(|(h, a)| {
            (
                h.to_string(),
                a.iter().map(|s| s.parse().unwrap()).collect(),
            )
        })
        .collect();
    Arc::new(RwLock::new(index_from(
        owned.iter().map(|(h, a)| (h.as_str(), a.as_slice())),
    )))
}

#[test]
fn index_maps_addresses_to_sorted_names() {
    let idx = index(&[
        ("b.example", &["192.0.2.1", "::ffff:192.0.2.9"]),
        ("a.example", &["192.0.2.1"]),
        ("c.example", &[]),
    ]);
    let m = idx.read().unwrap();
    assert_eq!(
        m[&"192.0.2.1".parse::<IpAddr>().unwrap()],
        vec!["a.example", "b.example"]
    );
    // IPv4-mapped addresses are folded into IPv4.
    assert_eq!(
        m[&"192.0.2.9".parse::<IpAddr>().unwrap()],
        vec!["b.example"]
    );
    drop(m);
    assert_eq!(
        hostname_of(&idx, "192.0.2.1".parse().unwrap()).as_deref(),
        Some("a.example")
    );
    assert_eq!(hostname_of(&idx, "192.0.2.2".parse().unwrap()), None);
}

#[test]
fn rfc3339_times() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
    assert_eq!(rfc3339(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
    assert_eq!(rfc3339(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
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
    assert_eq!(
        t.query(&FlowQuery {
            since_ms: 2_500,
            direction: None,
            verdict: None,
            limit: 10
        })
        .len(),
        1
    );
    assert_eq!(
        t.query(&FlowQuery {
            since_ms: 0,
            direction: None,
            verdict: None,
            limit: 2
        })
        .len(),
        2
    );
    // Newest first.
    assert_eq!(
        t.query(&FlowQuery {
            since_ms: 0,
            direction: None,
            verdict: None,
            limit: 1
        })[0]
            .key
            .comm,
        "sshd"
    );
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
        t.record(&Flow::from_event(
            &event(
                "egress",
                "tcp",
                "203.0.113.1",
                443,
                "hot",
                "dropped",
                u64::from(i) * 10 + 1,
            ),
            None,
        ));
        assert!(t.len() <= 100);
    }
    assert!(t
        .get(&FlowKey::of(&event(
            "egress",
            "tcp",
            "203.0.113.1",
            443,
            "hot",
            "dropped",
            0
        )))
        .is_some());
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

#[test]
fn json_line_format() {
    let e = event(
        "egress",
        "tcp",
        "192.0.2.1",
        443,
        "cu\"rl\n",
        "dropped",
        1_700_000_000_123,
    );
    let line = audit_line(&e, Some("api.example.com"));
    assert!(!line.contains('\n'), "one line: {line}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(v["event"], "denied_flow");
    assert_eq!(v["direction"], "egress");
    assert_eq!(v["proto"], "tcp");
    assert_eq!(v["remote"], "192.0.2.1");
    assert_eq!(v["port"], 443);
    assert_eq!(v["hostname"], "api.example.com");
    assert_eq!(v["comm"], "cu\"rl\n");
    assert_eq!(v["pid"], 4242);
    assert_eq!(v["uid"], 1000);
    assert_eq!(v["cgroup_id"], 7);
    assert_eq!(v["verdict"], "dropped");
    assert_eq!(v["reason"], "no_rule");
    assert_eq!(v["local"], "10.0.0.5");
    assert_eq!(v["local_port"], 40000);
    assert_eq!(v["remote_port"], 443);
    assert_eq!(v["packets"], 2);
    // Unknown hostname: null; ingress: the local port.
    let v: serde_json::Value = serde_json::from_str(&audit_line(
        &event("ingress", "udp", "::1", 5353, "", "audit", 0),
        None,
    ))
    .unwrap();
    assert_eq!(v["hostname"], serde_json::Value::Null);
    assert_eq!(v["port"], 5353);
    assert_eq!(v["remote"], "::1");
}

#[test]
fn audit_log_file_creates_dir_appends_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/flows.jsonl");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "old\n").unwrap();
    let mut log = AuditLog::file(&path);
    log.write_line("{\"a\":1}");
    log.write_line("{\"a\":2}");
    log.flush();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "old\n{\"a\":1}\n{\"a\":2}\n"
    );
    // A fresh directory is created.
    let path2 = dir.path().join("new/flows.jsonl");
    let mut log2 = AuditLog::file(&path2);
    log2.write_line("x");
    log2.flush();
    assert_eq!(std::fs::read_to_string(&path2).unwrap(), "x\n");
    // An unopenable path counts the lines as lost and does not panic.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let mut bad = AuditLog::file(blocker.join("flows.jsonl"));
    bad.write_line("y");
    bad.flush();
    assert_eq!(bad.lost, 1);
    // A write error drops the file and the next flush reopens it.
    let mut log3 = AuditLog::file(&path2);
    if let Sink::File { file, .. } = &mut log3.sink {
        *file = Some(std::io::BufWriter::new(
            std::fs::File::open(&path2).unwrap(),
        )); // read-only: writes fail
    }
    log3.write_line("z");
    log3.flush();
    assert_eq!(log3.lost, 1);
    if let Sink::File { failed_at, .. } = &mut log3.sink {
        *failed_at = Some(Instant::now() - REOPEN_AFTER * 2);
    }
    log3.write_line("w");
    log3.flush();
    assert_eq!(std::fs::read_to_string(&path2).unwrap(), "x\nw\n");
}

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

fn flow(dir: &str, proto: &str, remote: &str, port: u16, comm: &str, host: Option<&str>) -> Flow {
    Flow {
        key: FlowKey {
            direction: dir.into(),
            proto: proto.into(),
            remote: remote.parse().unwrap(),
            port,
            comm: comm.into(),
            verdict: "audit".into(),
        },
        hostname: host.map(String::from),
        reason: "no_rule".into(),
        local: None,
        pid: 99,
        uid: 0,
        cgroup_id: 1,
        first_seen: 1_000,
        last_seen: 2_000,
        count: 3,
    }
}

fn compiled(text: &str) -> (Config, Policy) {
    let c = Config::from_toml_str(text, Path::new("suggest.toml"))
        .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    let p = crate::policy::compile::compile(&c, &["10.0.0.2".parse().unwrap()])
        .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    (c, p)
}

#[test]
fn suggest_round_trips_and_covers_the_flows() {
    let base = "role = [\"gateway\"]\nmode = \"audit\"\n\n[[allow]]\nname = \"api.example.com\"\ndirection = \"egress\"\nport = 1\nto = \"other.example\"\n\n[dns]\nservers = [\"10.0.0.2\"]\n";
    let mut flows = vec![
        flow(
            "egress",
            "tcp",
            "192.0.2.1",
            443,
            "curl",
            Some("api.example.com"),
        ),
        flow(
            "egress",
            "tcp",
            "192.0.2.2",
            8443,
            "curl",
            Some("api.example.com"),
        ),
        flow(
            "egress",
            "udp",
            "192.0.2.1",
            4500,
            "vpn",
            Some("api.example.com"),
        ),
        flow("egress", "tcp", "203.0.113.9", 22, "ssh", None),
        flow("egress", "tcp", "2001:db8::9", 22, "ssh", None),
        flow("egress", "icmp", "203.0.113.9", 8, "ping", None),
        flow("egress", "icmpv6", "2001:db8::9", 128, "ping", None),
        flow(
            "egress",
            "tcp",
            "10.9.9.9",
            5432,
            "sdm",
            Some("db.internal"),
        ),
        flow("ingress", "tcp", "198.51.100.7", 22, "sshd", None),
        flow("ingress", "udp", "2001:db8:1::5", 161, "snmpd", None),
        // A weird process name does not break out of its comment.
        flow(
            "ingress",
            "tcp",
            "198.51.100.8",
            22,
            "x\n[[allow]]\nname=\"evil\"",
            None,
        ),
    ];
    for i in 10..16 {
        flows.push(flow(
            "ingress",
            "tcp",
            &format!("203.0.113.{i}"),
            8080,
            "java",
            None,
        ));
    }
    // Not suggested: enforce-mode flows, malformed packets, odd protocols.
    let mut dropped = flow("egress", "tcp", "192.0.2.77", 25, "mail", None);
    dropped.key.verdict = "dropped".into();
    let mut malformed = flow("egress", "tcp", "192.0.2.78", 25, "mail", None);
    malformed.reason = "malformed".into();
    let gre = flow("egress", "47", "192.0.2.79", 0, "gre", None);
    let mut all = flows.clone();
    all.extend([dropped.clone(), malformed.clone(), gre.clone()]);

    let (cfg, _) = compiled(base);
    let out = suggest(&all, &cfg, None, DEFAULT_COLLAPSE);
    let text = format!("{base}\n{out}");
    let (c2, policy) = compiled(&text);
    assert!(!c2.allow.iter().any(|a| a.name == "evil"), "{out}");
    assert!(
        out.lines()
            .all(|l| l.starts_with('#') || !l.contains("evil")),
        "{out}"
    );
    for f in &flows {
        assert!(covered(&policy, f), "not covered: {f:?}\n{out}");
    }
    for f in [&dropped, &malformed] {
        assert!(!covered(&policy, f), "{f:?}\n{out}");
    }
    // Egress by hostname: one [[allow]] per protocol with every port.
    let api = c2
        .allow
        .iter()
        .find(|a| a.name == "api.example.com-2")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(api.targets, vec![Target::Host("api.example.com".into())]);
    assert_eq!(api.ports.len(), 2);
    assert!(
        c2.allow.iter().any(|a| a.name == "api.example.com-udp"),
        "{out}"
    );
    // By address otherwise.
    assert!(
        c2.allow.iter().any(
            |a| a.targets == vec![Target::Cidr("203.0.113.9/32".parse().unwrap())]
                && a.proto == Proto::Tcp
        ),
        "{out}"
    );
    // The relay/gateway process reaching a resource: a [[resource]].
    assert_eq!(c2.resources.len(), 1, "{out}");
    assert_eq!(c2.resources[0].target, Target::Host("db.internal".into()));
    // Ingress: by port, sources collapsed to a /24 when many.
    let web = c2
        .allow
        .iter()
        .find(|a| a.name == "in-tcp-8080")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        web.targets,
        vec![Target::Cidr("203.0.113.0/24".parse().unwrap())]
    );
    let ssh = c2
        .allow
        .iter()
        .find(|a| a.name == "in-tcp-22")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(ssh.targets.len(), 2, "two sources, not collapsed: {out}");

    // With the new config's policy, nothing is left to suggest.
    let again = suggest(&flows, &c2, Some(&policy), DEFAULT_COLLAPSE);
    assert!(
        !again.contains("[[allow]]") && !again.contains("[[resource]]"),
        "{again}"
    );
    assert!(again.contains("already allows"), "{again}");
}

#[test]
fn suggested_names_are_valid_and_unique() {
    let mut n = Names(["a".to_string()].into_iter().collect());
    assert_eq!(n.unique("a"), "a-2");
    assert_eq!(n.unique("a"), "a-3");
    assert_eq!(n.unique("_srv.Example"), "srv.example");
    assert_eq!(n.unique("2001:db8::1"), "2001-db8--1");
    assert_eq!(n.unique("..."), "flow");
    let long = "x".repeat(100);
    let l1 = n.unique(&long);
    let l2 = n.unique(&long);
    assert_eq!(l1.len(), MAX_NAME_LEN);
    assert_eq!(l2.len(), MAX_NAME_LEN);
    assert_ne!(l1, l2);
    for name in [l1, l2] {
        crate::policy::config::valid_name(&name).unwrap();
    }
}

#[test]
fn store_is_used_by_suggest_inputs() {
    // Flows read back from the store suggest the same as in memory.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("flows.db")).unwrap();
    let f = flow(
        "egress",
        "tcp",
        "192.0.2.1",
        443,
        "curl",
        Some("api.example.com"),
    );
    s.upsert(std::slice::from_ref(&f)).unwrap();
    let back = s
        .query(&FlowQuery {
            since_ms: 0,
            direction: None,
            verdict: Some("audit".into()),
            limit: 100,
        })
        .unwrap();
    let cfg = Config::default();
    assert_eq!(
        suggest(&back, &cfg, None, DEFAULT_COLLAPSE),
        suggest(&[f], &cfg, None, DEFAULT_COLLAPSE)
    );
}
