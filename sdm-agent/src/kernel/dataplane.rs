//! The kernel side as the agent sees it: loading the programs, pinning
//! maps and links under the pin root, attaching to a cgroup, adopting what
//! an earlier agent left, and reading and writing the maps.
//!
//! Pin layout (default root /sys/fs/bpf/sdm):
//!   maps/<SDM_...>        every map, so enforcement, policy and counters
//!                         outlive the agent
//!   links/egress|ingress  the cgroup links; while they are pinned the
//!                         programs stay attached (links/setsockopt only
//!                         while the backstop is on; its tc filters are
//!                         not pinned: see backstop.rs)
//! and /run/sdm-agent/attach.json (see [`AttachRecord`]) says which cgroup
//! they are attached to and which object they run.

//!
//! By concern: `load` the object and its maps, [`attach`]
//! to a cgroup (and the [`AttachRecord`]), `pins` (the [`Layout`],
//! bpffs, `detach`), [`Maps`] (every pinned map, typed) and
//! [`test_run`] (a program on a crafted packet). Here: the embedded
//! object, its fingerprint, and the error type they share.

mod attach;
mod capacity;
mod load;
mod maps;
mod pins;
mod test_run;

#[cfg(test)]
mod tests;

use std::{io, path::Path, path::PathBuf};

pub(crate) use self::pins::detach_link_now;
pub use self::{
    attach::{attach, AttachOutcome, AttachRecord, Attachment, ATTACHMENTS},
    capacity::pinned_rule_capacity,
    load::{load, program},
    maps::Maps,
    pins::{detach, ensure_bpffs, Layout, DEFAULT_PIN_ROOT, DEFAULT_RUN_DIR},
    test_run::{test_run, test_run_fd},
};

/// The eBPF object built by build.rs (aya-build), embedded in the binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sdm-ebpf"));

/// What went wrong in the dataplane, with the path, map or program it
/// concerns.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("this sdm-agent was built with AYA_BUILD_SKIP=1 and holds no eBPF object; rebuild it with `cargo xtask build`")]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: String,
        source: Box<aya::maps::MapError>,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },
    #[error("link {path}: {source}")]
    Link {
        path: PathBuf,
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("cgroup: {0}")]
    Cgroup(#[source] Box<crate::kernel::cgroup::CgroupError>),
    #[error("nothing is pinned under {0}: is the agent attached (sdm-agent run)?")]
    NotAttached(PathBuf),
    #[error("the maps pinned under {root} have layout {found}, this agent uses {expected}: run `sdm-agent detach` first (enforcement stops until the agent runs again)")]
    Layout {
        root: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("the policy has {rules} rules, more than the {capacity} the pinned rule maps hold: restart the agent (`systemctl restart sdm-agent`), which replaces them with larger ones without a gap")]
    RuleCapacity { rules: usize, capacity: u32 },
    #[error("the policy has {rules} rules, more than the {max} the dataplane can ever hold")]
    RuleCeiling { rules: usize, max: u32 },
    /// Not a `#[source]`: the message already says it all, once.
    #[error("{0}; nothing was written")]
    Capacity(crate::kernel::entries::Overflow),
    #[error("backstop: {0}")]
    Backstop(#[source] Box<crate::kernel::backstop::BackstopError>),
    #[error("XDP shield: {0}")]
    Xdp(#[source] Box<crate::kernel::xdp::XdpError>),
}

impl From<crate::kernel::xdp::XdpError> for DataplaneError {
    fn from(e: crate::kernel::xdp::XdpError) -> Self {
        DataplaneError::Xdp(Box::new(e))
    }
}

impl From<crate::kernel::backstop::BackstopError> for DataplaneError {
    fn from(e: crate::kernel::backstop::BackstopError) -> Self {
        DataplaneError::Backstop(Box::new(e))
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DataplaneError + 'a {
    move |source| DataplaneError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn map_err(name: &str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError + '_ {
    move |source| DataplaneError::Map {
        name: name.to_owned(),
        source: Box::new(source),
    }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> DataplaneError {
    move |e| DataplaneError::Program {
        name,
        source: Box::new(e),
    }
}

fn missing(name: &'static str) -> DataplaneError {
    DataplaneError::Program {
        name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

/// FNV-1a: a stable fingerprint of the embedded object, to tell whether
/// pinned links already run this very code.
pub fn object_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// [`object_hash`] of [`EBPF_OBJECT`], computed once: attaching to a
/// re-created target cgroup should not wait for 2 MB to be hashed byte by
/// byte again (about 30 ms in a debug build).
fn embedded_object_hash() -> u64 {
    static HASH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HASH.get_or_init(|| object_hash(EBPF_OBJECT))
}
