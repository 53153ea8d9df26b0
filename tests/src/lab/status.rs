//! Reading the agent's answers: `status --json` fields, probe results and
//! Prometheus text.

use super::*;

/// The result string of a probe outcome ("ok", "timeout", "eperm", ...).
pub fn result(v: &Value) -> &str {
    v["result"].as_str().unwrap_or("?")
}

/// Whether an outcome is what the enforcer does to a denied flow: dropped
/// packets (a timeout) or, at connect/sendto in enforce mode, EPERM.
pub fn denied(v: &Value) -> bool {
    matches!(result(v), "timeout" | "eperm")
}

/// The `dns` entry of a hostname in `status --json`: its addresses.
pub fn dns_addresses(status: &Value, host: &str) -> Vec<String> {
    status["dns"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["hostname"] == host)
        .and_then(|d| d["addresses"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The `dns` entry's failure count of a hostname.
pub fn dns_failures(status: &Value, host: &str) -> u64 {
    status["dns"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["hostname"] == host)
        .and_then(|d| d["failures"].as_u64())
        .unwrap_or_else(|| panic!("no dns entry for {host} in {status}"))
}

/// The rule called `name` in `status --json`.
pub fn rule<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| {
            let names: Vec<&Value> = status["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| &r["name"])
                .collect();
            panic!("no rule {name} in status; rules: {names:?}")
        })
}

/// Packets a rule allowed in one direction ("egress" | "ingress").
pub fn rule_packets(status: &Value, name: &str, dir: &str) -> u64 {
    rule(status, name)[dir]["packets"].as_u64().unwrap_or(0)
}

/// Denied packets for (mode, direction, reason).
pub fn denied_packets(status: &Value, mode: &str, dir: &str, reason: &str) -> u64 {
    denied_field(status, mode, dir, reason, "packets")
}

/// Denied bytes for (mode, direction, reason): a send refused by a socket
/// hook counts a packet of no bytes, the packet programs count each
/// packet's length.
pub fn denied_bytes(status: &Value, mode: &str, dir: &str, reason: &str) -> u64 {
    denied_field(status, mode, dir, reason, "bytes")
}

fn denied_field(status: &Value, mode: &str, dir: &str, reason: &str, field: &str) -> u64 {
    status["denied"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["mode"] == mode && d["direction"] == dir && d["reason"] == reason)
        .filter_map(|d| d[field].as_u64())
        .sum()
}

/// The sum of the samples of a Prometheus metric whose labels include all
/// of `labels`; None when no sample matches.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else {
                continue;
            };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let have = parse_labels(label_text);
        if !labels
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        {
            continue;
        }
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, r)) = rest.split_once("=\"") {
        let mut val = String::new();
        let mut chars = r.char_indices();
        let mut end = r.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((k.trim_start_matches(',').trim().to_owned(), val));
        rest = &r[end..];
    }
    out
}

#[cfg(test)]
mod tests;

/// Whether `text` (an agent's error, a log) says `line N` and not
/// `line N5`: a config error names the line it is on.
pub fn names_line(text: &str, n: usize) -> bool {
    let pat = format!("line {n}");
    text.match_indices(&pat).any(|(i, _)| {
        !text[i + pat.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// The policy generation `status --json` reports (it flips at every
/// applied policy change).
pub fn generation(status: &Value) -> u64 {
    status["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no generation in {status}"))
}
