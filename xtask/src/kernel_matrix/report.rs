//! The results of one kernel read off its console, and the matrix as a
//! Markdown table.

use std::{collections::BTreeMap, time::Duration};

/// One column of the matrix: a kernel and its results.
pub(super) struct KernelRow {
    pub(super) release: String,
    /// How it ran: "host", or the Debian package it came from.
    pub(super) how: String,
    pub(super) checks: BTreeMap<String, String>,
    pub(super) verifier: BTreeMap<String, String>,
    /// The same statistics as numbers, for verifier.json.
    pub(super) stats: BTreeMap<String, ProgramStat>,
    pub(super) passed: bool,
    pub(super) took: Duration,
}

/// What the verifier said of one program on one kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProgramStat {
    /// Instructions processed; None where the kernel does not tell (5.10).
    pub(super) insns: Option<u64>,
    pub(super) ms: Option<u64>,
    pub(super) ok: bool,
}

impl KernelRow {
    pub(super) fn failed(release: &str) -> Self {
        Self {
            release: release.to_owned(),
            how: "did not finish".to_owned(),
            checks: BTreeMap::new(),
            verifier: BTreeMap::new(),
            stats: BTreeMap::new(),
            passed: false,
            took: Duration::ZERO,
        }
    }

    pub(super) fn failure(&self) -> Option<String> {
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|(_, v)| !v.starts_with("ok"))
            .map(|(k, _)| k.as_str())
            .collect();
        if self.passed && failed.is_empty() {
            return None;
        }
        Some(format!(
            "{}: {}",
            self.release,
            if failed.is_empty() {
                "the smoke binary failed".to_owned()
            } else {
                format!("failed: {}", failed.join(", "))
            }
        ))
    }
}

/// Reads the smoke binary's lines (`smoke: ...`, `verifier: ...`, the test
/// results) out of a console or a test run's output.
pub(super) fn parse_results(
    release: &str,
    how: String,
    text: &str,
    exit_ok: bool,
    took: Duration,
) -> KernelRow {
    let mut checks = BTreeMap::new();
    let mut verifier = BTreeMap::new();
    let mut stats = BTreeMap::new();
    for line in text.lines() {
        if let Some(at) = line.find("smoke: ") {
            let rest = &line[at + "smoke: ".len()..];
            if let Some((check, outcome)) = rest.split_once(": ") {
                let verdict = if outcome.starts_with("ok") {
                    "ok"
                } else {
                    "FAILED"
                };
                checks.insert(check.trim().to_owned(), verdict.to_owned());
            }
        }
        if let Some(at) = line.find("verifier: ") {
            let rest = &line[at + "verifier: ".len()..];
            let mut words = rest.split_whitespace();
            if let Some(program) = words.next() {
                let fields: BTreeMap<&str, &str> =
                    words.filter_map(|w| w.split_once('=')).collect();
                let insns = match fields.get("insns").copied() {
                    Some("n/a") | None => "n/a".to_owned(),
                    Some(n) => format!("{n} insns"),
                };
                let cell = format!(
                    "{insns}, {} ms{}",
                    fields.get("ms").copied().unwrap_or("?"),
                    if fields.get("ok") == Some(&"true") {
                        ""
                    } else {
                        " REFUSED"
                    }
                );
                verifier.insert(program.to_owned(), cell);
                stats.insert(
                    program.to_owned(),
                    ProgramStat {
                        insns: fields.get("insns").and_then(|n| n.parse().ok()),
                        ms: fields.get("ms").and_then(|n| n.parse().ok()),
                        ok: fields.get("ok") == Some(&"true"),
                    },
                );
            }
        }
        for (test, check) in [
            ("every_program_passes_this_kernels_verifier", "verifier"),
            (
                "check_names_the_program_the_verifier_refuses_and_fails",
                "check-refuses",
            ),
        ] {
            if line.contains(&format!("test {test} ... "))
                || line.contains(&format!("test {test} "))
            {
                if line.trim_end().ends_with("ok") {
                    checks.insert(check.to_owned(), "ok".to_owned());
                } else if line.contains("FAILED") {
                    checks.insert(check.to_owned(), "FAILED".to_owned());
                }
            }
        }
    }
    // The verifier test prints its lines between "test ... " and "ok".
    if !checks.contains_key("verifier") && !verifier.is_empty() {
        let all_ok = verifier.values().all(|v| !v.contains("REFUSED"));
        checks.insert(
            "verifier".to_owned(),
            if all_ok { "ok" } else { "FAILED" }.to_owned(),
        );
    }
    KernelRow {
        release: release.to_owned(),
        how,
        checks,
        verifier,
        stats,
        passed: exit_ok,
        took,
    }
}

/// The matrix as Markdown: kernel x check, then the verifier's statistics.
pub(super) fn render(rows: &[KernelRow]) -> String {
    let mut checks: Vec<String> = Vec::new();
    let mut programs: Vec<String> = Vec::new();
    for r in rows {
        for c in r.checks.keys() {
            if !checks.contains(c) {
                checks.push(c.clone());
            }
        }
        for p in r.verifier.keys() {
            if !programs.contains(p) {
                programs.push(p.clone());
            }
        }
    }
    let header = |first: &str| {
        let mut s = format!("| {first} |");
        for r in rows {
            s.push_str(&format!(" {} |", r.release));
        }
        s.push('\n');
        s.push_str(&"|---".repeat(rows.len() + 1));
        s.push_str("|\n");
        s
    };
    let mut out = String::from("\n### Kernel matrix: smoke lab\n\n");
    out.push_str(&header("check"));
    for c in &checks {
        out.push_str(&format!("| {c} |"));
        for r in rows {
            out.push_str(&format!(
                " {} |",
                r.checks.get(c).map_or("not run", String::as_str)
            ));
        }
        out.push('\n');
    }
    out.push_str("| source |");
    for r in rows {
        out.push_str(&format!(" {} |", r.how));
    }
    out.push_str("\n| time |");
    for r in rows {
        out.push_str(&format!(" {} s |", r.took.as_secs()));
    }
    out.push_str(
        "\n\n### Kernel matrix: verifier statistics (instructions processed, load time)\n\n",
    );
    out.push_str(&header("program"));
    for p in &programs {
        out.push_str(&format!("| {p} |"));
        for r in rows {
            out.push_str(&format!(
                " {} |",
                r.verifier.get(p).map_or("-", String::as_str)
            ));
        }
        out.push('\n');
    }
    out.push_str(
        "\nTimes in the guests are under qemu's TCG emulation, 10 to 50 times slower than \
         hardware; 5.10 reports no instruction count for a loaded program (verified_insns \
         came in 5.16).\n",
    );
    out
}

/// The verifier's statistics of every kernel as JSON (verifier.json, read
/// by the benchmark's figure 11), with the checkout they were measured on.
pub(super) fn verifier_json(rows: &[KernelRow], commit: &str, dirty: bool) -> serde_json::Value {
    let kernels: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let programs: Vec<serde_json::Value> = r
                .stats
                .iter()
                .map(|(name, s)| {
                    serde_json::json!({
                        "program": name, "insns": s.insns, "ms": s.ms, "ok": s.ok,
                    })
                })
                .collect();
            serde_json::json!({
                "release": r.release,
                "how": r.how,
                "host": r.how == HOST,
                "programs": programs,
            })
        })
        .collect();
    serde_json::json!({ "commit": commit, "dirty": dirty, "kernels": kernels })
}

/// How the host's own row says where it ran.
pub(super) const HOST: &str = "this machine";
