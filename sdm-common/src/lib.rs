//! Types and constants shared by the kernel programs (`sdm-ebpf`) and the
//! agent (`sdm-agent`). Every struct is `#[repr(C)]` with explicit padding
//! fields so its layout is the same on both sides and the kernel never sees
//! uninitialised bytes in a map key.
#![no_std]

/// Map names. Kernel object names are at most 15 characters
/// (BPF_OBJ_NAME_LEN is 16), so every name here stays within that.
pub const MAP_CONFIG: &str = "SDM_CONFIG";
pub const MAP_EXACT4: [&str; 2] = ["SDM_EXACT4_0", "SDM_EXACT4_1"];
pub const MAP_EXACT6: [&str; 2] = ["SDM_EXACT6_0", "SDM_EXACT6_1"];
pub const MAP_CIDR4: [&str; 2] = ["SDM_CIDR4_0", "SDM_CIDR4_1"];
pub const MAP_CIDR6: [&str; 2] = ["SDM_CIDR6_0", "SDM_CIDR6_1"];
pub const MAP_RULES: &str = "SDM_RULES";
pub const MAP_RULE_STATS: &str = "SDM_RULE_STATS";
pub const MAP_DENY_STATS: &str = "SDM_DENY_STATS";
pub const MAP_SOCK_STATE: &str = "SDM_SOCK_STATE";
/// Ring buffer of [`DenyEvent`]s.
pub const MAP_EVENTS: &str = "SDM_EVENTS";
/// Per-CPU event counters, indexed by `EVENT_STAT_*`.
pub const MAP_EVENT_STATS: &str = "SDM_EVENT_STAT";
/// LRU of recently reported flows: rate-limits events per flow.
pub const MAP_EVENT_SEEN: &str = "SDM_EVENT_SEEN";
/// Per-CPU [`EventBudget`]: caps events per CPU per second, whatever the
/// number of flows.
pub const MAP_EVENT_BUDGET: &str = "SDM_EVENT_BUDGT";
/// DNS learning (see `sdm-ebpf/src/dns.rs`): name key -> [`DnsHost`].
pub const MAP_DNS_NAMES: &str = "SDM_DNS_NAMES";
/// The resolvers whose answers are trusted: [`ResolverKey`] -> 1.
pub const MAP_DNS_RESOLVERS: &str = "SDM_DNS_RESOLV";
/// Queries seen on their way out: [`DnsQueryKey`] -> time (ns).
pub const MAP_DNS_PENDING: &str = "SDM_DNS_PEND";
/// Per-CPU parser state and a copy of the answer: [`DnsScratch`].
pub const MAP_DNS_SCRATCH: &str = "SDM_DNS_SCRATCH";
/// Per-CPU answer counters, indexed by `DNS_RESULT_*`.
pub const MAP_DNS_STATS: &str = "SDM_DNS_STATS";
/// The DNS answer parser, tail-called from the ingress program.
pub const MAP_DNS_PROGS: &str = "SDM_DNS_PROGS";
/// `[dns] queries = "policy"`: per-CPU state of the query judge (a
/// [`DnsScratch`] of its own: egress programs may interrupt each other on
/// one CPU, the answer parser's softirq may interrupt both).
pub const MAP_DNSQ_SCRATCH: &str = "SDM_DNSQ_SCRATCH";
/// Per-CPU query verdict counters, indexed by `DNSQ_*`.
pub const MAP_DNSQ_STATS: &str = "SDM_DNSQ_STATS";
/// The query judge, tail-called from the egress program.
pub const MAP_DNSQ_PROGS: &str = "SDM_DNSQ_PROGS";
/// Addresses learned from answers: address -> [`Learned`].
pub const MAP_LEARNED4: &str = "SDM_LEARNED4";
pub const MAP_LEARNED6: &str = "SDM_LEARNED6";
/// (host id, port, protocol, direction) -> rule, per policy slot.
pub const MAP_HOST_PORTS: [&str; 2] = ["SDM_HOSTPORT_0", "SDM_HOSTPORT_1"];
/// Created and used by the agent only: rule id -> rule name, so ids (and
/// with them the counters) survive agent restarts.
pub const MAP_RULE_NAMES: &str = "SDM_RULE_NAMES";
/// Datagram peers: which sockets exchanged allowed UDP or ICMP echo
/// traffic with which remotes, so that replies pass only where they belong.
pub const MAP_PEERS: &str = "SDM_PEERS";
/// The backstop (see `sdm-ebpf/src/backstop.rs`): one [`Backstop`].
pub const MAP_BACKSTOP: &str = "SDM_BACKSTOP";
/// The backstop's interfaces: ifindex -> [`BackstopIf`].
pub const MAP_BACKSTOP_IFS: &str = "SDM_BACKSTOP_IF";
/// The target cgroup, at index 0, for `bpf_skb_under_cgroup`.
pub const MAP_BACKSTOP_CGROUP: &str = "SDM_BACKSTOP_CG";

