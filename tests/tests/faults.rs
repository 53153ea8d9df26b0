//! Load and faults, in the lab: the agent killed and restarted again and
//! again under traffic; DNS that fails in every way a resolver can (the
//! allowlist keeps its last good state, the failure shows in status and
//! metrics); DNS answers with hundreds of addresses (over TCP after a
//! truncated UDP answer); an allowlist that outgrows the kernel maps (the
//! previous policy stays in force, with a log line and a metric).
//!
//! Addresses (N is the lab's number): the host side is 10.231.N.1; on the
//! net side .2 is the DNS server and the names point at .3 to .9. Extra
//! addresses the tests give the net side (10.241.N.x and up) are added to
//! its interface; every other address only ever appears in DNS answers,
//! never as a destination.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use sdm_tests::gateway::{
    self, any, expect_denied, expect_ok, sa, serve_all, sniffed_allowed_and_denied, wait_for, APP,
    DB, DENY_MS, GATEWAY_HOSTS, OK_MS, OTHER,
};
use sdm_tests::lab::{
    dns_addresses, dns_failures, generation, metric, rule, AgentConfig, Answer, BgProbe, Lab,
};
use serde_json::Value;

fn new_lab() -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_lab-probe"))
}

/// The `dns` entry of `host` in `status --json`.
fn dns_entry<'a>(status: &'a Value, host: &str) -> &'a Value {
    status["dns"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["hostname"] == host)
        .unwrap_or_else(|| panic!("no dns entry for {host} in {status}"))
}

/// The addresses a rule holds in the live maps (without prefix lengths).
fn rule_addresses(status: &Value, name: &str) -> Vec<String> {
    let mut v: Vec<String> = rule(status, name)["addresses"]
        .as_array()
        .unwrap_or_else(|| panic!("rule {name}: no addresses array"))
        .iter()
        .filter_map(Value::as_str)
        .map(|a| a.split('/').next().unwrap_or(a).to_owned())
        .collect();
    v.sort();
    v
}

/// An address of the lab's extra net-side blocks: 10.(241 + block).N.host.
fn extra_ip(lab: &Lab, block: u8, host: u8) -> IpAddr {
    Ipv4Addr::new(10, 241 + block, lab.n, host).into()
}

/// Gives the net side `ip` too (servers bound to `[::]` answer on it).
fn add_net_address(lab: &Lab, ip: IpAddr) {
    lab.net
        .ip(&["addr", "add", &format!("{ip}/32"), "dev", "n0"]);
}

/// `count` addresses 10.(241 + block).N.0 and up, spilling into the next
/// block after .255.
fn many(lab: &Lab, block: u8, count: usize) -> Vec<IpAddr> {
    (0..count)
        .map(|i| extra_ip(lab, block + (i / 256) as u8, (i % 256) as u8))
        .collect()
}

/// A `tcp-watch` probe (in the cgroup) on `addr`, until `stop` exists.
fn watch(lab: &Lab, addr: SocketAddr, stop: &Path) -> BgProbe {
    lab.spawn_probe(
        &[
            "tcp-watch",
            &addr.to_string(),
            "20",
            "1000",
            stop.to_str().expect("utf-8 path"),
        ],
        false,
    )
}

/// 20 times: kill -9 the agent and start it again (every other time it is
/// killed once more while starting), while processes in the cgroup connect
/// every 20 ms to two allowed and two denied destinations, each with a
/// server. Not one allowed connection fails, not one denied connection
/// succeeds, and not one packet to a denied destination reaches the net
/// side. Every restart adopts the pinned programs and leaves the policy as
/// it was (no new generation).
#[test]
fn killed_and_restarted_twenty_times_under_traffic() {
    let mut lab = new_lab();
    let config = gateway::start(&mut lab, "enforce", "");
    let (allowed, denied, sniffer) = sniffed_allowed_and_denied(&lab);
    let g0 = generation(&lab.status());
    let log_before = lab.agent_log().len();

    let stop = lab.dir.path().join("stop-watching");
    let mut probes: Vec<(SocketAddr, bool, BgProbe)> = allowed
        .iter()
        .map(|a| (*a, true, watch(&lab, *a, &stop)))
        .chain(denied.iter().map(|a| (*a, false, watch(&lab, *a, &stop))))
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let start = Instant::now();
    let mut kills = 0;
    for i in 0..20u64 {
        lab.kill_agent();
        kills += 1;
        if i % 2 == 1 {
            // Killed again before it is ready (start-up takes a few hundred
            // ms here): at a different point of its start-up each time.
            lab.spawn_agent(&config, "enforce", &GATEWAY_HOSTS);
            std::thread::sleep(Duration::from_millis((i * 23) % 250));
            lab.kill_agent();
            kills += 1;
        }
        lab.restart_agent();
    }
    let took = start.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    fs::write(&stop, "").expect("write the stop file");

    sdm_tests::lab::assert_watches_held(&mut probes, &format!("{kills} kills"));
    for d in denied {
        assert_eq!(
            sniffer.count(d),
            0,
            "TCP segments to the denied {d} reached the net side"
        );
    }
    assert!(
        sniffer.count(allowed[0]) > 0,
        "the sniffer saw nothing of the allowed connections: it does not work"
    );

    let log = lab.agent_log();
    let restarts = &log[log_before..];
    let adopted = restarts.matches("adopted the pinned programs").count();
    assert!(
        adopted >= 20,
        "only {adopted} of the restarts adopted the pinned programs:\n{restarts}"
    );
    assert!(
        !restarts.contains("attached the egress and ingress programs"),
        "a restart attached the programs anew instead of adopting them"
    );
    let s = lab.status();
    assert_eq!(s["agent_running"], true, "{s}");
    assert_eq!(s["mode"], "enforce");
    assert_eq!(
        generation(&s),
        g0,
        "restarts with the same config and answers must not flip the policy"
    );
    eprintln!("{kills} kills and 20 restarts in {took:?}");
}

