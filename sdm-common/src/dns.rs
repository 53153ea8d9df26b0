//! DNS learning: the name keys shared by the kernel parser and the agent,
//! the trusted resolvers, pending queries, learned addresses and the
//! parser's scratch, and the answer and query counters.

use crate::vocabulary::vocabulary;

/// DNS learning capacities and limits. Names: 10,000 hostname resources,
/// the catalogue and the `[dns] search` suffixes, with room to spare (a
/// preallocated hash of 264-byte values: about 5 MiB).
pub const MAX_DNS_NAMES: u32 = 16_384;
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

vocabulary! {
    /// What an answer from an allowed resolver taught: the index into
    /// `SDM_DNS_STATS`.
    pub enum DnsResult: u32 {
        Learned = 0 => "learned",
        NotAllowed = 1 => "not_allowed",
        Unasked = 2 => "unasked",
        Malformed = 3 => "malformed",
        ErrorRcode = 4 => "error_rcode",
        NoAddress = 5 => "no_address",
        Truncated = 6 => "truncated",
        NotResolver = 7 => "not_resolver",
    }
}

/// `SDM_DNS_STATS` slot after the results: addresses of allowed answers
/// not stored because `SDM_LEARNED4/6` was full (per address, not per
/// answer).
pub const DNS_STAT_LEARN_FULL: u32 = DnsResult::COUNT as u32;
/// Slots of `SDM_DNS_STATS`.
pub const DNS_STATS_SLOTS: u32 = DNS_STAT_LEARN_FULL + 1;

vocabulary! {
    /// The verdict on a query to a trusted resolver judged under
    /// `[dns] queries = "policy"`: the index into `SDM_DNSQ_STATS`.
    pub enum DnsQueryVerdict: u32 {
        Allowed = 0 => "allowed",
        Refused = 1 => "refused",
        /// Audit mode: would have been refused, passed.
        WouldRefuse = 2 => "would_refuse",
    }
}

/// Slots of `SDM_DNSQ_STATS`.
pub const DNSQ_STATS_SLOTS: u32 = DnsQueryVerdict::COUNT as u32;

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

// Layouts the kernel and agent rely on: no hidden padding anywhere.
const _: () = assert!(core::mem::size_of::<DnsHost>() == 8 + DNS_NAME_WIRE);
const _: () = assert!(core::mem::size_of::<ResolverKey>() == 20);
const _: () = assert!(core::mem::size_of::<DnsQueryKey>() == 24);
const _: () = assert!(core::mem::size_of::<Learned>() == 16);
const _: () = assert!(core::mem::size_of::<HostPortKey>() == 8);
const _: () = assert!(core::mem::size_of::<DnsScratch>() == 2616);
