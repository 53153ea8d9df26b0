//! Counters: per-rule and per-deny-reason packet and byte counts.

use crate::{vocabulary::vocabulary, KernelMode, TrafficDir};

vocabulary! {
    /// Why a packet (or call) was denied: with mode and direction, the
    /// index into `SDM_DENY_STATS` (see [`deny_index`]).
    pub enum DenyReason: u32 {
        NoRule = 0 => "no_rule",
        Malformed = 1 => "malformed",
        Fragment = 2 => "fragment",
        UnknownProto = 3 => "unknown_protocol",
        /// An IPv4 loose or strict source route option, or an IPv6 routing
        /// header with segments left: the packet names further hops than
        /// the one judged.
        SourceRoute = 4 => "source_route",
        /// The backstop: a frame of a packet socket (or another non-IP
        /// socket) of the target cgroup that carries no IPv4 or IPv6 (ARP,
        /// VLAN-tagged, any other ethertype), or a `setsockopt` that would
        /// take such a socket past the backstop (`PACKET_QDISC_BYPASS`,
        /// AF_XDP).
        PacketSocket = 5 => "packet_socket",
        /// A DNS query, to a trusted resolver, for a name the policy does
        /// not hold (`[dns] queries = "policy"`), or one that cannot be
        /// judged.
        DnsQuery = 6 => "dns_query",
    }
}

/// Slots of `SDM_DENY_STATS`: mode x direction x reason.
pub const DENY_STATS_ENTRIES: u32 =
    (KernelMode::COUNT * TrafficDir::COUNT * DenyReason::COUNT) as u32;

/// Index of a deny counter: mode (audit/enforce) x direction x reason.
#[inline(always)]
pub const fn deny_index(mode: KernelMode, dir: TrafficDir, reason: DenyReason) -> u32 {
    (mode as u32 * 2 + dir as u32) * DenyReason::COUNT as u32 + reason as u32
}

/// Index of a rule counter: rule id x direction (replies to an egress rule
/// count under ingress).
#[inline(always)]
pub const fn rule_stats_index(rule: u32, dir: TrafficDir) -> u32 {
    rule * 2 + dir as u32
}

/// Packet and byte counter, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);
