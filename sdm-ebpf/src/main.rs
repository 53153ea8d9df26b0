//! sdm-egress kernel programs: cgroup_skb egress and ingress filters that
//! allow only the flows of the host's StrongDM role and count every packet.
//!
//! Verdict order (both directions; "remote" is the destination on egress
//! and the source on ingress):
//!
//!  1. Not IPv4/IPv6, or a header that does not fit in the packet: deny,
//!     reason `malformed`.
//!  2. Loopback interface and `loopback = pass`: allow, uncounted.
//!  3. Non-first fragment (no transport header to judge): deny, reason
//!     `fragment`. The kernel reassembles before delivering to a socket and
//!     fragments after the egress hook, so only raw sockets ever show these.
//!  4. A protocol other than TCP, UDP, ICMP or ICMPv6 (after walking IPv4
//!     options and IPv6 extension headers): deny, reason `unknown_protocol`.
//!     An IPv4 loose/strict source route option, or an IPv6 routing header
//!     with segments left, names hops beyond the address judged: deny,
//!     reason `source_route`.
//!  5. The socket's cached verdict (socket local storage) is for this same
//!     remote address, port and protocol, in this direction or as a reply
//!     to it (TCP: never into a listener, never a SYN without ACK), and its
//!     rule is still in the live policy: allow, counted for that rule.
//!     Established flows stop here: one storage lookup and two array
//!     lookups, whatever the policy size.
//!  6. The allowlist of this direction: exact (direction, protocol, port,
//!     address) in a hash map, then (direction, protocol, port, CIDR) in an
//!     LPM trie. Hit: allow, cache the verdict on the socket.
//!     After 5 or 6 on egress (and for a loopback resolver passed at 2): a
//!     packet to a trusted resolver's port 53 is noted for the DNS learning
//!     and, with `[dns] queries = "policy"`, judged by its question in the
//!     tail-called `sdm_dns_query` (dns.rs, steps Q1-Q5): refused, reason
//!     `dns_query`.
//!  7. The reverse allowlist, for replies: an ingress packet from a remote
//!     this host may reach on egress (unless it is addressed to a TCP
//!     listener, which only ingress rules may open), or an egress packet to
//!     a remote allowed in by an ingress rule on this local port. Hit: allow.
//!  8. Otherwise deny, reason `no_rule`.
//!
//! A deny drops the packet in enforce mode and passes it in audit mode;
//! either way it is counted under its mode, direction and reason.
//!
//! Kernel behaviour relied on:
//! - the program sees the packet from its network header in both directions
//!   (`__cgroup_bpf_run_filter_skb` pushes back to it:
//!   https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/cgroup.c);
//! - egress runs only for packets of full sockets, so `skb->sk` is set
//!   (`BPF_CGROUP_RUN_PROG_INET_EGRESS`,
//!   https://github.com/torvalds/linux/blob/v6.18/include/linux/bpf-cgroup.h).
#![no_std]
#![no_main]
// Atomic add on the BPF target: core::sync::atomic does not offer
// fetch_add there, the intrinsic lowers to BPF_ATOMIC | BPF_ADD.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use core::{
    intrinsics::{atomic_xadd, AtomicOrdering},
    mem::size_of,
    ptr,
};

use aya_ebpf::{
    bindings::{bpf_sock, BPF_F_MMAPABLE, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::SkStorage,
    cty::c_void,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_get_socket_uid, bpf_ktime_get_ns,
            bpf_sk_fullsock, bpf_sk_storage_get, bpf_skb_cgroup_id,
        },
    },
    macros::{btf_map, cgroup_skb, cgroup_sock, cgroup_sock_addr, map},
    maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{sk_buff::SkBuff, SkBuffContext, SockAddrContext, SockContext},
};
use aya_log_ebpf::info;

mod backstop;
mod dns;
use sdm_common::{
    deny_index, rule_slot_index, rule_stats_index, Cidr4, Cidr6, Config, Counter, DenyEvent,
    EventBudget, FlowKey, FlowSeen, Key4, Key6, PeerKey, RuleRef, RuleState, SockState,
    CIDR_HEADER_BITS, DENY_STATS_ENTRIES, DIR_EGRESS, DIR_INGRESS, DNS_NAME_WIRE,
    EVENTS_RING_BYTES, EVENT_BUDGET_PER_SEC, EVENT_INTERVAL_NS, EVENT_SEEN_ENTRIES,
    EVENT_STAT_ENTRIES, EVENT_STAT_LOST, EVENT_STAT_SENT, EVENT_STAT_SUPPRESSED,
    EVENT_STAT_THROTTLED, LOOPBACK_ENFORCE, MAX_CIDR_ENTRIES, MAX_EXACT_ENTRIES, MAX_RULES,
    MODE_ENFORCE, PEER_ENTRIES, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, REASON_FRAGMENT,
    REASON_MALFORMED, REASON_NO_RULE, REASON_SOURCE_ROUTE, REASON_UNKNOWN_PROTO,
};

pub(crate) const PASS: i32 = 1;
pub(crate) const DROP: i32 = 0;

/// The loopback device is ifindex 1 in every network namespace
/// (LOOPBACK_IFINDEX, include/net/flow.h).
const LOOPBACK_IFINDEX: u32 = 1;
/// TCP_LISTEN in the kernel's TCP state enum (include/net/tcp_states.h).
const TCP_LISTEN: u32 = 10;
/// IPv6 extension headers walked before the transport header.
const MAX_IPV6_EXT_HEADERS: usize = 8;

