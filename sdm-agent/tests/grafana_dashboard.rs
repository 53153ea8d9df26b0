//! The Grafana dashboard (`deploy/grafana/sdm-egress.json`) against the
//! metrics the agent really serves: every series a panel or variable
//! queries must be one `/metrics` exposes, under its exposed name (counters
//! carry `_total`), with the labels the query filters or groups by; and the
//! JSON must be a dashboard Grafana imports with a data source variable.
//!
//! The exposed names come from rendering `/metrics` through the agent's own
//! collectors (`metrics::render_snapshot`), not from a list kept here, so a
//! renamed or removed metric fails this test until the dashboard follows.

#![allow(
    clippy::too_many_lines,
    reason = "the PromQL scanner and the dashboard walk read as one pass each, like a test scenario"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::atomic::Ordering,
};

use sdm_agent::{
    api::metrics::{self, AgentStats},
    api::status::Status,
    kernel::dataplane::Layout,
};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../../deploy/grafana/sdm-egress.json");

/// Labels Prometheus adds to every series of a target, and series it makes
/// itself per target: neither comes from the agent.
const TARGET_LABELS: &[&str] = &["instance", "job"];
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// Series name -> label names, as exposed.
type Exposed = BTreeMap<String, BTreeSet<String>>;

/// [`Status::sample`] with a `[[resource]]` entry, whose rule and
/// hostname the default `[metrics]` sums into the `sdm_resource_*` families.
fn sample_with_a_resource() -> Status {
    let mut s = Status::sample();
    let mut rule = s.rules[0].clone();
    rule.name = "gateway/egress/resource/db".into();
    rule.targets = vec!["db.internal".into()];
    s.rules.push(rule);
    let mut host = s.dns[0].clone();
    host.hostname = "db.internal".into();
    s.dns.push(host);
    let mut learned = s.learned[0].clone();
    learned.hostname = Some("db.internal".into());
    s.learned.push(learned);
    s
}

/// What the agent's `/metrics` serves for [`sample_with_a_resource`].
fn served_metrics() -> String {
    let stats = AgentStats::default();
    stats.events_lost.store(1, Ordering::Relaxed);
    let layout = Layout {
        pin_root: "/nonexistent/sdm-grafana-test".into(),
        run_dir: "/nonexistent/sdm-grafana-test-run".into(),
    };
    metrics::render_snapshot(sample_with_a_resource(), layout, stats)
}

/// Parses the text exposition: sample names with their label names. Fails
/// when a declared family has no sample (then the fixture misses a row and
/// the dashboard check would not know that family's series).
fn parse_exposition(text: &str) -> Result<Exposed, String> {
    let mut families = Vec::new();
    let mut exposed = Exposed::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                families.push((name.to_string(), kind.to_string()));
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line
            .find(['{', ' '])
            .ok_or(format!("odd sample line {line:?}"))?;
        let name = &line[..end];
        let labels = exposed.entry(name.to_string()).or_default();
        if line[end..].starts_with('{') {
            let close = line
                .rfind('}')
                .ok_or(format!("unclosed labels in {line:?}"))?;
            for (label, _) in parse_matchers(&line[end + 1..close])? {
                labels.insert(label);
            }
        }
    }
    for (family, kind) in &families {
        let sample = if kind == "counter" {
            format!("{family}_total")
        } else {
            family.clone()
        };
        if !exposed.contains_key(&sample) {
            return Err(format!(
                "family {family} ({kind}) has no sample {sample}: add a row for it to the fixture"
            ));
        }
    }
    if families.is_empty() {
        return Err("no metric family in the exposition".into());
    }
    Ok(exposed)
}

/// One series selector in a query: the metric and its label matchers.
#[derive(Debug, Default, PartialEq, Eq)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String)>,
}

/// The series a PromQL expression reads and the labels it groups by.
#[derive(Debug, Default, PartialEq, Eq)]
struct Uses {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

/// PromQL's aggregation operators: they may be followed by `by`/`without`
/// rather than a parenthesis.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// PromQL's functions; any other word before a parenthesis is a typo.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
    "year",
    "start",
    "end",
];

/// Words that take a label list in parentheses.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Operators and literals spelled as words.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the quoted string starting at `i`.
fn skip_string(s: &[char], i: usize) -> Result<usize, String> {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() {
        match s[j] {
            '\\' if quote != '`' => j += 2,
            c if c == quote => return Ok(j + 1),
            _ => j += 1,
        }
    }
    Err(format!("unclosed string at {i}"))
}

