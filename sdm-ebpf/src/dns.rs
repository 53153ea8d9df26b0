//! Learning allowed addresses from DNS answers, in the kernel, before the
//! answer reaches the application: closes the race between an answer with
//! an address the agent has not resolved yet and the application's first
//! SYN to it, without a proxy and without the agent being alive.
//!
//! Order of events:
//!
//!  1. Egress, a packet the policy allows to a trusted resolver
//!     (`SDM_DNS_RESOLV`) on port 53 (UDP, or the first segment of a TCP
//!     query): the query is noted in `SDM_DNS_PEND` by (resolver, local
//!     port, DNS id, protocol).
//!  2. Ingress, a packet from a trusted resolver's port 53 that
//!     `sdm_ingress` passed (or, in audit mode, would have dropped): handed
//!     to `sdm_dns_in` by a tail call (`hand_answer`), which copies its
//!     payload (at most `DNS_BUF` bytes; for TCP, a whole message in one
//!     segment) is copied into the per-CPU `SDM_DNS_SCRATCH`, and the
//!     parser `sdm_dns` is tail-called. It returns PASS in every case: the
//!     packet was allowed before it got here, and a parse failure must not
//!     turn into a drop.
//!     Over TCP, only the segment the socket expects next (its sequence
//!     number is the socket's `rcv_nxt`): the program runs before TCP has
//!     checked sequence numbers, so an out-of-window forgery teaches nothing.
//!  3. `sdm_dns`, stage QUESTION: a response (QR), opcode QUERY, RCODE 0,
//!     one question, to a query noted in 1 within `DNS_PENDING_NS`, which
//!     the answer consumes (a second answer to the same query is unasked);
//!     the question name (no compression) is matched against
//!     `SDM_DNS_NAMES`: exact name first, else the longest `*.suffix`, by
//!     its hash, and then (stage VERIFY) byte for byte against the name the
//!     entry holds, so that a name crafted to collide with an allowed one's
//!     hash teaches nothing. Anything else teaches nothing and is counted by
//!     its result (`SDM_DNS_STATS`).
//!  4. Stage OWNER, once per answer record: the owner name (compression
//!     pointers followed, each to an earlier offset than the last, at most
//!     `DNS_MAX_STEPS` bytes and pointers) is compared with the CNAME chain
//!     (the question and the aliases seen so far, as hashes of the
//!     lower-cased wire names). An A or AAAA record on the chain is learned:
//!     `SDM_LEARNED4/6[address] = (host, now + max(TTL, floor))` (a plain
//!     hash: when full, the address is not stored and `DNS_STAT_LEARN_FULL`
//!     counts it; nothing alive is evicted). A CNAME on
//!     the chain adds its target (stage CNAME). Other records are skipped.
//!  5. Each record is one tail call (the verifier sees one bounded name walk
//!     per program run); the kernel's limit of 33 tail calls bounds the
//!     records read (`truncated` beyond).
//!
//! `lookup` in policy.rs consults the learned addresses after the exact and
//! CIDR allowlists: a learned, unexpired address allows the ports of its
//! hostname's rules (`SDM_HOSTPORT_<slot>`). Existing connections keep their
//! socket's cached verdict after expiry; only new flows see the expiry.
//!
//! Kernel behaviour relied on: a cgroup_skb ingress program runs before the
//! packet is queued to the socket (`sk_filter_trim_cap` -> `BPF_CGROUP_RUN_PROG_INET_INGRESS`,
//! https://github.com/torvalds/linux/blob/v6.18/net/core/filter.c), so the
//! map update is visible before the application can read the answer; tail
//! calls keep the program's context and verdict
//! (https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/core.c,
//! `MAX_TAIL_CALL_CNT`).