/// Mmapable: the agent and `sdm-agent mode` each store only their own
/// field, so neither undoes the other (sdm-agent's config_map.rs).
#[map(name = "SDM_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map(name = "SDM_EXACT4_0")]
static EXACT4_0: HashMap<Key4, RuleRef> = HashMap::with_max_entries(MAX_EXACT_ENTRIES, 0);
#[map(name = "SDM_EXACT4_1")]
static EXACT4_1: HashMap<Key4, RuleRef> = HashMap::with_max_entries(MAX_EXACT_ENTRIES, 0);
#[map(name = "SDM_EXACT6_0")]
static EXACT6_0: HashMap<Key6, RuleRef> = HashMap::with_max_entries(MAX_EXACT_ENTRIES, 0);
#[map(name = "SDM_EXACT6_1")]
static EXACT6_1: HashMap<Key6, RuleRef> = HashMap::with_max_entries(MAX_EXACT_ENTRIES, 0);
#[map(name = "SDM_CIDR4_0")]
static CIDR4_0: LpmTrie<Cidr4, RuleRef> = LpmTrie::with_max_entries(MAX_CIDR_ENTRIES, 0);
#[map(name = "SDM_CIDR4_1")]
static CIDR4_1: LpmTrie<Cidr4, RuleRef> = LpmTrie::with_max_entries(MAX_CIDR_ENTRIES, 0);
#[map(name = "SDM_CIDR6_0")]
static CIDR6_0: LpmTrie<Cidr6, RuleRef> = LpmTrie::with_max_entries(MAX_CIDR_ENTRIES, 0);
#[map(name = "SDM_CIDR6_1")]
static CIDR6_1: LpmTrie<Cidr6, RuleRef> = LpmTrie::with_max_entries(MAX_CIDR_ENTRIES, 0);

/// Rule active flags, `2 * MAX_RULES` entries: one run per policy slot.
#[map(name = "SDM_RULES")]
static RULES: Array<RuleState> = Array::with_max_entries(2 * MAX_RULES, 0);
/// Allowed packets and bytes per (rule, direction).
#[map(name = "SDM_RULE_STATS")]
static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(2 * MAX_RULES, 0);
/// Denied (or, in audit mode, would-be denied) packets per (mode, direction, reason).
#[map(name = "SDM_DENY_STATS")]
static DENY_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DENY_STATS_ENTRIES, 0);

/// Deny events for the agent, rate-limited per flow by `EVENT_SEEN`.
#[map(name = "SDM_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
/// Events sent, lost (ring buffer full) and suppressed (rate limit).
#[map(name = "SDM_EVENT_STAT")]
static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_STAT_ENTRIES, 0);
/// When each recently denied flow was last reported.
#[map(name = "SDM_EVENT_SEEN")]
static EVENT_SEEN: LruHashMap<FlowKey, FlowSeen> =
    LruHashMap::with_max_entries(EVENT_SEEN_ENTRIES, 0);

/// Events sent per CPU in the current second (see `EVENT_BUDGET_PER_SEC`).
#[map(name = "SDM_EVENT_BUDGT")]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Datagram peers (see `note_peer`): the rule that allowed them.
#[map(name = "SDM_PEERS")]
static PEERS: LruHashMap<PeerKey, u32> = LruHashMap::with_max_entries(PEER_ENTRIES, 0);

#[btf_map(name = "SDM_SOCK_STATE")]
static SOCK_STATE: SkStorage<SockState> = SkStorage::new();

#[cgroup_skb(egress)]
pub fn sdm_egress(ctx: SkBuffContext) -> i32 {
    // Only in the upgrade test's second object (feature `upgrade-variant`,
    // built by tests/build.rs, never shipped): real code whose result is
    // unused, so the program differs (another tag) but judges alike.
    #[cfg(feature = "upgrade-variant")]
    // SAFETY: a helper without arguments, allowed in every program type.
    let _ = core::hint::black_box(unsafe { bpf_ktime_get_ns() });
    filter::<DIR_EGRESS>(&ctx)
}

#[cgroup_skb(ingress)]
pub fn sdm_ingress(ctx: SkBuffContext) -> i32 {
    filter::<DIR_INGRESS>(&ctx)
}

/// The parsed flow of one packet, seen from this host.
struct Flow {
    v6: bool,
    proto: u8,
    /// Remote address; IPv4 in the first four bytes.
    remote: [u8; 16],
    /// Local address, as `remote`.
    local: [u8; 16],
    /// Remote port, or the ICMP type.
    remote_port: u16,
    /// Local port, or the ICMP type.
    local_port: u16,
    /// Offset of the transport header (0 where there is no packet).
    l4_off: u32,
}

/// Why a packet could not be judged by the allowlist.
#[derive(Clone, Copy)]
enum Unjudgeable {
    Malformed,
    Fragment,
    UnknownProto,
    SourceRoute,
}