/// Program names, as the kernel sees them.
pub const PROG_EGRESS: &str = "sdm_egress";
pub const PROG_INGRESS: &str = "sdm_ingress";
pub const PROG_SOCK_CREATE: &str = "sdm_sock_create";
pub const PROG_CONNECT4: &str = "sdm_connect4";
pub const PROG_CONNECT6: &str = "sdm_connect6";
pub const PROG_SENDMSG4: &str = "sdm_sendmsg4";
pub const PROG_SENDMSG6: &str = "sdm_sendmsg6";
/// Hands DNS answers from trusted resolvers to the parser; attached to
/// ingress beside `sdm_ingress`, always passes.
pub const PROG_DNS_IN: &str = "sdm_dns_in";
/// The DNS answer parser: not attached, tail-called through `SDM_DNS_PROGS`.
pub const PROG_DNS: &str = "sdm_dns";
/// The backstop: a tc classifier at clsact egress of `[backstop] interfaces`.
pub const PROG_BACKSTOP: &str = "sdm_backstop";
/// Refuses `PACKET_QDISC_BYPASS` and AF_XDP set-up while the backstop is on.
pub const PROG_SETSOCKOPT: &str = "sdm_setsockopt";
/// The DNS query judge (`[dns] queries = "policy"`): not attached,
/// tail-called from `sdm_egress` through `SDM_DNSQ_PROGS`.
pub const PROG_DNS_QUERY: &str = "sdm_dns_query";

/// Every map the kernel programs declare, for pinning.
pub const KERNEL_MAPS: [&str; 33] = [
    MAP_PEERS,
    MAP_BACKSTOP,
    MAP_BACKSTOP_IFS,
    MAP_BACKSTOP_CGROUP,
    MAP_DNSQ_SCRATCH,
    MAP_DNSQ_STATS,
    MAP_DNSQ_PROGS,
    MAP_DNS_NAMES,
    MAP_DNS_RESOLVERS,
    MAP_DNS_PENDING,
    MAP_DNS_SCRATCH,
    MAP_DNS_STATS,
    MAP_DNS_PROGS,
    MAP_LEARNED4,
    MAP_LEARNED6,
    MAP_HOST_PORTS[0],
    MAP_HOST_PORTS[1],
    MAP_EVENTS,
    MAP_EVENT_STATS,
    MAP_EVENT_SEEN,
    MAP_EVENT_BUDGET,
    MAP_CONFIG,
    MAP_EXACT4[0],
    MAP_EXACT4[1],
    MAP_EXACT6[0],
    MAP_EXACT6[1],
    MAP_CIDR4[0],
    MAP_CIDR4[1],
    MAP_CIDR6[0],
    MAP_CIDR6[1],
    MAP_RULES,
    MAP_RULE_STATS,
    MAP_DENY_STATS,
];

