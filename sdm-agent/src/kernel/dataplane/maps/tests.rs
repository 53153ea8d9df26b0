//! The pure parts of the map writers: keys, per-CPU sums, rule ids and
//! names, slot arithmetic.

use std::{collections::BTreeMap, net::IpAddr};

use sdm_common::{Counter, RuleName, MIN_RULE_CAPACITY};

use super::{
    dns::{expired_beyond_grace, resolver_key, sum_cpus},
    rules::{rule_name_entry, rule_name_text, sum_counters, IdAllocator, IdSource},
    slots::live_slot,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn resolver_keys_put_ipv4_first_and_unmap_mapped_addresses() {
    let k = resolver_key(ip("10.255.255.53"));
    assert_eq!(k.v6, 0);
    assert_eq!(&k.addr[..4], &[10, 255, 255, 53]);
    assert!(k.addr[4..].iter().all(|b| *b == 0));
    let mapped = resolver_key(ip("::ffff:10.255.255.53"));
    assert_eq!((mapped.addr, mapped.v6), (k.addr, k.v6));
    let k6 = resolver_key(ip("2001:db8::53"));
    assert_eq!(k6.v6, 1);
    assert_eq!(
        k6.addr,
        "2001:db8::53"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
}

#[test]
fn per_cpu_sums() {
    assert_eq!(sum_cpus(&[]), 0);
    assert_eq!(sum_cpus(&[1, 2, 3]), 6);
    assert_eq!(sum_cpus(&[u64::MAX, 5]), u64::MAX, "saturates");
    let c = |packets, bytes| Counter { packets, bytes };
    let s = sum_counters(&[c(1, 100), c(2, 50), c(0, 0)]);
    assert_eq!((s.packets, s.bytes), (3, 150));
    let s = sum_counters(&[]);
    assert_eq!((s.packets, s.bytes), (0, 0));
}

#[test]
fn learned_addresses_expire_only_after_the_grace() {
    assert!(!expired_beyond_grace(100, 10, 105), "not yet expired");
    assert!(
        !expired_beyond_grace(100, 10, 110),
        "at the end of the grace"
    );
    assert!(expired_beyond_grace(100, 10, 111));
    assert!(!expired_beyond_grace(u64::MAX, 10, u64::MAX), "saturates");
}

#[test]
fn rule_names_are_cut_to_leave_the_nul_and_read_back() {
    let e = rule_name_entry("allow-api");
    assert_eq!(&e.name[..9], b"allow-api");
    assert_eq!(e.name[9], 0);
    assert_eq!(rule_name_text(&e).as_deref(), Some("allow-api"));
    let long = "x".repeat(200);
    let e = rule_name_entry(&long);
    let cap = RuleName::default().name.len();
    assert_eq!(e.name[cap - 1], 0, "the last byte stays NUL");
    assert_eq!(rule_name_text(&e), Some("x".repeat(cap - 1)));
    assert_eq!(rule_name_text(&RuleName::default()), None, "empty entry");
    assert_eq!(rule_name_text(&rule_name_entry("")), None);
}

#[test]
fn rule_ids_are_kept_then_free_then_reused() {
    let known: BTreeMap<u32, String> = [(0, "a".to_string()), (2, "old".to_string())].into();
    let names = ["b", "a", "c"];
    let mut ids = IdAllocator::new(&known, &names, MIN_RULE_CAPACITY);
    assert_eq!(ids.id_for("b"), Some((1, IdSource::Free)), "lowest free id");
    assert_eq!(ids.id_for("a"), Some((0, IdSource::Kept)));
    assert_eq!(
        ids.id_for("c"),
        Some((3, IdSource::Free)),
        "2 is still old's"
    );
}

#[test]
fn stale_ids_are_reused_only_when_none_is_free() {
    let mut known: BTreeMap<u32, String> = (0..MIN_RULE_CAPACITY)
        .map(|i| (i, format!("r{i}")))
        .collect();
    known.insert(5, "gone".into());
    known.insert(9, "gone too".into());
    let names: Vec<String> = (0..MIN_RULE_CAPACITY)
        .filter(|i| ![5, 9].contains(i))
        .map(|i| format!("r{i}"))
        .chain(["n1".into(), "n2".into(), "n3".into()])
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut ids = IdAllocator::new(&known, &names, MIN_RULE_CAPACITY);
    assert_eq!(ids.id_for("r7"), Some((7, IdSource::Kept)));
    assert_eq!(ids.id_for("n1"), Some((5, IdSource::Reused)));
    assert_eq!(ids.id_for("n2"), Some((9, IdSource::Reused)));
    assert_eq!(ids.id_for("n3"), None, "exhausted");
}

#[test]
fn the_generation_s_low_bit_names_the_live_slot() {
    assert_eq!(live_slot(0), 0);
    assert_eq!(live_slot(1), 1);
    assert_eq!(live_slot(6), 0);
    assert_eq!(live_slot(u32::MAX), 1);
    // The flip wraps and still alternates.
    assert_eq!(live_slot(u32::MAX.wrapping_add(1)), 0);
    for g in [0u32, 1, 41, u32::MAX - 1] {
        assert_ne!(live_slot(g), live_slot(g.wrapping_add(1)));
    }
}

#[test]
fn ids_go_up_to_the_maps_capacity_and_no_further() {
    let known: BTreeMap<u32, String> = (0..12_000).map(|i| (i, format!("r{i}"))).collect();
    let names: Vec<String> = (0..12_000)
        .map(|i| format!("r{i}"))
        .chain(["new".into()])
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut ids = IdAllocator::new(&known, &names, 24_576);
    assert_eq!(ids.id_for("r11999"), Some((11_999, IdSource::Kept)));
    assert_eq!(ids.id_for("new"), Some((12_000, IdSource::Free)));
    // Maps of 1,024 have no id past 1,023 to give.
    let none = BTreeMap::new();
    let mut small = IdAllocator::new(&none, &names, MIN_RULE_CAPACITY);
    for (i, n) in names.iter().take(1024).enumerate() {
        assert_eq!(small.id_for(n), Some((i as u32, IdSource::Free)));
    }
    assert_eq!(small.id_for("new"), None);
}
