//! The one test kit of sdm-egress, shared by the privileged integration
//! tests (`tests/`) and the benchmark (`bench/`):
//!
//! - [`names`]: names unique to the process and call, so that parallel runs
//!   never collide (and, for the benchmark, so that a later run can sweep
//!   what a killed one left: [`sweep`]);
//! - [`guards`]: RAII guards for network namespaces, cgroups, bpffs pins,
//!   child processes and temporary folders, each removed on drop, also
//!   when the owner panics or fails;
//! - [`shell`]: runs a command and returns its output;
//! - [`senders`]: UDP through a raw socket (judged by the packet programs
//!   only) and the flood of ever-new destinations;
//! - [`shield`]: TCP SYNs through a raw socket and a capture of the RSTs and
//!   ICMP unreachables that answer them (the XDP shield's lab check and
//!   benchmark).
//!
//! Every fallible call comes in two forms: `try_x` returns a [`Error`] (the
//! benchmark, with `?`), `x` panics with the same message (a test, which
//! must fail loudly and never skip).

pub mod guards;
pub mod names;
pub mod senders;
pub mod shell;
pub mod shield;
pub mod sweep;

use std::{io, process::ExitStatus};

/// What went wrong in the kit, with the command or path it concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: ExitStatus,
        output: String,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("no ifindex for {dev} in {netns}: {output}")]
    NoIfindex {
        dev: String,
        netns: String,
        output: String,
    },
    #[error("{0}")]
    Agent(String),
    #[error("not running as root: {0}")]
    NotRoot(&'static str),
    #[error("the names of this process carry no owner (names::set_naming was not called with Naming::Owned)")]
    NotSweepable,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An I/O error with what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Unwraps a kit result in a test: panics with the error's message.
pub(crate) fn must<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Fails unless the process runs as root; `why` says what needs it.
pub fn try_require_root(why: &'static str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot(why));
    }
    Ok(())
}

/// Fails the test loudly unless it runs as root.
pub fn require_root() {
    must(try_require_root(
        "the privileged tests need root (run them with `cargo xtask test` as root)",
    ));
}