use core::ptr;

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_tail_call, bpf_tcp_sock},
    macros::{cgroup_skb, map},
    maps::{HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::SkBuffContext,
};
use sdm_common::{
    dns_fold, dns_lower, fnv_step, DenyReason, DnsHost, DnsQueryKey, DnsQueryVerdict, DnsResult,
    DnsScratch, HostPortKey, KernelConfig, KernelMode, Learned, ResolverKey, TrafficDir,
    DNSQ_STATS_SLOTS, DNS_BUF, DNS_CHAIN, DNS_HOST_QUERY_ONLY, DNS_MAX_LABELS, DNS_NAME_SEED,
    DNS_NAME_WIRE, DNS_PENDING_ENTRIES, DNS_PENDING_NS, DNS_QUERIES_POLICY, DNS_STATS_SLOTS,
    DNS_STAT_LEARN_FULL, DNS_WILDCARD_TAG, FNV_OFFSET, LEARNED_ENTRIES, LEARN_TTL_MAX_S,
    MAX_DNS_NAMES, MAX_DNS_RESOLVERS, MAX_HOST_PORTS, PROTO_TCP, PROTO_UDP,
};

use crate::{
    events::deny,
    maps::CONFIG,
    parse::{parse, PacketFlow},
    sock::full_socket,
    stats::{atomic_add_u64, count_rule},
    DROP, PASS,
};

#[map(name = "SDM_DNS_NAMES")]
static DNS_NAMES: HashMap<u64, DnsHost> = HashMap::with_max_entries(MAX_DNS_NAMES, 0);
#[map(name = "SDM_DNS_RESOLV")]
static DNS_RESOLVERS: HashMap<ResolverKey, u32> = HashMap::with_max_entries(MAX_DNS_RESOLVERS, 0);
#[map(name = "SDM_DNS_PEND")]
static DNS_PENDING: LruHashMap<DnsQueryKey, u64> =
    LruHashMap::with_max_entries(DNS_PENDING_ENTRIES, 0);
#[map(name = "SDM_DNS_SCRATCH")]
static DNS_SCRATCH: PerCpuArray<DnsScratch> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "SDM_DNS_STATS")]
static DNS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DNS_STATS_SLOTS, 0);
#[map(name = "SDM_DNS_PROGS")]
static DNS_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map(name = "SDM_DNSIN_PROGS")]
static DNS_IN_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map(name = "SDM_DNSQ_SCRATCH")]
static DNSQ_SCRATCH: PerCpuArray<DnsScratch> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "SDM_DNSQ_STATS")]
static DNSQ_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DNSQ_STATS_SLOTS, 0);
#[map(name = "SDM_DNSQ_PROGS")]
static DNSQ_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map(name = "SDM_LEARNED4")]
static LEARNED4: HashMap<[u8; 4], Learned> = HashMap::with_max_entries(LEARNED_ENTRIES, 0);
#[map(name = "SDM_LEARNED6")]
static LEARNED6: HashMap<[u8; 16], Learned> = HashMap::with_max_entries(LEARNED_ENTRIES, 0);
#[map(name = "SDM_HOSTPORT_0")]
static HOST_PORTS_0: HashMap<HostPortKey, u32> = HashMap::with_max_entries(MAX_HOST_PORTS, 0);
#[map(name = "SDM_HOSTPORT_1")]
static HOST_PORTS_1: HashMap<HostPortKey, u32> = HashMap::with_max_entries(MAX_HOST_PORTS, 0);

const DNS_PORT: u16 = 53;
const MASK: u32 = (DNS_BUF - 1) as u32;
/// Bytes and pointers one name walk may visit: 255 bytes of name plus
/// pointers (each pointer strictly backwards).
const DNS_MAX_STEPS: u32 = 384;
/// Tail calls one answer or query may use. The kernel allows 33 in a chain
/// (32 before 5.17: `MAX_TAIL_CALL_CNT`,
/// https://github.com/torvalds/linux/blob/v5.10/include/linux/bpf.h), and
/// an answer gets to the parser through two (`sdm_ingress` to `sdm_dns_in`
/// to `sdm_dns`).
const MAX_CALLS: u32 = 30;

const STAGE_QUESTION: u32 = 0;
const STAGE_OWNER: u32 = 1;
const STAGE_CNAME: u32 = 2;
const STAGE_VERIFY: u32 = 3;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

