//! The audit log: its line format and its file.

use super::*;

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
