//! The agent's metrics with the real Prometheus (Debian's `prometheus`
//! package, installed by `cargo xtask test`): `promtool check metrics`
//! accepts a live scrape, and a Prometheus started here scrapes a lab agent
//! during traffic, after which every PromQL query of the Grafana dashboard
//! (`deploy/grafana/sdm-egress.json`) returns data through Prometheus's
//! HTTP API.

#![allow(clippy::too_many_lines, reason = "a test reads as one scenario")]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sdm_tests::{
    gateway::{self, sa, wait_for, DB, DENY_MS, GATEWAY_HOSTS, OK_MS, OTHER},
    guards::{Proc, TempDir},
    lab::{metric, DnsMode, Lab, AGENT_LISTEN},
};
use serde_json::Value;

fn new_lab() -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_lab-probe"))
}

/// Prometheus's scrape interval here; Grafana's `$__rate_interval` is at
/// least four of them.
const SCRAPE_SECS: u64 = 1;

/// A tool of Debian's `prometheus` package, which the test needs and does
/// not skip without.
fn prometheus_tool(name: &str) -> PathBuf {
    let p = PathBuf::from("/usr/bin").join(name);
    assert!(
        p.exists(),
        "{} is not installed: `cargo xtask test` installs Debian's prometheus",
        p.display()
    );
    p
}

/// A gateway lab in audit mode (so the dashboard's audit panels have data)
/// whose names are refreshed every second (so a DNS outage is counted at
/// once).
fn start_audit_gateway(lab: &mut Lab) {
    gateway::serve_all(lab);
    gateway::gateway_dns(lab, 1);
    let config = gateway::gateway_config(
        lab,
        "audit",
        "ttl_min = \"1s\"\nttl_max = \"1h\"\ngrace = \"2s\"",
    );
    let path = lab.write_config("gateway.toml", &config);
    lab.start_agent(&path, "audit", &GATEWAY_HOSTS);
}