#[inline(always)]
/// The verdict of `DIR`: a constant per program, so that each program
/// holds only its own direction's code (the egress program's tail call to
/// the DNS query judge must not reach the ingress program, even where LLVM
/// keeps part of this function out of line).
fn filter<const DIR: u8>(ctx: &SkBuffContext) -> i32 {
    let dir = DIR;
    let Some(config) = CONFIG.get(0) else {
        // The map always has its one entry; this only satisfies the verifier.
        return PASS;
    };
    let mode = config.mode;
    let len = ctx.len();
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let loopback_pass = ifindex == LOOPBACK_IFINDEX && config.loopback != LOOPBACK_ENFORCE;
    // A local resolver's queries (systemd-resolved, a cache) still teach
    // the DNS learning which answers to expect: parsed only when one is
    // configured, and only on the way out.
    if loopback_pass && (dir != DIR_EGRESS || config.loopback_dns == 0) {
        return PASS;
    }
    let flow = match parse(ctx, dir) {
        Ok(flow) => flow,
        Err(_) if loopback_pass => return PASS,
        Err(why) => {
            let reason = match why {
                Unjudgeable::Malformed => REASON_MALFORMED,
                Unjudgeable::Fragment => REASON_FRAGMENT,
                Unjudgeable::UnknownProto => REASON_UNKNOWN_PROTO,
                Unjudgeable::SourceRoute => REASON_SOURCE_ROUTE,
            };
            let sk = full_socket(ctx);
            return deny(ctx, config, mode, dir, reason, len, None, sk, None);
        }
    };
    let slot = config.generation & 1;
    let sk = full_socket(ctx);
    let port = if dir == DIR_EGRESS {
        flow.remote_port
    } else {
        flow.local_port
    };

    // 5 and 6: the rule that allows the flow, and whether it is new to the
    // socket (6) or its cached verdict (5). Loopback, when passed, has no
    // rule: it gets here only for the DNS queries to a local resolver.
    let allowed = if loopback_pass {
        Some((NO_RULE, false))
    } else if let Some(rule) = cached_rule(ctx, &flow, dir, slot, sk) {
        Some((rule, false))
    } else {
        lookup(slot, &flow, dir, port).map(|rule| (rule, true))
    };
    if let Some((rule, fresh)) = allowed {
        if fresh {
            remember(sk, &flow, dir, rule);
            note_peer(ctx, &flow, rule);
            if config.log_verdicts != 0 {
                info!(
                    ctx,
                    "allow dir={} proto={} port={} rule={}", dir, flow.proto, port, rule
                );
            }
        }
        // What leaves for a trusted resolver: noted for the DNS learning,
        // and with `[dns] queries = "policy"` judged by its question (a local
        // stub resolver forwards what it is asked, so on loopback too). The
        // judge counts the rule itself. After the socket's peer record: the
        // answer to an allowed query must find it.
        if dir == DIR_EGRESS && dns::judge_query(ctx, &flow, config, rule) == dns::Query::Unjudged {
            return dns::unjudged(config);
        }
        count_rule(rule, dir, len);
        return PASS;
    }

    // 7. Replies.
    if let Some(rule) = reverse_lookup(ctx, slot, &flow, dir, sk) {
        count_rule(rule, dir, len);
        return PASS;
    }

    // 8. No rule.
    deny(
        ctx,
        config,
        mode,
        dir,
        REASON_NO_RULE,
        len,
        Some(&flow),
        sk,
        None,
    )
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn deny(
    ctx: &SkBuffContext,
    config: &Config,
    mode: u32,
    dir: u8,
    reason: u32,
    len: u32,
    flow: Option<&Flow>,
    sk: *mut bpf_sock,
    qname: Option<&[u8; DNS_NAME_WIRE]>,
) -> i32 {
    let enforce = mode == MODE_ENFORCE;
    add(
        &DENY_STATS,
        deny_index(if enforce { 1 } else { 0 }, dir, reason),
        len,
    );
    // SAFETY: a helper on the program's own context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let (remote, remote_port, local_port, proto) = match flow {
        Some(f) => (f.remote, f.remote_port, f.local_port, f.proto),
        None => ([0; 16], 0, 0, 0),
    };
    let key = flow_key(
        &remote,
        remote_port,
        local_port,
        proto,
        dir,
        reason,
        cgroup_id,
    );
    if let Some((packets, ev)) = reserve_event(&key) {
        // SAFETY: `ev` points at a reserved, zeroed ring buffer record.
        unsafe {
            (*ev).packets = packets;
            (*ev).cgroup_id = cgroup_id;
            (*ev).uid = bpf_get_socket_uid(ctx.skb.skb);
            (*ev).len = len;
            (*ev).reason = reason;
            (*ev).dir = dir;
            (*ev).dropped = u8::from(enforce);
            (*ev).remote = remote;
            (*ev).remote_port = remote_port;
            (*ev).local_port = local_port;
            (*ev).proto = proto;
            if let Some(f) = flow {
                (*ev).local = f.local;
                (*ev).v6 = u8::from(f.v6);
            }
            if let Some(q) = qname {
                copy_name(ptr::addr_of_mut!((*ev).qname), q);
            }
            // The process that owns the socket, as recorded when it was
            // created or connected: this program often runs outside that
            // process's context.
            if let Some(state) = sock_state(sk, false) {
                (*ev).pid = (*state).pid;
                (*ev).comm = (*state).comm;
            }
        }
        submit_event(ev);
    }
    if config.log_verdicts != 0 {
        info!(ctx, "deny dir={} reason={} enforce={}", dir, reason, mode);
    }
    if enforce {
        DROP
    } else {
        PASS
    }
}

#[inline(always)]
fn flow_key(
    remote: &[u8; 16],
    remote_port: u16,
    local_port: u16,
    proto: u8,
    dir: u8,
    reason: u32,
    cgroup_id: u64,
) -> FlowKey {
    FlowKey {
        remote: *remote,
        remote_port,
        // Egress flows differ by destination, not by ephemeral source port.
        local_port: if dir == DIR_INGRESS { local_port } else { 0 },
        proto,
        dir,
        _pad: [reason as u8, 0],
        cgroup_id,
    }
}

