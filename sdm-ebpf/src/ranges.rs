//! Port ranges without one entry per port (verdict order step 6, after the
//! exact and CIDR maps, before learned addresses; and after them for a
//! learned address's hostname ranges).
//!
//! The agent stores a range of more than `RANGE_EXPAND_MAX` ports as at
//! most 30 aligned port prefixes (2 x 16 - 2: a range of 16-bit numbers
//! splits into at most two prefixes per bit length but the longest), under
//! a port set id:
//! - `SDM_RANGE4/6_*`: (direction, protocol, port 0, address prefix) ->
//!   port set, an LPM trie. The longest prefix only is found, so the agent
//!   gives each entry the union of the ranges of every prefix covering it;
//! - `SDM_HOSTRNG_*`: (hostname, protocol, direction) -> port set, for
//!   addresses learned from DNS answers;
//! - `SDM_PORTSET_*`: (port set, port prefix) -> rule, an LPM trie.
//!
//! So a range costs two lookups, whatever its size or the policy's.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::Key as LpmKey, HashMap, LpmTrie},
};
use sdm_common::{
    Cidr4, Cidr6, HostPortKey, PortSet, PortSetKey, RuleRef, TrafficDir, CIDR_HEADER_BITS,
    MAX_RANGE_ENTRIES, PORT_SET_HEADER_BITS,
};

use crate::parse::PacketFlow;

#[map(name = "SDM_RANGE4_0")]
static RANGE4_0: LpmTrie<Cidr4, PortSet> = LpmTrie::with_max_entries(MAX_RANGE_ENTRIES, 0);
#[map(name = "SDM_RANGE4_1")]
static RANGE4_1: LpmTrie<Cidr4, PortSet> = LpmTrie::with_max_entries(MAX_RANGE_ENTRIES, 0);
#[map(name = "SDM_RANGE6_0")]
static RANGE6_0: LpmTrie<Cidr6, PortSet> = LpmTrie::with_max_entries(MAX_RANGE_ENTRIES, 0);
#[map(name = "SDM_RANGE6_1")]
static RANGE6_1: LpmTrie<Cidr6, PortSet> = LpmTrie::with_max_entries(MAX_RANGE_ENTRIES, 0);
#[map(name = "SDM_PORTSET_0")]
static PORT_SETS_0: LpmTrie<PortSetKey, RuleRef> = LpmTrie::with_max_entries(MAX_RANGE_ENTRIES, 0);
#[map(name = "SDM_PORTSET_1")]
static PORT_SETS_1: LpmTrie<PortSetKey, RuleRef> = LpmTrie::with_max_entries(MAX_RANGE_ENTRIES, 0);
#[map(name = "SDM_HOSTRNG_0")]
static HOST_RANGES_0: HashMap<HostPortKey, PortSet> =
    HashMap::with_max_entries(MAX_RANGE_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "SDM_HOSTRNG_1")]
static HOST_RANGES_1: HashMap<HostPortKey, PortSet> =
    HashMap::with_max_entries(MAX_RANGE_ENTRIES, BPF_F_NO_PREALLOC);

/// The rule of `port` in port set `set`, if any.
#[inline(always)]
fn port_rule(slot: u32, set: u32, port: u16) -> Option<u32> {
    let trie = if slot == 0 {
        &PORT_SETS_0
    } else {
        &PORT_SETS_1
    };
    let key = LpmKey::new(
        PORT_SET_HEADER_BITS + 16,
        PortSetKey {
            set: set.to_be_bytes(),
            port: port.to_be_bytes(),
            _pad: [0; 2],
        },
    );
    trie.get(&key).map(|r| r.rule)
}

/// The range rule of `dir` for (protocol, port, remote address).
#[inline(always)]
pub(crate) fn range_rule(slot: u32, flow: &PacketFlow, dir: TrafficDir, port: u16) -> Option<u32> {
    let set = if flow.v6 {
        let trie = if slot == 0 { &RANGE6_0 } else { &RANGE6_1 };
        let key = LpmKey::new(
            CIDR_HEADER_BITS + 128,
            Cidr6 {
                dir: dir as u8,
                proto: flow.proto,
                port: [0; 2],
                addr: flow.remote,
            },
        );
        trie.get(&key)?.set
    } else {
        let trie = if slot == 0 { &RANGE4_0 } else { &RANGE4_1 };
        let key = LpmKey::new(
            CIDR_HEADER_BITS + 32,
            Cidr4 {
                dir: dir as u8,
                proto: flow.proto,
                port: [0; 2],
                addr: [
                    flow.remote[0],
                    flow.remote[1],
                    flow.remote[2],
                    flow.remote[3],
                ],
            },
        );
        trie.get(&key)?.set
    };
    port_rule(slot, set, port)
}

/// The range rule of hostname `host`, whose address the kernel learned
/// from a DNS answer (as `dns::host_port_rule` does for single ports).
#[inline(always)]
pub(crate) fn host_range_rule(
    slot: u32,
    host: u32,
    flow: &PacketFlow,
    dir: TrafficDir,
    port: u16,
) -> Option<u32> {
    let key = HostPortKey {
        host,
        port: 0,
        proto: flow.proto,
        dir: dir as u8,
    };
    let map = if slot == 0 {
        &HOST_RANGES_0
    } else {
        &HOST_RANGES_1
    };
    // SAFETY: as above.
    let set = unsafe { map.get(&key) }?.set;
    port_rule(slot, set, port)
}