/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 20;
/// Flows remembered for rate-limiting events.
pub const EVENT_SEEN_ENTRIES: u32 = 65_536;
/// A flow is reported at most once per this many nanoseconds.
pub const EVENT_INTERVAL_NS: u64 = 1_000_000_000;
/// `SDM_EVENT_STAT` indexes.
pub const EVENT_STAT_SENT: u32 = 0;
pub const EVENT_STAT_LOST: u32 = 1;
pub const EVENT_STAT_SUPPRESSED: u32 = 2;
/// Not sent because the CPU's `EVENT_BUDGET_PER_SEC` was spent; the flow
/// keeps its count and is reported by a later packet.
pub const EVENT_STAT_THROTTLED: u32 = 3;
pub const EVENT_STAT_ENTRIES: u32 = 4;
/// Names of the `EVENT_STAT_*` indexes, for metrics.
pub const EVENT_STAT_NAMES: [&str; EVENT_STAT_ENTRIES as usize] =
    ["sent", "lost", "suppressed", "throttled"];
/// Events each CPU may send per second. The per-flow limit bounds the work
/// for a few noisy flows; this bounds it for a flood of ever new flows
/// (a port scan, a spoofed-source flood), which the per-flow LRU cannot.
pub const EVENT_BUDGET_PER_SEC: u64 = 500;

/// Capacities. Exact maps hold one entry per (address, protocol, port).
pub const MAX_EXACT_ENTRIES: u32 = 131_072;
/// LPM tries are never preallocated, so a large capacity costs memory only
/// for the entries in use.
pub const MAX_CIDR_ENTRIES: u32 = 131_072;
/// Rule ids are indexes into `SDM_RULES`, `SDM_RULE_STATS` and `SDM_RULE_NAMES`.
pub const MAX_RULES: u32 = 1024;
/// Bumped whenever a map's key, value or capacity changes: an agent refuses
/// to adopt pinned maps of another layout instead of misreading them.
pub const LAYOUT_VERSION: u32 = 7;

/// Datagram peers remembered (LRU: the oldest pair is forgotten first, and
/// a socket's next allowed send to that remote records it again).
pub const PEER_ENTRIES: u32 = 65_536;

/// DNS learning capacities and limits.
pub const MAX_DNS_NAMES: u32 = 4096;
pub const MAX_DNS_RESOLVERS: u32 = 64;
pub const DNS_PENDING_ENTRIES: u32 = 16_384;
/// Addresses learned per family and alive at once. A plain hash, not an
/// LRU: a learned address is never evicted before it expires (the agent
/// removes expired ones, `[dns] grace` after); when the table is full a new
/// address is not stored and counted (`DNS_STAT_LEARN_FULL`).
pub const LEARNED_ENTRIES: u32 = 65_536;
pub const MAX_HOST_PORTS: u32 = 65_536;
/// Bytes of a DNS message the parser sees (a power of two); the rest of a
/// longer answer is not read.
pub const DNS_BUF: usize = 2048;
/// Labels of a question name the policy match looks at.
pub const DNS_MAX_LABELS: usize = 32;
/// CNAME chain: the question and up to three aliases.
pub const DNS_CHAIN: usize = 4;
/// A query's answer is accepted this long after the query.
pub const DNS_PENDING_NS: u64 = 30_000_000_000;
/// Learned addresses live at most this long, whatever the TTL.
pub const LEARN_TTL_MAX_S: u32 = 86_400;
/// `SDM_DNS_STATS` indexes: what an answer from an allowed resolver taught.
pub const DNS_RESULT_LEARNED: u32 = 0;
pub const DNS_RESULT_NOT_ALLOWED: u32 = 1;
pub const DNS_RESULT_UNASKED: u32 = 2;
pub const DNS_RESULT_MALFORMED: u32 = 3;
pub const DNS_RESULT_ERROR_RCODE: u32 = 4;
pub const DNS_RESULT_NO_ADDRESS: u32 = 5;
pub const DNS_RESULT_TRUNCATED: u32 = 6;
pub const DNS_RESULT_NOT_RESOLVER: u32 = 7;
pub const DNS_RESULT_COUNT: u32 = 8;
/// `SDM_DNS_STATS` slot after the results: addresses of allowed answers
/// not stored because `SDM_LEARNED4/6` was full (per address, not per
/// answer).
pub const DNS_STAT_LEARN_FULL: u32 = DNS_RESULT_COUNT;
/// Slots of `SDM_DNS_STATS`.
pub const DNS_STATS_SLOTS: u32 = DNS_RESULT_COUNT + 1;
pub const DNS_RESULT_NAMES: [&str; DNS_RESULT_COUNT as usize] = [
    "learned",
    "not_allowed",
    "unasked",
    "malformed",
    "error_rcode",
    "no_address",
    "truncated",
    "not_resolver",
];

