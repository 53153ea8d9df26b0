//! The allowlist lookups (verdict order step 6) and replies (step 7):
//! exact and CIDR maps of the live policy slot, learned addresses, and
//! datagram peers.

use aya_ebpf::{
    bindings::bpf_sock, helpers::generated::bpf_get_socket_cookie, maps::lpm_trie::Key as LpmKey,
    programs::SkBuffContext,
};
use sdm_common::{
    rule_slot_index, Cidr4, Cidr6, Key4, Key6, PeerKey, TrafficDir, CIDR_HEADER_BITS, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, RULE_CEILING,
};

use crate::{
    dns,
    maps::{
        CIDR4_0, CIDR4_1, CIDR6_0, CIDR6_1, EXACT4_0, EXACT4_1, EXACT6_0, EXACT6_1, PEERS, RULES,
    },
    parse::{read, PacketFlow},
    ranges,
    sock::{holds_peer, Cached},
};

/// TCP_LISTEN in the kernel's TCP state enum (include/net/tcp_states.h).
pub(crate) const TCP_LISTEN: u32 = 10;

/// No rule: what `count_rule` ignores.
pub(crate) const NO_RULE: u32 = u32::MAX;

#[inline(always)]
pub(crate) fn rule_active(slot: u32, rule: u32) -> bool {
    // As in `count_rule`: the ceiling keeps the index from wrapping; an id
    // past the map's end is inactive.
    if rule >= RULE_CEILING {
        return false;
    }
    matches!(RULES.get(rule_slot_index(slot, rule)), Some(s) if s.active != 0)
}

/// The allowlist of `dir` for (protocol, port, remote): exact entries first,
/// then CIDRs, then port ranges and learned addresses; a constant number of
/// lookups whatever the policy size.
#[inline(always)]
pub(crate) fn lookup(slot: u32, flow: &PacketFlow, dir: TrafficDir, port: u16) -> Option<u32> {
    // The later steps once, after both families' branches: inlined into
    // each, they doubled what the verifier walks (sdm_ingress judges twice).
    if let Some(r) = exact_or_cidr(slot, flow, dir, port) {
        return Some(r);
    }
    ranges_then_learned(slot, flow, dir, port)
}

/// The exact map, then the CIDR trie, of the packet's family.
#[inline(always)]
fn exact_or_cidr(slot: u32, flow: &PacketFlow, dir: TrafficDir, port: u16) -> Option<u32> {
    if flow.v6 {
        let key = Key6 {
            addr: flow.remote,
            port,
            proto: flow.proto,
            dir: dir as u8,
        };
        let exact = if slot == 0 { &EXACT6_0 } else { &EXACT6_1 };
        // SAFETY: values are plain integers; copied out at once.
        if let Some(r) = unsafe { exact.get(&key) } {
            return Some(r.rule);
        }
        let trie = if slot == 0 { &CIDR6_0 } else { &CIDR6_1 };
        let key = LpmKey::new(
            CIDR_HEADER_BITS + 128,
            Cidr6 {
                dir: dir as u8,
                proto: flow.proto,
                port: port.to_be_bytes(),
                addr: flow.remote,
            },
        );
        trie.get(&key).map(|r| r.rule)
    } else {
        let addr = [
            flow.remote[0],
            flow.remote[1],
            flow.remote[2],
            flow.remote[3],
        ];
        let key = Key4 {
            addr,
            port,
            proto: flow.proto,
            dir: dir as u8,
        };
        let exact = if slot == 0 { &EXACT4_0 } else { &EXACT4_1 };
        // SAFETY: as above.
        if let Some(r) = unsafe { exact.get(&key) } {
            return Some(r.rule);
        }
        let trie = if slot == 0 { &CIDR4_0 } else { &CIDR4_1 };
        let key = LpmKey::new(
            CIDR_HEADER_BITS + 32,
            Cidr4 {
                dir: dir as u8,
                proto: flow.proto,
                port: port.to_be_bytes(),
                addr,
            },
        );
        trie.get(&key).map(|r| r.rule)
    }
}

/// The steps after exact and CIDR: port ranges of the address, learned
/// addresses, then their hostnames' port ranges (ranges.rs).
#[inline(always)]
fn ranges_then_learned(slot: u32, flow: &PacketFlow, dir: TrafficDir, port: u16) -> Option<u32> {
    if let Some(r) = ranges::range_rule(slot, flow, dir, port) {
        return Some(r);
    }
    let host = dns::learned_host(flow)?;
    if let Some(r) = dns::host_port_rule(slot, host, flow, dir, port) {
        return Some(r);
    }
    ranges::host_range_rule(slot, host, flow, dir, port)
}

/// ICMP echo request and reply types (RFC 792, RFC 4443).
pub(crate) const ICMP_ECHO_REPLY: u16 = 0;
pub(crate) const ICMP_ECHO_REQUEST: u16 = 8;
pub(crate) const ICMPV6_ECHO_REQUEST: u16 = 128;
pub(crate) const ICMPV6_ECHO_REPLY: u16 = 129;
/// TCP header flags (RFC 9293 3.1).
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_ACK: u8 = 0x10;

