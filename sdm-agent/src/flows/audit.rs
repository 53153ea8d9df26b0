//! The audit log: one JSON line per new flow, to stdout or a file that
//! is reopened after rotation.

use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::flow::{rfc3339, unix_ms};
use crate::{flows::events::Event, policy::config::AuditConfig};

/// The JSON line written to the audit log for each new flow.
#[derive(Serialize)]
pub(super) struct AuditLine<'a> {
    time: String,
    event: &'static str,
    direction: &'a str,
    proto: &'a str,
    remote: IpAddr,
    port: u16,
    hostname: Option<&'a str>,
    comm: &'a str,
    pid: u32,
    uid: u32,
    cgroup_id: u64,
    verdict: &'a str,
    reason: &'a str,
    local: IpAddr,
    local_port: u16,
    remote_port: u16,
    packets: u64,
}

/// One JSON line (without the newline) for a new flow, from the event that
/// revealed it.
pub fn audit_line(e: &Event, hostname: Option<&str>) -> String {
    let line = AuditLine {
        time: rfc3339(unix_ms(e.time)),
        event: "denied_flow",
        direction: e.direction,
        proto: &e.proto,
        remote: e.remote.to_canonical(),
        port: if e.direction == "ingress" {
            e.local_port
        } else {
            e.remote_port
        },
        hostname,
        comm: &e.comm,
        pid: e.pid,
        uid: e.uid,
        cgroup_id: e.cgroup_id,
        verdict: e.verdict,
        reason: e.reason,
        local: e.local.to_canonical(),
        local_port: e.local_port,
        remote_port: e.remote_port,
        packets: e.packets.max(1),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

pub(super) enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: Option<std::io::BufWriter<std::fs::File>>,
        /// When opening last failed; retried after [`REOPEN_AFTER`].
        failed_at: Option<Instant>,
    },
}

pub(super) const REOPEN_AFTER: Duration = Duration::from_secs(5);

/// Where new flows are written, one JSON line each: standard output, or a
/// file opened for appending (its directory created), reopened after an
/// error. Lines are buffered until [`AuditLog::flush`].
pub struct AuditLog {
    pub(super) sink: Sink,
    buf: Vec<u8>,
    /// Lines that could not be written.
    pub lost: u64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sink {
            Sink::Stdout => f.write_str("AuditLog(stdout)"),
            Sink::File { path, .. } => write!(f, "AuditLog({})", path.display()),
        }
    }
}

impl AuditLog {
    pub fn stdout() -> Self {
        Self {
            sink: Sink::Stdout,
            buf: Vec::new(),
            lost: 0,
        }
    }

    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            sink: Sink::File {
                path: path.into(),
                file: None,
                failed_at: None,
            },
            buf: Vec::new(),
            lost: 0,
        }
    }

    /// `[audit] log`, or standard output.
    pub fn from_config(c: &AuditConfig) -> Self {
        match &c.log {
            Some(p) => Self::file(p),
            None => Self::stdout(),
        }
    }

    /// Queues one line (a newline is added).
    pub fn write_line(&mut self, line: &str) {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
    }

    fn open(path: &Path) -> std::io::Result<std::fs::File> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    /// Writes out the queued lines.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let lines = self.buf.iter().filter(|b| **b == b'\n').count() as u64;
        let buf = std::mem::take(&mut self.buf);
        match &mut self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                if out.write_all(&buf).and_then(|()| out.flush()).is_err() {
                    self.lost += lines;
                }
            }
            Sink::File {
                path,
                file,
                failed_at,
            } => {
                if file.is_none() {
                    if failed_at.is_some_and(|t| t.elapsed() < REOPEN_AFTER) {
                        self.lost += lines;
                        return;
                    }
                    match Self::open(path) {
                        Ok(f) => {
                            if failed_at.take().is_some() {
                                tracing::info!(path = %path.display(), "audit log reopened");
                            }
                            *file = Some(std::io::BufWriter::new(f));
                        }
                        Err(e) => {
                            if failed_at.is_none() {
                                tracing::error!(path = %path.display(), error = %e, "cannot open the audit log ([audit] log); new flows are still stored; retrying");
                            }
                            *failed_at = Some(Instant::now());
                            self.lost += lines;
                            return;
                        }
                    }
                }
                if let Some(f) = file {
                    if let Err(e) = f.write_all(&buf).and_then(|()| f.flush()) {
                        tracing::error!(path = %path.display(), error = %e, "writing the audit log failed; reopening it");
                        *file = None;
                        *failed_at = Some(Instant::now());
                        self.lost += lines;
                    }
                }
            }
        }
    }
}