/// `SDM_DNSQ_STATS` indexes: queries to a trusted resolver judged under
/// `[dns] queries = "policy"`.
pub const DNSQ_ALLOWED: u32 = 0;
pub const DNSQ_REFUSED: u32 = 1;
/// Audit mode: would have been refused, passed.
pub const DNSQ_WOULD_REFUSE: u32 = 2;
pub const DNSQ_COUNT: u32 = 3;
pub const DNSQ_NAMES: [&str; DNSQ_COUNT as usize] = ["allowed", "refused", "would_refuse"];
/// `KernelConfig::dns_queries`.
pub const DNS_QUERIES_ANY: u32 = 0;
pub const DNS_QUERIES_POLICY: u32 = 1;
/// The host id of a `SDM_DNS_NAMES` entry that only lets queries through
/// (a `[dns] search` suffix): nothing is ever learned for it.
pub const DNS_HOST_QUERY_ONLY: u32 = u32::MAX;

/// Name hashing shared by the kernel parser and the agent: FNV-1a over the
/// lower-cased bytes of each label, then the labels folded from the last
/// (the TLD) to the first, so that every suffix of a name has its own key
/// and `*.example.com` is the key of `example.com` tagged as a wildcard.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
pub const DNS_NAME_SEED: u64 = 0x736d_6465_6772_6573;
pub const DNS_WILDCARD_TAG: u64 = 0x2a2e_7769_6c64_6361;

#[inline(always)]
pub const fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

#[inline(always)]
pub const fn dns_lower(b: u8) -> u8 {
    if b >= b'A' && b <= b'Z' {
        b + 32
    } else {
        b
    }
}

/// Folds one more label (to the left) into a suffix key.
#[inline(always)]
pub const fn dns_fold(acc: u64, label_hash: u64) -> u64 {
    (acc ^ label_hash)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(31)
}

/// The host id a name key stands for in `SDM_HOST_PORTS` (never 0).
#[inline(always)]
pub const fn dns_host_id(key: u64) -> u32 {
    ((key ^ (key >> 32)) as u32) | 1
}

/// The key of a hostname as written in a config (`db.example.com`, or
/// `*.example.com`), and whether it is a wildcard; `None` for names the
/// kernel cannot match (empty labels, more than `DNS_MAX_LABELS` labels).
pub fn dns_name_key(name: &str) -> Option<(u64, bool)> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let (name, wildcard) = match name.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let labels = name.split('.').count();
    if name.is_empty() || labels > DNS_MAX_LABELS - usize::from(wildcard) {
        return None;
    }
    let mut acc = DNS_NAME_SEED;
    for label in name.rsplit('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        let mut h = FNV_OFFSET;
        for b in label.bytes() {
            h = fnv_step(h, dns_lower(b));
        }
        acc = dns_fold(acc, h);
    }
    Some(if wildcard {
        (acc ^ DNS_WILDCARD_TAG, true)
    } else {
        (acc, false)
    })
}

/// Bytes of a DNS name in wire form at most (RFC 1035 3.1: 255), rounded
/// up to a power of two for masked indexes.
pub const DNS_NAME_WIRE: usize = 256;

