//! End to end: the real `sdm-agent` binary, attached to a child cgroup of
//! the test's own, enforcing on real connections between two network
//! namespaces, with a fake DNS server the test controls (see
//! `sdm_tests::lab`). Every test builds its own lab; labs are serialised.
//!
//! Addresses (N is the lab's number): the host side is 10.231.N.1; on the
//! net side .2 is the DNS server and the names point at .3 to .9. No packet
//! goes anywhere else.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use sdm_tests::gateway::{
    self, expect_denied, expect_ok, sa, serve_all, wait_for, APP, CHECKIP, DB, DENY_MS, DOWNLOADS,
    GW2, OK_MS, OTHER, VAULT,
};
use sdm_tests::lab::{
    denied, denied_packets, dns_addresses, dns_failures, generation, metric, names_line, result,
    rule, rule_packets, AgentConfig, DnsMode, Lab,
};
use serde_json::Value;

/// Thousands of resources on one gateway (issue 14).
mod scale;

fn new_lab() -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_lab-probe"))
}

/// A lab with servers, the gateway's DNS names and a gateway agent running
/// in `mode`; returns it with the config's path.
fn gateway_lab(mode: &str, dns: &str) -> (Lab, std::path::PathBuf) {
    let mut lab = new_lab();
    let config = gateway::start(&mut lab, mode, dns);
    (lab, config)
}

/// The lab's own plumbing, without any agent: DNS over UDP, A, AAAA and
/// NXDOMAIN; TCP and UDP to the net side over IPv4 and IPv6; a listener in
/// the cgroup reached from the net side.
#[test]
fn lab_works_without_an_agent() {
    let lab = new_lab();
    serve_all(&lab);
    lab.dns()
        .set("x.lab.test", &[lab.net_ip(APP), lab.net_ip6(APP)], 60);
    let dns = lab.dns_ip().to_string();
    let r = lab.probe(&["resolve", &dns, "x.lab.test"]);
    expect_ok("resolve A", &r);
    assert_eq!(
        r["addresses"],
        serde_json::json!([lab.net_ip(APP).to_string()])
    );
    assert_eq!(r["ttls"], serde_json::json!([60]));
    let r = lab.probe(&["resolve", &dns, "X.Lab.Test", "AAAA"]);
    assert_eq!(
        r["addresses"],
        serde_json::json!([lab.net_ip6(APP).to_string()]),
        "{r}"
    );
    let r = lab.probe(&["resolve", &dns, "nope.lab.test"]);
    assert_eq!(r["rcode"], "NXDomain", "{r}");
    assert_eq!(lab.dns().queries_for("x.lab.test"), 2);
    lab.dns().set_mode(DnsMode::ServFail);
    let r = lab.probe(&["resolve", &dns, "x.lab.test"]);
    assert_eq!(r["rcode"], "ServFail", "{r}");
    lab.dns().set_mode(DnsMode::Silent);
    let r = lab.probe_outside(&["resolve", &dns, "x.lab.test"]);
    assert_eq!(result(&r), "timeout", "{r}");
    lab.dns().set_mode(DnsMode::Answer);

    expect_ok("tcp v4", &lab.tcp(sa(lab.net_ip(APP), 443), OK_MS));
    expect_ok("tcp v6", &lab.tcp(sa(lab.net_ip6(OTHER), 5432), OK_MS));
    let r = lab.tcp(sa(lab.net_ip(APP), 444), OK_MS);
    assert_eq!(result(&r), "refused", "{r}");
    expect_ok("udp v4", &lab.udp(sa(lab.net_ip(OTHER), 9000), OK_MS));
    expect_ok("udp v6", &lab.udp(sa(lab.net_ip6(OTHER), 9001), OK_MS));
    expect_ok(
        "outside the cgroup",
        &lab.probe_outside(&["tcp", &sa(lab.net_ip(OTHER), 443).to_string(), "2000"]),
    );

    let listen = sa(lab.host_ip(), 7000).to_string();
    let mut l = lab.spawn_probe(&["listen-tcp", &listen, "2"], false);
    assert_eq!(result(&l.line(Duration::from_secs(5))), "listening");
    expect_ok(
        "net -> host",
        &lab.probe_from_net(&["tcp", &listen, "2000"]),
    );
    let done = l.line(Duration::from_secs(5));
    assert_eq!(done["accepted"], 1, "{done}");

    let mut hold = lab.spawn_probe(
        &[
            "tcp-hold",
            &sa(lab.net_ip(APP), 443).to_string(),
            "1",
            "100",
        ],
        false,
    );
    assert_eq!(result(&hold.line(Duration::from_secs(5))), "connected");
    let end = hold.line(Duration::from_secs(5));
    expect_ok("tcp-hold", &end);
    assert!(end["rounds"].as_u64().unwrap() >= 5, "{end}");
}

