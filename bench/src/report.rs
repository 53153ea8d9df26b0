//! What a run found, written as target/bench/results.json and BENCHMARKS.md.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::stats::Summary;

/// How a figure's median is held against its target.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "kind", content = "bound", rename_all = "snake_case")]
pub enum Goal {
    AtMost(f64),
    AtLeast(f64),
    Below(f64),
    /// Decided by the measurement itself (e.g. "the chain falls behind").
    Holds(bool),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Goal::AtMost(b) => value <= b,
            Goal::AtLeast(b) => value >= b,
            Goal::Below(b) => value < b,
            Goal::Holds(ok) => ok,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Measured,
    Skipped,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// The numbering: 1 cost per verdict ... 5 the agent, 6 a gateway at scale.
    pub section: u8,
    /// Stable key for tools reading results.json.
    pub key: String,
    pub name: String,
    pub unit: String,
    pub status: Status,
    pub summary: Option<Summary>,
    /// Absolute numbers behind a ratio, for people.
    pub detail: Option<String>,
    pub target: Option<String>,
    pub goal: Option<Goal>,
    pub met: Option<bool>,
    #[serde(skip)]
    pub decimals: usize,
}

impl Figure {
    pub fn measured(section: u8, key: &str, name: &str, unit: &str, summary: Summary) -> Self {
        Self {
            section,
            key: key.into(),
            name: name.into(),
            unit: unit.into(),
            status: Status::Measured,
            summary: Some(summary),
            detail: None,
            target: None,
            goal: None,
            met: None,
            decimals: 3,
        }
    }

    /// A figure that has no number (yet), with the reason as its detail.
    pub fn missing(section: u8, key: &str, name: &str, status: Status, why: &str) -> Self {
        Self {
            section,
            key: key.into(),
            name: name.into(),
            unit: String::new(),
            status,
            summary: None,
            detail: Some(why.into()),
            target: None,
            goal: None,
            met: None,
            decimals: 3,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn decimals(mut self, d: usize) -> Self {
        self.decimals = d;
        self
    }

    pub fn target(mut self, text: &str, goal: Goal) -> Self {
        self.target = Some(text.into());
        self.goal = Some(goal);
        self.met = self
            .summary
            .as_ref()
            .filter(|s| s.median.is_finite())
            .map(|s| goal.met(s.median));
        self
    }

    /// A target stated for people only, with no pass/fail.
    pub fn note_target(mut self, text: &str) -> Self {
        self.target = Some(text.into());
        self
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_mb: u64,
    pub kernel: String,
    pub os: String,
    pub iptables: String,
    pub nft: String,
    pub iperf3: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        // SAFETY: sysconf has no preconditions.
        let cpus =
            usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(0);
        let memory_mb = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let os = fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default();
        let version = |args: &[&str]| {
            crate::sys::sh(args)
                .map(|s| s.lines().next().unwrap_or_default().trim().to_owned())
                .unwrap_or_else(|_| "not installed".into())
        };
        Self {
            cpu_model,
            cpus,
            memory_mb,
            kernel,
            os,
            iptables: version(&["iptables", "--version"]),
            nft: version(&["nft", "--version"]),
            iperf3: version(&["iperf3", "--version"]),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// What was measured (the checkout's commit).
    pub source: String,
    pub smoke: bool,
    /// UTC, e.g. 2025-01-31T12:00:00Z.
    pub started: String,
    pub duration_secs: f64,
    pub machine: Machine,
    pub params: serde_json::Value,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

const SECTIONS: [&str; 11] = [
    "Cost per verdict (BPF_PROG_TEST_RUN)",
    "Overhead on real traffic",
    "Against iptables and nftables",
    "DNS to enforcement",
    "The agent",
    "A gateway at scale",
    "Connection rate",
    "The kernel's own accounting (bpf_stats)",
    "Port ranges",
    "The XDP shield",
    "Verifier statistics per kernel",
];

fn fmt_num(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    format!("{v:.decimals$}")
}

impl Results {
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
    }

    pub fn write_markdown(&self, path: &Path, method: &str) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        fs::write(path, self.markdown(method)).with_context(|| format!("write {}", path.display()))
    }

    /// The table of the machine and the run.
    fn machine_table(&self, o: &mut String) {
        let m = &self.machine;
        let _ = writeln!(o, "| | |\n|---|---|");
        let _ = writeln!(o, "| Date | {} |", self.started);
        let _ = writeln!(o, "| Source | {} |", self.source);
        let _ = writeln!(o, "| CPU | {} |", m.cpu_model);
        let _ = writeln!(o, "| Cores | {} (logical CPUs online) |", m.cpus);
        let _ = writeln!(o, "| Memory | {} MB |", m.memory_mb);
        let _ = writeln!(o, "| Kernel | {} |", m.kernel);
        let _ = writeln!(o, "| OS | {} |", m.os);
        let _ = writeln!(o, "| Tools | {}; {}; {} |", m.iptables, m.nft, m.iperf3);
        let _ = writeln!(
            o,
            "| Run | {}, {:.0} s |",
            if self.smoke { "smoke" } else { "full" },
            self.duration_secs
        );
        let _ = writeln!(o);
    }

    pub fn markdown(&self, method: &str) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# Benchmarks\n");
        let _ = writeln!(
            o,
            "Written by `cargo xtask bench`{}; rerun it to update this file (see \
             [Reproduce](#reproduce)). Every figure is the median over repeated, interleaved \
             runs of one benchmark run; ratios are taken within a round, so that the drift of a \
             shared machine cancels out.\n",
            if self.smoke {
                " **--smoke** (tiny durations: these numbers mean nothing)"
            } else {
                ""
            }
        );
        self.machine_table(&mut o);
        let _ = writeln!(o, "## Results\n");
        let met = self.figures.iter().filter(|f| f.met == Some(true)).count();
        let missed = self.figures.iter().filter(|f| f.met == Some(false)).count();
        let _ = writeln!(
            o,
            "{met} target(s) met, {missed} missed. Spread: min–max over the rounds, then the \
             interquartile range; n is the number of rounds (or samples, for latencies).\n"
        );
        let _ = writeln!(
            o,
            "| # | Figure | Median | Spread: min–max (IQR), n | Absolute | Target | Met |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|");
        for f in &self.figures {
            figure_row(&mut o, f);
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "Sections: {}.\n", {
            SECTIONS
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{} {}", i + 1, s))
                .collect::<Vec<_>>()
                .join("; ")
        });
        if !self.notes.is_empty() {
            let _ = writeln!(o, "## Notes from this run\n");
            for n in &self.notes {
                let _ = writeln!(o, "- {n}");
            }
            let _ = writeln!(o);
        }
        o.push_str(method);
        o
    }
}

/// One figure's row of the results table.
fn figure_row(o: &mut String, f: &Figure) {
    let (median, spread) = match &f.summary {
        Some(s) => (
            format!("{} {}", fmt_num(s.median, f.decimals), f.unit),
            format!(
                "{}–{} ({}–{}), n={}",
                fmt_num(s.min, f.decimals),
                fmt_num(s.max, f.decimals),
                fmt_num(s.q1, f.decimals),
                fmt_num(s.q3, f.decimals),
                s.n
            ),
        ),
        None => (
            match f.status {
                Status::Skipped => "skipped".into(),
                Status::Measured => "n/a".into(),
            },
            String::new(),
        ),
    };
    let met = match f.met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "",
    };
    let _ = writeln!(
        o,
        "| {} | {} | {} | {} | {} | {} | {} |",
        f.section,
        f.name,
        median.trim(),
        spread,
        f.detail.as_deref().unwrap_or(""),
        f.target.as_deref().unwrap_or(""),
        met
    );
}

/// Now, in UTC, as `YYYY-MM-DDTHH:MM:SSZ` (no date crate needed).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc(secs)
}