fn next_non_space(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

/// `name op "value", ...` inside braces, as (name, value) pairs.
fn parse_matchers(inner: &str) -> Result<Vec<(String, String)>, String> {
    let s: Vec<char> = inner.chars().collect();
    let mut out = Vec::new();
    let mut i = next_non_space(&s, 0);
    while i < s.len() {
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        if start == i {
            return Err(format!("expected a label name in {{{inner}}}"));
        }
        let name: String = s[start..i].iter().collect();
        i = next_non_space(&s, i);
        while i < s.len() && "=!~".contains(s[i]) {
            i += 1;
        }
        i = next_non_space(&s, i);
        if i >= s.len() || !"\"'`".contains(s[i]) {
            return Err(format!("expected a quoted value for {name} in {{{inner}}}"));
        }
        let end = skip_string(&s, i)?;
        let value: String = s[i + 1..end - 1].iter().collect();
        out.push((name, value));
        i = next_non_space(&s, end);
        if i < s.len() && s[i] == ',' {
            i = next_non_space(&s, i + 1);
        }
    }
    Ok(out)
}

/// The series and grouping labels of a PromQL expression, with Grafana's
/// `$variables` left out. Not a full parser: it knows PromQL's lexical
/// shapes (strings, ranges, matchers, words before parentheses), which is
/// what telling metric names from everything else takes.
fn promql_uses(expr: &str) -> Result<Uses, String> {
    let s: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c.is_whitespace() {
            i += 1;
        } else if "\"'`".contains(c) {
            i = skip_string(&s, i)?;
        } else if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if i < s.len() && s[i] == '{' {
                while i < s.len() && s[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
            }
        } else if c == '[' {
            // A range or subquery: durations and variables only.
            while i < s.len() && s[i] != ']' {
                i += 1;
            }
            if i == s.len() {
                return Err(format!("unclosed [ in {expr:?}"));
            }
            i += 1;
        } else if c == '{' {
            // A selector without a metric name before it.
            let close = find_close(&s, i)?;
            let matchers = parse_matchers(&s[i + 1..close].iter().collect::<String>())?;
            let metric = matchers
                .iter()
                .find(|(k, _)| k == "__name__")
                .map(|(_, v)| v.clone())
                .ok_or(format!("a selector without a metric name in {expr:?}"))?;
            uses.selectors.push(Selector { metric, matchers });
            i = close + 1;
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (offset 5m).
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let next = next_non_space(&s, i);
            let paren = s.get(next) == Some(&'(');
            if GROUPING.contains(&word.as_str()) {
                if paren {
                    let close = find_close(&s, next)?;
                    let list: String = s[next + 1..close].iter().collect();
                    uses.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(String::from),
                    );
                    i = close + 1;
                }
            } else if AGGREGATIONS.contains(&word.as_str()) || KEYWORDS.contains(&word.as_str()) {
                // An operator spelled as a word: reads no series.
                continue;
            } else if paren {
                if !FUNCTIONS.contains(&word.as_str()) {
                    return Err(format!("unknown PromQL function {word}( in {expr:?}"));
                }
            } else {
                let mut selector = Selector {
                    metric: word,
                    matchers: Vec::new(),
                };
                if s.get(next) == Some(&'{') {
                    let close = find_close(&s, next)?;
                    selector.matchers =
                        parse_matchers(&s[next + 1..close].iter().collect::<String>())?;
                    i = close + 1;
                }
                uses.selectors.push(selector);
            }
        } else {
            // Operators, parentheses, commas.
            i += 1;
        }
    }
    Ok(uses)
}

