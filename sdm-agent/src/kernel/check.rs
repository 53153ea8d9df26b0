//! `sdm-agent check --kernel`: every program of the eBPF object through the
//! running kernel's verifier, with nothing attached and nothing pinned, so
//! that an operator learns before `run` whether this kernel takes them.
//!
//! The programs are loaded exactly as `run` loads them (same object, same
//! loader), only with maps of their own that are dropped again at the end.
//! Verifier statistics: instructions processed come from the kernel's
//! program info (`verified_insns`, Linux 5.16 and later) or, for a refused
//! program, from the verifier log's "processed N insns" line; the time is
//! the wall time of the BPF_PROG_LOAD call, which is the verification.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    programs::{Program, ProgramError},
    Ebpf, EbpfLoader,
};
use serde::Serialize;

/// The test fixture that every verifier refuses (sdm-ebpf/src/refused.rs):
/// built beside the real object, never embedded or loaded by `run`.
pub const REFUSED_FIXTURE: &str = concat!(env!("OUT_DIR"), "/sdm-ebpf-refused");

/// How many of the verifier log's last lines a refusal quotes.
const LOG_TAIL_LINES: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum KernelCheckError {
    #[error("this sdm-agent was built with AYA_BUILD_SKIP=1 and holds no eBPF object; rebuild it with `cargo xtask build`")]
    NoObject,
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The object's maps could not be created: no privileges to use BPF
    /// here, or a kernel without a map type the programs need.
    #[error("creating the object's maps: {0}")]
    Maps(#[source] Box<aya::EbpfError>),
}

impl KernelCheckError {
    /// Whether the error only says that BPF cannot be used from here (no
    /// CAP_BPF/CAP_SYS_ADMIN, a container without it), not that the kernel
    /// refuses the programs.
    pub fn is_permission(&self) -> bool {
        let KernelCheckError::Maps(e) = self else {
            return false;
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return io.raw_os_error() == Some(libc::EPERM);
            }
            if err.to_string().contains("Operation not permitted") {
                return true;
            }
            source = err.source();
        }
        false
    }
}

/// What the verifier said of one program.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ProgramReport {
    pub program: String,
    /// Loaded by the kernel.
    pub ok: bool,
    /// Instructions the verifier processed; None where the kernel does not
    /// report it (program info before 5.16, or a log without the line).
    pub insns: Option<u64>,
    /// Wall time of the load, i.e. of the verification.
    pub verify_ms: u64,
    /// For a refusal: the verifier log's last lines (the reason is among them).
    pub log_tail: Vec<String>,
    /// For a refusal that is no verifier verdict (e.g. a missing program type).
    pub error: Option<String>,
}

/// The whole check: the kernel and one report per program.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub kernel: String,
    pub programs: Vec<ProgramReport>,
}

impl KernelReport {
    /// Every program loaded.
    pub fn all_ok(&self) -> bool {
        self.programs.iter().all(|p| p.ok)
    }

    /// The report as the lines `check --kernel` prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "kernel {}: {} programs through the verifier\n",
            self.kernel,
            self.programs.len()
        );
        let width = self
            .programs
            .iter()
            .map(|p| p.program.len())
            .max()
            .unwrap_or(0);
        for p in &self.programs {
            let insns = p
                .insns
                .map_or_else(|| "insns n/a".to_owned(), |n| format!("{n} insns"));
            let verdict = if p.ok { "ok" } else { "REFUSED" };
            out.push_str(&format!(
                "  {:width$}  {verdict:7}  {insns:>14}  {:>6} ms\n",
                p.program, p.verify_ms
            ));
            if let Some(e) = &p.error {
                out.push_str(&format!("      {e}\n"));
            }
            for line in &p.log_tail {
                out.push_str(&format!("      | {line}\n"));
            }
        }
        out
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Loads every program of `object` into the running kernel, one at a time,
/// and reports each; attaches and pins nothing.
pub fn verify(object: &[u8]) -> Result<KernelReport, KernelCheckError> {
    if object.is_empty() {
        return Err(KernelCheckError::NoObject);
    }
    let mut ebpf = EbpfLoader::new()
        .load(object)
        .map_err(|e| KernelCheckError::Maps(Box::new(e)))?;
    let mut names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
    names.sort();
    let programs = names
        .iter()
        .map(|name| verify_program(&mut ebpf, name))
        .collect();
    Ok(KernelReport {
        kernel: kernel_release(),
        programs,
    })
}

