//! Denied flows end to end, in the lab: a process in the enforced cgroup
//! that is refused shows up, with its pid, comm and the hostname it
//! resolved, in `sdm-agent flows --json`, in the JSON audit log and in
//! `/api/flows`, and still after a restart; `suggest` after an audit run
//! prints config that makes those flows pass; a flood of a million denied
//! packets to a million addresses ends in bounded time, keeps the agent's
//! work bounded and the counters exact.

use std::{
    fs,
    time::{Duration, Instant},
};

use sdm_tests::{
    gateway::{self, any, expect_denied, expect_ok, sa, wait_for, DB, DENY_MS, OK_MS, OTHER},
    lab::{denied_packets, metric, result, Lab},
};
use serde_json::Value;

fn new_lab() -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_lab-probe"))
}

/// The flows `sdm-agent flows --config <config> --json` prints.
fn flows_json(lab: &Lab, config: &std::path::Path) -> Vec<Value> {
    let out = lab.agent_ok(&["flows", "--config", &config.display().to_string(), "--json"]);
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("flows --json line {l:?}: {e}")))
        .collect()
}

/// The flow to `remote`:`port` in `flows`, if any.
fn find<'a>(flows: &'a [Value], remote: &str, port: u16) -> Option<&'a Value> {
    flows
        .iter()
        .find(|f| f["remote"] == remote && f["port"] == port)
}

/// The flows of `/api/flows?<query>`.
fn api_flows(lab: &Lab, query: &str) -> Vec<Value> {
    let body = lab.http_get(&format!("/api/flows?{query}"));
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/flows: {e}: {body}"));
    assert_eq!(
        v["source"], "store",
        "/api/flows should read the store: {v}"
    );
    v["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("/api/flows: no flows array: {v}"))
        .clone()
}

/// Asserts a flow record names the process and the hostname.
#[track_caller]
fn expect_attributed(what: &str, f: &Value, pid: u64, hostname: &str, verdict: &str) {
    assert_eq!(f["comm"], "lab-probe", "{what}: comm in {f}");
    assert_eq!(f["pid"], pid, "{what}: pid in {f}");
    assert_eq!(f["hostname"], hostname, "{what}: hostname in {f}");
    assert_eq!(f["verdict"], verdict, "{what}: verdict in {f}");
    assert_eq!(f["direction"], "egress", "{what}: direction in {f}");
}

/// A refused connect in enforce mode appears with pid, comm and hostname
/// in every place an operator looks, and survives a restart; a flow denied
/// just before a clean shutdown is not lost either.
#[test]
fn denied_flow_is_recorded_everywhere_and_survives_restart() {
    let mut lab = new_lab();
    let config = gateway::start(&mut lab, "enforce", "");
    // The process resolves db.lab.test through the allowed resolver, as an
    // application would, then connects to a port no rule allows (5432 is
    // the allowed one).
    let answer = lab.probe(&["resolve", &lab.dns_ip().to_string(), "db.lab.test"]);
    let db: std::net::IpAddr = answer["addresses"][0]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("resolve db.lab.test: {answer}"));
    assert_eq!(db, lab.net_ip(DB), "{answer}");
    let db_s = db.to_string();
    let v = lab.probe(&["tcp", &sa(db, 2222).to_string(), &DENY_MS.to_string()]);
    assert_eq!(result(&v), "eperm", "a denied connect fails at once: {v}");
    let pid = v["pid"].as_u64().expect("the probe prints its pid");

    let flows = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let flows = flows_json(&lab, &config);
        find(&flows, &db_s, 2222).is_some().then_some(flows)
    })
    .unwrap_or_else(|| panic!("the denied flow never reached the store (flows --json)"));
    let f = find(&flows, &db_s, 2222).expect("found above");
    expect_attributed("flows --json", f, pid, "db.lab.test", "dropped");
    assert_eq!(f["proto"], "tcp", "{f}");
    assert!(f["count"].as_u64().unwrap_or(0) >= 1, "{f}");

    // The JSON audit log: one line for the new flow.
    let log_path = lab.dir.path().join("audit.jsonl");
    let log = fs::read_to_string(&log_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", log_path.display()));
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .filter(|l: &Value| l["remote"] == db_s.as_str() && l["port"] == 2222)
        .collect();
    assert_eq!(lines.len(), 1, "one audit line for the new flow: {log}");
    expect_attributed("audit log", &lines[0], pid, "db.lab.test", "dropped");
    assert_eq!(lines[0]["event"], "denied_flow", "{}", lines[0]);

    // The API, filtered as the dashboard filters.
    let api = api_flows(&lab, "since=1h&direction=egress&verdict=dropped");
    let f = find(&api, &db_s, 2222).unwrap_or_else(|| panic!("/api/flows lacks the flow: {api:?}"));
    expect_attributed("/api/flows", f, pid, "db.lab.test", "dropped");
    // A filter that excludes it does exclude it.
    let audit_only = api_flows(&lab, "since=1h&verdict=audit");
    assert!(find(&audit_only, &db_s, 2222).is_none(), "{audit_only:?}");

    // Denied right before a clean stop: must be flushed, not lost.
    let v = lab.probe(&["tcp", &sa(db, 2223).to_string(), &DENY_MS.to_string()]);
    assert_eq!(result(&v), "eperm", "{v}");
    let late_pid = v["pid"].as_u64().expect("pid");
    lab.stop_agent();
    let flows = flows_json(&lab, &config);
    let f = find(&flows, &db_s, 2223).unwrap_or_else(|| {
        panic!("the flow denied just before SIGTERM was not written on shutdown: {flows:?}")
    });
    expect_attributed("flushed at shutdown", f, late_pid, "db.lab.test", "dropped");

    // Restarted: the store still has both, and the API serves them.
    lab.restart_agent();
    let api = api_flows(&lab, "since=1h");
    for (port, pid) in [(2222, pid), (2223, late_pid)] {
        let f = find(&api, &db_s, port)
            .unwrap_or_else(|| panic!("after a restart /api/flows lacks port {port}: {api:?}"));
        expect_attributed("after restart", f, pid, "db.lab.test", "dropped");
    }
    // And a kill -9 (no clean shutdown) loses nothing already written.
    lab.kill_agent();
    lab.restart_agent();
    let flows = flows_json(&lab, &config);
    assert!(find(&flows, &db_s, 2222).is_some() && find(&flows, &db_s, 2223).is_some());
}