/// A gateway in enforce mode: exactly the guide's flows and the configured
/// ones pass, in both directions; everything else is dropped and counted;
/// processes outside the cgroup are not filtered.
#[test]
fn gateway_enforce_allows_exactly_its_flows() {
    let (lab, _) = gateway_lab("enforce", "");
    let before = lab.status();
    assert_eq!(before["mode"], "enforce");
    assert_eq!(
        before["cgroup"].as_str(),
        Some(lab.cgroup.path.to_str().unwrap()),
        "{before}"
    );

    // Allowed: every guide row of the gateway, the resource, the secret
    // store, the gateway it dials, the [[allow]] rule.
    let allowed = [
        ("app v4", sa(lab.net_ip(APP), 443)),
        ("app v6", sa(lab.net_ip6(APP), 443)),
        ("downloads", sa(lab.net_ip(DOWNLOADS), 443)),
        ("checkip", sa(lab.net_ip(CHECKIP), 443)),
        ("resource db", sa(lab.net_ip(DB), 5432)),
        ("secret store", sa(lab.net_ip(VAULT), 8200)),
        ("gateway gw2", sa(lab.net_ip(GW2), 5000)),
    ];
    for (what, addr) in allowed {
        expect_ok(what, &lab.tcp(addr, OK_MS));
    }
    expect_ok(
        "allow/udp-echo",
        &lab.udp(sa(lab.net_ip(OTHER), 9000), OK_MS),
    );

    // Denied: an allowed address on another port, a listed port on an
    // unlisted address, UDP to an unlisted port.
    let denied_tcp = [
        ("app on 8443", sa(lab.net_ip(APP), 8443)),
        ("db on 443", sa(lab.net_ip(DB), 443)),
        ("unlisted address", sa(lab.net_ip(OTHER), 443)),
        ("unlisted address v6", sa(lab.net_ip6(OTHER), 443)),
        ("vault cidr on 5432", sa(lab.net_ip(VAULT), 5432)),
    ];
    for (what, addr) in denied_tcp {
        expect_denied(what, &lab.tcp(addr, DENY_MS));
    }
    expect_denied(
        "udp to an unlisted port",
        &lab.udp(sa(lab.net_ip(OTHER), 9001), DENY_MS),
    );
    expect_denied("udp to app", &lab.udp(sa(lab.net_ip(APP), 9000), DENY_MS));

    // Ingress: the advertised port is open to the net side, another port
    // is not (its SYNs are dropped: the client times out).
    let adv = sa(lab.host_ip(), 5000).to_string();
    let other = sa(lab.host_ip(), 5001).to_string();
    let mut l_adv = lab.spawn_probe(&["listen-tcp", &adv, "4"], false);
    let mut l_other = lab.spawn_probe(&["listen-tcp", &other, "4"], false);
    assert_eq!(result(&l_adv.line(Duration::from_secs(5))), "listening");
    assert_eq!(result(&l_other.line(Duration::from_secs(5))), "listening");
    expect_ok(
        "ingress to the advertised port",
        &lab.probe_from_net(&["tcp", &adv, &OK_MS.to_string()]),
    );
    let r = lab.probe_from_net(&["tcp", &other, &DENY_MS.to_string()]);
    assert_eq!(
        result(&r),
        "timeout",
        "ingress to 5001 must be dropped: {r}"
    );
    let done = l_adv.line(Duration::from_secs(8));
    assert_eq!(done["accepted"], 1, "advertised port listener: {done}");
    let done = l_other.line(Duration::from_secs(8));
    assert_eq!(done["accepted"], 0, "port 5001 listener: {done}");

    // Outside the cgroup nothing is filtered.
    for addr in [sa(lab.net_ip(OTHER), 443), sa(lab.net_ip(APP), 8443)] {
        expect_ok(
            "outside the cgroup",
            &lab.probe_outside(&["tcp", &addr.to_string(), &OK_MS.to_string()]),
        );
    }

    // Counters: status.
    let s = lab.status();
    for (name, dir) in [
        ("gateway/egress/app", "egress"),
        ("gateway/egress/app", "ingress"),
        ("gateway/egress/downloads", "egress"),
        ("gateway/egress/checkip", "egress"),
        ("gateway/egress/resource/db", "egress"),
        ("gateway/egress/secret-store/vault", "egress"),
        ("gateway/egress/gateway/gw2.lab.test", "egress"),
        ("allow/udp-echo", "egress"),
        ("allow/udp-echo", "ingress"),
        ("gateway/ingress/advertised-port", "ingress"),
        ("gateway/ingress/advertised-port", "egress"),
    ] {
        let (b, a) = (
            rule_packets(&before, name, dir),
            rule_packets(&s, name, dir),
        );
        assert!(a > b, "{name} {dir}: packets {b} -> {a}");
    }
    let app = rule(&s, "gateway/egress/app");
    assert_eq!(app["direction"], "egress");
    let addrs: Vec<&str> = app["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [lab.net_ip(APP), lab.net_ip6(APP)] {
        assert!(
            addrs
                .iter()
                .any(|a| a.split('/').next() == Some(&want.to_string())),
            "gateway/egress/app addresses {addrs:?} lack {want}"
        );
    }
    let mut dns = dns_addresses(&s, "app.strongdm.com");
    dns.sort();
    let mut want = vec![lab.net_ip(APP).to_string(), lab.net_ip6(APP).to_string()];
    want.sort();
    assert_eq!(dns, want);
    let (b, a) = (
        denied_packets(&before, "enforce", "egress", "no_rule"),
        denied_packets(&s, "enforce", "egress", "no_rule"),
    );
    assert!(a >= b + 7, "denied enforce egress no_rule: {b} -> {a}");
    let ingress = denied_packets(&s, "enforce", "ingress", "no_rule");
    assert!(ingress >= 1, "the SYNs to 5001 are counted: {ingress}");
    assert_eq!(denied_packets(&s, "audit", "egress", "no_rule"), 0);

    // Counters: metrics (read at scrape time, so at least the status's).
    let m = lab.metrics();
    let v = metric(
        &m,
        "sdm_rule_packets_total",
        &[
            ("rule", "gateway/egress/app"),
            ("direction", "egress"),
            ("verdict", "allow"),
        ],
    )
    .unwrap_or_else(|| panic!("no gateway/egress/app sample in\n{m}"));
    assert!(
        v >= rule_packets(&s, "gateway/egress/app", "egress") as f64,
        "{v}"
    );
    let v = metric(
        &m,
        "sdm_rule_packets_total",
        &[
            ("rule", "gateway/ingress/advertised-port"),
            ("direction", "ingress"),
        ],
    )
    .unwrap_or(0.0);
    assert!(v > 0.0, "advertised-port ingress in metrics: {v}\n{m}");
    let v = metric(
        &m,
        "sdm_denied_packets_total",
        &[
            ("direction", "egress"),
            ("reason", "no_rule"),
            ("mode", "enforce"),
        ],
    )
    .unwrap_or(0.0);
    assert!(
        v >= a as f64,
        "sdm_denied_packets_total enforce egress: {v}\n{m}"
    );
    assert_eq!(
        metric(&m, "sdm_mode", &[("mode", "enforce")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sdm_mode", &[("mode", "audit")]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "sdm_hostname_addresses",
            &[("hostname", "app.strongdm.com")]
        ),
        Some(2.0),
        "{m}"
    );
    // The resource's name and rule are summed under their guide row by
    // default ([metrics] per_resource = false).
    assert_eq!(
        metric(&m, "sdm_dns_failures_total", &[("hostname", "db.lab.test")]),
        None,
        "{m}"
    );
    let row = [("rule", "gateway/egress/resource")];
    assert_eq!(
        metric(&m, "sdm_resource_dns_failures_total", &row),
        Some(0.0),
        "{m}"
    );
    assert_eq!(metric(&m, "sdm_resource_rules", &row), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, "sdm_resource_hostnames_unresolved", &row),
        Some(0.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "sdm_rule_packets_total",
            &[("rule", "gateway/egress/resource")]
        )
        .is_some()
            && !m.contains("gateway/egress/resource/db"),
        "{m}"
    );
}