/// The index of the bracket closing the one at `open`, skipping strings.
fn find_close(s: &[char], open: usize) -> Result<usize, String> {
    let (o, c) = match s[open] {
        '(' => ('(', ')'),
        '{' => ('{', '}'),
        other => return Err(format!("no closing bracket for {other:?}")),
    };
    let mut depth = 0;
    let mut i = open;
    while i < s.len() {
        match s[i] {
            '"' | '\'' | '`' => {
                i = skip_string(s, i)?;
                continue;
            }
            x if x == o => depth += 1,
            x if x == c => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!("unclosed {o:?} at {open}"))
}

/// What is wrong with the series and labels one expression reads.
fn check_expr(expr: &str, exposed: &Exposed) -> Vec<String> {
    let uses = match promql_uses(expr) {
        Ok(u) => u,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    if uses.selectors.is_empty() {
        problems.push(format!("{expr:?} reads no series"));
    }
    let mut available: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for sel in &uses.selectors {
        let labels = match exposed.get(&sel.metric) {
            Some(labels) => labels,
            None if PROMETHEUS_SERIES.contains(&sel.metric.as_str()) => {
                for (label, _) in &sel.matchers {
                    if !TARGET_LABELS.contains(&label.as_str()) {
                        problems.push(format!("{expr:?}: {} has no label {label}", sel.metric));
                    }
                }
                continue;
            }
            None => {
                problems.push(format!(
                    "{expr:?} reads {}, which the agent does not export",
                    sel.metric
                ));
                continue;
            }
        };
        available.extend(labels.iter().map(String::as_str));
        for (label, _) in &sel.matchers {
            if label != "__name__"
                && !labels.contains(label)
                && !TARGET_LABELS.contains(&label.as_str())
            {
                problems.push(format!("{expr:?}: {} has no label {label}", sel.metric));
            }
        }
    }
    for label in &uses.grouping {
        if !available.contains(label.as_str()) {
            problems.push(format!(
                "{expr:?} groups by {label}, which none of its series has"
            ));
        }
    }
    problems
}

/// Every problem with a dashboard's JSON: shape, data source use, and the
/// series its panels and variables read.
fn check_dashboard(json: &str, exposed: &Exposed) -> Vec<String> {
    let dash: Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => return vec![format!("not JSON: {e}")],
    };
    let mut problems = Vec::new();
    for key in ["title", "uid"] {
        if dash[key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("no {key}"));
        }
    }
    if !dash["schemaVersion"].is_u64() {
        problems.push("no schemaVersion".into());
    }
    let vars = dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(ds_var) = vars.iter().find(|v| v["type"] == "datasource") else {
        problems.push("no data source variable".into());
        return problems;
    };
    if ds_var["query"] != "prometheus" {
        problems.push("the data source variable is not for Prometheus".into());
    }
    let ds_uid = format!("${{{}}}", ds_var["name"].as_str().unwrap_or_default());
    let uses_var = |ds: &Value| ds["uid"] == ds_uid.as_str() && ds["type"] == "prometheus";
    let mut host_var = None;
    for var in vars.iter().filter(|v| v["type"] == "query") {
        let name = var["name"].as_str().unwrap_or_default();
        if !uses_var(&var["datasource"]) {
            problems.push(format!("variable {name} does not use {ds_uid}"));
        }
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap_or_default();
        problems.extend(check_label_values(name, query, exposed));
        if name == "instance" {
            host_var = Some(name);
        }
    }
    if host_var.is_none() {
        problems.push("no instance variable".into());
    }
    let panels = dash["panels"].as_array().cloned().unwrap_or_default();
    if panels.iter().all(|p| p["type"] == "row") {
        problems.push("no panels".into());
    }
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?");
        if !ids.insert(p["id"].as_u64()) || p["id"].as_u64().is_none() {
            problems.push(format!("panel {title}: missing or repeated id"));
        }
        let pos = &p["gridPos"];
        let fits = ["h", "w", "x", "y"].iter().all(|k| pos[k].is_u64())
            && pos["x"].as_u64().unwrap_or(0) + pos["w"].as_u64().unwrap_or(0) <= 24;
        if !fits {
            problems.push(format!("panel {title}: gridPos missing or wider than 24"));
        }
        if p["type"] == "row" {
            continue;
        }
        if !uses_var(&p["datasource"]) {
            problems.push(format!("panel {title}: data source is not {ds_uid}"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title}: no targets"));
        }
        for t in &targets {
            if !t["datasource"].is_null() && !uses_var(&t["datasource"]) {
                problems.push(format!(
                    "panel {title}: a target's data source is not {ds_uid}"
                ));
            }
            if t["refId"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("panel {title}: a target has no refId"));
            }
            let Some(expr) = t["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                problems.push(format!("panel {title}: a target has no expr"));
                continue;
            };
            problems.extend(check_expr(expr, exposed));
            // Every series a panel reads follows the host picker.
            if let Ok(uses) = promql_uses(expr) {
                for sel in &uses.selectors {
                    if !sel
                        .matchers
                        .iter()
                        .any(|(k, v)| k == "instance" && v == "$instance")
                    {
                        problems.push(format!(
                            "panel {title}: {} is not filtered by instance=~\"$instance\"",
                            sel.metric
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// `label_values(<selector>, <label>)`, Grafana's variable query.
fn check_label_values(var: &str, query: &str, exposed: &Exposed) -> Vec<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'));
    let Some((selector, label)) = inner.and_then(|q| q.rsplit_once(',')) else {
        return vec![format!(
            "variable {var}: {query:?} is not label_values(<series>, <label>)"
        )];
    };
    let mut problems = check_expr(selector, exposed);
    let label = label.trim();
    if let Ok(uses) = promql_uses(selector) {
        for sel in &uses.selectors {
            let has = TARGET_LABELS.contains(&label)
                || exposed.get(&sel.metric).is_some_and(|l| l.contains(label));
            if !has {
                problems.push(format!(
                    "variable {var}: {} has no label {label}",
                    sel.metric
                ));
            }
        }
    }
    problems
}

#[test]
fn the_exposition_lists_every_family_with_its_served_name() {
    let exposed = parse_exposition(&served_metrics()).unwrap();
    // Counters are served with `_total`; the bare family name is not a series.
    assert!(
        exposed.contains_key("sdm_denied_packets_total"),
        "{exposed:?}"
    );
    assert!(!exposed.contains_key("sdm_denied_packets"), "{exposed:?}");
    assert!(exposed.contains_key("sdm_flows_stored"), "{exposed:?}");
    assert_eq!(
        exposed["sdm_denied_packets_total"],
        ["direction", "mode", "reason"].map(String::from).into()
    );
}

#[test]
fn a_family_without_samples_is_reported() {
    let text = "# TYPE sdm_x counter\n# TYPE sdm_y gauge\nsdm_y 1\n";
    let err = parse_exposition(text).unwrap_err();
    assert!(err.contains("sdm_x"), "{err}");
}

#[test]
fn every_dashboard_query_reads_exported_series() {
    let exposed = parse_exposition(&served_metrics()).unwrap();
    let problems = check_dashboard(DASHBOARD, &exposed);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_extractor_finds_metrics_and_ignores_functions_keywords_and_variables() {
    let uses = promql_uses(
        "sum by (instance, reason) (rate(sdm_denied_packets_total{instance=~\"$instance\", \
         mode=\"audit\"}[$__rate_interval])) or vector(0) > bool 1e3 offset 5m",
    )
    .unwrap();
    assert_eq!(
        uses.selectors,
        vec![Selector {
            metric: "sdm_denied_packets_total".into(),
            matchers: vec![
                ("instance".into(), "$instance".into()),
                ("mode".into(), "audit".into()),
            ],
        }]
    );
    assert_eq!(uses.grouping, vec!["instance", "reason"]);
    let uses =
        promql_uses("topk(10, sum without(rule) (increase(sdm_rule_bytes_total[1h:5m])))").unwrap();
    assert_eq!(uses.selectors.len(), 1);
    assert_eq!(uses.selectors[0].metric, "sdm_rule_bytes_total");
    assert_eq!(uses.grouping, vec!["rule"]);
    assert!(promql_uses("rat(sdm_mode[5m])")
        .unwrap_err()
        .contains("rat("));
}

#[test]
fn a_bogus_metric_label_or_missing_total_fails_the_check() {
    let exposed = parse_exposition(&served_metrics()).unwrap();
    let bogus = check_expr("rate(sdm_bogus_packets_total[5m])", &exposed);
    assert!(
        bogus.iter().any(|p| p.contains("sdm_bogus_packets_total")),
        "{bogus:?}"
    );
    // The family name without `_total` is not what /metrics serves.
    let bare = check_expr("rate(sdm_denied_packets[5m])", &exposed);
    assert!(
        bare.iter().any(|p| p.contains("sdm_denied_packets,")),
        "{bare:?}"
    );
    let label = check_expr("sum by (rule) (sdm_mode{verdict=\"x\"})", &exposed);
    assert_eq!(label.len(), 2, "{label:?}");
    assert!(check_expr("sdm_mode{instance=\"h\"} == 1", &exposed).is_empty());
    assert!(check_expr("up{instance=\"h\"} == 0", &exposed).is_empty());
}

#[test]
fn a_broken_dashboard_fails_the_check() {
    let exposed = parse_exposition(&served_metrics()).unwrap();
    let renamed = DASHBOARD.replace("sdm_flows_stored{", "sdm_flows_stored_total{");
    assert_ne!(renamed, DASHBOARD);
    let problems = check_dashboard(&renamed, &exposed);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("sdm_flows_stored_total")),
        "{problems:?}"
    );
    let hardcoded = DASHBOARD.replacen("\"uid\": \"${datasource}\"", "\"uid\": \"prom-1\"", 3);
    assert!(!check_dashboard(&hardcoded, &exposed).is_empty());
    let unfiltered = DASHBOARD.replace("sdm_mode{instance=~\\\"$instance\\\", ", "sdm_mode{");
    assert_ne!(unfiltered, DASHBOARD);
    let problems = check_dashboard(&unfiltered, &exposed);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("not filtered by instance")),
        "{problems:?}"
    );
    let bad_var = DASHBOARD.replace(
        "label_values(sdm_mode, instance)",
        "label_values(sdm_mode, hostname)",
    );
    assert!(check_dashboard(&bad_var, &exposed)
        .iter()
        .any(|p| p.contains("has no label hostname")));
}
