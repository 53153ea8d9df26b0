//! Figure 8: the kernel's own accounting of each attached program on the
//! real-traffic workloads of figures 2, 3 and 7.
//!
//! With `kernel.bpf_stats_enabled` on, the kernel times every run of
//! every program (`run_cnt`, `run_time_ns` in `bpf_prog_info`, read with
//! BPF_OBJ_GET_INFO_BY_FD): see `__bpf_prog_run` in
//! <https://github.com/torvalds/linux/blob/v6.1/include/linux/filter.h>.
//! Timing each run costs two clock reads, so the accounting is on only for
//! extra passes of the same workloads after the timed rounds, never during
//! them, and [`StatsOn`] switches it off again when it drops (also on an
//! error or Ctrl-C, which only sets a flag).

use std::{
    collections::BTreeMap,
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{
    sys::{enable_stats, Stats},
    Ebpf,
};
use sdm_agent::kernel::dataplane::ATTACHMENTS;

use crate::{
    report::{Figure, Status},
    stats::summarize,
};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The kernel's accounting on, until dropped.
///
/// Preferably through BPF_ENABLE_STATS (Linux 5.8+): the same switch as
/// the sysctl, held by a file descriptor, so the kernel switches it off
/// when the last holder closes it, even if the benchmark is killed, and
/// two runs at once never undo each other (`bpf_enable_runtime_stats` in
/// <https://github.com/torvalds/linux/blob/v6.1/kernel/bpf/syscall.c>).
/// Otherwise `kernel.bpf_stats_enabled = 1`, and its previous value back
/// on drop.
pub enum StatsOn {
    /// Held, not read: the accounting is on while it is open.
    Fd {
        _held: OwnedFd,
    },
    Sysctl {
        path: PathBuf,
        previous: String,
    },
}

impl StatsOn {
    pub fn try_new() -> Result<Self> {
        match enable_stats(Stats::RunTime) {
            Ok(fd) => Ok(Self::Fd { _held: fd }),
            Err(e) => Self::at(Path::new(SYSCTL))
                .with_context(|| format!("BPF_ENABLE_STATS failed too: {e}")),
        }
    }

    /// `kernel.bpf_stats_enabled = 1` through the sysctl file at `path`
    /// (tests use a plain file).
    fn at(path: &Path) -> Result<Self> {
        let previous = fs::read_to_string(path)
            .with_context(|| {
                format!(
                    "read {} (kernel.bpf_stats_enabled, Linux 5.1+)",
                    path.display()
                )
            })?
            .trim()
            .to_owned();
        fs::write(path, "1").with_context(|| format!("write 1 to {}", path.display()))?;
        Ok(Self::Sysctl {
            path: path.to_owned(),
            previous,
        })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        // The Fd variant: closing the descriptor is all it takes.
        if let Self::Sysctl { path, previous } = self {
            if let Err(e) = fs::write(&*path, &*previous) {
                eprintln!(
                    "sdm-bench: could not restore {} to {previous}: {e}",
                    path.display()
                );
            }
        }
    }
}

/// Runs and nanoseconds so far of each attached program, by name.
pub type Counts = BTreeMap<&'static str, (u64, u64)>;

/// The kernel's counters of every program `attach` attaches (whatever this
/// build's list holds) that is loaded in `ebpf`.
pub fn snapshot(ebpf: &Ebpf) -> Result<Counts> {
    let mut counts = Counts::new();
    for a in &ATTACHMENTS {
        let Some(prog) = ebpf.program(a.program) else {
            continue;
        };
        let info = prog
            .info()
            .with_context(|| format!("BPF_OBJ_GET_INFO_BY_FD of {}", a.program))?;
        let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
        counts.insert(a.program, (info.run_count(), ns));
    }
    Ok(counts)
}

/// Per program: ns per run of each pass, and the runs of all passes;
/// and each pass's differences (runs, ns) of every program.
#[derive(Default)]
pub struct Samples {
    pub per_prog: BTreeMap<&'static str, (Vec<f64>, u64)>,
    pub passes: Vec<Counts>,
}

/// What one workload repeats (a transaction, a connection), counted by the
/// runs of a program that runs exactly once for each.
#[derive(Clone, Copy)]
pub struct Unit {
    pub what: &'static str,
    pub counted_by: &'static str,
}

impl Samples {
    /// Adds one pass: the difference of two snapshots. A program that did
    /// not run in the pass is listed with no sample.
    pub fn add(&mut self, before: &Counts, after: &Counts) {
        let mut pass = Counts::new();
        for (name, &(cnt, ns)) in after {
            let (cnt0, ns0) = before.get(name).copied().unwrap_or((0, 0));
            let (runs, ns) = (cnt.saturating_sub(cnt0), ns.saturating_sub(ns0));
            pass.insert(name, (runs, ns));
            let entry = self.per_prog.entry(name).or_default();
            if runs > 0 {
                entry.0.push(ns as f64 / runs as f64);
                entry.1 += runs;
            }
        }
        self.passes.push(pass);
    }

    /// All programs' time per `unit`, one sample per pass, and each
    /// program's runs per unit over all passes.
    fn per_unit(&self, unit: Unit) -> (Vec<f64>, Vec<(&'static str, f64)>) {
        let per_pass = self
            .passes
            .iter()
            .filter_map(|pass| {
                let units = pass.get(unit.counted_by).map_or(0, |c| c.0);
                let ns: u64 = pass.values().map(|c| c.1).sum();
                (units > 0).then(|| ns as f64 / units as f64)
            })
            .collect();
        let units = self.per_prog.get(unit.counted_by).map_or(0, |p| p.1);
        let runs = ATTACHMENTS
            .iter()
            .filter_map(|a| {
                let runs = self.per_prog.get(a.program)?.1;
                (runs > 0 && units > 0).then(|| (a.program, runs as f64 / units as f64))
            })
            .collect();
        (per_pass, runs)
    }

    /// The row of all programs' time per unit of the workload.
    fn total_row(&self, key: &str, workload: &str, unit: Unit) -> Figure {
        let (per_pass, runs) = self.per_unit(unit);
        let runs: Vec<String> = runs
            .iter()
            .map(|(name, r)| format!("{name} {r:.2}"))
            .collect();
        Figure::measured(
            8,
            &format!("bpf_stats.{key}.all"),
            &format!(
                "all attached programs, {workload}: kernel time per {}",
                unit.what
            ),
            "ns",
            summarize(&per_pass),
        )
        .decimals(0)
        .detail(format!("runs per {}: {}", unit.what, runs.join(", ")))
        .note_target("none (diagnostic)")
    }

    /// A diagnostic row of all programs' time per `unit`, then one per
    /// program that ran, in attach order; the ones that never ran are named
    /// in the last row's detail.
    pub fn figures(&self, key: &str, workload: &str, unit: Unit, figs: &mut Vec<Figure>) {
        if self.per_prog.get(unit.counted_by).is_some_and(|p| p.1 > 0) {
            figs.push(self.total_row(key, workload, unit));
        }
        let mut idle = Vec::new();
        for a in &ATTACHMENTS {
            let Some((per_run, runs)) = self.per_prog.get(a.program) else {
                continue;
            };
            if *runs == 0 {
                idle.push(a.program);
                continue;
            }
            figs.push(
                Figure::measured(
                    8,
                    &format!("bpf_stats.{key}.{}", a.program),
                    &format!("{}, {workload}: kernel time per run", a.program),
                    "ns",
                    summarize(per_run),
                )
                .decimals(0)
                .detail(format!(
                    "{} runs in {} passes (run_cnt){}",
                    crate::group(*runs as usize),
                    per_run.len(),
                    // A program that runs once per socket, on a workload
                    // that makes one socket per pass: a cold run.
                    if *runs <= per_run.len() as u64 {
                        "; once per pass: a cold start, not a per-packet cost"
                    } else {
                        ""
                    }
                ))
                .note_target("none (diagnostic)"),
            );
        }
        let mine = format!("bpf_stats.{key}.");
        if !figs.iter().any(|f| f.key.starts_with(&mine)) {
            figs.push(missing(
                key,
                workload,
                &anyhow::anyhow!("no attached program ran during the passes"),
            ));
            return;
        }
        if !idle.is_empty() {
            if let Some(last) = figs.last_mut().filter(|f| f.key.starts_with(&mine)) {
                let d = last.detail.take().unwrap_or_default();
                last.detail = Some(format!("{d}; did not run: {}", idle.join(", ")));
            }
        }
    }
}

/// The row that says why figure 8 has no numbers for a workload.
pub fn missing(key: &str, workload: &str, why: &anyhow::Error) -> Figure {
    Figure::missing(
        8,
        &format!("bpf_stats.{key}"),
        &format!("{workload}: kernel time per run"),
        Status::Skipped,
        &format!("{why:#}"),
    )
}

/// `passes` times: snapshots every instance, runs the workload once,
/// snapshots again; returns the samples of each instance (in order). Only
/// while the kernel's accounting is on (`_on`).
pub fn measure(
    _on: &StatsOn,
    instances: &[&Ebpf],
    passes: usize,
    mut workload: impl FnMut() -> Result<()>,
) -> Result<Vec<Samples>> {
    let mut samples: Vec<Samples> = instances.iter().map(|_| Samples::default()).collect();
    for _ in 0..passes {
        crate::sys::check_interrupted()?;
        let before = instances
            .iter()
            .map(|e| snapshot(e))
            .collect::<Result<Vec<_>>>()?;
        workload()?;
        for ((e, b), s) in instances.iter().zip(&before).zip(&mut samples) {
            s.add(b, &snapshot(e)?);
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests;