/// Decides whether this flow is reported now: not if it was reported less
/// than `EVENT_INTERVAL_NS` ago (then it only adds to the flow's pending
/// count, which the next event carries), and not if this CPU has spent its
/// `EVENT_BUDGET_PER_SEC` (then the flow keeps its count and stays due, so
/// a later packet reports it). A flood of denied packets, of few flows or
/// of ever new ones, costs the agent a bounded number of events; the
/// counters still count every packet. Returns the packets the event stands
/// for and a zeroed ring buffer record to fill in and pass to
/// [`submit_event`]; the record is written in place, as the stack is too
/// small for a copy.
#[inline(always)]
fn reserve_event(key: &FlowKey) -> Option<(u64, *mut DenyEvent)> {
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut pending = 0;
    let seen = EVENT_SEEN.get_ptr_mut(key);
    if let Some(seen) = seen {
        // SAFETY: a valid map value pointer.
        unsafe {
            if now.wrapping_sub((*seen).last_ns) < EVENT_INTERVAL_NS {
                atomic_add_u64(ptr::addr_of_mut!((*seen).pending), 1);
                bump(EVENT_STAT_SUPPRESSED);
                return None;
            }
            pending = (*seen).pending;
        }
    }
    if !take_budget(now) {
        match seen {
            // SAFETY: as above.
            Some(seen) => unsafe { atomic_add_u64(ptr::addr_of_mut!((*seen).pending), 1) },
            None => {
                // Due at once: its next packet may report it.
                let stale = now.wrapping_sub(EVENT_INTERVAL_NS);
                let _ = EVENT_SEEN.insert(
                    key,
                    &FlowSeen {
                        last_ns: stale,
                        pending: 1,
                    },
                    0,
                );
            }
        }
        bump(EVENT_STAT_THROTTLED);
        return None;
    }
    let _ = EVENT_SEEN.insert(
        key,
        &FlowSeen {
            last_ns: now,
            pending: 0,
        },
        0,
    );
    let Some(mut entry) = EVENTS.reserve::<DenyEvent>(0) else {
        bump(EVENT_STAT_LOST);
        return None;
    };
    let ev = entry.as_mut_ptr();
    // The entry is submitted through its pointer by submit_event.
    core::mem::forget(entry);
    // SAFETY: a reserved record of the right size. Zeroed up to the name,
    // whose first byte (its end, for the agent) is enough: a whole zeroing
    // is a memset call, a subprogram in every program that reports.
    unsafe {
        ptr::write_bytes(ev.cast::<u8>(), 0, DENY_EVENT_FIXED);
        (*ev).qname[0] = 0;
        (*ev).ts_ns = now;
    }
    Some((pending + 1, ev))
}

/// Bytes of a `DenyEvent` before its question name.
const DENY_EVENT_FIXED: usize = core::mem::offset_of!(DenyEvent, qname);

