//! The XDP shield (`sdm_xdp`, `[xdp] interfaces`, gateway hosts whose
//! target is the root cgroup): judges every received frame at the driver,
//! before a socket buffer exists, and drops what the host never asked for.
//!
//! Admitted (counted `passed`):
//!  1. frames that carry no IPv4/IPv6 (ARP, LLDP, ...), behind at most one
//!     VLAN tag;
//!  2. non-first IPv4/IPv6 fragments: they hold no ports to judge, and the
//!     stack answers nothing for a datagram it cannot reassemble (the
//!     reassembled whole meets the cgroup ingress program);
//!  3. ICMPv6 neighbour discovery and MLD (types 130-137, 143), which
//!     IPv6 cannot work without;
//!  4. DHCP and DHCPv6 replies (UDP 67 -> 68, 547 -> 546): clients send
//!     their requests through packet sockets, which the egress program
//!     never sees;
//!  5. TCP, UDP and ICMP echo requests to an ingress rule's port from that
//!     rule's sources (the cgroup programs' allowlist, live policy slot);
//!  6. packets of flows this host started: the egress program records each
//!     flow it allows in `SDM_XDP_FLOWS` (`note_flow`), the agent seeds it
//!     with the sockets that existed before the shield attached;
//!  7. ICMP/ICMPv6 errors whose embedded header is a packet of 5 or 6.
//!
//! Everything else is counted under its [`XdpVerdict`] and dropped in
//! enforce mode (passed in audit mode, where the cgroup programs judge it
//! as before).

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use sdm_common::{
    Counter, KernelMode, TrafficDir, XdpFlowKey, XdpSwitch, XdpVerdict, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_TCP, PROTO_UDP, XDP_FLOW_ENTRIES, XDP_STAT_ENTRIES,
};

use crate::{maps::CONFIG, parse::PacketFlow, policy::lookup, stats::add_packet};

#[map(name = "SDM_XDP_FLOWS")]
pub(crate) static XDP_FLOWS: LruHashMap<XdpFlowKey, u8> =
    LruHashMap::with_max_entries(XDP_FLOW_ENTRIES, 0);
#[map(name = "SDM_XDP_STATS")]
pub(crate) static XDP_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(XDP_STAT_ENTRIES, 0);
#[map(name = "SDM_XDP_ON")]
pub(crate) static XDP_ON: Array<XdpSwitch> = Array::with_max_entries(1, 0);

/// Ethernet and VLAN ethertypes (include/uapi/linux/if_ether.h).
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv6 extension headers walked before giving up (`unknown_protocol`).
const MAX_EXT_HEADERS: usize = 3;

