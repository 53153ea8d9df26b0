//! Deny events: the ring buffer record, its per-flow rate limiter and
//! per-CPU budget, and the event counters.

use crate::{vocabulary::vocabulary, DNS_NAME_WIRE};

/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 20;
/// Flows remembered for rate-limiting events.
pub const EVENT_SEEN_ENTRIES: u32 = 65_536;
/// A flow is reported at most once per this many nanoseconds.
pub const EVENT_INTERVAL_NS: u64 = 1_000_000_000;
/// Events each CPU may send per second. The per-flow limit bounds the work
/// for a few noisy flows; this bounds it for a flood of ever new flows
/// (a port scan, a spoofed-source flood), which the per-flow LRU cannot.
pub const EVENT_BUDGET_PER_SEC: u64 = 500;

vocabulary! {
    /// What became of an event: the index into `SDM_EVENT_STAT`.
    pub enum EventStat: u32 {
        Sent = 0 => "sent",
        Lost = 1 => "lost",
        Suppressed = 2 => "suppressed",
        /// Not sent because the CPU's `EVENT_BUDGET_PER_SEC` was spent; the
        /// flow keeps its count and is reported by a later packet.
        Throttled = 3 => "throttled",
    }
}

/// Slots of `SDM_EVENT_STAT`.
pub const EVENT_STAT_ENTRIES: u32 = EventStat::COUNT as u32;

/// One denied (or, in audit mode, would-be denied) flow, reported by the
/// kernel at most once per `EVENT_INTERVAL_NS` per flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyEvent {
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns); the agent converts to wall time.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    /// Packets of this flow denied since its previous event (this one included).
    pub packets: u64,
    /// Process that owns the socket (tgid), 0 when unknown.
    pub pid: u32,
    /// Socket owner uid (bpf_get_socket_uid).
    pub uid: u32,
    /// Packet length.
    pub len: u32,
    /// A [`crate::DenyReason`].
    pub reason: u32,
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    /// A [`crate::TrafficDir`].
    pub dir: u8,
    /// 1 for IPv6 (addresses use 16 bytes), 0 for IPv4 (first 4 bytes).
    pub v6: u8,
    /// 1 when the packet was dropped (enforce), 0 when passed (audit).
    pub dropped: u8,
    /// Process name (task comm), NUL padded; empty when unknown.
    pub comm: [u8; 16],
    /// Reason `dns_query`: the question name in wire form (length-prefixed
    /// labels), zero padded; empty otherwise.
    pub qname: [u8; DNS_NAME_WIRE],
}

impl Default for DenyEvent {
    fn default() -> Self {
        Self {
            ts_ns: 0,
            cgroup_id: 0,
            packets: 0,
            pid: 0,
            uid: 0,
            len: 0,
            reason: 0,
            local: [0; 16],
            remote: [0; 16],
            local_port: 0,
            remote_port: 0,
            proto: 0,
            dir: 0,
            v6: 0,
            dropped: 0,
            comm: [0; 16],
            qname: [0; DNS_NAME_WIRE],
        }
    }
}

/// Key of the event rate limiter: one flow as seen from this host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSeenKey {
    pub remote: [u8; 16],
    pub remote_port: u16,
    pub local_port: u16,
    pub proto: u8,
    /// A [`crate::TrafficDir`].
    pub dir: u8,
    /// A [`crate::DenyReason`]: a flow denied for two reasons is reported
    /// for each.
    pub reason: u8,
    pub _pad: u8,
    pub cgroup_id: u64,
}

/// Value of the event rate limiter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSeen {
    pub last_ns: u64,
    /// Packets denied since the last event.
    pub pending: u64,
}

/// Value of `SDM_EVENT_BUDGET` (one per CPU): the current one-second
/// window and the events sent in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub window_ns: u64,
    pub used: u64,
}

// Layouts the kernel and agent rely on: no hidden padding anywhere.
const _: () = assert!(core::mem::size_of::<DenyEvent>() == 96 + DNS_NAME_WIRE);
const _: () = assert!(core::mem::size_of::<EventSeenKey>() == 32);
const _: () = assert!(core::mem::size_of::<FlowSeen>() == 16);
const _: () = assert!(core::mem::size_of::<EventBudget>() == 16);