/// Copies a question name into an event, in 32-bit words (volatile, so
/// that LLVM does not turn the loop back into a memcpy call).
#[inline(always)]
fn copy_name(dst: *mut [u8; DNS_NAME_WIRE], src: &[u8; DNS_NAME_WIRE]) {
    let d = dst.cast::<u32>();
    let s = src.as_ptr().cast::<u32>();
    let mut i = 0;
    while i < DNS_NAME_WIRE / 4 {
        // SAFETY: both are DNS_NAME_WIRE bytes and 4-byte aligned (the
        // name sits 12 bytes into the 8-byte aligned DNS scratch buffer).
        unsafe { ptr::write_volatile(d.add(i), ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Takes one event from this CPU's budget for the current second. Per-CPU,
/// so floods on several CPUs do not contend on one cache line; a program
/// preempted between the read and the write can at worst let one extra
/// event through.
#[inline(always)]
fn take_budget(now: u64) -> bool {
    let Some(b) = EVENT_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: valid per-CPU map memory.
    unsafe {
        if now.wrapping_sub((*b).window_ns) >= 1_000_000_000 {
            (*b).window_ns = now;
            (*b).used = 1;
            return true;
        }
        if (*b).used >= EVENT_BUDGET_PER_SEC {
            return false;
        }
        (*b).used += 1;
    }
    true
}

#[inline(always)]
fn submit_event(ev: *mut DenyEvent) {
    // SAFETY: a record from reserve_event, submitted once.
    unsafe { aya_ebpf::helpers::generated::bpf_ringbuf_submit(ev.cast::<c_void>(), 0) };
    bump(EVENT_STAT_SENT);
}

/// Atomic `*p += v` (see the crate's `core_intrinsics` note).
#[inline(always)]
fn atomic_add_u64(p: *mut u64, v: u64) {
    // SAFETY: callers pass valid map value pointers.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(c) = EVENT_STATS.get_ptr_mut(index) {
        atomic_add_u64(c, 1);
    }
}

/// Records the creating process on every new socket of the cgroup, so
/// denies on it can name who owns it.
#[cgroup_sock(sock_create)]
pub fn sdm_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context is the new socket; sk storage accepts it here
    // (bpf_sk_storage_get_cg_sock_proto, net/core/bpf_sk_storage.c).
    let state = unsafe {
        bpf_sk_storage_get(
            ptr::addr_of!(SOCK_STATE).cast_mut().cast::<c_void>(),
            ctx.sock.cast::<c_void>(),
            ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<SockState>();
    if !state.is_null() {
        // SAFETY: a non-null pointer from bpf_sk_storage_get.
        unsafe { record_process(&mut *state) };
    }
    PASS
}

#[inline(always)]
fn record_process(st: &mut SockState) {
    st.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Ok(comm) = bpf_get_current_comm() {
        st.comm = comm;
    }
}

#[cgroup_sock_addr(connect4)]
pub fn sdm_connect4(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn sdm_connect6(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sdm_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sdm_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, true)
}

/// connect() and sendmsg() with an address: refuse a denied destination
/// with EPERM at once in enforce mode, instead of letting the application
/// wait for its own timeout while its SYNs are dropped. The packet programs
/// stay the authority for every packet; this only fails fast. Only TCP and
/// UDP are judged here; audit mode refuses nothing (the packet path counts
/// the would-be drops). Returning 0 makes the syscall fail with EPERM
/// (`__cgroup_bpf_run_filter_sock_addr`, kernel/bpf/cgroup.c).
#[inline(always)]
fn sock_addr_verdict(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    // Who connects: recorded on the socket for later deny events.
    // SAFETY: the storage API takes this context.
    if let Some(st) = unsafe { SOCK_STATE.get_or_insert_ptr_mut(ctx, None).as_mut() } {
        record_process(st);
    }
    // SAFETY: reading context fields the verifier allows for sock_addr programs.
    let (proto, port_be) = unsafe { ((*sa).protocol, (*sa).user_port) };
    let proto = proto as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return PASS;
    }
    let Some(config) = CONFIG.get(0) else {
        return PASS;
    };
    if config.mode != MODE_ENFORCE {
        return PASS;
    }
    let remote_port = u16::from_be(port_be as u16);
    let mut remote = [0u8; 16];
    // SAFETY: as above; addresses are read as the u32 words they are.
    unsafe {
        if v6 {
            let w = (*sa).user_ip6;
            let mut i = 0;
            while i < 4 {
                let b = w[i].to_ne_bytes();
                remote[i * 4] = b[0];
                remote[i * 4 + 1] = b[1];
                remote[i * 4 + 2] = b[2];
                remote[i * 4 + 3] = b[3];
                i += 1;
            }
        } else {
            let b = (*sa).user_ip4.to_ne_bytes();
            remote[0] = b[0];
            remote[1] = b[1];
            remote[2] = b[2];
            remote[3] = b[3];
        }
    }
    // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) on a dual-stack socket
    // goes out as IPv4: judge it as the packet program will see it.
    let mut v6 = v6;
    if v6 && remote[..10].iter().all(|b| *b == 0) && remote[10] == 0xff && remote[11] == 0xff {
        v6 = false;
        remote = [
            remote[12], remote[13], remote[14], remote[15], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
    }
    // Loopback destinations are judged on the loopback device, where the
    // packet program knows the interface; this hook does not.
    let loopback = if v6 {
        remote[..15].iter().all(|b| *b == 0) && remote[15] == 1
    } else {
        remote[0] == 127
    };
    if loopback && config.loopback != LOOPBACK_ENFORCE {
        return PASS;
    }
    // SAFETY: the socket behind the context; its source port is readable.
    let local_port = unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        if sk.is_null() {
            0
        } else {
            (*sk).src_port as u16
        }
    };
    let flow = Flow {
        v6,
        proto,
        remote,
        local: [0; 16],
        remote_port,
        local_port,
        l4_off: 0,
    };
    let slot = config.generation & 1;
    if lookup(slot, &flow, DIR_EGRESS, remote_port).is_some() {
        return PASS;
    }
    // A server answering an allowed inbound datagram with sendto(): only to
    // a remote that sent to this socket (see `is_reply`). A connect() is
    // never a reply, whatever port the socket is bound to.
    if proto == PROTO_UDP
        && local_port != 0
        && lookup(slot, &flow, DIR_INGRESS, local_port).is_some()
    {
        // SAFETY: a helper on the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        if is_peer(cookie, &flow) {
            return PASS;
        }
    }
    add_packet(&DENY_STATS, deny_index(1, DIR_EGRESS, REASON_NO_RULE));
    // SAFETY: a helper without arguments, in the process's context.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let key = flow_key(
        &remote,
        remote_port,
        local_port,
        proto,
        DIR_EGRESS,
        REASON_NO_RULE,
        cgroup_id,
    );
    if let Some((packets, ev)) = reserve_event(&key) {
        // SAFETY: `ev` points at a reserved, zeroed ring buffer record.
        unsafe {
            (*ev).packets = packets;
            (*ev).cgroup_id = cgroup_id;
            (*ev).uid = bpf_get_current_uid_gid() as u32;
            (*ev).reason = REASON_NO_RULE;
            (*ev).dir = DIR_EGRESS;
            (*ev).dropped = 1;
            (*ev).remote = remote;
            (*ev).remote_port = remote_port;
            (*ev).local_port = local_port;
            (*ev).proto = proto;
            (*ev).v6 = u8::from(v6);
            (*ev).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            if let Ok(comm) = bpf_get_current_comm() {
                (*ev).comm = comm;
            }
        }
        submit_event(ev);
    }
    DROP
}

/// No rule: what `count_rule` ignores.
pub(crate) const NO_RULE: u32 = u32::MAX;

#[inline(always)]
pub(crate) fn count_rule(rule: u32, dir: u8, len: u32) {
    if rule < MAX_RULES {
        add(&RULE_STATS, rule_stats_index(rule, dir), len);
    }
}

/// Adds one refused send, which has no bytes. Not `add(.., 0)`: LLVM turns
/// an atomic add of a constant 0 into an atomic OR, an instruction 5.10
/// rejects ("BPF_STX uses reserved fields"; atomics other than add came in
/// 5.12: https://github.com/torvalds/linux/blob/v5.10/kernel/bpf/verifier.c).
#[inline(always)]
fn add_packet(map: &PerCpuArray<Counter>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is valid per-CPU map memory, 8-byte aligned.
        unsafe { atomic_add_u64(ptr::addr_of_mut!((*c).packets), 1) };
    }
}

/// Adds one packet of `len` bytes. Atomic even though the array is per-CPU:
/// a softirq (ingress, TCP timers) can interrupt a process-context program
/// on the same CPU, and a plain `+=` would then lose one of the two.
#[inline(always)]
fn add(map: &PerCpuArray<Counter>, index: u32, len: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is valid per-CPU map memory, 8-byte aligned.
        unsafe {
            atomic_add_u64(ptr::addr_of_mut!((*c).packets), 1);
            atomic_add_u64(ptr::addr_of_mut!((*c).bytes), u64::from(len));
        }
    }
}

/// Step 5: the rule of the socket's cached verdict, if it covers this
/// packet (same remote, port and protocol; see `cache_serves`) and the rule
/// is still in the live policy.
#[inline(always)]
fn cached_rule(
    ctx: &SkBuffContext,
    flow: &Flow,
    dir: u8,
    slot: u32,
    sk: *mut bpf_sock,
) -> Option<u32> {
    let state = sock_state(sk, false)?;
    // SAFETY: a non-null pointer from bpf_sk_storage_get.
    let st = unsafe { &*state };
    let hit = st.valid != 0
        && st.proto == flow.proto
        && st.remote_port == cache_port(flow)
        && st.remote == flow.remote
        && cache_serves(ctx, flow, dir, st.dir, sk)
        && rule_active(slot, st.rule);
    hit.then_some(st.rule)
}