/// Audit mode records what enforce mode would refuse; `suggest` turns it
/// into config; with that config in enforce mode, the same flows pass and
/// a flow it does not name is still refused.
#[test]
fn suggest_after_audit_makes_the_flows_pass() {
    let mut lab = new_lab();
    let config = gateway::start(&mut lab, "audit", "");
    lab.serve_tcp(&[any(2222), any(7777), any(7778)]);
    let db = lab.net_ip(DB);
    let other = lab.net_ip(OTHER);
    let wanted = [(db, 2222u16), (other, 7777u16)];
    for (ip, port) in wanted {
        let v = lab.probe(&["tcp", &sa(ip, port).to_string(), &OK_MS.to_string()]);
        expect_ok(&format!("audit mode passes {ip}:{port}"), &v);
    }
    wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let flows = flows_json(&lab, &config);
        wanted
            .iter()
            .all(|(ip, port)| {
                find(&flows, &ip.to_string(), *port).is_some_and(|f| f["verdict"] == "audit")
            })
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the audit flows never reached the store"));

    let suggestion = lab.agent_ok(&["suggest", "--config", &config.display().to_string()]);
    assert!(
        suggestion.contains("db.lab.test"),
        "suggest should name the resolved hostname, not only its address:\n{suggestion}"
    );

    // Apply: the same config in enforce mode, plus the suggestion.
    let text = fs::read_to_string(&config).expect("read the config");
    let enforced = text.replace("mode = \"audit\"", "mode = \"enforce\"");
    assert_ne!(text, enforced, "the lab config sets mode = \"audit\"");
    let applied = lab.dir.path().join("applied.toml");
    fs::write(&applied, format!("{enforced}\n{suggestion}")).expect("write applied.toml");
    let check = lab.agent_cmd(&["check", "--config", &applied.display().to_string()]);
    assert!(
        check.status.success(),
        "the suggested config does not pass check:\n{suggestion}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    lab.stop_agent();
    lab.start_agent(&applied, "enforce", &gateway::GATEWAY_HOSTS);
    for (ip, port) in wanted {
        let v = lab.probe(&["tcp", &sa(ip, port).to_string(), &OK_MS.to_string()]);
        expect_ok(
            &format!("enforce mode with the suggestion passes {ip}:{port}"),
            &v,
        );
    }
    let v = lab.probe(&["tcp", &sa(other, 7778).to_string(), &DENY_MS.to_string()]);
    expect_denied("a flow the suggestion does not name", &v);
}

/// Counter value of `sdm_events_total{result=...}`.
fn events(metrics: &str, result: &str) -> f64 {
    metric(metrics, "sdm_events_total", &[("result", result)])
        .unwrap_or_else(|| panic!("no sdm_events_total{{result={result:?}}} in:\n{metrics}"))
}

/// The flood's destinations: a /12 (1,048,576 addresses) routed into the
/// lab's `net` namespace, which has no address there and forwards nothing,
/// so a datagram that got out would end there.
const FLOOD_NET: &str = "10.240.0.0/12";

/// How long the million datagrams may take, from the first process started
/// to the last one done. Measured here (2 shared cores): 1.2 to 1.3 s
/// alone, 1.6 to 2.4 s beside a cargo build using both cores; the bound
/// is twice the worst of those, and fails a packet path grown four times
/// slower.
const FLOOD_SECS_MAX: f64 = 5.0;

/// The agent's CPU over the flood and the 2 s after it (utime + stime, in
/// 10 ms ticks), as a share of one core and per deny event the kernel let
/// through (its budget: 500 per CPU per second). Measured here, eight
/// runs, alone and beside a build: 0.12 to 0.18 s for 2,000 to 3,000
/// events, 3.3% to 4.1% of a core, 60 to 70 us per event. The bounds are
/// 1.6 and 1.4 times the worst of those. The agent made
/// to spend twice as long per event (a 65 us spin per event in the event
/// reader) used 0.31 s for 2,500 events, 124 us each, and 6.6% and 7.4%
/// (its extra work also slowed the flood, so the share rises less than
/// the work): both runs failed.
const FLOOD_AGENT_CPU_MAX: f64 = 0.065;
const FLOOD_AGENT_CPU_PER_EVENT_MAX: Duration = Duration::from_micros(100);

/// A million denied packets from four processes, each to an address of its
/// own (the four take disjoint quarters of a million addresses, so the
/// per-flow event limit cannot fold any of them), while allowed connections
/// go on: the flood ends within [`FLOOD_SECS_MAX`], not one allowed
/// connection fails, the kernel's counters count every denied packet, the
/// events the agent gets stay within the kernel's budget, and the agent's
/// CPU ([`FLOOD_AGENT_CPU_MAX`]) and memory stay bounded. Half the
/// datagrams are UDP, refused at `sendto()` by the sendmsg4 hook before
/// they are packets; half go through a raw socket, which no sock_addr hook
/// sees, and are dropped by the egress packet program.
#[test]
fn million_denied_packets_bounded_agent_exact_counters() {
    const PROCS: u32 = 4;
    const PER_PROC: u32 = 250_000;
    let mut lab = new_lab();
    gateway::start(&mut lab, "enforce", "");
    let db = lab.net_ip(DB);
    let flood_net: ipnet::Ipv4Net = FLOOD_NET.parse().expect("FLOOD_NET");
    assert!(
        u64::from(PROCS * PER_PROC) < 1u64 << (32 - flood_net.prefix_len()),
        "{FLOOD_NET} holds fewer than {} addresses",
        PROCS * PER_PROC
    );
    // The lab's host namespace has only the lab's routes; this one says
    // where the flood goes in so many words.
    lab.host.ip(&[
        "route",
        "add",
        FLOOD_NET,
        "via",
        &lab.dns_ip().to_string(),
        "dev",
        "h0",
    ]);

    let before = lab.status();
    let denied_before = denied_packets(&before, "enforce", "egress", "no_rule");
    let m = lab.metrics();
    let sent_before = events(&m, "sent");
    let cpu_before = lab.agent_cpu();
    let start = Instant::now();

    // Allowed connections all through the flood (which takes a few seconds).
    let mut allowed = lab.spawn_probe(
        &["tcp-loop", &sa(db, 5432).to_string(), "8", "50", "2000"],
        false,
    );
    // Process p floods addresses p * PER_PROC + 1 ..= (p + 1) * PER_PROC of
    // the /12: four disjoint ranges.
    let base = u32::from(flood_net.network());
    let floods: Vec<_> = (0..PROCS)
        .map(|p| {
            let first = std::net::Ipv4Addr::from(base + 1 + p * PER_PROC);
            lab.spawn_probe(&["flood", &first.to_string(), &PER_PROC.to_string()], false)
        })
        .collect();
    let mut max_rss = 0;
    let mut reached = 0u64;
    let mut ranges = Vec::new();
    for mut f in floods {
        let v = f.line(Duration::from_secs(120));
        assert_eq!(v["result"], "done", "flood: {v}");
        let outcomes = v["outcomes"].as_object().expect("outcomes");
        // Every datagram was judged by a program: the UDP ones refused at
        // sendmsg (EPERM), the raw ones dropped by the packet program
        // (sendto reports EPERM for a cgroup egress drop, or nothing on
        // kernels that turn the drop into ENOBUFS, which raw sockets hide).
        // Any other ending would mean a packet never reached the filter.
        for (k, n) in outcomes {
            assert!(
                k == "udp-eperm" || k == "raw-eperm" || k == "raw-sent",
                "flood: unexpected outcome {k} x{n}: {v}"
            );
            reached += n.as_u64().unwrap_or(0);
        }
        assert_eq!(
            v["outcomes"]["udp-eperm"],
            u64::from(PER_PROC / 2),
            "half the flood is refused at sendmsg: {v}"
        );
        let first: std::net::Ipv4Addr = v["first"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("first");
        let last: std::net::Ipv4Addr = v["last"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("last");
        assert!(
            flood_net.contains(&first) && flood_net.contains(&last),
            "the flood left {FLOOD_NET}: {v}"
        );
        ranges.push((u32::from(first), u32::from(last)));
        max_rss = max_rss.max(lab.agent_rss());
    }
    let flood_secs = start.elapsed().as_secs_f64();
    assert_eq!(reached, u64::from(PROCS * PER_PROC));
    // A million different addresses: the ranges do not overlap.
    ranges.sort_unstable();
    let distinct: u64 = ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum();
    assert!(
        ranges.windows(2).all(|w| w[0].1 < w[1].0) && distinct == u64::from(PROCS * PER_PROC),
        "the floods' ranges overlap: {ranges:?}"
    );

    // Counters are exact: every denied packet, none more.
    let after = lab.status();
    let denied_delta = denied_packets(&after, "enforce", "egress", "no_rule") - denied_before;
    assert_eq!(
        denied_delta,
        u64::from(PROCS * PER_PROC),
        "denied packets counted during the flood"
    );

    // Let the agent drain, then judge its work.
    std::thread::sleep(Duration::from_secs(2));
    let wall = start.elapsed().as_secs_f64();
    let cpu = (lab.agent_cpu() - cpu_before).as_secs_f64();
    let m = lab.metrics();
    let sent = events(&m, "sent") - sent_before;
    let throttled = events(&m, "throttled");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let budget = sdm_common::EVENT_BUDGET_PER_SEC as f64 * cpus * (wall.ceil() + 1.0);
    eprintln!(
        "flood: {reached} packets to {distinct} addresses in {flood_secs:.2} s; agent {cpu:.2} s \
         CPU over {wall:.1} s ({:.1}%, {:.0} us per event), max RSS {:.1} MB; events sent {sent}, \
         throttled {throttled}, lost {:?}",
        100.0 * cpu / wall,
        1e6 * cpu / sent.max(1.0),
        max_rss as f64 / 1e6,
        metric(&m, "sdm_events_lost_total", &[])
    );
    assert!(
        flood_secs < FLOOD_SECS_MAX,
        "the flood of {reached} packets took {flood_secs:.2} s (bound: {FLOOD_SECS_MAX} s)"
    );
    assert!(
        sent <= budget,
        "the kernel sent {sent} events in {wall:.1} s, over its budget of {budget}"
    );
    assert!(
        throttled > 0.0,
        "a flood of new flows should hit the event budget"
    );
    assert!(
        metric(&m, "sdm_events_lost_total", &[]).is_some(),
        "lost events are exported"
    );
    assert!(
        cpu / wall < FLOOD_AGENT_CPU_MAX,
        "the agent used {:.1}% of a core during the flood (bound: {:.1}%)",
        100.0 * cpu / wall,
        100.0 * FLOOD_AGENT_CPU_MAX
    );
    let per_event = Duration::from_secs_f64(cpu / sent.max(1.0));
    assert!(
        per_event < FLOOD_AGENT_CPU_PER_EVENT_MAX,
        "the agent used {per_event:?} of CPU per event ({cpu:.2} s for {sent} events; bound: \
         {FLOOD_AGENT_CPU_PER_EVENT_MAX:?})"
    );
    assert!(
        max_rss < 100 << 20,
        "the agent grew to {} MB during the flood",
        max_rss >> 20
    );

    // Allowed traffic went on throughout.
    let v = allowed.line(Duration::from_secs(30));
    assert_eq!(
        v["result"], "ok",
        "allowed connections failed during the flood: {v}"
    );
    assert!(v["attempts"].as_u64().unwrap_or(0) >= 20, "{v}");
}