/// The other roles: the rows of their own section of the guide and nothing
/// more. The client, with loopback enforced, keeps its CLI status port on
/// loopback and loses the others.
#[test]
fn each_role_gets_its_guide_rows() {
    const LOGIN: u8 = 4;
    const DL: u8 = 5;
    const CHECK: u8 = 6;
    for role in ["client", "relay", "api", "ad-dc"] {
        let mut lab = new_lab();
        serve_all(&lab);
        let d = lab.dns();
        d.set("app.strongdm.com", &[lab.net_ip(APP)], 300);
        d.set("login.strongdm.com", &[lab.net_ip(LOGIN)], 300);
        d.set("downloads.strongdm.com", &[lab.net_ip(DL)], 300);
        d.set("checkip.amazonaws.com", &[lab.net_ip(CHECK)], 300);
        let loopback = if role == "client" { "enforce" } else { "pass" };
        let config = lab.write_config(
            &format!("{role}.toml"),
            &AgentConfig {
                top: format!(
                    "role = [\"{role}\"]\nmode = \"enforce\"\noptional = true\nloopback = \"{loopback}\""
                ),
                ..Default::default()
            },
        );
        let hosts: Vec<&str> = match role {
            "client" => vec![
                "app.strongdm.com",
                "login.strongdm.com",
                "downloads.strongdm.com",
                "checkip.amazonaws.com",
            ],
            "relay" => vec![
                "app.strongdm.com",
                "downloads.strongdm.com",
                "checkip.amazonaws.com",
            ],
            _ => vec!["app.strongdm.com"],
        };
        lab.start_agent(&config, "enforce", &hosts);

        let check = |what: &str, addr: SocketAddr, allowed: bool| {
            let what = format!("{role}: {what} ({addr})");
            if allowed {
                expect_ok(&what, &lab.tcp(addr, OK_MS));
            } else {
                expect_denied(&what, &lab.tcp(addr, DENY_MS));
            }
        };
        let client = role == "client";
        check("app:443", sa(lab.net_ip(APP), 443), true);
        check("login:443", sa(lab.net_ip(LOGIN), 443), client);
        check(
            "downloads:443",
            sa(lab.net_ip(DL), 443),
            client || role == "relay",
        );
        check(
            "checkip:443",
            sa(lab.net_ip(CHECK), 443),
            client || role == "relay",
        );
        check("app:8443", sa(lab.net_ip(APP), 8443), false);
        check("unlisted:443", sa(lab.net_ip(OTHER), 443), false);

        let s = lab.status();
        let names: Vec<&str> = s["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        let prefix = format!("{role}/");
        for n in &names {
            assert!(
                n.starts_with(&prefix) || n.starts_with("dns/"),
                "{role}: rule {n} of another role in {names:?}"
            );
        }
        assert!(rule_packets(&s, &format!("{role}/egress/app"), "egress") > 0);

        if client {
            // The CLI status port on loopback, in the cgroup, both ends.
            let status_port = "127.0.0.1:65220";
            let other_port = "127.0.0.1:65221";
            let mut l1 = lab.spawn_probe(&["listen-tcp", status_port, "3"], false);
            let mut l2 = lab.spawn_probe(&["listen-tcp", other_port, "3"], false);
            assert_eq!(result(&l1.line(Duration::from_secs(5))), "listening");
            assert_eq!(result(&l2.line(Duration::from_secs(5))), "listening");
            let r = lab.probe(&["tcp", status_port, &OK_MS.to_string()]);
            expect_ok("client: loopback 65220 (cli-status)", &r);
            let r = lab.probe(&["tcp", other_port, &DENY_MS.to_string()]);
            expect_denied("client: loopback 65221", &r);
            let done = l1.line(Duration::from_secs(6));
            assert_eq!(done["accepted"], 1, "{done}");
            let done = l2.line(Duration::from_secs(6));
            assert_eq!(done["accepted"], 0, "{done}");
            let s = lab.status();
            assert!(
                rule_packets(&s, "client/ingress/cli-status", "ingress") > 0,
                "cli-status counted: {}",
                rule(&s, "client/ingress/cli-status")
            );
        }
        drop(lab);
    }
}

/// Audit mode passes what enforce mode would drop and counts it under
/// mode="audit"; `sdm-agent mode` switches at once, without a restart.
#[test]
fn audit_mode_drops_nothing_and_counts() {
    let (lab, _) = gateway_lab("audit", "");
    let pid = lab.agent_pid().unwrap();
    let before = lab.status();
    assert_eq!(before["mode"], "audit");
    let g0 = generation(&before);

    expect_ok("allowed app", &lab.tcp(sa(lab.net_ip(APP), 443), OK_MS));
    let would_deny = sa(lab.net_ip(OTHER), 443);
    expect_ok("audit: unlisted address", &lab.tcp(would_deny, OK_MS));
    expect_ok(
        "audit: app on 8443",
        &lab.tcp(sa(lab.net_ip(APP), 8443), OK_MS),
    );
    expect_ok(
        "audit: udp to an unlisted port",
        &lab.udp(sa(lab.net_ip(OTHER), 9001), OK_MS),
    );
    let s = lab.status();
    let audit = denied_packets(&s, "audit", "egress", "no_rule");
    assert!(
        audit >= denied_packets(&before, "audit", "egress", "no_rule") + 3,
        "audit egress no_rule: {audit}"
    );
    assert_eq!(denied_packets(&s, "enforce", "egress", "no_rule"), 0);
    let m = lab.metrics();
    let v = metric(
        &m,
        "sdm_denied_packets_total",
        &[
            ("direction", "egress"),
            ("reason", "no_rule"),
            ("mode", "audit"),
        ],
    )
    .unwrap_or(0.0);
    assert!(v >= audit as f64, "audit denied in metrics: {v}\n{m}");
    assert_eq!(metric(&m, "sdm_mode", &[("mode", "audit")]), Some(1.0));

    let out = lab.agent_ok(&["mode", "enforce"]);
    assert!(out.contains("enforce"), "{out}");
    expect_denied(
        "enforce after `mode enforce`",
        &lab.tcp(would_deny, DENY_MS),
    );
    expect_ok("allowed app", &lab.tcp(sa(lab.net_ip(APP), 443), OK_MS));
    let s = lab.status();
    assert_eq!(s["mode"], "enforce");
    assert!(denied_packets(&s, "enforce", "egress", "no_rule") > 0);
    assert_eq!(
        metric(&lab.metrics(), "sdm_mode", &[("mode", "enforce")]),
        Some(1.0)
    );

    lab.agent_ok(&["mode", "audit"]);
    expect_ok("audit again", &lab.tcp(would_deny, OK_MS));
    let s = lab.status();
    assert_eq!(s["mode"], "audit");
    assert_eq!(generation(&s), g0, "switching modes is not a policy change");
    assert_eq!(lab.agent_pid(), Some(pid));
    assert_eq!(s["agent_running"], true, "{s}");
}

/// The agent follows a DNS answer that changes: the new address is allowed
/// within the TTL, the old one stays allowed for the grace period and is
/// denied after it; a failing DNS server keeps the last good answer.
#[test]
fn dns_answer_change_is_followed() {
    let mut lab = new_lab();
    serve_all(&lab);
    let (a, b) = (lab.net_ip(3), lab.net_ip(4));
    lab.dns().set("app.strongdm.com", &[a], 1);
    let config = lab.write_config(
        "api.toml",
        &AgentConfig {
            top: "role = [\"api\"]\nmode = \"enforce\"".into(),
            dns: "ttl_min = \"1s\"\nttl_max = \"1h\"\ngrace = \"2s\"".into(),
            ..Default::default()
        },
    );
    lab.start_agent(&config, "enforce", &["app.strongdm.com"]);
    let (to_a, to_b) = (sa(a, 443), sa(b, 443));
    expect_ok("A before the change", &lab.tcp(to_a, OK_MS));
    expect_denied("B before the change", &lab.tcp(to_b, DENY_MS));
    assert_eq!(
        dns_addresses(&lab.status(), "app.strongdm.com"),
        [a.to_string()]
    );

    lab.dns().set("app.strongdm.com", &[b], 1);
    let changed = Instant::now();
    let took = wait_for(Duration::from_secs(4), Duration::from_millis(100), || {
        (result(&lab.tcp(to_b, DENY_MS)) == "ok").then(|| changed.elapsed())
    })
    .unwrap_or_else(|| panic!("B not allowed within 4 s of the DNS change"));
    assert!(
        took <= Duration::from_millis(3500),
        "B allowed after {took:?}"
    );
    // A left the answer at most a moment ago: in its grace period.
    expect_ok("A in its grace period", &lab.tcp(to_a, OK_MS));
    let s = lab.status();
    let mut addrs = dns_addresses(&s, "app.strongdm.com");
    addrs.sort();
    assert_eq!(addrs, [a.to_string(), b.to_string()], "both during grace");

    // After grace (2 s) and a refresh: A is gone.
    let gone = wait_for(Duration::from_secs(5), Duration::from_millis(200), || {
        denied(&lab.tcp(to_a, DENY_MS)).then(|| changed.elapsed())
    })
    .unwrap_or_else(|| panic!("A still allowed 5 s after B was"));
    assert!(
        gone >= Duration::from_millis(2000),
        "A denied after {gone:?}, before its grace period ended"
    );
    expect_ok("B after grace", &lab.tcp(to_b, OK_MS));
    let s = lab.status();
    assert_eq!(dns_addresses(&s, "app.strongdm.com"), [b.to_string()]);
    let app = rule(&s, "api/egress/app");
    assert_eq!(
        app["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .map(|x| x.split('/').next().unwrap().to_owned())
            .collect::<Vec<_>>(),
        [b.to_string()],
        "{app}"
    );
    let failures0 = dns_failures(&s, "app.strongdm.com");

    // DNS breaks: the last good answer stays, failures are counted.
    lab.dns().set_mode(DnsMode::ServFail);
    let broke = Instant::now();
    let n = wait_for(Duration::from_secs(6), Duration::from_millis(200), || {
        let n = dns_failures(&lab.status(), "app.strongdm.com");
        (n > failures0).then_some(n)
    })
    .unwrap_or_else(|| panic!("no DNS failure counted within 6 s of SERVFAIL"));
    // Longer than the grace period, and still allowed.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(broke.elapsed()));
    expect_ok("B with DNS failing", &lab.tcp(to_b, OK_MS));
    let s = lab.status();
    assert_eq!(dns_addresses(&s, "app.strongdm.com"), [b.to_string()]);
    assert!(dns_failures(&s, "app.strongdm.com") >= n);
    let m = lab.metrics();
    let f = metric(
        &m,
        "sdm_dns_failures_total",
        &[("hostname", "app.strongdm.com")],
    )
    .unwrap_or(0.0);
    assert!(f >= n as f64 && f > 0.0, "sdm_dns_failures_total {f}\n{m}");
    assert_eq!(
        metric(
            &m,
            "sdm_hostname_addresses",
            &[("hostname", "app.strongdm.com")]
        ),
        Some(1.0)
    );
}

/// Enforcement lives in the kernel: kill -9 changes nothing, status works
/// while the agent is down, and a restarted agent adopts the pinned links
/// without a gap.
#[test]
fn kill_dash_nine_keeps_enforcing_and_restart_adopts() {
    let (mut lab, _) = gateway_lab("enforce", "");
    let app = sa(lab.net_ip(APP), 443);
    let unlisted = sa(lab.net_ip(OTHER), 443);
    expect_ok("app", &lab.tcp(app, OK_MS));
    expect_denied("unlisted", &lab.tcp(unlisted, DENY_MS));
    let link = lab.pins.layout.link_pin("egress");
    let ino = std::fs::metadata(&link)
        .unwrap_or_else(|e| panic!("{}: {e}", link.display()))
        .ino();
    let s0 = lab.status();

    lab.kill_agent();
    expect_ok("app with the agent dead", &lab.tcp(app, OK_MS));
    expect_denied("unlisted with the agent dead", &lab.tcp(unlisted, DENY_MS));
    let s1 = lab.status();
    assert_eq!(s1["agent_running"], false, "{s1}");
    assert_eq!(s1["mode"], "enforce");
    assert!(
        rule_packets(&s1, "gateway/egress/app", "egress")
            > rule_packets(&s0, "gateway/egress/app", "egress"),
        "allowed packets counted while the agent is down"
    );
    assert!(
        denied_packets(&s1, "enforce", "egress", "no_rule")
            > denied_packets(&s0, "enforce", "egress", "no_rule"),
        "denied packets counted while the agent is down"
    );

    // New connections every 100 ms across the restart: none may fail.
    let mut probe = lab.spawn_probe(&["tcp-loop", &app.to_string(), "6", "100", "1000"], false);
    std::thread::sleep(Duration::from_millis(800));
    let log_before = lab.agent_log().len();
    lab.restart_agent();
    let out = probe.line(Duration::from_secs(12));
    expect_ok("connections across the restart", &out);
    assert!(out["attempts"].as_u64().unwrap_or(0) >= 20, "{out}");

    let log = lab.agent_log();
    let restart_log = &log[log_before..];
    assert!(
        restart_log.contains("adopted"),
        "the restarted agent should say it adopted the pinned programs:\n{restart_log}"
    );
    let ino2 = std::fs::metadata(&link).expect("link pin").ino();
    assert_eq!(ino, ino2, "the egress link pin was replaced, not adopted");
    expect_denied("unlisted after the restart", &lab.tcp(unlisted, DENY_MS));
    let s2 = lab.status();
    assert_eq!(s2["agent_running"], true, "{s2}");
    assert!(
        rule_packets(&s2, "gateway/egress/app", "egress")
            > rule_packets(&s1, "gateway/egress/app", "egress"),
        "counters carry over the restart"
    );
}

/// An established connection keeps working after its address rotated out
/// of DNS and its grace period ended; a new one to that address is denied.
#[test]
fn long_lived_connection_survives_dns_rotation() {
    let mut lab = new_lab();
    serve_all(&lab);
    let (a, b) = (lab.net_ip(3), lab.net_ip(4));
    lab.dns().set("app.strongdm.com", &[a], 1);
    let config = lab.write_config(
        "api.toml",
        &AgentConfig {
            top: "role = [\"api\"]\nmode = \"enforce\"".into(),
            dns: "ttl_min = \"1s\"\nttl_max = \"1h\"\ngrace = \"2s\"".into(),
            ..Default::default()
        },
    );
    lab.start_agent(&config, "enforce", &["app.strongdm.com"]);
    let to_a = sa(a, 443);
    let mut hold = lab.spawn_probe(&["tcp-hold", &to_a.to_string(), "10", "200"], false);
    let c = hold.line(Duration::from_secs(5));
    assert_eq!(result(&c), "connected", "{c}");

    lab.dns().set("app.strongdm.com", &[b], 1);
    let rotated = Instant::now();
    wait_for(Duration::from_secs(7), Duration::from_millis(200), || {
        (dns_addresses(&lab.status(), "app.strongdm.com") == [b.to_string()]).then_some(())
    })
    .unwrap_or_else(|| panic!("A still in the allowed set 7 s after the rotation"));
    let after = rotated.elapsed();
    expect_denied("a new connection to A after grace", &lab.tcp(to_a, DENY_MS));
    expect_ok("a new connection to B", &lab.tcp(sa(b, 443), OK_MS));

    let end = hold.line(Duration::from_secs(15));
    expect_ok(
        &format!("the established connection (A left the allowed set after {after:?})"),
        &end,
    );
    assert!(end["rounds"].as_u64().unwrap_or(0) >= 30, "{end}");
}

/// `sdm-agent detach` removes every link and pin: what was denied passes.
#[test]
fn detach_lets_everything_through() {
    let (lab, _) = gateway_lab("enforce", "ttl_min = \"1s\"");
    let unlisted = sa(lab.net_ip(OTHER), 443);
    expect_denied("unlisted before detach", &lab.tcp(unlisted, DENY_MS));
    let root = lab.pins.layout.pin_root.clone();
    assert!(root.exists());
    let out = lab.agent_ok(&["detach"]);
    assert!(out.contains("detached"), "{out}");
    expect_ok("unlisted after detach", &lab.tcp(unlisted, OK_MS));
    expect_ok(
        "udp to an unlisted port after detach",
        &lab.udp(sa(lab.net_ip(OTHER), 9001), OK_MS),
    );
    assert!(
        !root.exists(),
        "{} still exists after detach",
        root.display()
    );
    // The agent still running does not bring anything back.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !root.exists(),
        "{} came back after detach (running agent)",
        root.display()
    );
    expect_ok("unlisted 2 s after detach", &lab.tcp(unlisted, OK_MS));
}

/// A bad config fails `check` (and `run`) with the file, line and key, and
/// changes nothing of what is enforced.
#[test]
fn bad_config_changes_nothing() {
    let (lab, good) = gateway_lab("enforce", "");
    let app = sa(lab.net_ip(APP), 443);
    let unlisted = sa(lab.net_ip(OTHER), 443);
    let g0 = generation(&lab.status());
    let good_text = std::fs::read_to_string(&good).unwrap();
    let out = lab.agent_cmd(&["check", "--config", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "check of the good config: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // (file name, line to replace (prefix), replacement, key).
    let cases = [
        (
            "unknown-key.toml",
            "optional = ",
            "optional = true\ncolour = \"blue\"",
            "colour",
        ),
        (
            "bad-cidr.toml",
            "sources = ",
            "sources = [\"10.231.0.0/33\"]",
            "sources",
        ),
        (
            "bad-port.toml",
            "advertised_port = ",
            "advertised_port = 70000",
            "advertised_port",
        ),
        (
            "not-cgroup2.toml",
            "cgroup = ",
            "cgroup = \"/tmp\"",
            "cgroup",
        ),
    ];
    for (file, prefix, replacement, key) in cases {
        let mut line_no = 0;
        let text: Vec<String> = good_text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if l.starts_with(prefix) {
                    // The key's line: the last line of the replacement.
                    line_no = i + replacement.lines().count();
                    replacement.to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect();
        assert!(
            line_no > 0,
            "no line starting with {prefix:?} in the config"
        );
        let path = lab.dir.path().join(file);
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
        for cmd in ["check", "run"] {
            let out = agent_with_bad_config(&lab, cmd, &path);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{cmd} {file} succeeded: {stderr}");
            for want in [path.display().to_string(), key.to_owned()] {
                assert!(
                    stderr.contains(&want),
                    "{cmd} {file}: stderr does not name {want:?}: {stderr}"
                );
            }
            assert!(
                names_line(&stderr, line_no),
                "{cmd} {file}: stderr does not name line {line_no}: {stderr}"
            );
        }
        expect_ok(&format!("app after {file}"), &lab.tcp(app, OK_MS));
        expect_denied(
            &format!("unlisted after {file}"),
            &lab.tcp(unlisted, DENY_MS),
        );
        let s = lab.status();
        assert_eq!(generation(&s), g0, "generation after {file}");
        assert_eq!(s["mode"], "enforce");
        assert_eq!(s["agent_running"], true, "the agent after {file}: {s}");
    }
}

/// `sdm-agent <cmd> --config <bad>`; `run` is started in the lab's host
/// namespace (should the config load after all, it must not listen or
/// attach anywhere else) and killed if it does not exit within 5 s.
fn agent_with_bad_config(lab: &Lab, cmd: &str, config: &Path) -> std::process::Output {
    if cmd != "run" {
        return lab.agent_cmd(&[cmd, "--config", config.to_str().unwrap()]);
    }
    let mut p = lab.spawn_agent_oneshot(&["run", "--config", config.to_str().unwrap()]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = p.0.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if p.0.try_wait().ok().flatten().is_none() {
        let _ = p.0.kill();
        panic!("`sdm-agent run --config {}` kept running", config.display());
    }
    let mut out = std::process::Output {
        status: p.0.wait().expect("wait"),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read as _;
    if let Some(mut e) = p.0.stderr.take() {
        let _ = e.read_to_end(&mut out.stderr);
    }
    if let Some(mut o) = p.0.stdout.take() {
        let _ = o.read_to_end(&mut out.stdout);
    }
    out
}

/// Issue 16: `detach` left `/run/sdm-agent/state.json`, and the next `run`
/// (another config, other resolvers) took its answers as "last good".
/// `detach` removes it with the pins (that another run's answers are never
/// adopted is the unit test
/// `app::tests::previous_dns_answers_are_adopted_only_for_the_same_resolvers_and_names`).
#[test]
fn detach_clears_the_run_state() {
    let (mut lab, _) = gateway_lab("audit", "");
    let state = lab.pins.layout.run_dir.join("state.json");
    let recorded = std::fs::read_to_string(&state).expect("the agent wrote its state");
    assert!(recorded.contains("dns_fingerprint"), "{recorded}");
    lab.stop_agent();
    let out = lab.agent_ok(&["detach"]);
    assert!(out.contains("detached"), "{out}");
    assert!(!state.exists(), "{} survived detach", state.display());
}

/// Issue 16: `*.com` passed `check`. A wildcard at or directly under a
/// public suffix is refused by `check` (and `run`) with file, line and key.
#[test]
fn check_refuses_a_wildcard_as_wide_as_a_public_suffix() {
    let lab = new_lab();
    for (wide, ok) in [
        ("*.com", false),
        ("*.co.uk", false),
        ("*.s3.amazonaws.com", false),
        ("*.example.com", true),
    ] {
        let mut text = lab.config_text(&AgentConfig::default());
        text.push_str(&format!(
            "\n[[allow]]\nname = \"wide\"\ndirection = \"egress\"\nport = 443\nto = \"{wide}\"\n"
        ));
        let line = text.lines().count();
        let path = lab.dir.path().join("wide.toml");
        std::fs::write(&path, &text).unwrap();
        let out = lab.agent_cmd(&["check", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{wide}: {stderr}");
        if !ok {
            for want in [
                path.display().to_string(),
                format!("line {line}"),
                "`to`".into(),
                "public suffix".into(),
            ] {
                assert!(stderr.contains(&want), "{wide}: {want:?} not in: {stderr}");
            }
        }
    }
}

/// Issue 16: a process of the policed cgroup with CAP_NET_RAW or
/// CAP_NET_ADMIN can bypass the cgroup programs (raw and packet sockets,
/// tunnels). `status` (text and JSON) and `check` list such processes, and
/// only those: one whose capabilities were dropped is not listed.
#[test]
fn status_and_check_list_processes_that_can_bypass() {
    use sdm_tests::guards::Proc;
    use std::process::Command;
    let (lab, config) = gateway_lab("audit", "");
    // As root: every capability.
    let holder = Proc(Command::new("sleep").arg("300").spawn().expect("sleep"));
    // NET_RAW and NET_ADMIN gone from every set before exec.
    let dropped = Proc(
        Command::new("setpriv")
            .args([
                "--inh-caps=-all",
                "--bounding-set=-net_raw,-net_admin",
                "sleep",
                "300",
            ])
            .spawn()
            .expect("setpriv"),
    );
    // One in a child cgroup of the target: below it counts too.
    let child = lab.cgroup.child("bypass-child");
    lab.cgroup.add(holder.0.id());
    child.add(dropped.0.id());
    let (hp, dp) = (holder.0.id(), dropped.0.id());
    // setpriv has exec'd sleep (its capabilities are the dropped ones).
    wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        let comm = std::fs::read_to_string(format!("/proc/{dp}/comm")).ok()?;
        (comm.trim() == "sleep").then_some(())
    })
    .expect("setpriv exec'd sleep");

    let s = lab.status();
    let listed: Vec<u64> = s["bypass_capable"]
        .as_array()
        .unwrap_or_else(|| panic!("no bypass_capable in {s}"))
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert!(listed.contains(&u64::from(hp)), "{hp} not listed: {s}");
    assert!(!listed.contains(&u64::from(dp)), "{dp} listed: {s}");
    let entry = s["bypass_capable"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == u64::from(hp))
        .unwrap();
    assert_eq!(entry["comm"], "sleep");
    assert_eq!(
        entry["caps"],
        serde_json::json!(["CAP_NET_RAW", "CAP_NET_ADMIN"])
    );

    let text = lab.agent_ok(&["status"]);
    assert!(text.contains("can bypass"), "{text}");
    assert!(text.contains(&format!("pid {hp} ")), "{text}");
    assert!(!text.contains(&format!("pid {dp} ")), "{text}");

    let out = lab.agent_cmd(&["check", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("can bypass"), "{stderr}");
    assert!(stderr.contains(&format!("pid {hp} ")), "{stderr}");
    assert!(!stderr.contains(&format!("pid {dp} ")), "{stderr}");
    drop(dropped);
    drop(holder);
    drop(child);
}

/// Trust model, the agent's side: a local process opening 300 connections
/// to the agent's HTTP server and sending nothing. The running agent keeps
/// at most its cap of 64 open (the oldest are closed), a scrape is served
/// meanwhile, and the closures are in its metrics.
#[test]
fn a_flood_of_idle_connections_to_the_agent_leaves_scrapes_served() {
    use std::io::Read as _;
    const FLOOD: usize = 300;
    const CAP: usize = 64;
    let (lab, _config) = gateway_lab("audit", "");
    let addr: SocketAddr = sdm_tests::lab::AGENT_LISTEN.parse().unwrap();
    let mut flood = Vec::new();
    {
        let _in = lab.host.enter();
        for _ in 0..FLOOD {
            flood.push(
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .expect("connect to the agent"),
            );
        }
    }
    // The oldest are closed by the agent within seconds (its head timeout,
    // 10 s, is not what closes them this early: see the eviction count).
    for (i, c) in flood.iter_mut().take(FLOOD - CAP).enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection {i} of {FLOOD} not closed: {other:?}"),
        }
    }
    let text = lab.metrics();
    let evicted = metric(
        &text,
        "sdm_http_connections_closed_total",
        &[("reason", "evicted")],
    )
    .unwrap_or_else(|| panic!("no evictions in:\n{text}"));
    assert!(evicted >= (FLOOD - CAP) as f64, "{evicted}:\n{text}");
    let open = metric(&text, "sdm_http_connections", &[]).expect("open connections");
    assert!(open <= CAP as f64, "{open} open");
    assert_eq!(
        metric(&text, "sdm_http_connections_refused_total", &[]),
        Some(0.0)
    );
    drop(flood);
}
