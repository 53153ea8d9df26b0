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
//!  2. Ingress (`sdm_dns_in`, attached beside `sdm_ingress`), a packet from
//!     a trusted resolver's port 53: its payload (at most `DNS_BUF` bytes; for TCP, a whole message in one
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
/// Tail calls one answer may use (the kernel allows 33 in a chain).
const MAX_CALLS: u32 = 32;

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

/// Attached to the cgroup's ingress next to `sdm_ingress` (both run; this
/// one always passes): answers from a trusted resolver's port 53 go to the
/// parser (step 2 above). A separate program, so the packet filter's own
/// verification and cost stay as they were.
#[cgroup_skb(ingress)]
pub fn sdm_dns_in(ctx: SkBuffContext) -> i32 {
    let Ok(flow) = parse(&ctx, TrafficDir::Ingress) else {
        return PASS;
    };
    if flow.remote_port != DNS_PORT || (flow.proto != PROTO_UDP && flow.proto != PROTO_TCP) {
        return PASS;
    }
    if !is_resolver(&flow) {
        count(DnsResult::NotResolver);
        return PASS;
    }
    let Some((start, len)) = message(&ctx, &flow) else {
        return PASS;
    };
    if len < 12 {
        count(DnsResult::Malformed);
        return PASS;
    }
    if flow.proto == PROTO_TCP && !in_sequence(&ctx, &flow) {
        count(DnsResult::Unasked);
        return PASS;
    }
    let Some(s) = DNS_SCRATCH.get_ptr_mut(0) else {
        return PASS;
    };
    let n = if len > DNS_BUF as u32 {
        DNS_BUF as u32
    } else {
        len
    };
    if n < 12 {
        return PASS;
    }
    // The same value, 12..=DNS_BUF, in a form whose bounds every verifier
    // derives (an AND and an add on the register passed): 5.10 to 6.12 do
    // not carry the checks above over to the copy of the length LLVM makes
    // ("invalid access to map value ... size=0", seen in the kernel
    // matrix). black_box keeps LLVM from dropping the mask as redundant.
    let n_bounded = ((core::hint::black_box(u64::from(n)) - 1) & (DNS_BUF as u64 - 1)) + 1;
    // SAFETY: `s` is valid per-CPU map memory of DNS_BUF bytes for `buf`;
    // 1 <= n_bounded <= DNS_BUF.
    unsafe {
        let rc = bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            start,
            ptr::addr_of_mut!((*s).buf).cast(),
            n_bounded as u32,
        );
        if rc != 0 {
            count(DnsResult::Malformed);
            return PASS;
        }
        (*s).len = n;
        (*s).stage = STAGE_QUESTION;
        (*s).calls = 0;
        (*s).learned = 0;
        (*s).chain_len = 0;
        (*s).host = 0;
        (*s).resolver = flow.remote;
        (*s).v6 = u32::from(flow.v6);
        (*s).local_port = u32::from(flow.local_port);
        (*s).proto = u32::from(flow.proto);
        // A truncated copy: the records past DNS_BUF are not read.
        (*s).truncated = u32::from(len > DNS_BUF as u32);
        (*s).next = 0;
        (*s).w_state = WALK_IDLE;
    }
    parse_next(&ctx);
    PASS
}

/// Whether a TCP segment is the one its socket expects next: its sequence
/// number is the socket's `rcv_nxt`. This program runs before TCP checks
/// sequence numbers (`tcp_filter` comes first in `tcp_v4_rcv`,
/// https://github.com/torvalds/linux/blob/v6.18/net/ipv4/tcp_ipv4.c), so a
/// forged segment must not be parsed on the strength of its addresses.
#[inline(always)]
fn in_sequence(ctx: &SkBuffContext, flow: &PacketFlow) -> bool {
    let sk = full_socket(ctx);
    if sk.is_null() {
        return false;
    }
    // SAFETY: sk is a full socket; the helper returns NULL for non-TCP ones.
    let tp = unsafe { bpf_tcp_sock(sk) };
    if tp.is_null() {
        return false;
    }
    let Ok(seq) = ctx.load::<[u8; 4]>(flow.l4_off as usize + 4) else {
        return false;
    };
    // SAFETY: a valid bpf_tcp_sock pointer from the helper.
    u32::from_be_bytes(seq) == unsafe { (*tp).rcv_nxt }
}