/// The names of the DNS fault test, each with the port its `[[allow]]`
/// rule opens (so a connection succeeds only through that name's rule).
const NX: (&str, u16) = ("nx.lab.test", 7001);
const EMPTY: (&str, u16) = ("empty.lab.test", 7002);
const SERVFAIL: (&str, u16) = ("servfail.lab.test", 7003);
const SILENT: (&str, u16) = ("silent.lab.test", 7004);
const LOOP: (&str, u16) = ("loop.lab.test", 7005);
const BIG: (&str, u16) = ("big.lab.test", 7006);
const FAULTY: [(&str, u16); 5] = [NX, EMPTY, SERVFAIL, SILENT, LOOP];

fn allow_rule(name: &str, host: &str, port: u16) -> String {
    format!(
        "[[allow]]\nname = \"{name}\"\ndirection = \"egress\"\nport = {port}\nto = \"{host}\"\n\n"
    )
}

/// Waits until every name's failure count has passed `before` (and it has
/// a last error); returns the status then.
fn wait_failures(lab: &Lab, before: &BTreeMap<&str, u64>, within: Duration) -> Value {
    let mut last = Value::Null;
    wait_for(within, Duration::from_millis(200), || {
        last = lab.status();
        before
            .iter()
            .all(|(h, n)| {
                let e = dns_entry(&last, h);
                e["failures"].as_u64().unwrap_or(0) > *n && !e["last_error"].is_null()
            })
            .then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("not every name counted a new failure within {within:?}: {last}"))
}

/// DNS failing in every way, one name per way at the same time (NXDOMAIN
/// for a known name, NOERROR with no records, SERVFAIL, no answer, a CNAME
/// loop), then the resolver gone altogether: every name keeps its last
/// good addresses (even past the grace period), connections to them go on,
/// the policy is not even rewritten, and each failure shows in status
/// (`failures`, `last_error`) and metrics (`sdm_dns_failures_total`). One
/// name answers with 301 addresses (too long for UDP: truncated, then over
/// TCP): all of them are allowed.
#[test]
fn dns_faults_keep_the_last_good_answer() {
    let mut lab = new_lab();
    serve_all(&lab);
    lab.serve_tcp(&[7001, 7002, 7003, 7004, 7005, 7006].map(any));
    let target = lab.net_ip(3);
    let d = lab.dns();
    d.set("app.strongdm.com", &[lab.net_ip(APP)], 1);
    for (h, _) in FAULTY {
        d.set(h, &[target], 1);
    }
    // 300 A records and one AAAA; three of them (and the AAAA) are real.
    let mut big = many(&lab, 0, 300);
    big.push(lab.net_ip6(3));
    let big_real = [big[1], big[150], big[299], lab.net_ip6(3)];
    for ip in &big_real[..3] {
        add_net_address(&lab, *ip);
    }
    d.set(BIG.0, &big, 1);
    let mut tables = String::new();
    for (i, (h, port)) in FAULTY.iter().chain([&BIG]).enumerate() {
        tables.push_str(&allow_rule(&format!("name{i}"), h, *port));
    }
    let config = lab.write_config(
        "dns-faults.toml",
        &AgentConfig {
            top: "role = [\"api\"]\nmode = \"enforce\"".into(),
            dns: "ttl_min = \"1s\"\nttl_max = \"1h\"\ngrace = \"1s\"".into(),
            tables,
        },
    );
    let hosts: Vec<&str> = FAULTY
        .iter()
        .chain([&BIG])
        .map(|(h, _)| *h)
        .chain(["app.strongdm.com"])
        .collect();
    lab.start_agent(&config, "enforce", &hosts);

    // Every name works; another address on those ports does not.
    for (h, port) in FAULTY {
        expect_ok(h, &lab.tcp(sa(target, port), OK_MS));
    }
    expect_denied(
        "an unlisted address on a rule's port",
        &lab.tcp(sa(lab.net_ip(OTHER), NX.1), DENY_MS),
    );

    // The big answer: every address allowed, in status, metrics and maps.
    for ip in big_real {
        expect_ok(&format!("{} {ip}", BIG.0), &lab.tcp(sa(ip, BIG.1), OK_MS));
    }
    let s = lab.status();
    let mut want: Vec<String> = big.iter().map(IpAddr::to_string).collect();
    want.sort();
    let mut have = dns_addresses(&s, BIG.0);
    have.sort();
    assert_eq!(have, want, "status dns addresses of {}", BIG.0);
    assert_eq!(rule_addresses(&s, "allow/name5"), want, "the live maps");
    let m = lab.metrics();
    assert_eq!(
        metric(&m, "sdm_hostname_addresses", &[("hostname", BIG.0)]),
        Some(301.0),
        "{m}"
    );
    assert!(
        lab.dns().truncated() > 0 && lab.dns().tcp_queries() > 0,
        "the big answer should have come over TCP after a truncated UDP reply: {}",
        lab.dns().describe()
    );

    // Each fault name breaks its own way.
    let g0 = generation(&s);
    let before: BTreeMap<&str, u64> = FAULTY
        .iter()
        .map(|(h, _)| (*h, dns_failures(&s, h)))
        .collect();
    let d = lab.dns();
    d.set_answer(NX.0, Answer::NxDomain);
    d.set_answer(EMPTY.0, Answer::Empty);
    d.set_answer(SERVFAIL.0, Answer::ServFail);
    d.set_answer(SILENT.0, Answer::Silent);
    d.set_answer(LOOP.0, Answer::Cname("loop2.lab.test".into(), 1));
    d.set_answer("loop2.lab.test", Answer::Cname(LOOP.0.into(), 1));
    let broke = Instant::now();
    let s = wait_failures(&lab, &before, Duration::from_secs(30));
    eprintln!("every fault counted after {:?}", broke.elapsed());
    for (h, _) in FAULTY {
        eprintln!("{h}: last_error {}", dns_entry(&s, h)["last_error"]);
    }
    // Past the grace period (1 s) since the last good answer: still kept.
    std::thread::sleep(Duration::from_millis(2000).saturating_sub(broke.elapsed()));
    let s = lab.status();
    let m = lab.metrics();
    for (h, port) in FAULTY {
        expect_ok(
            &format!("{h} with its DNS failing"),
            &lab.tcp(sa(target, port), OK_MS),
        );
        assert_eq!(dns_addresses(&s, h), [target.to_string()], "{h}");
        let failures = metric(&m, "sdm_dns_failures_total", &[("hostname", h)])
            .unwrap_or_else(|| panic!("no sdm_dns_failures_total for {h}:\n{m}"));
        assert!(failures >= 1.0, "{h}: sdm_dns_failures_total {failures}");
        assert_eq!(
            metric(&m, "sdm_hostname_addresses", &[("hostname", h)]),
            Some(1.0),
            "{h}"
        );
    }
    assert_eq!(
        generation(&s),
        g0,
        "failing lookups must not change the policy"
    );
    let log = lab.agent_log();
    for (h, _) in FAULTY {
        assert!(
            log.lines()
                .any(|l| l.contains("keeping the last good answer") && l.contains(h)),
            "no log line for the failing lookup of {h}"
        );
    }

    // The resolver goes away: its sockets close.
    let before: BTreeMap<&str, u64> = [BIG.0, "app.strongdm.com"]
        .into_iter()
        .map(|h| (h, dns_failures(&s, h)))
        .collect();
    lab.dns_down();
    let s = wait_failures(&lab, &before, Duration::from_secs(30));
    eprintln!(
        "resolver gone: last_error {}",
        dns_entry(&s, BIG.0)["last_error"]
    );
    assert_eq!(dns_addresses(&s, BIG.0).len(), 301);
    assert_eq!(rule_addresses(&s, "allow/name5"), want, "the live maps");
    for ip in big_real {
        expect_ok(
            &format!("{ip} with the resolver gone"),
            &lab.tcp(sa(ip, BIG.1), OK_MS),
        );
    }
    expect_ok(
        "app with the resolver gone",
        &lab.tcp(sa(lab.net_ip(APP), 443), OK_MS),
    );
    assert_eq!(generation(&lab.status()), g0);

    // Back: good answers clear the errors.
    lab.dns_up();
    for (h, _) in FAULTY {
        lab.dns().set(h, &[target], 1);
    }
    let mut last = Value::Null;
    wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        last = lab.status();
        hosts
            .iter()
            .all(|h| dns_entry(&last, h)["last_error"].is_null())
            .then_some(())
    })
    .unwrap_or_else(|| panic!("errors not cleared 30 s after the resolver came back: {last}"));
    for (h, port) in FAULTY {
        expect_ok(
            &format!("{h} after recovery"),
            &lab.tcp(sa(target, port), OK_MS),
        );
    }
    assert_eq!(generation(&lab.status()), g0);
}