/// Runs `promtool check metrics` on `text`; returns its exit status and
/// its output (it reports problems on stdout and stderr, one a line).
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new(prometheus_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run promtool: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write to promtool: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for promtool: {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

#[test]
fn promtool_accepts_a_live_scrape() {
    let mut lab = new_lab();
    start_audit_gateway(&mut lab);
    // Some traffic, so that the labelled families have members.
    let _ = lab.tcp(sa(lab.net_ip(OTHER), 7777), DENY_MS);
    let _ = lab.tcp(sa(lab.net_ip(DB), 5432), OK_MS);
    let text = lab.metrics();
    let (_, report) = promtool_check(&text);
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_openmetrics_counter_help(&text, l))
        .collect();
    assert!(
        problems.is_empty(),
        "promtool check metrics: {}\n---- all it said ----\n{report}\n---- the scrape ----\n{text}",
        problems.join("\n")
    );
}

/// `[metrics] per_resource = true` reaches the running agent's `/metrics`:
/// the resource's rule and hostname have series of their own, which the
/// default sums under the guide row (the lab test checks that side), and
/// the scrape stays clean for promtool.
#[test]
fn per_resource_gives_a_resource_its_own_series() {
    let mut lab = new_lab();
    gateway::serve_all(&lab);
    gateway::gateway_dns(&lab, 300);
    let mut config = gateway::gateway_config(&lab, "audit", "");
    config.tables.push_str("\n[metrics]\nper_resource = true\n");
    let path = lab.write_config("per-resource.toml", &config);
    lab.start_agent(&path, "audit", &GATEWAY_HOSTS);
    let _ = lab.tcp(sa(lab.net_ip(DB), 5432), OK_MS);
    let m = lab.metrics();
    let db = [
        ("rule", "gateway/egress/resource/db"),
        ("direction", "egress"),
    ];
    assert!(
        metric(&m, "sdm_rule_packets_total", &db).is_some_and(|v| v > 0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sdm_hostname_addresses", &[("hostname", "db.lab.test")]),
        Some(1.0),
        "{m}"
    );
    assert!(
        !m.contains("rule=\"gateway/egress/resource\",direction"),
        "the row's sum beside the resource's own series:\n{m}"
    );
    assert_eq!(
        metric(
            &m,
            "sdm_resource_rules",
            &[("rule", "gateway/egress/resource")]
        ),
        Some(1.0),
        "{m}"
    );
    let (_, report) = promtool_check(&m);
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_openmetrics_counter_help(&m, l))
        .collect();
    assert!(problems.is_empty(), "promtool: {problems:?}\n{m}");
}

/// Whether a promtool message is `<name>_total no help text` for a counter
/// whose family `<name>` has a HELP line in `text`. The agent serves
/// OpenMetrics (its content type says so, and Prometheus scrapes it with
/// its OpenMetrics parser): there a counter family is named without
/// `_total` and its samples with it. promtool 2.42's `check metrics` reads
/// the body as the classic text format, where HELP names the sample, so it
/// misses the family's help. Every other message is a real problem.
fn is_openmetrics_counter_help(text: &str, message: &str) -> bool {
    let Some(family) = message
        .strip_suffix(" no help text")
        .and_then(|m| m.strip_suffix("_total"))
    else {
        return false;
    };
    let typed = text
        .lines()
        .any(|l| l == format!("# TYPE {family} counter"));
    let helped = text.lines().any(|l| {
        l.strip_prefix(&format!("# HELP {family} "))
            .is_some_and(|h| !h.trim().is_empty())
    });
    typed && helped
}

/// A Prometheus server in the lab's host namespace, scraping the agent;
/// killed on drop, before its directory is removed.
struct Prometheus {
    addr: SocketAddr,
    _proc: Proc,
    log: PathBuf,
    // Dropped after `proc`: fields drop in declaration order.
    _dir: TempDir,
}

impl Prometheus {
    fn start(lab: &Lab) -> Self {
        let dir = TempDir::new("prom");
        let addr = {
            let _in = lab.host.enter();
            let l = TcpListener::bind("127.0.0.1:0").expect("a free port in the lab");
            l.local_addr().expect("local address")
        };
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE_SECS}s\n  scrape_timeout: {SCRAPE_SECS}s\n\
                 scrape_configs:\n  - job_name: sdm-agent\n    static_configs:\n      \
                 - targets: ['{AGENT_LISTEN}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("create prometheus.log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", lab.host.path().display()))
            .arg(prometheus_tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start prometheus: {e}"));
        let p = Self {
            addr,
            _proc: Proc(child),
            log,
            _dir: dir,
        };
        wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
            p.try_get(lab, "/-/ready")
                .filter(|(code, _)| *code == 200)
                .map(|_| ())
        })
        .unwrap_or_else(|| panic!("prometheus never became ready:\n{}", p.log_text()));
        p
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` from Prometheus inside the lab's host namespace: the
    /// status code and the body, or None when it does not answer.
    fn try_get(&self, lab: &Lab, path: &str) -> Option<(u16, String)> {
        let mut conn = {
            let _in = lab.host.enter();
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?
        };
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        conn.write_all(req.as_bytes()).ok()?;
        let mut resp = Vec::new();
        conn.read_to_end(&mut resp).ok()?;
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let (head, body) = resp.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    }

    /// GET an `/api/v1/...` path; the `data` of a `success` answer.
    fn api(&self, lab: &Lab, path: &str) -> Value {
        let (code, body) = self
            .try_get(lab, path)
            .unwrap_or_else(|| panic!("prometheus did not answer {path}:\n{}", self.log_text()));
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        assert!(
            code == 200 && v["status"] == "success",
            "GET {path}: {code} {v}"
        );
        v["data"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- prometheus log ----\n{}---- end of the prometheus log ----",
                self.log_text()
            );
        }
    }
}

/// Percent-encodes a query parameter's value.
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A PromQL query of the dashboard: the panel it is in, the expression and
/// whether Grafana runs it as an instant query.
struct PanelQuery {
    panel: String,
    expr: String,
    instant: bool,
}

/// Every target of every panel, rows' nested panels included.
fn panel_queries(panels: &[Value], out: &mut Vec<PanelQuery>) {
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(PanelQuery {
                    panel: p["title"].as_str().unwrap_or("?").to_owned(),
                    expr: expr.to_owned(),
                    instant: t["instant"].as_bool().unwrap_or(false),
                });
            }
        }
        if let Some(nested) = p["panels"].as_array() {
            panel_queries(nested, out);
        }
    }
}

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/sdm-egress.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `label_values(metric, label)`, the only form of variable query the
/// dashboard uses; anything else fails the test so that it is not skipped.
fn label_values_query(q: &str) -> (String, String) {
    let args = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("a variable query the test does not know: {q}"));
    let (metric, label) = args
        .split_once(',')
        .unwrap_or_else(|| panic!("label_values without a metric: {q}"));
    (metric.trim().to_owned(), label.trim().to_owned())
}

/// A regex that matches exactly `values`, as Grafana writes a multi-value
/// variable into `=~"..."` (inside a PromQL string, so `\` is doubled).
fn regex_of(values: &[String]) -> String {
    let escaped: Vec<String> = values
        .iter()
        .map(|v| {
            let mut s = String::new();
            for c in v.chars() {
                if "\\.+*?()|[]{}^$".contains(c) {
                    s.push_str("\\\\");
                }
                s.push(c);
            }
            s
        })
        .collect();
    format!("({})", escaped.join("|"))
}

/// Replaces Grafana's variables in `expr`: the template variables with
/// their values, `$__range` with the run's length, `$__interval` with the
/// scrape interval and `$__rate_interval` with Grafana's floor of four
/// scrape intervals.
fn substitute(expr: &str, vars: &[(String, String)], range_secs: u64) -> String {
    let mut e = expr
        .replace("$__rate_interval", &format!("{}s", 4 * SCRAPE_SECS))
        .replace("$__interval", &format!("{SCRAPE_SECS}s"))
        .replace("$__range", &format!("{range_secs}s"));
    for (name, value) in vars {
        e = e
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(!e.contains('$'), "a variable left in {expr:?}: {e}");
    e
}

/// Traffic for every panel: audit-mode denials (a refused port, a UDP port
/// no rule allows), allowed connections under rules, and a DNS outage of a
/// few seconds so that failures are counted across several scrapes.
fn lab_traffic(lab: &Lab, rounds: u32) {
    let other = lab.net_ip(OTHER);
    let db = lab.net_ip(DB);
    for round in 0..rounds {
        let _ = lab.tcp(sa(other, 7777), DENY_MS);
        let _ = lab.udp(sa(other, 9001), DENY_MS);
        let _ = lab.tcp(sa(db, 5432), OK_MS);
        let _ = lab.udp(sa(other, 9000), OK_MS);
        if round == rounds / 3 {
            lab.dns().set_mode(DnsMode::ServFail);
        }
        // Eight rounds (about 7 s) of failures at a 1 s refresh: the
        // counter rises across many 4 s windows, so one slow scrape cannot
        // leave every window of the DNS panel without an increase.
        if round == rounds / 3 + 8 {
            lab.dns().set_mode(DnsMode::Answer);
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    lab.dns().set_mode(DnsMode::Answer);
}

/// The dashboard's template variables with their values from Prometheus
/// over the run, as regexes (each must have a value).
fn template_variables(
    d: &Value,
    prom: &Prometheus,
    lab: &Lab,
    start: u64,
    end: u64,
) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().expect("a variable's name").to_owned();
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name} has no query: {v}"));
        let (metric, label) = label_values_query(q);
        let values: Vec<String> = prom
            .api(
                lab,
                &format!(
                    "/api/v1/label/{label}/values?match[]={}&start={start}&end={end}",
                    urlencode(&metric)
                ),
            )
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect();
        assert!(!values.is_empty(), "variable {name} ({q}) has no values");
        vars.push((name, regex_of(&values)));
    }
    vars
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let mut lab = new_lab();
    start_audit_gateway(&mut lab);
    let prom = Prometheus::start(&lab);
    let start = unix_secs();
    lab_traffic(&lab, 15);
    // Let a few scrapes see the last of the traffic.
    std::thread::sleep(Duration::from_secs(4 * SCRAPE_SECS));
    let end = unix_secs();
    let range_secs = end - start + 1;
    let targets = prom.api(&lab, "/api/v1/targets?state=active");
    let target = &targets["activeTargets"][0];
    assert!(
        target["health"] == "up" && target["lastError"] == "",
        "Prometheus's scrape of the agent: {targets}"
    );
    // Read as OpenMetrics: the counter families keep their type.
    let meta = prom.api(&lab, "/api/v1/metadata?metric=sdm_rule_packets");
    assert_eq!(meta["sdm_rule_packets"][0]["type"], "counter", "{meta}");

    let d = dashboard();
    let vars = template_variables(&d, &prom, &lab, start, end);

    let mut queries = Vec::new();
    panel_queries(d["panels"].as_array().expect("panels"), &mut queries);
    assert!(
        queries.len() >= 20,
        "the dashboard's queries were not all found"
    );
    let mut empty = Vec::new();
    for q in &queries {
        let expr = substitute(&q.expr, &vars, range_secs);
        // As Grafana runs it: an instant query at the end of the time
        // range, or a range query over it.
        let path = if q.instant {
            format!("/api/v1/query?query={}&time={end}", urlencode(&expr))
        } else {
            format!(
                "/api/v1/query_range?query={}&start={start}&end={end}&step={SCRAPE_SECS}",
                urlencode(&expr)
            )
        };
        let data = prom.api(&lab, &path);
        if data["result"].as_array().is_none_or(Vec::is_empty) {
            empty.push(format!("{}: {expr}", q.panel));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n  {}\n---- the agent's metrics now ----\n{}",
        empty.join("\n  "),
        lab.metrics()
    );
}

#[test]
fn grafana_variables_are_substituted() {
    let vars = vec![(
        "instance".to_owned(),
        regex_of(&["127.0.0.1:9850".to_owned()]),
    )];
    assert_eq!(
        substitute(
            "rate(x{instance=~\"$instance\"}[$__rate_interval]) + increase(y[$__range])",
            &vars,
            30
        ),
        "rate(x{instance=~\"(127\\\\.0\\\\.0\\\\.1:9850)\"}[4s]) + increase(y[30s])"
    );
    assert_eq!(
        label_values_query("label_values(sdm_mode, instance)"),
        ("sdm_mode".to_owned(), "instance".to_owned())
    );
    assert_eq!(urlencode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
}

#[test]
fn only_openmetrics_counter_names_are_excused() {
    let text = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 1\n\
                # HELP c \n# TYPE c counter\nc_total 1\n# TYPE g gauge\ng 1\n";
    assert!(is_openmetrics_counter_help(text, "a_b_total no help text"));
    assert!(
        !is_openmetrics_counter_help(text, "c_total no help text"),
        "empty help"
    );
    assert!(!is_openmetrics_counter_help(text, "g no help text"));
    assert!(!is_openmetrics_counter_help(
        text,
        "a_b_total counter metrics should have \"_total\" suffix"
    ));
}
