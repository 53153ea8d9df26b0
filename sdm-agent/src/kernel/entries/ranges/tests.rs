//! Range decomposition, the closure over nested prefixes, entry counts.

use std::collections::BTreeMap;

use super::*;
use crate::{
    kernel::entries::build,
    policy::{Direction, Policy, PortRange, Proto, Rule, Target},
};

/// Checks that `decompose(lo, hi)` covers exactly lo..=hi, each port once,
/// with aligned prefixes, within the bound.
fn check(lo: u16, hi: u16) {
    let prefixes = decompose(lo, hi);
    assert!(prefixes.len() <= MAX_PREFIXES, "{lo}-{hi}: {prefixes:?}");
    let mut next = u32::from(lo);
    for (base, bits) in &prefixes {
        let size = 1u32 << (16 - u32::from(*bits));
        assert_eq!(
            u32::from(*base),
            next,
            "{lo}-{hi}: gap or overlap at {base}"
        );
        assert_eq!(
            u32::from(*base) % size,
            0,
            "{lo}-{hi}: {base}/{bits} unaligned"
        );
        next += size;
    }
    assert_eq!(next, u32::from(hi) + 1, "{lo}-{hi}: cover ends at {next}");
}

#[test]
fn decomposition_covers_exactly_within_the_bound() {
    assert_eq!(decompose(0, 65535), vec![(0, 0)]);
    assert_eq!(decompose(0, 0), vec![(0, 16)]);
    assert_eq!(decompose(65535, 65535), vec![(65535, 16)]);
    assert_eq!(decompose(80, 80), vec![(80, 16)]);
    assert_eq!(
        decompose(1024, 65535),
        vec![
            (1024, 6),
            (2048, 5),
            (4096, 4),
            (8192, 3),
            (16384, 2),
            (32768, 1)
        ]
    );
    // The worst case: both edges one port off alignment.
    assert_eq!(decompose(1, 65534).len(), MAX_PREFIXES);
    for (lo, hi) in [
        (0, 65535),
        (1, 65534),
        (0, 65534),
        (1, 65535),
        (65535, 65535),
        (0, 0),
    ] {
        check(lo, hi);
    }
    // Every range starting and ending at a sample of ports, edges included.
    let sample: Vec<u16> = (0..=16)
        .flat_map(|b| {
            let p = i64::from(1u32 << b);
            [p - 2, p - 1, p, p + 1]
        })
        .chain([1000, 1023, 1024, 30000, 49151, 49152, 65534, 65535])
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    for &lo in &sample {
        for &hi in &sample {
            if lo <= hi {
                check(lo, hi);
            }
        }
    }
}

#[test]
fn uncovered_subtracts_earlier_ranges() {
    assert_eq!(uncovered(10, 20, &[]), vec![(10, 20)]);
    assert_eq!(uncovered(10, 20, &[(12, 15)]), vec![(10, 11), (16, 20)]);
    assert_eq!(uncovered(10, 20, &[(0, 65535)]), vec![]);
    assert_eq!(
        uncovered(0, 65535, &[(0, 0), (65535, 65535)]),
        vec![(1, 65534)]
    );
    assert_eq!(uncovered(10, 20, &[(30, 40), (0, 5)]), vec![(10, 20)]);
}

fn rule(name: &str, dir: Direction, lo: u16, hi: u16, targets: &[&str]) -> Rule {
    Rule {
        name: name.into(),
        direction: dir,
        protos: vec![Proto::Tcp],
        ports: vec![PortRange { lo, hi }],
        targets: targets
            .iter()
            .map(|t| Target::Cidr(t.parse().expect("test CIDR")))
            .collect(),
        required: true,
        roles: vec![],
        origin: "test".into(),
    }
}

fn entries(rules: Vec<Rule>) -> Entries {
    let ids: BTreeMap<String, u32> = rules
        .iter()
        .zip(1..)
        .map(|(r, id)| (r.name.clone(), id))
        .collect();
    build(&Policy { rules }, &ids, |_| &[])
}

/// The rule the kernel would find for egress TCP: the longest address
/// prefix of the range trie, then the longest port prefix of its set (as
/// the LPM tries do).
fn judge(e: &Entries, addr: [u8; 4], port: u16) -> Option<u32> {
    let set = e
        .range4
        .iter()
        .filter(|((plen, k), _)| {
            let bits = plen - CIDR_HEADER_BITS;
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            k.dir == 0
                && k.proto == sdm_common::PROTO_TCP
                && u32::from_be_bytes(k.addr) & mask == u32::from_be_bytes(addr) & mask
        })
        .max_by_key(|((plen, _), _)| *plen)
        .map(|(_, set)| *set)?;
    e.port_sets
        .iter()
        .filter(|((plen, k), _)| {
            let bits = plen - PORT_SET_HEADER_BITS;
            let mask = if bits == 0 {
                0
            } else {
                u16::MAX << (16 - bits)
            };
            u32::from_be_bytes(k.set) == set && u16::from_be_bytes(k.port) & mask == port & mask
        })
        .max_by_key(|((plen, _), _)| *plen)
        .map(|(_, rule)| *rule)
}