/// Waits for `sdm_policy_apply_errors_total` to reach `n`; returns it.
fn wait_apply_errors(lab: &Lab, n: f64, within: Duration) -> f64 {
    let mut last = String::new();
    wait_for(within, Duration::from_millis(200), || {
        last = lab.metrics();
        metric(&last, "sdm_policy_apply_errors_total", &[]).filter(|v| *v >= n)
    })
    .unwrap_or_else(|| {
        panic!("sdm_policy_apply_errors_total did not reach {n} within {within:?}:\n{last}")
    })
}

/// Waits for a new policy generation without an apply error; returns the
/// status.
fn wait_applied(lab: &Lab, after: u64, within: Duration) -> Value {
    let mut last = Value::Null;
    wait_for(within, Duration::from_millis(200), || {
        last = lab.status();
        (generation(&last) > after && last["policy_error"].is_null()).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("no new policy generation after {after} within {within:?}: {last}"))
}

/// 448 ports as 28 ranges of 16 (443 among them): ranges of up to 16 ports
/// are written one entry per port, wider ones as port prefixes (which never
/// fill the maps), so this is what fills them.
fn wide_ports() -> String {
    (0..28)
        .map(|i| format!("{}-{}", 1 + i * 20, 16 + i * 20))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An allowlist that outgrows the kernel's exact map (a hostname whose
/// rule opens 448 ports answers 300 addresses: 134,400 entries, the map
/// holds 131,072): the update is refused with a log line naming the limit,
/// counted in `sdm_policy_apply_errors_total`, shown in status, retried;
/// the previous policy stays in force (its connections work, the new
/// addresses are not half-allowed). A restarted agent runs on with the
/// previous policy instead of exiting. Back within capacity the policy
/// applies, also across rotations of many addresses, which must not
/// overflow the idle copy of the maps while it still holds an older
/// policy. A config whose fixed addresses alone overflow fails `check`.
#[test]
fn allowlist_over_capacity_keeps_the_previous_policy() {
    let mut lab = new_lab();
    serve_all(&lab);
    let first = lab.net_ip(DB);
    lab.dns().set("app.strongdm.com", &[lab.net_ip(APP)], 300);
    lab.dns().set("wide.lab.test", &[first], 1);
    let config = lab.write_config(
        "wide.toml",
        &AgentConfig {
            top: "role = [\"api\"]\nmode = \"enforce\"".into(),
            dns: "ttl_min = \"1s\"\nttl_max = \"1h\"\ngrace = \"0s\"".into(),
            tables: format!(
                "[[allow]]\nname = \"wide\"\ndirection = \"egress\"\nports = \"{}\"\n\
                 to = \"wide.lab.test\"\n",
                wide_ports()
            ),
        },
    );
    let hosts = ["app.strongdm.com", "wide.lab.test"];
    lab.start_agent(&config, "enforce", &hosts);
    let to_first = sa(first, 443);
    expect_ok("the first answer", &lab.tcp(to_first, OK_MS));
    expect_denied(
        "an unlisted address",
        &lab.tcp(sa(lab.net_ip(OTHER), 443), DENY_MS),
    );
    let s = lab.status();
    let g0 = generation(&s);
    assert!(s["policy_error"].is_null(), "{s}");
    assert_eq!(
        metric(&lab.metrics(), "sdm_policy_apply_errors_total", &[]),
        Some(0.0)
    );

    // 300 addresses x 448 ports: over capacity.
    let real = extra_ip(&lab, 0, 1);
    add_net_address(&lab, real);
    let mut over = many(&lab, 0, 299);
    over.push(first);
    lab.dns().set("wide.lab.test", &over, 1);
    wait_apply_errors(&lab, 1.0, Duration::from_secs(10));
    let s = lab.status();
    let err = s["policy_error"].as_str().unwrap_or_default().to_owned();
    assert!(
        err.contains("needs 1344") && err.contains("more than the 131072"),
        "status policy_error should name the need (134,400 and the other rules' few) and \
         the limit: {err}"
    );
    assert_eq!(generation(&s), g0, "nothing was flipped");
    assert_eq!(
        rule_addresses(&s, "allow/wide"),
        [first.to_string()],
        "the live maps keep the previous policy"
    );
    expect_ok(
        "the previous policy's address, over capacity",
        &lab.tcp(to_first, OK_MS),
    );
    expect_denied(
        "a new address of the refused answer",
        &lab.tcp(sa(real, 443), DENY_MS),
    );
    let log = lab.agent_log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("updating the allowlist failed; the previous policy stays in force")
            && l.contains("131072")),
        "no clear log line for the overflow:\n{log}"
    );
    // Retried while it lasts (every ttl_min).
    wait_apply_errors(&lab, 2.0, Duration::from_secs(10));

    // A restart while over capacity: the agent runs on with the previous
    // policy (and mode) instead of exiting.
    lab.kill_agent();
    let log_before = lab.agent_log().len();
    lab.restart_agent();
    // Ready (the pinned policy is live) comes before the first apply fails:
    // the 300-address answer takes a TCP retry first.
    let said = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        lab.agent_log()[log_before..]
            .contains("the previous policy and mode stay in force")
            .then_some(())
    });
    assert!(
        said.is_some(),
        "the restarted agent should say it keeps the previous policy:\n{}",
        &lab.agent_log()[log_before..]
    );
    wait_apply_errors(&lab, 1.0, Duration::from_secs(10));
    expect_ok(
        "the previous policy's address after the restart",
        &lab.tcp(to_first, OK_MS),
    );
    let s = lab.status();
    assert_eq!(generation(&s), g0);
    assert_eq!(s["mode"], "enforce");
    assert!(s["policy_error"].is_string(), "{s}");

    // Back within capacity (200 x 500 = 100,000), then two rotations to
    // 200 other addresses each (grace 0): each one applies.
    let mut g = g0;
    let mut errors_after_first = None;
    for block in [0u8, 1, 2] {
        let set = many(&lab, block, 200);
        let real = extra_ip(&lab, block, 1);
        if block > 0 {
            add_net_address(&lab, real);
        }
        lab.dns().set("wide.lab.test", &set, 1);
        let s = wait_applied(&lab, g, Duration::from_secs(15));
        g = generation(&s);
        let mut want: Vec<String> = set.iter().map(IpAddr::to_string).collect();
        want.sort();
        assert_eq!(rule_addresses(&s, "allow/wide"), want, "block {block}");
        expect_ok(
            &format!("{real} of block {block}"),
            &lab.tcp(sa(real, 443), OK_MS),
        );
        expect_denied(
            &format!("{first}, no longer in the answer (block {block})"),
            &lab.tcp(to_first, DENY_MS),
        );
        let errors = metric(&lab.metrics(), "sdm_policy_apply_errors_total", &[]);
        match errors_after_first {
            None => errors_after_first = Some(errors),
            Some(e) => assert_eq!(
                errors, e,
                "a rotation failed to apply first (block {block})"
            ),
        }
    }
    assert!(
        lab.agent_log()[log_before..].contains("the configured mode is live"),
        "the restarted agent should say when its mode went live"
    );

    // Fixed addresses that can never fit: `check` refuses the config.
    // (Written, never sent to: `check` only compiles the policy.)
    let fixed: Vec<String> = (0..300)
        .map(|i| format!("\"198.18.{}.{}\"", i / 200, 1 + i % 200))
        .collect();
    let bad = lab.write_config(
        "too-wide.toml",
        &AgentConfig {
            top: "role = [\"api\"]\nmode = \"enforce\"".into(),
            tables: format!(
                "[[allow]]\nname = \"many-ports\"\ndirection = \"egress\"\n\
                 ports = \"{}\"\nto = [{}]\n",
                wide_ports(),
                fixed.join(", ")
            ),
            ..Default::default()
        },
    );
    let out = lab.agent_cmd(&["check", "--config", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted {}", bad.display());
    assert!(
        stderr.contains("131072") && stderr.contains("exact IPv4"),
        "check should name the map and its capacity: {stderr}"
    );
    expect_ok(
        "the live policy after the refused config",
        &lab.tcp(sa(extra_ip(&lab, 2, 1), 443), OK_MS),
    );
}