/// Reads an object file to verify in place of the embedded one.
pub fn read_object(path: &std::path::Path) -> Result<Vec<u8>, KernelCheckError> {
    std::fs::read(path).map_err(|source| KernelCheckError::Read {
        path: path.to_owned(),
        source,
    })
}

fn verify_program(ebpf: &mut Ebpf, name: &str) -> ProgramReport {
    let mut report = ProgramReport {
        program: name.to_owned(),
        ok: false,
        insns: None,
        verify_ms: 0,
        log_tail: Vec::new(),
        error: None,
    };
    let Some(program) = ebpf.program_mut(name) else {
        report.error = Some("not in the object".to_owned());
        return report;
    };
    let start = Instant::now();
    let loaded = load(program);
    report.verify_ms = millis(start.elapsed());
    match loaded {
        Ok(()) => {
            report.ok = true;
            report.insns = program
                .info()
                .ok()
                .and_then(|info| info.verified_instruction_count())
                .map(u64::from);
        }
        Err(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => {
            let log = verifier_log.to_string();
            report.insns = processed_insns(&log);
            report.log_tail = log_tail(&log);
            report.error = Some(format!("BPF_PROG_LOAD: {io_error}"));
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    report
}

/// Loads one program by its type; the agent's object holds only these.
fn load(program: &mut Program) -> Result<(), ProgramError> {
    match program {
        Program::CgroupSkb(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSockopt(p) => p.load(),
        Program::SchedClassifier(p) => p.load(),
        Program::Xdp(p) => p.load(),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// "processed 114110 insns (limit 1000000) ..." in a verifier log.
fn processed_insns(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|line| {
        let rest = line.trim().strip_prefix("processed ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The last non-empty lines of a verifier log.
fn log_tail(log: &str) -> Vec<String> {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[from..].iter().map(|l| (*l).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "0: R1=ctx() R10=fp0\n\
        ; some source\n\
        combined stack size of 2 calls is 544. Too large\n\
        verification time 2878112 usec\n\
        stack depth 456+0+0+32+40\n\
        processed 114110 insns (limit 1000000) max_states_per_insn 38 total_states 6203\n\n";

    #[test]
    fn reads_the_processed_instructions_of_a_log() {
        assert_eq!(processed_insns(LOG), Some(114_110));
        assert_eq!(processed_insns("no stats here"), None);
    }

    #[test]
    fn quotes_the_last_lines_with_the_reason() {
        let tail = log_tail(LOG);
        assert_eq!(tail.len(), LOG_TAIL_LINES.min(6));
        assert!(tail.iter().any(|l| l.contains("combined stack size")));
        assert_eq!(tail.last().map(|l| l.starts_with("processed")), Some(true));
    }

    #[test]
    fn renders_refusals_with_their_log() {
        let report = KernelReport {
            kernel: "5.10.0-32-cloud-amd64".into(),
            programs: vec![
                ProgramReport {
                    program: "sdm_egress".into(),
                    ok: false,
                    insns: Some(114_110),
                    verify_ms: 2878,
                    log_tail: log_tail(LOG),
                    error: Some("BPF_PROG_LOAD: Permission denied (os error 13)".into()),
                },
                ProgramReport {
                    program: "sdm_sock_create".into(),
                    ok: true,
                    insns: None,
                    verify_ms: 1,
                    log_tail: vec![],
                    error: None,
                },
            ],
        };
        let text = report.render();
        assert!(!report.all_ok());
        assert!(text.contains("sdm_egress       REFUSED"), "{text}");
        assert!(
            text.contains("| combined stack size of 2 calls is 544"),
            "{text}"
        );
        assert!(text.contains("insns n/a"), "{text}");
    }
}