/// Value of `SDM_DNS_NAMES`: the host id, and the name itself in lower-case
/// wire form (length-prefixed labels and the final zero; for `*.suffix`,
/// the suffix), so that the kernel compares a question with the whole name:
/// the key, a 64-bit hash, only picks the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsHost {
    pub host: u32,
    /// Bytes of `name` in use.
    pub len: u32,
    pub name: [u8; DNS_NAME_WIRE],
}

impl Default for DnsHost {
    fn default() -> Self {
        Self {
            host: 0,
            len: 0,
            name: [0; DNS_NAME_WIRE],
        }
    }
}

/// `name` (or, for `*.suffix`, the suffix) in lower-case DNS wire form, as
/// `SDM_DNS_NAMES` stores it beside the key `dns_name_key` gives; None
/// where `dns_name_key` gives none.
pub fn dns_wire_name(name: &str) -> Option<([u8; DNS_NAME_WIRE], u32)> {
    dns_name_key(name)?;
    let name = name.strip_suffix('.').unwrap_or(name);
    let name = name.strip_prefix("*.").unwrap_or(name);
    let mut out = [0u8; DNS_NAME_WIRE];
    let mut at = 0;
    for label in name.split('.') {
        if at + 1 + label.len() + 1 > 255 {
            return None;
        }
        out[at] = label.len() as u8;
        at += 1;
        for b in label.bytes() {
            out[at] = dns_lower(b);
            at += 1;
        }
    }
    out[at] = 0;
    Some((out, (at + 1) as u32))
}

/// Key of `SDM_PEERS`: a datagram socket (its cookie; 0 for ICMP echo,
/// whose replies the kernel itself sends) and a remote it exchanged allowed
/// traffic with. IPv4 in the first four bytes of `remote`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerKey {
    pub cookie: u64,
    pub remote: [u8; 16],
    /// Remote port (host order); 0 for ICMP.
    pub remote_port: u16,
    pub proto: u8,
    pub _pad: [u8; 5],
}

/// Key of `SDM_DNS_RESOLVERS`: IPv4 in the first four bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResolverKey {
    pub addr: [u8; 16],
    pub v6: u32,
}

/// Key of `SDM_DNS_PENDING`: a query to `resolver` from local `port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsQueryKey {
    pub resolver: [u8; 16],
    pub port: u16,
    pub id: u16,
    pub proto: u8,
    pub v6: u8,
    pub _pad: [u8; 2],
}

/// Value of `SDM_LEARNED4/6`: which allowed hostname the address was an
/// answer for, and until when (CLOCK_MONOTONIC ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    pub host: u32,
    pub _pad: u32,
    pub expires_ns: u64,
}

/// Key of `SDM_HOST_PORTS_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPortKey {
    pub host: u32,
    pub port: u16,
    pub proto: u8,
    pub dir: u8,
}

/// The DNS parser's per-CPU state between tail calls, and its copy of the
/// message.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsScratch {
    pub buf: [u8; DNS_BUF],
    pub labels: [u64; DNS_MAX_LABELS],
    /// Where each label of the question starts in `buf` (its length byte).
    pub label_pos: [u32; DNS_MAX_LABELS],
    /// The `SDM_DNS_NAMES` key the question's hash matched, and where in
    /// `buf` the matched name (or wildcard suffix) starts: stage VERIFY
    /// compares it with the stored name in full.
    pub m_key: u64,
    pub m_start: u32,
    pub _m_pad: u32,
    pub chain: [u64; DNS_CHAIN],
    pub resolver: [u8; 16],
    /// Bytes of `buf` in use.
    pub len: u32,
    pub stage: u32,
    /// Where the next record (or CNAME target) starts.
    pub pos: u32,
    /// After a CNAME target: where the next record starts.
    pub next: u32,
    pub answers_left: u32,
    pub chain_len: u32,
    pub host: u32,
    pub calls: u32,
    pub learned: u32,
    pub local_port: u32,
    pub v6: u32,
    pub proto: u32,
    /// 1 when the message was longer than `DNS_BUF` (its tail is not read).
    pub truncated: u32,
    /// The query judge only: the rule that allowed the packet, the
    /// packet's length, and the sequence number of the judgement that owns
    /// this scratch (also in the packet's `cb[0]`, see `sdm_dns_query`).
    pub rule: u32,
    pub pkt_len: u32,
    pub seq: u32,
    /// The name walker's state, kept in this map value rather than in
    /// registers: the verifier then sees unknown values instead of a
    /// different constant on every path, and prunes the loop's states.
    pub w_pos: u32,
    pub w_limit: u32,
    pub w_end: u32,
    pub w_jumped: u32,
    pub w_remaining: u32,
    pub w_labels: u32,
    pub w_total: u32,
    /// 0 walking, 1 done, 2 failed.
    pub w_state: u32,
    /// 1 if compression pointers are allowed in this name.
    pub w_pointers: u32,
    /// Steps the current walk may still take.
    pub w_steps_left: u32,
    pub w_hash: u64,
    pub w_label: u64,
}