#[inline(always)]
fn count(result: DnsResult) {
    count_slot(result as u32);
}

/// Counts an address an allowed answer taught that `SDM_LEARNED4/6` had
/// no room for (the slot after the results).
#[inline(always)]
fn count_learn_full() {
    count_slot(DNS_STAT_LEARN_FULL);
}

#[inline(always)]
fn count_slot(slot: u32) {
    if let Some(c) = DNS_STATS.get_ptr_mut(slot) {
        atomic_add_u64(c, 1);
    }
}

#[inline(always)]
fn resolver_key(flow: &PacketFlow) -> ResolverKey {
    ResolverKey {
        addr: flow.remote,
        v6: u32::from(flow.v6),
    }
}

#[inline(always)]
fn is_resolver(flow: &PacketFlow) -> bool {
    // SAFETY: a plain value, copied out.
    unsafe { DNS_RESOLVERS.get(&resolver_key(flow)) }.is_some()
}

/// Where the DNS message starts in the packet (after the UDP header, or
/// after the TCP header and its 2-byte length prefix), and its length as
/// the transport says; `None` for a TCP segment without a whole message.
#[inline(always)]
fn message(ctx: &SkBuffContext, flow: &PacketFlow) -> Option<(u32, u32)> {
    let off = flow.l4_off;
    if flow.proto == PROTO_UDP {
        let hdr: [u8; 8] = ctx.load(off as usize).ok()?;
        let udp_len = u32::from(u16::from_be_bytes([hdr[4], hdr[5]]));
        if udp_len < 8 {
            return None;
        }
        return Some((off + 8, udp_len - 8));
    }
    let hdr: [u8; 14] = ctx.load(off as usize).ok()?;
    let doff = u32::from(hdr[12] >> 4) * 4;
    if doff < 20 {
        return None;
    }
    let start = off + doff;
    let seg = ctx.len().checked_sub(start)?;
    if seg < 2 {
        return None;
    }
    let prefix: [u8; 2] = ctx.load(start as usize).ok()?;
    let msg = u32::from(u16::from_be_bytes(prefix));
    if msg + 2 > seg {
        return None;
    }
    Some((start + 2, msg))
}

/// An allowed packet to a trusted resolver's port 53 over UDP or TCP:
/// notes the query, so that its answer is accepted (step 1 above).
#[inline(always)]
pub fn note_query(ctx: &SkBuffContext, flow: &PacketFlow) {
    if flow.remote_port != DNS_PORT || (flow.proto != PROTO_UDP && flow.proto != PROTO_TCP) {
        return;
    }
    if !is_resolver(flow) {
        return;
    }
    let Some((start, len)) = message(ctx, flow) else {
        return;
    };
    if len < 12 {
        return;
    }
    let Ok(id) = ctx.load::<[u8; 2]>(start as usize) else {
        return;
    };
    let key = DnsQueryKey {
        resolver: flow.remote,
        port: flow.local_port,
        id: u16::from_be_bytes(id),
        proto: flow.proto,
        v6: u8::from(flow.v6),
        _pad: [0; 2],
    };
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = DNS_PENDING.insert(&key, &now, 0);
}

/// Tail-calls program 0 of `progs`, keeping the context and its `cb`; on
/// failure it returns and the caller goes on. A helper call straight from
/// the program's own frame: the verifier refuses tail calls from
/// subprograms with deep stacks (`check_max_stack_depth_subprog` in
/// kernel/bpf/verifier.c), hence always inlined.
#[inline(always)]
fn tail_call(ctx: &SkBuffContext, progs: &ProgramArray) {
    // SAFETY: the context and the program array's definition, as the
    // helper expects.
    unsafe {
        bpf_tail_call(
            ctx.skb.skb.cast(),
            ptr::from_ref(progs).cast_mut().cast(),
            0,
        );
    }
}

/// Tail-calls the parser's next run.
#[inline(always)]
fn parse_next(ctx: &SkBuffContext) {
    tail_call(ctx, &DNS_PROGS);
}