/// The peer a datagram (or ICMP echo) flow is remembered under: the socket's
/// cookie and the remote end; ICMP echo by remote alone, as the kernel
/// answers echo requests from a socket of its own.
#[inline(always)]
pub(crate) fn peer_key(cookie: u64, flow: &PacketFlow) -> PeerKey {
    let icmp = flow.proto == PROTO_ICMP || flow.proto == PROTO_ICMPV6;
    PeerKey {
        cookie: if icmp { 0 } else { cookie },
        remote: flow.remote,
        remote_port: if icmp { 0 } else { flow.remote_port },
        proto: flow.proto,
        _pad: [0; 5],
    }
}

/// The cookie of the packet's socket (0 without one).
#[inline(always)]
pub(crate) fn skb_cookie(ctx: &SkBuffContext) -> u64 {
    // SAFETY: a helper on the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) }
}

/// A datagram or ICMP echo that a rule allowed: its socket and remote are
/// now peers, so the remote's replies (and, for an inbound flow, the
/// socket's answers) pass step 7. TCP needs no such record: the stack
/// matches segments to connections itself.
///
/// A socket's datagram peers live in two places: the one its cache holds
/// (`sock::remember`), and the others in `SDM_PEERS`, written only when the
/// cache turns to another peer. A socket with one peer (a connected
/// socket, a client asking one server) so never pays for the LRU insert,
/// which took its lock and a third of a new flow's cost. ICMP echo peers
/// are keyed by remote alone (the kernel answers echo requests from a
/// socket of its own, whose cache this is not): always written.
#[inline(always)]
pub(crate) fn note_peers(ctx: &SkBuffContext, flow: &PacketFlow, cached: Cached, rule: u32) {
    match flow.proto {
        PROTO_TCP => {}
        PROTO_UDP => match cached {
            Cached::Yes => {}
            Cached::No => insert_peer(ctx, flow, rule),
            Cached::Replaced(remote, remote_port, old_rule) => {
                let old = PacketFlow {
                    remote,
                    remote_port,
                    ..*flow
                };
                insert_peer(ctx, &old, old_rule);
            }
        },
        _ => insert_peer(ctx, flow, rule),
    }
}

#[inline(always)]
fn insert_peer(ctx: &SkBuffContext, flow: &PacketFlow, rule: u32) {
    let _ = PEERS.insert(&peer_key(skb_cookie(ctx), flow), &rule, 0);
}

/// Whether the remote of a datagram (or ICMP echo) flow is a peer of the
/// socket with this cookie in `SDM_PEERS`; the socket's cache is the other
/// place (`sock::holds_peer`).
#[inline(always)]
pub(crate) fn is_peer(cookie: u64, flow: &PacketFlow) -> bool {
    // SAFETY: a plain value, copied out.
    unsafe { PEERS.get(&peer_key(cookie, flow)) }.is_some()
}

/// Replies: the other direction's allowlist, seen from the remote end, and
/// only for what really is a reply:
/// - ingress TCP: not to a listener (only ingress rules open those); the
///   stack then delivers only to the connection the segment belongs to;
/// - egress TCP: never a SYN without ACK, which opens a connection: a
///   process bound to an ingress rule's port must not dial out from it;
/// - UDP both ways: only between a socket and a remote that are peers
///   (`note_peer`): an inbound datagram reaches only a socket that sent to
///   its source, an outbound one leaves only to a remote that sent first;
/// - ICMP echo replies: only to or from a remote with an allowed request.
#[inline(always)]
pub(crate) fn reverse_lookup(
    ctx: &SkBuffContext,
    slot: u32,
    flow: &PacketFlow,
    dir: TrafficDir,
    sk: *mut bpf_sock,
) -> Option<u32> {
    if !is_reply(ctx, flow, dir, sk) {
        return None;
    }
    let (other, port) = if dir == TrafficDir::Ingress {
        (TrafficDir::Egress, flow.remote_port)
    } else {
        (TrafficDir::Ingress, flow.local_port)
    };
    let port = match (flow.proto, port) {
        // An echo reply answers an echo request.
        (PROTO_ICMP, ICMP_ECHO_REPLY) => ICMP_ECHO_REQUEST,
        (PROTO_ICMPV6, ICMPV6_ECHO_REPLY) => ICMPV6_ECHO_REQUEST,
        (_, p) => p,
    };
    lookup(slot, flow, other, port)
}

/// Whether the packet can be a reply at all (see `reverse_lookup`).
#[inline(always)]
pub(crate) fn is_reply(
    ctx: &SkBuffContext,
    flow: &PacketFlow,
    dir: TrafficDir,
    sk: *mut bpf_sock,
) -> bool {
    match flow.proto {
        PROTO_TCP if dir == TrafficDir::Ingress => {
            // SAFETY: sk is a full socket, whose `state` the verifier lets us read.
            sk.is_null() || unsafe { (*sk).state } != TCP_LISTEN
        }
        PROTO_TCP => match read::<[u8; 2]>(ctx, flow.l4_off as usize + 12) {
            Ok(h) => h[1] & TCP_SYN == 0 || h[1] & TCP_ACK != 0,
            Err(_) => false,
        },
        PROTO_UDP => holds_peer(sk, flow) || is_peer(skb_cookie(ctx), flow),
        _ => {
            let echo_reply = (flow.proto == PROTO_ICMP && flow.remote_port == ICMP_ECHO_REPLY)
                || (flow.proto == PROTO_ICMPV6 && flow.remote_port == ICMPV6_ECHO_REPLY);
            !echo_reply || is_peer(0, flow)
        }
    }
}