/// Directions, as stored in keys and counters.
pub const DIR_EGRESS: u8 = 0;
pub const DIR_INGRESS: u8 = 1;

/// Modes held in `KernelConfig::mode`. Zero is audit, so a freshly created,
/// zero-filled config map never drops anything.
pub const MODE_AUDIT: u32 = 0;
pub const MODE_ENFORCE: u32 = 1;

/// `KernelConfig::loopback`.
pub const LOOPBACK_PASS: u32 = 0;
pub const LOOPBACK_ENFORCE: u32 = 1;

/// IP protocol numbers used in keys.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Deny reasons, the index into `SDM_DENY_STATS` together with mode and
/// direction (see [`deny_index`]).
pub const REASON_NO_RULE: u32 = 0;
pub const REASON_MALFORMED: u32 = 1;
pub const REASON_FRAGMENT: u32 = 2;
pub const REASON_UNKNOWN_PROTO: u32 = 3;
/// An IPv4 loose or strict source route option, or an IPv6 routing header
/// with segments left: the packet names further hops than the one judged.
pub const REASON_SOURCE_ROUTE: u32 = 4;
/// The backstop: a frame of a packet socket (or another non-IP socket) of
/// the target cgroup that carries no IPv4 or IPv6 (ARP, VLAN-tagged, any
/// other ethertype), or a `setsockopt` that would take such a socket past
/// the backstop (`PACKET_QDISC_BYPASS`, AF_XDP).
pub const REASON_PACKET_SOCKET: u32 = 5;
/// A DNS query, to a trusted resolver, for a name the policy does not hold
/// (`[dns] queries = "policy"`), or one that cannot be judged.
pub const REASON_DNS_QUERY: u32 = 6;
pub const REASON_COUNT: u32 = 7;
pub const REASON_NAMES: [&str; REASON_COUNT as usize] = [
    "no_rule",
    "malformed",
    "fragment",
    "unknown_protocol",
    "source_route",
    "packet_socket",
    "dns_query",
];

pub const DENY_STATS_ENTRIES: u32 = 2 * 2 * REASON_COUNT;

/// Index of a deny counter: mode (audit/enforce) x direction x reason.
#[inline(always)]
pub const fn deny_index(mode: u32, dir: u8, reason: u32) -> u32 {
    (mode * 2 + dir as u32) * REASON_COUNT + reason
}

/// Index of a rule counter: rule id x direction (replies to an egress rule
/// count under ingress).
#[inline(always)]
pub const fn rule_stats_index(rule: u32, dir: u8) -> u32 {
    rule * 2 + dir as u32
}

/// Index of a rule's active flag in `SDM_RULES` for a policy slot.
#[inline(always)]
pub const fn rule_slot_index(slot: u32, rule: u32) -> u32 {
    slot * MAX_RULES + rule
}

/// The single entry of `SDM_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// `MODE_AUDIT` or `MODE_ENFORCE`.
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