/// Step 2's entry, from `sdm_ingress` once it has passed a packet (or
/// would have, in audit mode): a packet from port 53 over UDP or TCP is
/// handed to `sdm_dns_in`, which returns PASS whatever it finds. Every
/// other packet costs this one comparison: the answer path used to be a
/// second attached program that parsed every inbound packet again.
#[inline(always)]
pub fn hand_answer(ctx: &SkBuffContext, flow: &PacketFlow) {
    if flow.remote_port == DNS_PORT && (flow.proto == PROTO_UDP || flow.proto == PROTO_TCP) {
        tail_call(ctx, &DNS_IN_PROGS);
    }
}

/// The host id of a learned, unexpired address: what both of a learned
/// address's steps (single ports here, wide ranges in `ranges`) key on,
/// looked up once per packet.
#[inline(always)]
pub fn learned_host(flow: &PacketFlow) -> Option<u32> {
    // SAFETY: plain values, copied out.
    let learned = unsafe {
        if flow.v6 {
            LEARNED6.get(&flow.remote).copied()
        } else {
            let a = [
                flow.remote[0],
                flow.remote[1],
                flow.remote[2],
                flow.remote[3],
            ];
            LEARNED4.get(&a).copied()
        }
    }?;
    // SAFETY: no arguments.
    if unsafe { bpf_ktime_get_ns() } > learned.expires_ns {
        return None;
    }
    Some(learned.host)
}

/// The rule a learned address of hostname `host` allows for (port,
/// protocol, direction) in policy `slot`.
#[inline(always)]
pub fn host_port_rule(
    slot: u32,
    host: u32,
    flow: &PacketFlow,
    dir: TrafficDir,
    port: u16,
) -> Option<u32> {
    let key = HostPortKey {
        host,
        port,
        proto: flow.proto,
        dir: dir as u8,
    };
    let map = if slot == 0 {
        &HOST_PORTS_0
    } else {
        &HOST_PORTS_1
    };
    // SAFETY: a plain value, copied out.
    unsafe { map.get(&key).copied() }
}

/// Copies the `n` bytes (12..=DNS_BUF, checked by the caller) of the
/// message at `start` into the scratch's buffer; false if the kernel could
/// not. The length goes through a form whose bounds every verifier derives
/// (an AND and an add on the register passed): 5.10 to 6.12 do not carry
/// the caller's checks over to the copy of the length LLVM makes ("invalid
/// access to map value ... size=0", seen in the kernel matrix). black_box
/// keeps LLVM from dropping the mask as redundant.
#[inline(always)]
fn load_message(ctx: &SkBuffContext, start: u32, s: *mut DnsScratch, n: u32) -> bool {
    let n_bounded = ((core::hint::black_box(u64::from(n)) - 1) & (DNS_BUF as u64 - 1)) + 1;
    // SAFETY: `s` is valid per-CPU map memory of DNS_BUF bytes for `buf`;
    // 1 <= n_bounded <= DNS_BUF.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            start,
            ptr::addr_of_mut!((*s).buf).cast(),
            n_bounded as u32,
        )
    };
    rc == 0
}

/// Volatile access to the walker's state in the scratch map value: LLVM
/// would otherwise keep it in registers across loop iterations, and the
/// verifier would then track a different constant per path and explore
/// each one (`is_state_visited` in kernel/bpf/verifier.c prunes only
/// states it has seen). From memory, the values are just unknown scalars.
macro_rules! get {
    ($s:ident . $f:ident) => {
        // SAFETY: a field of the valid map value `$s` points into.
        unsafe { ptr::read_volatile(ptr::addr_of!((*$s).$f)) }
    };
}
macro_rules! set {
    ($s:ident . $f:ident, $v:expr) => {{
        let v = $v;
        // SAFETY: as for `get!`.
        unsafe { ptr::write_volatile(ptr::addr_of_mut!((*$s).$f), v) }
    }};
}

mod answer;
mod name;
mod query;

// The parts share the maps and helpers above and each other's steps.
use name::*;
pub use query::{judge_query, unjudged, Query};
