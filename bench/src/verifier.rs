//! Figure 11: the verifier's statistics per kernel. The host's kernel is
//! measured here (every program of the object loaded, nothing attached:
//! `sdm_agent::kernel::check::verify`, which reads
//! `bpf_prog_info.verified_insns`); Debian's 5.10, 6.1 and 6.12 come from
//! the kernel matrix's `verifier.json` (`cargo xtask kernels`, which
//! `cargo xtask bench` runs first unless that file is of this commit).
//!
//! The bound is the verifier's limit on instructions processed per program,
//! BPF_COMPLEXITY_LIMIT_INSNS
//! (<https://github.com/torvalds/linux/blob/v6.12/include/linux/bpf.h>):
//! a program that needs more is refused, so headroom = limit / processed.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use sdm_agent::kernel::{check, dataplane};
use serde_json::Value;

use crate::report::{Figure, Goal, Status};

/// BPF_COMPLEXITY_LIMIT_INSNS.
pub const LIMIT: u64 = 1_000_000;

/// What the verifier said of one program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    insns: Option<u64>,
    ms: Option<u64>,
    ok: bool,
}

/// One kernel's column.
#[derive(Clone, Debug)]
struct Kernel {
    release: String,
    how: String,
    programs: BTreeMap<String, Stat>,
}

impl Kernel {
    /// The program with the most instructions processed, and that count.
    fn largest(&self) -> Option<(&str, u64)> {
        self.programs
            .iter()
            .filter_map(|(name, s)| Some((name.as_str(), s.insns?)))
            .max_by_key(|(_, n)| *n)
    }