/// The byte at `pos` of the copied message (masked: the verifier sees an
/// in-bounds offset; callers check `pos < len` for the meaning).
#[inline(always)]
fn byte(s: &DnsScratch, pos: u32) -> u8 {
    s.buf[(pos & MASK) as usize]
}

#[inline(always)]
fn be16(s: &DnsScratch, pos: u32) -> u16 {
    u16::from_be_bytes([byte(s, pos), byte(s, pos + 1)])
}

#[inline(always)]
fn be32(s: &DnsScratch, pos: u32) -> u32 {
    u32::from_be_bytes([
        byte(s, pos),
        byte(s, pos + 1),
        byte(s, pos + 2),
        byte(s, pos + 3),
    ])
}

const WALKING: u32 = 0;
const WALKED: u32 = 1;
const WALK_FAILED: u32 = 2;
/// No walk in progress (set by `sdm_dns_in` for a new answer).
pub const WALK_IDLE: u32 = 3;
/// Steps per program run: the verifier's work grows faster than linearly
/// with a longer loop; a longer name resumes in the next tail call.
const WALK_STEPS: u32 = 128;

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

/// Starts a walk of the name at `pos`, following compression pointers if
/// `pointers`; [`walk_steps`] does the walking. The result is in `s.w_hash`
/// (the hash of its lower-cased wire form), `s.w_end` (where the record
/// continues after it) and `s.w_labels` (how many labels; their hashes are
/// in `s.labels`). Pointers must point before the previous one, which rules
/// out loops; reserved label types, names over 255 bytes and reads past the
/// message fail.
#[inline(always)]
fn walk_init(s: *mut DnsScratch, pos: u32, pointers: u32) {
    set!(s.w_pos, pos);
    set!(s.w_pointers, pointers);
    set!(s.w_limit, pos);
    set!(s.w_end, 0);
    set!(s.w_jumped, 0);
    set!(s.w_remaining, 0);
    set!(s.w_labels, 0);
    set!(s.w_total, 0);
    set!(s.w_state, WALKING);
    set!(s.w_hash, FNV_OFFSET);
    set!(s.w_label, FNV_OFFSET);
}

/// Up to `WALK_STEPS` steps (a byte or a pointer each) of the current walk;
/// returns the walk's state. A longer name continues in the next run.
#[inline(always)]
fn walk_steps(s: *mut DnsScratch) -> u32 {
    let mut i = 0;
    while i < WALK_STEPS {
        step(s);
        if get!(s.w_state) != WALKING {
            break;
        }
        i += 1;
    }
    let state = get!(s.w_state);
    if state == WALKING {
        let left = get!(s.w_steps_left);
        if left <= WALK_STEPS {
            // Longer than any valid name can take.
            set!(s.w_state, WALK_FAILED);
            return WALK_FAILED;
        }
        set!(s.w_steps_left, left - WALK_STEPS);
    }
    state
}

