//! The XDP shield (`sdm-ebpf/src/xdp.rs`): flows this host started, the
//! shield's switch and its counters.

use crate::vocabulary::vocabulary;

vocabulary! {
    /// What the shield did with a packet: the index into `SDM_XDP_STATS`.
    /// Every reason but `Passed` is a drop (counted, not dropped, in audit
    /// mode).
    pub enum XdpVerdict: u32 {
        /// Admitted: non-IP, neighbour discovery, an ingress rule's port
        /// from its sources, a flow this host started, an ICMP error for one.
        Passed = 0 => "passed",
        /// A TCP segment no ingress rule admits and no flow of this host
        /// asked for (a SYN scan or flood, a stray segment).
        UnsolicitedTcp = 1 => "unsolicited_tcp",
        /// A UDP datagram to a port no ingress rule opens to its source and
        /// no flow of this host expects.
        ClosedUdp = 2 => "closed_udp",
        /// ICMP or ICMPv6 that is no neighbour discovery, no error for a
        /// known flow, no echo reply to this host's echo and no echo
        /// request an ingress rule admits.
        UnsolicitedIcmp = 3 => "unsolicited_icmp",
        /// An IP header or transport header that does not fit in the frame.
        Malformed = 4 => "malformed",
        /// Another IP protocol than TCP, UDP, ICMP, ICMPv6, or more IPv6
        /// extension headers than the shield walks.
        UnknownProto = 5 => "unknown_protocol",
    }
}

/// Slots of `SDM_XDP_STATS`.
pub const XDP_STAT_ENTRIES: u32 = XdpVerdict::COUNT as u32;

/// Flows of this host the shield admits the replies of (LRU: the least
/// recently used go first when it is full).
pub const XDP_FLOW_ENTRIES: u32 = 65_536;

/// Key of `SDM_XDP_FLOWS`: a flow this host started, seen from this host.
/// ICMP echo flows have both ports 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct XdpFlowKey {
    /// IPv4 in the first four bytes, the rest zero.
    pub remote: [u8; 16],
    /// Host byte order.
    pub remote_port: u16,
    pub local_port: u16,
    pub proto: u8,
    /// 1 for IPv6.
    pub v6: u8,
    pub _pad: [u8; 2],
}

/// The single entry of `SDM_XDP_ON`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpSwitch {
    /// Non-zero while the shield is attached somewhere: only then does the
    /// egress program record the flows it allows.
    pub on: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<XdpFlowKey>() == 24);
const _: () = assert!(core::mem::size_of::<XdpSwitch>() == 8);