    fn refused(&self) -> Vec<&str> {
        self.programs
            .iter()
            .filter(|(_, s)| !s.ok)
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// The host's kernel, measured now.
fn host() -> Result<Kernel> {
    let report = check::verify(dataplane::EBPF_OBJECT).context("load every program")?;
    Ok(Kernel {
        release: report.kernel,
        how: "this machine, measured by this run".into(),
        programs: report
            .programs
            .into_iter()
            .map(|p| {
                let stat = Stat {
                    insns: p.insns,
                    ms: Some(p.verify_ms),
                    ok: p.ok,
                };
                (p.program, stat)
            })
            .collect(),
    })
}

/// The matrix's guests (its host row is this machine, measured by
/// [`host`] instead), and the checkout they were measured on.
fn matrix(v: &Value) -> (String, Vec<Kernel>) {
    let source = format!(
        "commit {}{}",
        v["commit"]
            .as_str()
            .map_or("unknown", |c| &c[..c.len().min(7)]),
        if v["dirty"] == true {
            " with uncommitted changes"
        } else {
            ""
        }
    );
    let kernels = v["kernels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|k| k["host"] != true)
        .map(|k| Kernel {
            release: k["release"].as_str().unwrap_or("?").to_owned(),
            how: k["how"].as_str().unwrap_or("").to_owned(),
            programs: k["programs"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let stat = Stat {
                        insns: p["insns"].as_u64(),
                        ms: p["ms"].as_u64(),
                        ok: p["ok"] == true,
                    };
                    (p["program"].as_str().unwrap_or("?").to_owned(), stat)
                })
                .collect(),
        })
        .collect();
    (source, kernels)
}

/// Measures the host, reads the matrix, pushes one figure per kernel and
/// returns the section of BENCHMARKS.md with the table per program.
pub fn run(figs: &mut Vec<Figure>, notes: &mut Vec<String>) -> Result<String> {
    let mut kernels = vec![host()?];
    let path = std::env::var_os("SDM_KERNEL_MATRIX_JSON").map(PathBuf::from);
    let json = path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let source = match &json {
        Some(v) => {
            let (source, guests) = matrix(v);
            kernels.extend(guests);
            Some(source)
        }
        None => {
            notes.push(
                "Figure 11: no kernel matrix statistics (target/kernel-matrix/verifier.json): \
                 only this machine's kernel is shown; `cargo xtask kernels` adds the others."
                    .into(),
            );
            None
        }
    };
    for k in &kernels {
        figs.push(figure(k));
    }
    Ok(section(&kernels, source.as_deref()))
}

/// The largest count of one kernel against the limit.
fn figure(k: &Kernel) -> Figure {
    let key = format!("verifier.max_insns.{}", k.release);
    let refused = k.refused();
    let loaded = format!(
        "{} programs, {}",
        k.programs.len(),
        if refused.is_empty() {
            "all loaded".to_owned()
        } else {
            format!("REFUSED: {}", refused.join(", "))
        }
    );
    let target = "< 1,000,000 (the verifier's limit), every program loaded";
    let Some((program, n)) = k.largest() else {
        let mut f = Figure::missing(
            11,
            &key,
            &format!(
                "11 largest verifier instruction count, kernel {}",
                k.release
            ),
            Status::Measured,
            &format!(
                "the kernel reports no count (bpf_prog_info.verified_insns came in 5.16); {loaded}"
            ),
        )
        .note_target(target);
        f.met = Some(refused.is_empty() && !k.programs.is_empty());
        return f;
    };
    Figure::measured(
        11,
        &key,
        &format!(
            "11 largest verifier instruction count, kernel {} ({program})",
            k.release
        ),
        "insns",
        crate::stats::summarize(&[n as f64]),
    )
    .detail(format!(
        "headroom {:.1}× under the limit; {loaded}",
        LIMIT as f64 / n as f64
    ))
    .decimals(0)
    .target(target, Goal::Holds(n < LIMIT && refused.is_empty()))
}

fn cell(s: Option<&Stat>) -> String {
    let Some(s) = s else {
        return "-".into();
    };
    let insns = s.insns.map_or_else(
        || "n/a".to_owned(),
        |n| {
            format!(
                "{} ({:.0}×)",
                crate::group(n as usize),
                LIMIT as f64 / n as f64
            )
        },
    );
    let ms = s.ms.map_or_else(String::new, |m| format!(", {m} ms"));
    format!("{insns}{ms}{}", if s.ok { "" } else { " REFUSED" })
}

/// The table: program × kernel.
fn section(kernels: &[Kernel], source: Option<&str>) -> String {
    let mut o = String::from("## Verifier statistics per kernel\n\n");
    let _ = writeln!(
        o,
        "Figure 11. Instructions the verifier processed to load each program (with the \
         headroom under its limit of 1,000,000, `BPF_COMPLEXITY_LIMIT_INSNS`: limit / \
         processed) and the time of the load. The first kernel is this machine's, measured by \
         this run; {}. Load times in the guests are under qemu's TCG emulation, 10 to 50 \
         times slower than hardware; 5.10 reports no count (`verified_insns` came in 5.16).\n",
        match source {
            Some(s) => format!(
                "the others come from the kernel matrix (`cargo xtask kernels`: Debian's cloud \
                 kernels booted under qemu) of {s}"
            ),
            None => "the kernel matrix's were not available".to_owned(),
        }
    );
    let mut programs: Vec<&str> = kernels
        .iter()
        .flat_map(|k| k.programs.keys().map(String::as_str))
        .collect();
    programs.sort_unstable();
    programs.dedup();
    o.push_str("| program |");
    for k in kernels {
        let _ = write!(o, " {} |", k.release);
    }
    let _ = writeln!(o, "\n|---{}|", "|---".repeat(kernels.len()));
    for p in programs {
        let _ = write!(o, "| {p} |");
        for k in kernels {
            let _ = write!(o, " {} |", cell(k.programs.get(p)));
        }
        o.push('\n');
    }
    o.push_str("| source |");
    for k in kernels {
        let _ = write!(o, " {} |", k.how);
    }
    o.push_str("\n\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json() -> Value {
        serde_json::json!({
            "commit": "0123456789abcdef", "dirty": false,
            "kernels": [
                {"release": "6.18.1", "how": "this machine", "host": true, "programs": []},
                {"release": "5.10.0-32-cloud-amd64", "how": "pkg 5.10", "host": false, "programs": [
                    {"program": "sdm_egress", "insns": null, "ms": 900, "ok": true}]},
                {"release": "6.1.0-50-cloud-amd64", "how": "pkg 6.1", "host": false, "programs": [
                    {"program": "sdm_egress", "insns": 64665, "ms": 237, "ok": true},
                    {"program": "sdm_xdp", "insns": 9476, "ms": 47, "ok": true}]}
            ]
        })
    }

    #[test]
    fn matrix_rows_become_figures_against_the_limit() {
        let (source, kernels) = matrix(&json());
        assert_eq!(source, "commit 0123456");
        assert_eq!(kernels.len(), 2, "the matrix's host row is left out");
        let f = figure(&kernels[1]);
        assert_eq!(f.met, Some(true));
        assert!(f.name.contains("(sdm_egress)"), "{}", f.name);
        assert_eq!(f.summary.as_ref().map(|s| s.median), Some(64665.0));
        let old = figure(&kernels[0]);
        assert!(old.summary.is_none() && old.met == Some(true), "{old:?}");
        let mut over = kernels[1].clone();
        over.programs.get_mut("sdm_xdp").unwrap().insns = Some(LIMIT);
        assert_eq!(
            figure(&over).met,
            Some(false),
            "at the limit the kernel refuses"
        );
        let mut refused = kernels[1].clone();
        refused.programs.get_mut("sdm_xdp").unwrap().ok = false;
        assert_eq!(figure(&refused).met, Some(false));
    }

    #[test]
    fn the_table_has_a_row_per_program_and_the_headroom() {
        let (source, kernels) = matrix(&json());
        let md = section(&kernels, Some(&source));
        assert!(
            md.contains("| sdm_egress | n/a, 900 ms | 64,665 (15×), 237 ms |"),
            "{md}"
        );
        assert!(md.contains("| sdm_xdp | - | 9,476 (106×), 47 ms |"), "{md}");
    }
}