#[inline(always)]
fn step(s: *mut DnsScratch) {
    let pos = get!(s.w_pos);
    let len = get!(s.len);
    if pos >= len {
        set!(s.w_state, WALK_FAILED);
        return;
    }
    // SAFETY: the map value is valid; the offset is masked into the buffer.
    let b = unsafe { byte(&*s, pos) };
    let remaining = get!(s.w_remaining);
    if remaining > 0 {
        let c = dns_lower(b);
        set!(s.w_label, fnv_step(get!(s.w_label), c));
        set!(s.w_hash, fnv_step(get!(s.w_hash), c));
        set!(s.w_remaining, remaining - 1);
        set!(s.w_pos, pos + 1);
        if remaining == 1 {
            let n = get!(s.w_labels);
            let label = get!(s.w_label);
            // SAFETY: as above; the index is masked into the array.
            unsafe { (*s).labels[(n as usize) & (DNS_MAX_LABELS - 1)] = label };
            set!(s.w_labels, n + 1);
        }
    } else if b == 0 {
        if get!(s.w_jumped) == 0 {
            set!(s.w_end, pos + 1);
        }
        set!(s.w_state, WALKED);
    } else if b & 0xc0 == 0xc0 {
        if get!(s.w_pointers) == 0 || pos + 1 >= len {
            set!(s.w_state, WALK_FAILED);
            return;
        }
        // SAFETY: as above.
        let lo = unsafe { byte(&*s, pos + 1) };
        let target = (u32::from(b & 0x3f) << 8) | u32::from(lo);
        if target >= get!(s.w_limit) {
            set!(s.w_state, WALK_FAILED);
            return;
        }
        if get!(s.w_jumped) == 0 {
            set!(s.w_end, pos + 2);
            set!(s.w_jumped, 1);
        }
        set!(s.w_limit, target);
        set!(s.w_pos, target);
    } else if b & 0xc0 != 0 {
        set!(s.w_state, WALK_FAILED);
    } else {
        let total = get!(s.w_total) + u32::from(b) + 1;
        if total > 255 {
            set!(s.w_state, WALK_FAILED);
            return;
        }
        set!(s.w_total, total);
        let n = get!(s.w_labels);
        // SAFETY: as above; the index is masked into the array.
        unsafe { (*s).label_pos[(n as usize) & (DNS_MAX_LABELS - 1)] = pos };
        set!(s.w_remaining, u32::from(b));
        set!(s.w_hash, fnv_step(get!(s.w_hash), b));
        set!(s.w_label, FNV_OFFSET);
        set!(s.w_pos, pos + 1);
    }
}

/// The question name's entry by hash: an exact `SDM_DNS_NAMES` entry, else
/// the longest matching `*.suffix`; `(host id, key, where the matched name
/// starts in the message)`, or None. Stage VERIFY then compares the names in full.
#[inline(always)]
fn match_host(s: &DnsScratch, labels: u32) -> Option<(u32, u64, u32)> {
    if labels == 0 || labels as usize > DNS_MAX_LABELS {
        return None;
    }
    let mut acc = DNS_NAME_SEED;
    // Plain variables, written before the loop, not an `Option` filled in
    // it: LLVM keeps an `Option`'s payload in stack slots it reads before
    // testing for `None`, and kernels before 6.5 refuse reading stack
    // never written on that path ("invalid read from stack").
    let (mut hit, mut host, mut hit_key, mut start) = (false, 0u32, 0u64, 0u32);
    let mut j = labels;
    let mut k = 0;
    while k < DNS_MAX_LABELS {
        if j == 0 {
            break;
        }
        j -= 1;
        acc = dns_fold(acc, s.labels[(j as usize) & (DNS_MAX_LABELS - 1)]);
        let key = if j > 0 { acc ^ DNS_WILDCARD_TAG } else { acc };
        // SAFETY: plain values, copied out.
        if let Some(h) = unsafe { DNS_NAMES.get(&key) } {
            // Where the matched name starts, read from the map value: an
            // unknown scalar to the verifier, not the loop's constant `j`,
            // so that its states for each iteration stay few.
            hit = true;
            host = h.host;
            hit_key = key;
            start = s.label_pos[(j as usize) & (DNS_MAX_LABELS - 1)];
        }
        k += 1;
    }
    if hit {
        Some((host, hit_key, start))
    } else {
        None
    }
}

/// Stage VERIFY: the question's matched name, from `m_start` in the copied
/// message, is byte for byte (lower-cased) the name the entry holds.
#[inline(always)]
fn verify_name(s: &DnsScratch) -> bool {
    // SAFETY: a plain map value, read in place.
    let Some(v) = (unsafe { DNS_NAMES.get(&s.m_key) }) else {
        return false;
    };
    let len = v.len;
    let start = s.m_start;
    if len == 0 || len as usize > DNS_NAME_WIRE || start + len > s.len {
        return false;
    }
    let mut i: u32 = 0;
    while i < DNS_NAME_WIRE as u32 {
        if i >= len {
            break;
        }
        // Length bytes are below 64: lower-casing leaves them as they are.
        if dns_lower(byte(s, start + i)) != v.name[(i as usize) & (DNS_NAME_WIRE - 1)] {
            return false;
        }
        i += 1;
    }
    true
}

