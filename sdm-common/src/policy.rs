//! The allowlist: exact and CIDR keys per policy slot, rule state, the
//! socket verdict cache and datagram peers.

use crate::vocabulary::vocabulary;

vocabulary! {
    /// The way a packet goes, as stored in keys and counters.
    pub enum TrafficDir: u8 {
        Egress = 0 => "egress",
        Ingress = 1 => "ingress",
    }
}

/// IP protocol numbers used in keys.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Capacities. Exact maps hold one entry per (address, protocol, port).
pub const MAX_EXACT_ENTRIES: u32 = 131_072;
/// LPM tries are never preallocated, so a large capacity costs memory only
/// for the entries in use.
pub const MAX_CIDR_ENTRIES: u32 = 131_072;
/// Rule ids are indexes into `SDM_RULES`, `SDM_RULE_STATS` and
/// `SDM_RULE_NAMES`, whose size the agent sets at load time from the policy
/// (see [`rule_capacity_for`]); the object's own size is this least one.
pub const MIN_RULE_CAPACITY: u32 = 1024;
/// The hard ceiling on rules (and so rule ids): 131,072. At that capacity
/// the per-CPU rule counters take 16 B x 2 directions x 131,072 = 4 MiB per
/// CPU (256 MiB on 64 CPUs). The kernel ignores larger ids, so an id can
/// never index past what `rule_slot_index` and `rule_stats_index` can
/// express.
pub const RULE_CEILING: u32 = 131_072;
/// Datagram peers remembered (LRU: the oldest pair is forgotten first, and
/// a socket's next allowed send to that remote records it again).
pub const PEER_ENTRIES: u32 = 65_536;

/// Port ranges of more than this many ports are stored as port prefixes
/// (`SDM_RANGE*`, `SDM_PORTSET_*`) instead of one entry per port.
pub const RANGE_EXPAND_MAX: u32 = 16;
/// Capacity of each range map. Like the CIDR tries they are never
/// preallocated (the hostname one is created `BPF_F_NO_PREALLOC`), so it
/// costs memory only for the entries in use.
pub const MAX_RANGE_ENTRIES: u32 = 131_072;
/// Bits of a [`PortSetKey`] before the port: the set id, matched in full.
pub const PORT_SET_HEADER_BITS: u32 = 32;

/// Bits of the trie key before the address.
pub const CIDR_HEADER_BITS: u32 = 32;

/// Index of a rule's active flag in `SDM_RULES` for a policy slot: the two
/// slots side by side, so the index needs no capacity and an id past the
/// map's end simply finds nothing (an array lookup out of range fails).
#[inline(always)]
pub const fn rule_slot_index(slot: u32, rule: u32) -> u32 {
    rule * 2 + slot
}

/// The rule capacity the maps are created with for a policy of `rules`
/// rules: room for twice as many (a reload cannot grow the maps, a restart
/// can), at least [`MIN_RULE_CAPACITY`], rounded up to a multiple of it
/// (not to a power of two: the per-CPU counters cost every CPU that much
/// more) and cut to [`RULE_CEILING`]. `None` when `rules` is above the
/// ceiling.
pub const fn rule_capacity_for(rules: u32) -> Option<u32> {
    if rules > RULE_CEILING {
        return None;
    }
    let want = if rules * 2 > MIN_RULE_CAPACITY {
        rules * 2
    } else {
        MIN_RULE_CAPACITY
    };
    let cap = want.div_ceil(MIN_RULE_CAPACITY) * MIN_RULE_CAPACITY;
    Some(if cap > RULE_CEILING {
        RULE_CEILING
    } else {
        cap
    })
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
    /// A [`TrafficDir`].
    pub dir: u8,
}

/// Exact IPv6 key, as [`Key4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key6 {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    /// A [`TrafficDir`].
    pub dir: u8,
}

/// Data of an IPv4 LPM trie key. Direction, protocol and port come first
/// and are always matched in full (prefix length = 32 + CIDR length), so
/// one trie holds every (direction, protocol, port, CIDR) rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr4 {
    /// A [`TrafficDir`].
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
    /// A [`TrafficDir`].
    pub dir: u8,
    pub proto: u8,
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// Value of every allowlist entry: the rule that allows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    pub rule: u32,
}

/// Value of `SDM_RANGE4/6_*` and `SDM_HOSTRNG_*`: the port set whose
/// prefixes `SDM_PORTSET_*` holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    pub set: u32,
}

/// Data of a `SDM_PORTSET_*` trie key: a port set id and a port, both
/// big-endian (matched bit by bit); prefix length =
/// [`PORT_SET_HEADER_BITS`] + the port prefix's bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSetKey {
    pub set: [u8; 4],
    pub port: [u8; 2],
    pub _pad: [u8; 2],
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
    /// Direction ([`TrafficDir`]) of the rule that allowed the flow.
    pub dir: u8,
    pub rule: u32,
    /// Non-zero once filled in.
    pub valid: u32,
    /// Process that created or connected the socket (tgid); 0 if unknown.
    pub pid: u32,
    /// Its name (task comm).
    pub comm: [u8; 16],
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

// Layouts the kernel and agent rely on: no hidden padding anywhere.
const _: () = assert!(core::mem::size_of::<Key4>() == 8);
const _: () = assert!(core::mem::size_of::<Key6>() == 20);
const _: () = assert!(core::mem::size_of::<Cidr4>() == 8);
const _: () = assert!(core::mem::size_of::<Cidr6>() == 20);
const _: () = assert!(core::mem::size_of::<RuleRef>() == 4);
const _: () = assert!(core::mem::size_of::<RuleState>() == 4);
const _: () = assert!(core::mem::size_of::<PortSet>() == 4);
const _: () = assert!(core::mem::size_of::<PortSetKey>() == 8);
const _: () = assert!(core::mem::size_of::<RuleName>() == 96);
const _: () = assert!(core::mem::size_of::<SockState>() == 48);
const _: () = assert!(core::mem::size_of::<PeerKey>() == 32);