/// Packet and byte counter, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Exact IPv4 key: (direction, protocol, port, remote address). For egress
/// the port is the remote port; for ingress the local port. For ICMP the
/// port holds the ICMP type.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key4 {
    pub addr: [u8; 4],
    pub port: u16,
    pub proto: u8,
    pub dir: u8,
}

/// Exact IPv6 key, as [`Key4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key6 {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub dir: u8,
}

/// Data of an IPv4 LPM trie key. Direction, protocol and port come first
/// and are always matched in full (prefix length = 32 + CIDR length), so
/// one trie holds every (direction, protocol, port, CIDR) rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr4 {
    pub dir: u8,
    pub proto: u8,
    /// Big-endian, like everything matched bit by bit in a trie.
    pub port: [u8; 2],
    pub addr: [u8; 4],
}

/// Data of an IPv6 LPM trie key, as [`Cidr4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr6 {
    pub dir: u8,
    pub proto: u8,
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// Bits of the trie key before the address.
pub const CIDR_HEADER_BITS: u32 = 32;

/// Value of every allowlist entry: the rule that allows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    pub rule: u32,
}

/// A rule's state in one policy slot (`SDM_RULES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleState {
    /// Non-zero while the rule is part of that slot's policy.
    pub active: u32,
}

/// A rule's name (`SDM_RULE_NAMES`), NUL padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleName {
    pub name: [u8; 96],
}

impl Default for RuleName {
    fn default() -> Self {
        Self { name: [0; 96] }
    }
}

/// Per-socket verdict cache (`SDM_SOCK_STATE`, socket local storage): the
/// last flow this socket was allowed for and the rule that allowed it. It
/// lives and dies with the socket, so it can never overflow or evict a live
/// connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// Remote address (IPv4 in the first four bytes).
    pub remote: [u8; 16],
    /// Remote port (host order); 0 for ICMP.
    pub remote_port: u16,
    pub proto: u8,
    /// Direction of the rule that allowed the flow.
    pub dir: u8,
    pub rule: u32,
    /// Non-zero once filled in.
    pub valid: u32,
    /// Process that created or connected the socket (tgid); 0 if unknown.
    pub pid: u32,
    /// Its name (task comm).
    pub comm: [u8; 16],
}

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
    /// `REASON_*`.
    pub reason: u32,
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    /// `DIR_*`.
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
    pub dir: u8,
    /// `REASON_*`: a flow denied for two reasons is reported for each.
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

#[cfg(feature = "user")]
mod pod {
    use super::*;

    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: every type listed is repr(C), made of integers and
            // byte arrays with explicit padding fields (checked by the
            // layout tests below), so every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    pod!(
        DenyEvent,
        EventSeenKey,
        PeerKey,
        FlowSeen,
        DnsHost,
        ResolverKey,
        DnsQueryKey,
        Learned,
        HostPortKey,
        EventBudget,
        Backstop,
        BackstopIf,
        KernelConfig,
        Counter,
        Key4,
        Key6,
        Cidr4,
        Cidr6,
        RuleRef,
        RuleState,
        RuleName,
        SockState,
    );
}

// Layouts the kernel and agent rely on: no hidden padding anywhere.
const _: () = assert!(core::mem::size_of::<KernelConfig>() == 40);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<Key4>() == 8);
const _: () = assert!(core::mem::size_of::<Key6>() == 20);
const _: () = assert!(core::mem::size_of::<Cidr4>() == 8);
const _: () = assert!(core::mem::size_of::<Cidr6>() == 20);
const _: () = assert!(core::mem::size_of::<SockState>() == 48);
const _: () = assert!(core::mem::size_of::<DenyEvent>() == 96 + DNS_NAME_WIRE);
const _: () = assert!(core::mem::size_of::<DnsScratch>() == 2616);
const _: () = assert!(core::mem::size_of::<EventSeenKey>() == 32);
const _: () = assert!(core::mem::size_of::<PeerKey>() == 32);
const _: () = assert!(core::mem::size_of::<DnsHost>() == 8 + DNS_NAME_WIRE);