/// Addresses no service answers from: unspecified, loopback, link-local,
/// multicast, broadcast; never learned.
#[inline(always)]
fn unlearnable4(a: &[u8; 4]) -> bool {
    a[0] == 0 || a[0] == 127 || (a[0] == 169 && a[1] == 254) || a[0] >= 224
}

#[inline(always)]
fn unlearnable6(a: &[u8; 16]) -> bool {
    let mut zero_prefix = true;
    let mut i = 0;
    while i < 15 {
        if a[i] != 0 {
            zero_prefix = false;
        }
        i += 1;
    }
    // ::, ::1, fe80::/10, ff00::/8
    (zero_prefix && a[15] <= 1) || (a[0] == 0xfe && a[1] & 0xc0 == 0x80) || a[0] == 0xff
}

#[inline(always)]
fn learn(s: &DnsScratch, config: &KernelConfig, owner: u32, rtype: u16, ttl: u32) {
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut secs = if ttl < config.learn_ttl_min_s {
        config.learn_ttl_min_s
    } else {
        ttl
    };
    if secs > LEARN_TTL_MAX_S {
        secs = LEARN_TTL_MAX_S;
    }
    let value = Learned {
        host: s.host,
        _pad: 0,
        expires_ns: now + u64::from(secs) * 1_000_000_000,
    };
    if rtype == TYPE_A {
        let a = [
            byte(s, owner),
            byte(s, owner + 1),
            byte(s, owner + 2),
            byte(s, owner + 3),
        ];
        if !unlearnable4(&a) && LEARNED4.insert(&a, &value, 0).is_err() {
            count_learn_full();
        }
    } else {
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            a[i] = byte(s, owner + i as u32);
            i += 1;
        }
        if !unlearnable6(&a) && LEARNED6.insert(&a, &value, 0).is_err() {
            count_learn_full();
        }
    }
}

/// The parser, tail-called from the ingress program and from itself, one
/// name (question, record owner or CNAME target) per run. Always PASS.
#[cgroup_skb(ingress)]
pub fn sdm_dns(ctx: SkBuffContext) -> i32 {
    if let Some(result) = try_dns(&ctx) {
        count(result);
    }
    PASS
}

/// Runs one stage; `Some(result)` when the answer is done with.
#[inline(always)]
fn try_dns(ctx: &SkBuffContext) -> Option<DnsResult> {
    let sp = DNS_SCRATCH.get_ptr_mut(0)?;
    let config = CONFIG.get(0)?;
    {
        // SAFETY: valid per-CPU map memory; this CPU runs one parser at a
        // time (softirq context, no nesting of ingress programs).
        let s = unsafe { &mut *sp };
        s.calls += 1;
        if s.calls > MAX_CALLS {
            return Some(DnsResult::Truncated);
        }
        if s.stage == STAGE_VERIFY {
            if !verify_name(s) {
                return Some(DnsResult::NotAllowed);
            }
            s.stage = STAGE_OWNER;
            parse_next(ctx);
            return Some(DnsResult::Truncated);
        }
        if s.w_state != WALKING {
            // Checks before the name, and where the name starts.
            match s.stage {
                STAGE_QUESTION => {
                    if let Some(r) = before_question(s) {
                        return Some(r);
                    }
                    walk_init(sp, 12, 0);
                }
                STAGE_OWNER => {
                    if s.answers_left == 0 || s.pos >= s.len {
                        return Some(finished(s));
                    }
                    walk_init(sp, s.pos, 1);
                }
                _ => walk_init(sp, s.pos, 1),
            }
            set!(sp.w_steps_left, DNS_MAX_STEPS);
        }
    }
    // One name walk per run, whatever the stage: the verifier sees one loop.
    let state = walk_steps(sp);
    // SAFETY: as above.
    let s = unsafe { &mut *sp };
    let done = if state == WALKING {
        None
    } else if state != WALKED {
        Some(if s.learned > 0 {
            DnsResult::Learned
        } else {
            DnsResult::Malformed
        })
    } else {
        s.w_state = WALK_IDLE;
        match s.stage {
            STAGE_QUESTION => question(s),
            STAGE_OWNER => record(s, config),
            _ => cname(s),
        }
    };
    if done.is_some() {
        return done;
    }
    parse_next(ctx);
    // Only reached when the tail call fails (the chain limit).
    Some(DnsResult::Truncated)
}