#[test]
fn a_full_range_rule_on_one_cidr_writes_two_entries_not_64k() {
    let e = entries(vec![rule(
        "all",
        Direction::Egress,
        0,
        65535,
        &["10.0.0.0/8"],
    )]);
    assert!(e.cidr4.is_empty(), "no per-port entries");
    assert_eq!(e.range4.len(), 1);
    assert_eq!(e.port_sets.len(), 1);
    assert!(e.len() <= 32, "{} entries", e.len());
    let e = entries(vec![rule(
        "hi",
        Direction::Egress,
        1,
        65534,
        &["10.0.0.0/8", "10.0.0.1/32"],
    )]);
    assert!(e.exact4.is_empty() && e.cidr4.is_empty());
    // Both addresses share one set: 30 prefixes, written once.
    assert_eq!(e.port_sets.len(), MAX_PREFIXES);
    assert_eq!(e.range4.len(), 2);
    for (addr, port, want) in [
        ([10, 0, 0, 1], 1, Some(1)),
        ([10, 0, 0, 1], 65534, Some(1)),
        ([10, 0, 0, 1], 0, None),
        ([10, 0, 0, 1], 65535, None),
        ([10, 9, 9, 9], 1, Some(1)),
        ([10, 9, 9, 9], 65535, None),
        ([11, 0, 0, 0], 80, None),
    ] {
        assert_eq!(judge(&e, addr, port), want, "{addr:?}:{port}");
    }
}

#[test]
fn small_ranges_stay_expanded() {
    let e = entries(vec![rule(
        "few",
        Direction::Egress,
        8000,
        8015,
        &["10.0.0.0/8"],
    )]);
    assert_eq!(e.cidr4.len(), 16);
    assert_eq!(e.range_len(), 0);
    let e = entries(vec![rule(
        "more",
        Direction::Egress,
        8000,
        8016,
        &["10.0.0.0/8"],
    )]);
    assert!(e.cidr4.is_empty());
    assert_eq!(e.range4.len(), 1);
}

#[test]
fn nested_prefixes_get_the_union_of_their_covering_ranges() {
    let e = entries(vec![
        rule("wide", Direction::Egress, 1024, 2047, &["10.0.0.0/8"]),
        rule("mid", Direction::Egress, 3000, 3999, &["10.1.0.0/16"]),
        rule("narrow", Direction::Egress, 5000, 5999, &["10.1.2.0/24"]),
        rule("other", Direction::Egress, 6000, 6999, &["10.2.0.0/16"]),
    ]);
    assert_eq!(e.range4.len(), 4);
    for (addr, port, want) in [
        // In the /24: its own range and those of the /16 and /8.
        ([10, 1, 2, 3], 1024, Some(1)),
        ([10, 1, 2, 3], 2047, Some(1)),
        ([10, 1, 2, 3], 3000, Some(2)),
        ([10, 1, 2, 3], 5999, Some(3)),
        ([10, 1, 2, 3], 6000, None),
        ([10, 1, 2, 3], 2048, None),
        // In the /16 only.
        ([10, 1, 3, 3], 3999, Some(2)),
        ([10, 1, 3, 3], 5000, None),
        ([10, 1, 3, 3], 1023, None),
        // A sibling /16 sees the /8 but not the other /16.
        ([10, 2, 0, 1], 6999, Some(4)),
        ([10, 2, 0, 1], 3000, None),
        ([10, 2, 0, 1], 1500, Some(1)),
        // The /8 alone.
        ([10, 9, 0, 1], 1500, Some(1)),
        ([10, 9, 0, 1], 3000, None),
    ] {
        assert_eq!(judge(&e, addr, port), want, "{addr:?}:{port}");
    }
}

#[test]
fn overlapping_ranges_keep_the_first_rule_and_never_overlap() {
    let e = entries(vec![
        rule("first", Direction::Egress, 1000, 2000, &["10.1.0.0/16"]),
        rule("second", Direction::Egress, 0, 65535, &["10.0.0.0/8"]),
    ]);
    assert_eq!(judge(&e, [10, 1, 0, 1], 1500), Some(1));
    assert_eq!(judge(&e, [10, 1, 0, 1], 999), Some(2));
    assert_eq!(judge(&e, [10, 1, 0, 1], 2001), Some(2));
    assert_eq!(judge(&e, [10, 3, 0, 1], 1500), Some(2));
    // Within a set, no port prefix contains another.
    let mut by_set: BTreeMap<[u8; 4], Vec<(u32, u32)>> = BTreeMap::new();
    for (plen, k) in e.port_sets.keys() {
        let size = 1u32 << (16 - (plen - PORT_SET_HEADER_BITS));
        let lo = u32::from(u16::from_be_bytes(k.port));
        by_set.entry(k.set).or_default().push((lo, lo + size - 1));
    }
    for (_, mut r) in by_set {
        r.sort_unstable();
        assert!(r.windows(2).all(|w| w[0].1 < w[1].0), "{r:?}");
    }
}

#[test]
fn hostname_ranges_get_a_set_per_host_not_64k_entries() {
    let mut r = rule("host", Direction::Egress, 1024, 65535, &[]);
    r.targets = vec![Target::Host("api.example.com".into())];
    let e = entries(vec![r]);
    assert!(e.host_ports.is_empty());
    // (host, TCP, egress): one key serves learned IPv4 and IPv6 addresses.
    assert_eq!(e.host_ranges.len(), 1);
    assert_eq!(e.port_sets.len(), 6);
    let mut r = rule("ping", Direction::Egress, 0, 255, &[]);
    r.protos = vec![Proto::Icmp];
    r.targets = vec![Target::Host("api.example.com".into())];
    let e = entries(vec![r]);
    // ICMP and ICMPv6 keys, one shared set of one prefix.
    assert_eq!(e.host_ranges.len(), 2);
    assert_eq!(e.port_sets.len(), 1);
}
