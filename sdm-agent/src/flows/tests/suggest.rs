//! Config suggestions from audit-mode flows.

use super::*;

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
        remote_port: None,
        pid: 99,
        uid: 0,
        cgroup_id: 1,
        first_seen: 1_000,
        last_seen: 2_000,
        count: 3,
    }
}

/// An egress flow to a host the agent knew by name.
fn to_host(proto: &str, remote: &str, port: u16, comm: &str, host: &str) -> Flow {
    flow("egress", proto, remote, port, comm, Some(host))
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
        to_host("tcp", "192.0.2.1", 443, "curl", "api.example.com"),
        to_host("tcp", "192.0.2.2", 8443, "curl", "api.example.com"),
        to_host("udp", "192.0.2.1", 4500, "vpn", "api.example.com"),
        flow("egress", "tcp", "203.0.113.9", 22, "ssh", None),
        flow("egress", "tcp", "2001:db8::9", 22, "ssh", None),
        flow("egress", "icmp", "203.0.113.9", 8, "ping", None),
        flow("egress", "icmpv6", "2001:db8::9", 128, "ping", None),
        to_host("tcp", "10.9.9.9", 5432, "sdm", "db.internal"),
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
    let f = to_host("tcp", "192.0.2.1", 443, "curl", "api.example.com");
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