/// The header and the query it answers; `Some(result)` if it teaches nothing.
#[inline(always)]
fn before_question(s: &DnsScratch) -> Option<DnsResult> {
    let flags = be16(s, 2);
    // QR set, opcode QUERY (RFC 1035 4.1.1).
    if flags & 0x8000 == 0 || (flags >> 11) & 0xf != 0 {
        return Some(DnsResult::Malformed);
    }
    if be16(s, 4) != 1 {
        return Some(DnsResult::Malformed);
    }
    let key = DnsQueryKey {
        resolver: s.resolver,
        port: s.local_port as u16,
        id: be16(s, 0),
        proto: s.proto as u8,
        v6: s.v6 as u8,
        _pad: [0; 2],
    };
    // SAFETY: plain value, copied out; no arguments.
    let Some(asked) = (unsafe { DNS_PENDING.get(&key).copied() }) else {
        return Some(DnsResult::Unasked);
    };
    // The first answer consumes the query: a second one, forged or not, is
    // unasked.
    let _ = DNS_PENDING.remove(&key);
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(asked) > DNS_PENDING_NS {
        return Some(DnsResult::Unasked);
    }
    if flags & 0xf != 0 {
        return Some(DnsResult::ErrorRcode);
    }
    None
}

#[inline(always)]
fn question(s: &mut DnsScratch) -> Option<DnsResult> {
    let end = s.w_end;
    if end + 4 > s.len {
        return Some(DnsResult::Malformed);
    }
    let Some((host, key, start)) = match_host(s, s.w_labels) else {
        return Some(DnsResult::NotAllowed);
    };
    if host == 0 || host == DNS_HOST_QUERY_ONLY {
        return Some(DnsResult::NotAllowed);
    }
    s.host = host;
    s.m_key = key;
    s.m_start = start;
    s.chain[0] = s.w_hash;
    s.chain_len = 1;
    s.pos = end + 4;
    s.answers_left = u32::from(be16(s, 6));
    s.stage = STAGE_VERIFY;
    None
}

#[inline(always)]
fn on_chain(s: &DnsScratch, hash: u64) -> bool {
    let mut i = 0;
    while i < DNS_CHAIN {
        if (i as u32) < s.chain_len && s.chain[i] == hash {
            return true;
        }
        i += 1;
    }
    false
}

/// Where the answer ends up when there is nothing more to read.
#[inline(always)]
fn finished(s: &DnsScratch) -> DnsResult {
    if s.learned > 0 {
        DnsResult::Learned
    } else if s.truncated != 0 {
        DnsResult::Truncated
    } else {
        DnsResult::NoAddress
    }
}

#[inline(always)]
fn record(s: &mut DnsScratch, config: &KernelConfig) -> Option<DnsResult> {
    let at = s.w_end;
    if at + 10 > s.len {
        return Some(finished(s));
    }
    let rtype = be16(s, at);
    let class = be16(s, at + 2);
    let ttl = be32(s, at + 4);
    let rdlen = u32::from(be16(s, at + 8));
    let rdata = at + 10;
    if rdata + rdlen > s.len {
        return Some(finished(s));
    }
    let mine = class == CLASS_IN && on_chain(s, s.w_hash);
    s.answers_left -= 1;
    s.pos = rdata + rdlen;
    if mine && ((rtype == TYPE_A && rdlen == 4) || (rtype == TYPE_AAAA && rdlen == 16)) {
        learn(s, config, rdata, rtype, ttl);
        s.learned += 1;
    } else if mine && rtype == TYPE_CNAME {
        s.stage = STAGE_CNAME;
        s.next = s.pos;
        s.pos = rdata;
    }
    None
}

#[inline(always)]
fn cname(s: &mut DnsScratch) -> Option<DnsResult> {
    let i = s.chain_len as usize;
    if i < DNS_CHAIN {
        s.chain[i] = s.w_hash;
        s.chain_len += 1;
    }
    s.pos = s.next;
    s.next = 0;
    s.stage = STAGE_OWNER;
    None
}