#[xdp]
pub fn sdm_xdp(ctx: XdpContext) -> u32 {
    let verdict = judge(&ctx);
    // Packets only: nothing reads the shield's byte counts.
    add_packet(&XDP_STATS, verdict as u32);
    if verdict == XdpVerdict::Passed {
        return xdp_action::XDP_PASS;
    }
    match CONFIG.get(0) {
        Some(c) if KernelMode::of_config(c.mode) == KernelMode::Enforce => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Egress, step 6 (a flow new to its socket that a rule allows): recorded
/// for the shield while one is attached. One array lookup otherwise.
#[inline(always)]
pub(crate) fn note_flow(flow: &PacketFlow) {
    if !matches!(XDP_ON.get(0), Some(s) if s.on != 0) {
        return;
    }
    let icmp = flow.proto == PROTO_ICMP || flow.proto == PROTO_ICMPV6;
    let key = flow_key(
        flow.proto,
        flow.v6,
        flow.remote,
        if icmp { 0 } else { flow.remote_port },
        if icmp { 0 } else { flow.local_port },
    );
    let _ = XDP_FLOWS.insert(&key, &0, 0);
}

#[inline(always)]
fn flow_key(
    proto: u8,
    v6: bool,
    remote: [u8; 16],
    remote_port: u16,
    local_port: u16,
) -> XdpFlowKey {
    XdpFlowKey {
        remote,
        remote_port,
        local_port,
        proto,
        v6: u8::from(v6),
        _pad: [0; 2],
    }
}

/// `T` at `off` bytes into the frame, if the frame holds it. `T` is at
/// least 2 bytes: a one-byte read compiles to `data_end > p`, which the
/// verifier grants no range (find_good_pkt_pointers,
/// <https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/verifier.c>).
#[inline(always)]
fn at<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: within [data, data_end), checked just above; T is a byte array.
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

#[inline(always)]
fn be16(hi: u8, lo: u8) -> u16 {
    u16::from_be_bytes([hi, lo])
}

#[inline(always)]
fn judge(ctx: &XdpContext) -> XdpVerdict {
    // 1. Shorter than an Ethernet header: the stack drops it itself.
    let Some(eth) = at::<[u8; 14]>(ctx, 0) else {
        return XdpVerdict::Passed;
    };
    let mut ethertype = be16(eth[12], eth[13]);
    let mut l3 = 14;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = at::<[u8; 4]>(ctx, 14) else {
            return XdpVerdict::Passed;
        };
        ethertype = be16(tag[2], tag[3]);
        l3 = 18;
    }
    match ethertype {
        ETH_P_IP => v4(ctx, l3),
        ETH_P_IPV6 => v6(ctx, l3),
        _ => XdpVerdict::Passed,
    }
}

#[inline(always)]
fn v4(ctx: &XdpContext, l3: usize) -> XdpVerdict {
    let Some(ip) = at::<[u8; 20]>(ctx, l3) else {
        return XdpVerdict::Malformed;
    };
    let ihl = usize::from(ip[0] & 0x0f);
    if ip[0] >> 4 != 4 || ihl < 5 {
        return XdpVerdict::Malformed;
    }
    // 2.
    if be16(ip[6], ip[7]) & 0x1fff != 0 {
        return XdpVerdict::Passed;
    }
    let mut remote = [0u8; 16];
    remote[..4].copy_from_slice(&ip[12..16]);
    transport(ctx, false, ip[9], l3 + ihl * 4, remote)
}

#[inline(always)]
fn v6(ctx: &XdpContext, l3: usize) -> XdpVerdict {
    let Some(ip) = at::<[u8; 40]>(ctx, l3) else {
        return XdpVerdict::Malformed;
    };
    let mut remote = [0u8; 16];
    remote.copy_from_slice(&ip[8..24]);
    let mut next = ip[6];
    let mut off = l3 + 40;
    let mut n = 0;
    while n < MAX_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options (RFC 8200 4.3-4.6).
            0 | 43 | 60 => {
                let Some(h) = at::<[u8; 2]>(ctx, off) else {
                    return XdpVerdict::Malformed;
                };
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            // Fragment (RFC 8200 4.5): 2. for a non-first one.
            44 => {
                let Some(h) = at::<[u8; 4]>(ctx, off) else {
                    return XdpVerdict::Malformed;
                };
                if be16(h[2], h[3]) >> 3 != 0 {
                    return XdpVerdict::Passed;
                }
                next = h[0];
                off += 8;
            }
            _ => break,
        }
        n += 1;
    }
    transport(ctx, true, next, off, remote)
}

/// 3-7 for the packet whose transport header is at `off`.
#[inline(always)]
fn transport(ctx: &XdpContext, v6: bool, proto: u8, off: usize, remote: [u8; 16]) -> XdpVerdict {
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let Some(p) = at::<[u8; 4]>(ctx, off) else {
                return XdpVerdict::Malformed;
            };
            let (sport, dport) = (be16(p[0], p[1]), be16(p[2], p[3]));
            if admitted(proto, v6, remote, sport, dport) {
                XdpVerdict::Passed
            } else if proto == PROTO_TCP {
                XdpVerdict::UnsolicitedTcp
            } else if dhcp_reply(v6, sport, dport) {
                XdpVerdict::Passed
            } else {
                XdpVerdict::ClosedUdp
            }
        }
        PROTO_ICMP if !v6 => icmp(ctx, off, remote),
        PROTO_ICMPV6 if v6 => icmpv6(ctx, off, remote),
        _ => XdpVerdict::UnknownProto,
    }
}

/// 4.
#[inline(always)]
fn dhcp_reply(v6: bool, sport: u16, dport: u16) -> bool {
    if v6 {
        sport == 547 && dport == 546
    } else {
        sport == 67 && dport == 68
    }
}