/// Whether a socket's cached verdict, stored when a rule of direction
/// `cached` allowed a packet, covers this packet of direction `dir`. The
/// same direction always; the other one only for what is a reply:
/// - UDP and ICMP: the cached flow proves the socket and the remote are
///   peers (it sent to them, or they sent to it under a rule);
/// - TCP ingress: not to a listener. A socket that connected out to an
///   allowed remote and then listens (connect, disconnect with AF_UNSPEC,
///   listen) would otherwise accept that remote's connections on a port
///   no ingress rule opens;
/// - TCP egress: not a SYN without ACK, which opens a connection.
#[inline(always)]
fn cache_serves(ctx: &SkBuffContext, flow: &Flow, dir: u8, cached: u8, sk: *mut bpf_sock) -> bool {
    if cached == dir || flow.proto != PROTO_TCP {
        return true;
    }
    is_reply(ctx, flow, dir, sk)
}

#[inline(always)]
fn rule_active(slot: u32, rule: u32) -> bool {
    if rule >= MAX_RULES {
        return false;
    }
    matches!(RULES.get(rule_slot_index(slot, rule)), Some(s) if s.active != 0)
}

/// The port a socket's cached verdict is keyed on: ICMP requests and replies
/// have different types, so ICMP is cached by address alone.
#[inline(always)]
fn cache_port(flow: &Flow) -> u16 {
    if flow.proto == PROTO_ICMP || flow.proto == PROTO_ICMPV6 {
        0
    } else {
        flow.remote_port
    }
}

#[inline(always)]
pub(crate) fn full_socket(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: reading the context's `sk` field, which the verifier allows
    // for cgroup_skb programs; bpf_sk_fullsock accepts NULL.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return ptr::null_mut();
        }
        bpf_sk_fullsock(sk)
    }
}

#[inline(always)]
fn sock_state(sk: *mut bpf_sock, create: bool) -> Option<*mut SockState> {
    if sk.is_null() {
        return None;
    }
    let flags = if create {
        u64::from(BPF_SK_STORAGE_GET_F_CREATE)
    } else {
        0
    };
    // SAFETY: sk is a full socket from bpf_sk_fullsock; the map pointer is
    // the BTF map definition the loader relocates.
    let p = unsafe {
        bpf_sk_storage_get(
            ptr::addr_of!(SOCK_STATE).cast_mut().cast::<c_void>(),
            sk.cast::<c_void>(),
            ptr::null_mut(),
            flags,
        )
    };
    if p.is_null() {
        None
    } else {
        Some(p.cast::<SockState>())
    }
}

#[inline(always)]
fn remember(sk: *mut bpf_sock, flow: &Flow, dir: u8, rule: u32) {
    if let Some(state) = sock_state(sk, true) {
        // SAFETY: a non-null pointer from bpf_sk_storage_get.
        unsafe {
            (*state).remote = flow.remote;
            (*state).remote_port = cache_port(flow);
            (*state).proto = flow.proto;
            (*state).dir = dir;
            (*state).rule = rule;
            (*state).valid = 1;
        }
    }
}

/// The allowlist of `dir` for (protocol, port, remote): exact entries first,
/// then CIDRs; a constant number of lookups whatever the policy size.
#[inline(always)]
fn lookup(slot: u32, flow: &Flow, dir: u8, port: u16) -> Option<u32> {
    if flow.v6 {
        let key = Key6 {
            addr: flow.remote,
            port,
            proto: flow.proto,
            dir,
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
                dir,
                proto: flow.proto,
                port: port.to_be_bytes(),
                addr: flow.remote,
            },
        );
        if let Some(r) = trie.get(&key) {
            return Some(r.rule);
        }
        dns::learned_rule(slot, flow, dir, port)
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
            dir,
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
                dir,
                proto: flow.proto,
                port: port.to_be_bytes(),
                addr,
            },
        );
        if let Some(r) = trie.get(&key) {
            return Some(r.rule);
        }
        dns::learned_rule(slot, flow, dir, port)
    }
}