/// The rule a learned address allows for (port, protocol, direction) in
/// policy `slot`, if it is learned and not expired.
#[inline(always)]
pub fn learned_rule(slot: u32, flow: &PacketFlow, dir: TrafficDir, port: u16) -> Option<u32> {
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
    let key = HostPortKey {
        host: learned.host,
        port,
        proto: flow.proto,
        dir: dir as u8,
    };
    let map = if slot == 0 {
        &HOST_PORTS_0
    } else {
        &HOST_PORTS_1
    };
    // SAFETY: as above.
    unsafe { map.get(&key).copied() }
}

// ---------------------------------------------------------------------
// Query filtering (`[dns] queries = "policy"`).
//
// Order, for a packet to a trusted resolver's port 53 that a rule allows:
//
//  Q1. It is noted for learning (step 1 above), whatever follows.
//  Q2. `queries = "any"`: allowed. TCP without payload (handshake, ACK,
//      FIN): allowed, there is no question in it.
//  Q3. Refused unless it holds exactly one whole DNS message (UDP: the
//      datagram; TCP: the 2-byte length and the message, nothing after
//      it, so that a second message cannot ride behind an allowed one) of
//      at most `DNS_BUF` bytes.
//  Q4. The message is copied to the per-CPU `SDM_DNSQ_SCRATCH` and the
//      judge `sdm_dns_query` is tail-called; its verdict is the packet's.
//      The judge refuses anything but a plain query (QR clear, opcode
//      QUERY, one question, no answer or authority records, at most one
//      additional record: EDNS), a question name with a compression
//      pointer, and a name not in `SDM_DNS_NAMES` (exact, or under a
//      `*.suffix` entry: the policy's wildcards and `[dns] search`),
//      compared in full as stage VERIFY does for answers.
//  Q5. A refusal drops the packet in enforce mode (a UDP send fails at
//      once with EPERM: `ip_finish_output` returns the cgroup program's
//      verdict to the socket, https://github.com/torvalds/linux/blob/v6.18/net/ipv4/ip_output.c),
//      passes it in audit mode, and is counted by `SDM_DNSQ_STATS` and as
//      a deny of reason `dns_query`, with the question name in the event.
// ---------------------------------------------------------------------

/// What [`judge_query`] made of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Not a query to judge: the caller goes on.
    Pass,
    /// To be judged, but the judge could not be reached.
    Unjudged,
}

#[inline(always)]
fn count_query(verdict: DnsQueryVerdict) {
    if let Some(c) = DNSQ_STATS.get_ptr_mut(verdict as u32) {
        atomic_add_u64(c, 1);
    }
}

/// The packet's control block, which the judge's runs share: `cb[0]` the
/// judgement's sequence number (0 before the first run), `cb[1]` the rule
/// that allowed the packet. The kernel zeroes it for a program that uses
/// it and restores it after (`bpf_prog_run_save_cb`,
/// https://github.com/torvalds/linux/blob/v6.18/include/linux/filter.h);
/// tail calls keep it.
#[inline(always)]
fn cb(ctx: &SkBuffContext, i: usize) -> u32 {
    // SAFETY: cb[0..5] of the program's own context, readable by cgroup_skb.
    unsafe { (*ctx.skb.skb).cb[i & 3] }
}

#[inline(always)]
fn set_cb(ctx: &SkBuffContext, i: usize, v: u32) {
    // SAFETY: as for `cb`; cgroup_skb programs may write cb[0..5].
    unsafe { (*ctx.skb.skb).cb[i & 3] = v };
}

/// Steps Q1, Q2 and the hand-over of Q4 above, in the egress program; kept
/// small, as everything here is verified once per path of the egress
/// program. Returns only when the judge was not reached.
#[inline(always)]
pub fn judge_query(
    ctx: &SkBuffContext,
    flow: &PacketFlow,
    config: &KernelConfig,
    rule: u32,
) -> Query {
    if flow.remote_port != DNS_PORT || (flow.proto != PROTO_UDP && flow.proto != PROTO_TCP) {
        return Query::Pass;
    }
    if !is_resolver(flow) {
        return Query::Pass;
    }
    note_query(ctx, flow);
    if config.dns_queries != DNS_QUERIES_POLICY {
        return Query::Pass;
    }
    set_cb(ctx, 1, rule);
    judge_next(ctx);
    Query::Unjudged
}