/// 5 or 6 for a packet from `remote`: a flow this host started, or an
/// ingress rule's port (or ICMP type) open to `remote`.
#[inline(always)]
fn admitted(proto: u8, v6: bool, remote: [u8; 16], remote_port: u16, local_port: u16) -> bool {
    let key = flow_key(proto, v6, remote, remote_port, local_port);
    // SAFETY: a plain value, only its presence is used.
    if unsafe { XDP_FLOWS.get(&key) }.is_some() {
        return true;
    }
    let Some(config) = CONFIG.get(0) else {
        return false;
    };
    let flow = PacketFlow {
        v6,
        proto,
        remote,
        local: [0; 16],
        remote_port,
        local_port,
        l4_off: 0,
    };
    lookup(
        config.generation & 1,
        &flow,
        TrafficDir::Ingress,
        local_port,
    )
    .is_some()
}

/// ICMP: echo replies to this host's echo requests (6), echo requests an
/// ingress rule admits (5), errors about a flow of 5 or 6 (7).
#[inline(always)]
fn icmp(ctx: &XdpContext, off: usize, remote: [u8; 16]) -> XdpVerdict {
    let Some(h) = at::<[u8; 4]>(ctx, off) else {
        return XdpVerdict::Malformed;
    };
    let ok = match h[0] {
        0 => admitted(PROTO_ICMP, false, remote, 0, 0),
        8 => admitted(PROTO_ICMP, false, remote, 8, 8),
        // Destination unreachable, time exceeded, parameter problem
        // (RFC 792): the IP header and first 8 bytes of the packet sent.
        3 | 11 | 12 => {
            let Some(e) = at::<[u8; 28]>(ctx, off + 8) else {
                return XdpVerdict::Malformed;
            };
            // Options in the embedded header: never sent by this host's
            // flows in practice, not walked.
            if e[0] != 0x45 {
                return XdpVerdict::UnsolicitedIcmp;
            }
            let mut to = [0u8; 16];
            to[..4].copy_from_slice(&e[16..20]);
            embedded(e[9], false, to, be16(e[20], e[21]), be16(e[22], e[23]))
        }
        _ => false,
    };
    if ok {
        XdpVerdict::Passed
    } else {
        XdpVerdict::UnsolicitedIcmp
    }
}

/// ICMPv6: as [`icmp`], and neighbour discovery and MLD (3).
#[inline(always)]
fn icmpv6(ctx: &XdpContext, off: usize, remote: [u8; 16]) -> XdpVerdict {
    let Some(h) = at::<[u8; 4]>(ctx, off) else {
        return XdpVerdict::Malformed;
    };
    let ok = match h[0] {
        // MLD query/report/done (RFC 2710), router and neighbour
        // solicitation/advertisement, redirect (RFC 4861), MLDv2 report
        // (RFC 3810).
        130..=137 | 143 => true,
        129 => admitted(PROTO_ICMPV6, true, remote, 0, 0),
        128 => admitted(PROTO_ICMPV6, true, remote, 128, 128),
        // Destination unreachable, packet too big, time exceeded,
        // parameter problem (RFC 4443): as much of the packet sent as fits.
        1..=4 => {
            let Some(e) = at::<[u8; 44]>(ctx, off + 8) else {
                return XdpVerdict::Malformed;
            };
            let mut to = [0u8; 16];
            to.copy_from_slice(&e[24..40]);
            embedded(e[6], true, to, be16(e[40], e[41]), be16(e[42], e[43]))
        }
        _ => false,
    };
    if ok {
        XdpVerdict::Passed
    } else {
        XdpVerdict::UnsolicitedIcmp
    }
}

/// 7: the embedded packet was sent by this host to `to`, from port
/// `sport` to `dport` (an ICMP echo: any ports, matched by address).
#[inline(always)]
fn embedded(proto: u8, v6: bool, to: [u8; 16], sport: u16, dport: u16) -> bool {
    match proto {
        PROTO_TCP | PROTO_UDP => admitted(proto, v6, to, dport, sport),
        PROTO_ICMP | PROTO_ICMPV6 => admitted(proto, v6, to, 0, 0),
        _ => false,
    }
}