/// ICMP echo request and reply types (RFC 792, RFC 4443).
const ICMP_ECHO_REPLY: u16 = 0;
const ICMP_ECHO_REQUEST: u16 = 8;
const ICMPV6_ECHO_REQUEST: u16 = 128;
const ICMPV6_ECHO_REPLY: u16 = 129;
/// TCP header flags (RFC 9293 3.1).
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The peer a datagram (or ICMP echo) flow is remembered under: the socket's
/// cookie and the remote end; ICMP echo by remote alone, as the kernel
/// answers echo requests from a socket of its own.
#[inline(always)]
fn peer_key(cookie: u64, flow: &Flow) -> PeerKey {
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
fn skb_cookie(ctx: &SkBuffContext) -> u64 {
    // SAFETY: a helper on the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) }
}

/// A datagram or ICMP echo that a rule allowed: its socket and remote are
/// now peers, so the remote's replies (and, for an inbound flow, the
/// socket's answers) pass step 7. TCP needs no such record: the stack
/// matches segments to connections itself.
#[inline(always)]
fn note_peer(ctx: &SkBuffContext, flow: &Flow, rule: u32) {
    if flow.proto == PROTO_TCP {
        return;
    }
    let _ = PEERS.insert(&peer_key(skb_cookie(ctx), flow), &rule, 0);
}

#[inline(always)]
fn is_peer(cookie: u64, flow: &Flow) -> bool {
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
fn reverse_lookup(
    ctx: &SkBuffContext,
    slot: u32,
    flow: &Flow,
    dir: u8,
    sk: *mut bpf_sock,
) -> Option<u32> {
    if !is_reply(ctx, flow, dir, sk) {
        return None;
    }
    let (other, port) = if dir == DIR_INGRESS {
        (DIR_EGRESS, flow.remote_port)
    } else {
        (DIR_INGRESS, flow.local_port)
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
fn is_reply(ctx: &SkBuffContext, flow: &Flow, dir: u8, sk: *mut bpf_sock) -> bool {
    match flow.proto {
        PROTO_TCP if dir == DIR_INGRESS => {
            // SAFETY: sk is a full socket, whose `state` the verifier lets us read.
            sk.is_null() || unsafe { (*sk).state } != TCP_LISTEN
        }
        PROTO_TCP => match read::<[u8; 2]>(ctx, flow.l4_off as usize + 12) {
            Ok(h) => h[1] & TCP_SYN == 0 || h[1] & TCP_ACK != 0,
            Err(_) => false,
        },
        PROTO_UDP => is_peer(skb_cookie(ctx), flow),
        _ => {
            let echo_reply = (flow.proto == PROTO_ICMP && flow.remote_port == ICMP_ECHO_REPLY)
                || (flow.proto == PROTO_ICMPV6 && flow.remote_port == ICMPV6_ECHO_REPLY);
            !echo_reply || is_peer(0, flow)
        }
    }
}

/// Reads `N` 32-bit words at `off` bytes past the network header, which
/// starts `B` bytes into the data (0 for cgroup_skb programs, the
/// link-layer header's length for the backstop at tc): straight from the
/// linear data when it is there, which costs no helper call, else through
/// bpf_skb_load_bytes. `B` is a constant, so each caller's offsets stay
/// constants for the verifier.
///
/// Words, not bytes: an address read byte by byte becomes sixteen scalars
/// that the compiler spills one by one around every helper call, which took
/// the egress frame to 456 bytes, past the 512-byte combined stack that
/// 5.10 and 6.1 allow once aya-log's subprogram frame is added.
#[inline(always)]
fn read_words<const B: usize, const N: usize>(
    skb: &SkBuff,
    off: usize,
) -> Result<[u32; N], Unjudgeable> {
    // SAFETY: reading the context's data pointers.
    let (data, end) = unsafe { ((*skb.skb).data as usize, (*skb.skb).data_end as usize) };
    if data + B + off + N * 4 <= end {
        // SAFETY: bounds checked against data_end just above. The load is a
        // plain word load (as `struct iphdr *` reads are in C): the kernel
        // allows packet loads at any alignment where the CPU has efficient
        // unaligned access (check_pkt_ptr_alignment, kernel/bpf/verifier.c),
        // as x86-64 and arm64 do; read_unaligned would compile to bytes.
        #[allow(clippy::cast_ptr_alignment)]
        return Ok(unsafe { ptr::read((data + B + off) as *const [u32; N]) });
    }
    read_at::<B, _>(skb, off)
}

/// An address of `W` words as the bytes the maps are keyed on.
#[inline(always)]
fn addr_bytes(words: &[u32], first: usize, count: usize) -> [u8; 16] {
    let mut w = [0u32; 4];
    let mut i = 0;
    while i < count && i < 4 {
        w[i] = words[first + i];
        i += 1;
    }
    // SAFETY: [u32; 4] and [u8; 16] have the same size and no invalid values.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

/// Reads a `T` at a variable offset through bpf_skb_load_bytes: the
/// verifier cannot follow direct packet access at offsets it only knows as
/// a range, and the helper also reaches non-linear data.
#[inline(always)]
fn read<T: Copy>(ctx: &SkBuffContext, off: usize) -> Result<T, Unjudgeable> {
    read_at::<0, T>(&ctx.skb, off)
}

/// [`read`] at `off` bytes past a network header `B` bytes into the data.
#[inline(always)]
fn read_at<const B: usize, T: Copy>(skb: &SkBuff, off: usize) -> Result<T, Unjudgeable> {
    skb.load::<T>(B + off).map_err(|_| Unjudgeable::Malformed)
}

#[inline(always)]
fn parse(ctx: &SkBuffContext, dir: u8) -> Result<Flow, Unjudgeable> {
    parse_at::<0>(&ctx.skb, dir)
}

/// Parses the IP packet whose network header is `B` bytes into the data.
#[inline(always)]
fn parse_at<const B: usize>(skb: &SkBuff, dir: u8) -> Result<Flow, Unjudgeable> {
    // Every IPv4 or IPv6 packet holds at least 20 bytes of header. (A
    // one-byte read would compile to `data_end > data`, which the verifier
    // grants no range: find_good_pkt_pointers in kernel/bpf/verifier.c.)
    let head: [u32; 5] = read_words::<B, 5>(skb, 0)?;
    match head[0].to_ne_bytes()[0] >> 4 {
        4 => parse_v4::<B>(skb, dir, &head),
        6 => parse_v6::<B>(skb, dir),
        _ => Err(Unjudgeable::Malformed),
    }
}

#[inline(always)]
fn parse_v4<const B: usize>(skb: &SkBuff, dir: u8, hdr: &[u32; 5]) -> Result<Flow, Unjudgeable> {
    let first = hdr[0].to_ne_bytes();
    let ihl = usize::from(first[0] & 0x0f);
    if ihl < 5 {
        return Err(Unjudgeable::Malformed);
    }
    let frag_word = hdr[1].to_ne_bytes();
    let frag = u16::from_be_bytes([frag_word[2], frag_word[3]]);
    if frag & 0x1fff != 0 {
        return Err(Unjudgeable::Fragment);
    }
    let proto = hdr[2].to_ne_bytes()[1];
    // Source is word 3, destination word 4.
    let (at, lat) = if dir == DIR_EGRESS { (4, 3) } else { (3, 4) };
    let remote = addr_bytes(hdr, at, 1);
    let local = addr_bytes(hdr, lat, 1);
    if ihl > 5 {
        refuse_source_route_v4::<B>(skb, ihl * 4)?;
    }
    // Other IPv4 options are skipped by the header length.
    transport::<B>(skb, dir, false, proto, ihl * 4, remote, local)
}

/// IPv4 options: loose (131) or strict (137) source route (RFC 791 3.1).
const IPOPT_LSRR: u8 = 0x83;
const IPOPT_SSRR: u8 = 0x89;
/// IPv4 options examined at most. Real traffic carries one or two options
/// if any; a packet with more is refused as a possible source route rather
/// than walked further: every option walked multiplies the states the
/// verifier explores (40 one-byte NOPs took the egress program past the
/// million instructions 5.10 and 6.1 verify).
const IPV4_MAX_OPTIONS: usize = 4;

/// Walks the IPv4 options between byte 20 and `hdr_len`: a source route
/// option, or more options than [`IPV4_MAX_OPTIONS`], is refused; a
/// malformed option list is malformed. Only packets with options pay for
/// this (one load per option).
#[inline(always)]
fn refuse_source_route_v4<const B: usize>(skb: &SkBuff, hdr_len: usize) -> Result<(), Unjudgeable> {
    let mut pos = 20;
    let mut n = 0;
    while n < IPV4_MAX_OPTIONS {
        if pos >= hdr_len {
            return Ok(());
        }
        let kind: [u8; 1] = read_at::<B, _>(skb, pos)?;
        match kind[0] {
            // End of the option list.
            0 => return Ok(()),
            // No operation: one byte.
            1 => pos += 1,
            IPOPT_LSRR | IPOPT_SSRR => return Err(Unjudgeable::SourceRoute),
            _ => {
                let len: [u8; 1] = read_at::<B, _>(skb, pos + 1)?;
                if len[0] < 2 {
                    return Err(Unjudgeable::Malformed);
                }
                pos += usize::from(len[0]);
            }
        }
        n += 1;
    }
    if pos >= hdr_len {
        Ok(())
    } else {
        Err(Unjudgeable::SourceRoute)
    }
}

#[inline(always)]
fn parse_v6<const B: usize>(skb: &SkBuff, dir: u8) -> Result<Flow, Unjudgeable> {
    let hdr: [u32; 10] = read_words::<B, 10>(skb, 0)?;
    let mut next = hdr[1].to_ne_bytes()[2];
    // Source is words 2-5, destination words 6-9.
    let (at, lat) = if dir == DIR_EGRESS { (6, 2) } else { (2, 6) };
    let remote = addr_bytes(&hdr, at, 4);
    let local = addr_bytes(&hdr, lat, 4);
    let mut off: usize = 40;
    let mut n = 0;
    while n < MAX_IPV6_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet
            // units, not counting the first 8 (RFC 8200 4.3-4.6). A routing
            // header with segments left sends the packet on past the
            // address judged here.
            0 | 43 | 60 => {
                let ext: [u8; 4] = read_at::<B, _>(skb, off)?;
                if next == 43 && ext[3] != 0 {
                    return Err(Unjudgeable::SourceRoute);
                }
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            // Fragment header (RFC 8200 4.5).
            44 => {
                let ext: [u8; 4] = read_at::<B, _>(skb, off)?;
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    return Err(Unjudgeable::Fragment);
                }
                next = ext[0];
                off += 8;
            }
            // Authentication header: length in 4-octet units minus 2 (RFC 4302).
            51 => {
                let ext: [u8; 2] = read_at::<B, _>(skb, off)?;
                next = ext[0];
                off += (usize::from(ext[1]) + 2) * 4;
            }
            _ => break,
        }
        n += 1;
    }
    transport::<B>(skb, dir, true, next, off, remote, local)
}

#[inline(always)]
fn transport<const B: usize>(
    skb: &SkBuff,
    dir: u8,
    v6: bool,
    proto: u8,
    off: usize,
    remote: [u8; 16],
    local: [u8; 16],
) -> Result<Flow, Unjudgeable> {
    // Keeps the offset provably bounded for the verifier.
    if off > 40 + MAX_IPV6_EXT_HEADERS * 2048 {
        return Err(Unjudgeable::Malformed);
    }
    let icmp = (proto == PROTO_ICMP && !v6) || (proto == PROTO_ICMPV6 && v6);
    if proto != PROTO_TCP && proto != PROTO_UDP && !icmp {
        return Err(match proto {
            0 | 43 | 44 | 51 | 60 => Unjudgeable::Malformed,
            _ => Unjudgeable::UnknownProto,
        });
    }
    // The first four bytes of the transport header: ports, or ICMP type,
    // code and checksum (an ICMP header is 8 bytes, so they are there).
    let l4 = first_l4_bytes::<B>(skb, off)?;
    let (src, dst) = if icmp {
        (u16::from(l4[0]), u16::from(l4[0]))
    } else {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    };
    let (remote_port, local_port) = if dir == DIR_EGRESS {
        (dst, src)
    } else {
        (src, dst)
    };
    Ok(Flow {
        v6,
        proto,
        remote,
        local,
        remote_port,
        local_port,
        l4_off: off as u32,
    })
}

/// Reads four bytes at `off`. The common cases (IPv4 without options,
/// IPv6 without extension headers) are constant offsets that direct packet
/// access covers, so a plain TCP or UDP packet is parsed without any helper
/// call.
#[inline(always)]
fn first_l4_bytes<const B: usize>(skb: &SkBuff, off: usize) -> Result<[u8; 4], Unjudgeable> {
    if off == 20 {
        let w: [u32; 1] = read_words::<B, 1>(skb, 20)?;
        return Ok(w[0].to_ne_bytes());
    }
    if off == 40 {
        let w: [u32; 1] = read_words::<B, 1>(skb, 40)?;
        return Ok(w[0].to_ne_bytes());
    }
    read_at::<B, _>(skb, off)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