/// A query the judge could not be handed (its program array is filled
/// before the programs attach, so only a broken load gets here): refused
/// in enforce mode, counted.
#[inline(always)]
pub fn unjudged(config: &KernelConfig) -> i32 {
    if config.mode == KernelMode::Enforce {
        count_query(DnsQueryVerdict::Refused);
        DROP
    } else {
        count_query(DnsQueryVerdict::WouldRefuse);
        PASS
    }
}

/// Step Q3 and the copy of Q4, in the judge's first run: `Ok(true)` when
/// the scratch holds the message, `Ok(false)` for a TCP segment without
/// payload (nothing to judge), `Err` to refuse.
#[inline(always)]
fn take_message(ctx: &SkBuffContext, sp: *mut DnsScratch) -> Result<bool, ()> {
    let flow = parse(ctx, TrafficDir::Egress).map_err(|_| ())?;
    let Some((start, msg_len)) = whole_message(ctx, &flow) else {
        return if flow.proto == PROTO_TCP && no_payload(ctx, &flow) {
            Ok(false)
        } else {
            Err(())
        };
    };
    if !(12..=DNS_BUF as u32).contains(&msg_len) {
        return Err(());
    }
    // As in `sdm_dns_in`: a length whose bounds every verifier derives.
    let n_bounded = ((core::hint::black_box(u64::from(msg_len)) - 1) & (DNS_BUF as u64 - 1)) + 1;
    // SAFETY: `sp` is valid per-CPU map memory of DNS_BUF bytes for `buf`;
    // 1 <= n_bounded <= DNS_BUF.
    unsafe {
        let rc = bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            start,
            ptr::addr_of_mut!((*sp).buf).cast(),
            n_bounded as u32,
        );
        if rc != 0 {
            return Err(());
        }
        let seq = (*sp).seq.wrapping_add(1) | 1;
        (*sp).seq = seq;
        set_cb(ctx, 0, seq);
        (*sp).len = msg_len;
        (*sp).stage = STAGE_QUESTION;
        (*sp).calls = 0;
        (*sp).w_state = WALK_IDLE;
    }
    Ok(true)
}

/// The message of a UDP datagram, or of a TCP segment that holds its
/// 2-byte length and exactly that many bytes after it.
#[inline(always)]
fn whole_message(ctx: &SkBuffContext, flow: &PacketFlow) -> Option<(u32, u32)> {
    let (start, len) = message(ctx, flow)?;
    if flow.proto == PROTO_TCP && ctx.len() != start + len {
        return None;
    }
    Some((start, len))
}

/// A TCP segment without payload.
#[inline(always)]
fn no_payload(ctx: &SkBuffContext, flow: &PacketFlow) -> bool {
    let Ok(hdr) = ctx.load::<[u8; 14]>(flow.l4_off as usize) else {
        return false;
    };
    flow.l4_off + u32::from(hdr[12] >> 4) * 4 == ctx.len()
}

/// The query judge, tail-called from `sdm_egress` (step Q4) and from
/// itself, one name walk (or the final comparison) per run. Its return is
/// the packet's verdict.
///
/// The scratch is per CPU; a program run in process context can be
/// interrupted by a softirq that sends (a TCP retransmission) and judges a
/// query of its own on the same CPU. Each judgement numbers the scratch
/// and the packet's `cb[0]` alike (odd numbers, never 0), and a run that
/// finds them different refuses: the scratch holds another packet's
/// question.
#[cgroup_skb(egress)]
pub fn sdm_dns_query(ctx: SkBuffContext) -> i32 {
    match try_dns_query(&ctx) {
        Ok(()) => {
            count_query(DnsQueryVerdict::Allowed);
            count_rule(cb(&ctx, 1), TrafficDir::Egress, ctx.len());
            PASS
        }
        Err(()) => refuse_query(&ctx),
    }
}