/// `2026-05-01T12:00:00Z`: the agent's RFC 3339 formatter, to the second.
fn utc(secs: u64) -> String {
    let with_ms = sdm_agent::flows::flow::rfc3339(secs * 1000);
    format!(
        "{}Z",
        with_ms.trim_end_matches('Z').trim_end_matches(".000")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summarize;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn targets_are_judged_on_the_median() {
        let f = Figure::measured(2, "k", "n", "", summarize(&[0.96, 0.99, 0.98]))
            .target(">= 0.97", Goal::AtLeast(0.97));
        assert_eq!(f.met, Some(true));
        let f = Figure::measured(5, "k", "n", "MB", summarize(&[31.0]))
            .target("< 30 MB", Goal::Below(30.0));
        assert_eq!(f.met, Some(false));
        let f = Figure::missing(4, "k", "n", Status::Skipped, "why").target("x", Goal::AtMost(1.0));
        assert_eq!(f.met, None);
    }

    #[test]
    fn markdown_has_a_row_per_figure() {
        let r = Results {
            source: "commit abc".into(),
            smoke: true,
            started: "2025-01-01T00:00:00Z".into(),
            duration_secs: 1.0,
            machine: Machine::default(),
            params: serde_json::Value::Null,
            figures: vec![
                Figure::measured(1, "a", "fig a", "x", summarize(&[1.0, 2.0])),
                Figure::missing(4, "b", "fig b", Status::Skipped, "later"),
            ],
            notes: vec!["a note".into()],
        };
        let md = r.markdown("## Reproduce\n");
        assert!(md.contains("| 1 | fig a | 1.500 x |"));
        assert!(md.contains("| 4 | fig b | skipped |"));
        assert!(md.contains("- a note"));
    }
}
