//! The single-entry maps the agent writes for the kernel: `SDM_CONFIG`
//! and the backstop's settings.

use crate::vocabulary::vocabulary;

/// Bumped whenever a map's key, value or capacity changes: an agent refuses
/// to adopt pinned maps of another layout instead of misreading them.
pub const LAYOUT_VERSION: u32 = 10;

vocabulary! {
    /// What a deny does, held in `KernelConfig::mode`. Zero is audit, so a
    /// freshly created, zero-filled config map never drops anything.
    pub enum KernelMode: u32 {
        /// Count and report, but pass.
        Audit = 0 => "audit",
        /// Drop (EPERM for a call).
        Enforce = 1 => "enforce",
    }
}

impl KernelMode {
    /// The mode of a `KernelConfig::mode` value: anything but `Enforce`
    /// is audit, as it always was (one comparison, cheap in the kernel).
    #[inline(always)]
    pub const fn of_config(raw: u32) -> Self {
        if raw == Self::Enforce as u32 {
            Self::Enforce
        } else {
            Self::Audit
        }
    }
}

/// `KernelConfig::loopback`.
pub const LOOPBACK_PASS: u32 = 0;
pub const LOOPBACK_ENFORCE: u32 = 1;

/// `KernelConfig::dns_queries`.
pub const DNS_QUERIES_ANY: u32 = 0;
pub const DNS_QUERIES_POLICY: u32 = 1;

/// The single entry of `SDM_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// A [`KernelMode`].
    pub mode: u32,
    /// `LOOPBACK_PASS` or `LOOPBACK_ENFORCE`.
    pub loopback: u32,
    /// Policy generation; the live slot of the allowlist maps is
    /// `generation & 1`. The agent fills the other slot, then bumps this.
    pub generation: u32,
    /// Non-zero: log every verdict through aya-log (debugging only).
    pub log_verdicts: u32,
    /// `LAYOUT_VERSION` of the agent that created the maps.
    pub layout: u32,
    /// Floor, in seconds, of the lifetime of an address learned from a DNS
    /// answer (`[dns] ttl_min`): a 0-TTL answer still lets its connect through.
    pub learn_ttl_min_s: u32,
    /// Non-zero when a trusted resolver is on loopback (systemd-resolved's
    /// 127.0.0.53, a local cache): queries to it are noted even though
    /// loopback traffic is otherwise passed unjudged.
    pub loopback_dns: u32,
    /// `DNS_QUERIES_ANY`, or `DNS_QUERIES_POLICY`: queries to a trusted
    /// resolver only for the policy's names.
    pub dns_queries: u32,
    /// Hash of the eBPF object the pinned links run, so a restarted agent
    /// knows whether it can adopt them as they are.
    pub object_hash: u64,
}

/// The single entry of `SDM_BACKSTOP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backstop {
    /// Non-zero while `[backstop] interfaces` is not empty: the setsockopt
    /// program then refuses what would take a packet socket past it.
    pub on: u32,
    pub _pad: u32,
}

/// Value of `SDM_BACKSTOP_IF`: how to find the network header of a frame
/// on that interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackstopIf {
    /// `BACKSTOP_LINK_*`.
    pub link: u32,
    pub _pad: u32,
}

/// An Ethernet header (14 bytes) comes before the network header.
pub const BACKSTOP_LINK_ETHER: u32 = 1;
/// Frames start at the network header (tun, WireGuard: ARPHRD_NONE).
pub const BACKSTOP_LINK_RAW_IP: u32 = 2;

const _: () = assert!(core::mem::size_of::<KernelConfig>() == 40);
const _: () = assert!(core::mem::size_of::<Backstop>() == 8);
const _: () = assert!(core::mem::size_of::<BackstopIf>() == 8);