/// Runs one stage; `Ok` when the question is allowed (or there is none),
/// `Err` when refused. A stage that goes on tail-calls the next run and
/// does not return (`Err` if that fails).
#[inline(always)]
fn try_dns_query(ctx: &SkBuffContext) -> Result<(), ()> {
    let Some(sp) = DNSQ_SCRATCH.get_ptr_mut(0) else {
        return Err(());
    };
    if cb(ctx, 0) == 0 {
        // The first run only takes the message: a run that parsed the
        // packet and walked a name would be verified once per parse path.
        if !take_message(ctx, sp)? {
            return Ok(());
        }
        judge_next(ctx);
        return Err(());
    }
    {
        // SAFETY: valid per-CPU map memory; see above for who else uses it.
        let s = unsafe { &mut *sp };
        if s.seq != cb(ctx, 0) {
            return Err(());
        }
        s.calls += 1;
        if s.calls > MAX_CALLS {
            return Err(());
        }
        if s.stage == STAGE_VERIFY {
            return if verify_name(s) { Ok(()) } else { Err(()) };
        }
        if s.w_state != WALKING {
            if !plain_query(s) {
                return Err(());
            }
            walk_init(sp, 12, 0);
            set!(sp.w_steps_left, DNS_MAX_STEPS);
        }
    }
    let state = walk_steps(sp);
    // SAFETY: as above.
    let s = unsafe { &mut *sp };
    if state == WALKED {
        s.w_state = WALK_IDLE;
        // The question's type and class follow the name.
        if s.w_end + 4 > s.len {
            return Err(());
        }
        // let-else, not `.ok_or(())?`: with the latter LLVM reads the
        // tuple's stack slot before testing for None, and kernels before
        // 6.5 refuse a read of stack never written on that path.
        let Some((_, key, start)) = match_host(s, s.w_labels) else {
            return Err(());
        };
        s.m_key = key;
        s.m_start = start;
        s.stage = STAGE_VERIFY;
    } else if state != WALKING {
        return Err(());
    }
    judge_next(ctx);
    Err(())
}

/// Tail-calls the judge (its first or next run); returns only if that
/// fails.
#[inline(always)]
fn judge_next(ctx: &SkBuffContext) {
    tail_call(ctx, &DNSQ_PROGS);
}

/// A plain query (step Q4): QR clear, opcode QUERY, one question, no
/// answer or authority records, at most one additional record.
#[inline(always)]
fn plain_query(s: &DnsScratch) -> bool {
    let flags = be16(s, 2);
    flags & 0x8000 == 0
        && (flags >> 11) & 0xf == 0
        && be16(s, 4) == 1
        && be16(s, 6) == 0
        && be16(s, 8) == 0
        && be16(s, 10) <= 1
}

/// Step Q5: counts the refusal and reports it, with the question name
/// when the scratch holds this packet's; drops in enforce mode.
#[inline(always)]
fn refuse_query(ctx: &SkBuffContext) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return DROP;
    };
    let enforce = config.mode == KernelMode::Enforce;
    count_query(if enforce {
        DnsQueryVerdict::Refused
    } else {
        DnsQueryVerdict::WouldRefuse
    });
    let mut qname = None;
    if let Some(p) = DNSQ_SCRATCH.get_ptr(0) {
        // SAFETY: a valid per-CPU map value, only read; the name sits 12
        // bytes into the 2048-byte buffer.
        unsafe {
            if cb(ctx, 0) != 0 && (*p).seq == cb(ctx, 0) {
                qname = Some(
                    &*(*p)
                        .buf
                        .as_ptr()
                        .add(12)
                        .cast::<[u8; sdm_common::DNS_NAME_WIRE]>(),
                );
            }
        }
    }
    // Not an `Option<PacketFlow>` from `.ok()`: LLVM copies the fields of a
    // `None` as well, and the verifier refuses reading them uninitialised.
    let (len, sk) = (ctx.len(), full_socket(ctx));
    match parse(ctx, TrafficDir::Egress) {
        Ok(flow) => deny(
            ctx,
            &ctx.skb,
            config,
            TrafficDir::Egress,
            DenyReason::DnsQuery,
            len,
            Some(&flow),
            sk,
            qname,
        ),
        Err(_) => deny(
            ctx,
            &ctx.skb,
            config,
            TrafficDir::Egress,
            DenyReason::DnsQuery,
            len,
            None,
            sk,
            qname,
        ),
    }
}
