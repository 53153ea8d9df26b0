//! The maps the packet and socket programs share, and that the agent
//! reads and writes by name (`sdm_common::MAP_*`). The DNS maps live in
//! dns.rs, the backstop's in backstop.rs.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use sdm_common::{
    Cidr4, Cidr6, Counter, EventBudget, EventSeenKey, FlowSeen, KernelConfig, Key4, Key6, PeerKey,
    RuleRef, RuleState, SockState, DENY_STATS_ENTRIES, EVENTS_RING_BYTES, EVENT_SEEN_ENTRIES,
    EVENT_STAT_ENTRIES, MAX_CIDR_ENTRIES, MAX_EXACT_ENTRIES, MIN_RULE_CAPACITY, PEER_ENTRIES,
};

/// Mmapable: the agent and `sdm-agent mode` each store only their own
/// field, so neither undoes the other (sdm-agent's config_map.rs).
#[map(name = "SDM_CONFIG")]
pub(crate) static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map(name = "SDM_EXACT4_0")]
pub(crate) static EXACT4_0: HashMap<Key4, RuleRef> =
    HashMap::with_max_entries(MAX_EXACT_ENTRIES, 0);
#[map(name = "SDM_EXACT4_1")]
pub(crate) static EXACT4_1: HashMap<Key4, RuleRef> =
    HashMap::with_max_entries(MAX_EXACT_ENTRIES, 0);
#[map(name = "SDM_EXACT6_0")]
pub(crate) static EXACT6_0: HashMap<Key6, RuleRef> =
    HashMap::with_max_entries(MAX_EXACT_ENTRIES, 0);
#[map(name = "SDM_EXACT6_1")]
pub(crate) static EXACT6_1: HashMap<Key6, RuleRef> =
    HashMap::with_max_entries(MAX_EXACT_ENTRIES, 0);
#[map(name = "SDM_CIDR4_0")]
pub(crate) static CIDR4_0: LpmTrie<Cidr4, RuleRef> = LpmTrie::with_max_entries(MAX_CIDR_ENTRIES, 0);
#[map(name = "SDM_CIDR4_1")]
pub(crate) static CIDR4_1: LpmTrie<Cidr4, RuleRef> = LpmTrie::with_max_entries(MAX_CIDR_ENTRIES, 0);
#[map(name = "SDM_CIDR6_0")]
pub(crate) static CIDR6_0: LpmTrie<Cidr6, RuleRef> = LpmTrie::with_max_entries(MAX_CIDR_ENTRIES, 0);
#[map(name = "SDM_CIDR6_1")]
pub(crate) static CIDR6_1: LpmTrie<Cidr6, RuleRef> = LpmTrie::with_max_entries(MAX_CIDR_ENTRIES, 0);

/// Rule active flags, two per rule (`rule_slot_index`: one per policy
/// slot). The agent sets the size at load time from the policy; nothing
/// here depends on it, as a lookup past the end finds nothing.
#[map(name = "SDM_RULES")]
pub(crate) static RULES: Array<RuleState> = Array::with_max_entries(2 * MIN_RULE_CAPACITY, 0);
/// Allowed packets and bytes per (rule, direction); sized as `RULES`.
#[map(name = "SDM_RULE_STATS")]
pub(crate) static RULE_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(2 * MIN_RULE_CAPACITY, 0);
/// Denied (or, in audit mode, would-be denied) packets per (mode, direction, reason).
#[map(name = "SDM_DENY_STATS")]
pub(crate) static DENY_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(DENY_STATS_ENTRIES, 0);

/// Deny events for the agent, rate-limited per flow by `EVENT_SEEN`.
#[map(name = "SDM_EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
/// Events sent, lost (ring buffer full) and suppressed (rate limit).
#[map(name = "SDM_EVENT_STAT")]
pub(crate) static EVENT_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(EVENT_STAT_ENTRIES, 0);
/// When each recently denied flow was last reported.
#[map(name = "SDM_EVENT_SEEN")]
pub(crate) static EVENT_SEEN: LruHashMap<EventSeenKey, FlowSeen> =
    LruHashMap::with_max_entries(EVENT_SEEN_ENTRIES, 0);

/// Events sent per CPU in the current second (see `EVENT_BUDGET_PER_SEC`).
#[map(name = "SDM_EVENT_BUDGT")]
pub(crate) static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Datagram peers (see `note_peer`): the rule that allowed them.
#[map(name = "SDM_PEERS")]
pub(crate) static PEERS: LruHashMap<PeerKey, u32> = LruHashMap::with_max_entries(PEER_ENTRIES, 0);

#[btf_map(name = "SDM_SOCK_STATE")]
pub(crate) static SOCK_STATE: SkStorage<SockState> = SkStorage::new();
