//! The typed vocabulary keeps the values and names the constants and name
//! arrays it replaced had: maps pinned by an older agent, metrics and the
//! API all depend on them.

use super::*;

#[test]
fn values_and_names_are_the_old_ones() {
    assert_eq!(TrafficDir::ALL.map(|d| d as u8), [0, 1]);
    assert_eq!(TrafficDir::ALL.map(TrafficDir::name), ["egress", "ingress"]);
    assert_eq!(KernelMode::ALL.map(|m| m as u32), [0, 1]);
    assert_eq!(KernelMode::ALL.map(KernelMode::name), ["audit", "enforce"]);
    assert_eq!(
        DenyReason::ALL.map(DenyReason::name),
        [
            "no_rule",
            "malformed",
            "fragment",
            "unknown_protocol",
            "source_route",
            "packet_socket",
            "dns_query",
        ]
    );
    assert_eq!(
        DnsResult::ALL.map(DnsResult::name),
        [
            "learned",
            "not_allowed",
            "unasked",
            "malformed",
            "error_rcode",
            "no_address",
            "truncated",
            "not_resolver",
        ]
    );
    assert_eq!(
        DnsQueryVerdict::ALL.map(DnsQueryVerdict::name),
        ["allowed", "refused", "would_refuse"]
    );
    assert_eq!(
        EventStat::ALL.map(EventStat::name),
        ["sent", "lost", "suppressed", "throttled"]
    );
    assert_eq!(DNS_STAT_LEARN_FULL, 8);
    assert_eq!(DNS_STATS_SLOTS, 9);
    assert_eq!(DNSQ_STATS_SLOTS, 3);
    assert_eq!(EVENT_STAT_ENTRIES, 4);
    assert_eq!(DENY_STATS_ENTRIES, 2 * 2 * 7);
}

#[test]
fn raw_values_round_trip() {
    for reason in DenyReason::ALL {
        assert_eq!(DenyReason::from_raw(reason.raw()), Some(reason));
        assert_eq!(DenyReason::try_from(reason as u32), Ok(reason));
    }
    assert_eq!(DenyReason::from_raw(7), None);
    let err = TrafficDir::try_from(2u8).unwrap_err();
    assert_eq!((err.kind, err.raw), ("TrafficDir", 2));
    assert!(1u8 == TrafficDir::Ingress);
    assert_eq!(KernelMode::of_config(1), KernelMode::Enforce);
    // Anything but enforce is audit, as the kernel always read it.
    assert_eq!(KernelMode::of_config(7), KernelMode::Audit);
}

#[test]
fn counter_indexes_are_the_old_layout() {
    // (mode * 2 + dir) * reasons + reason, as before the enums.
    assert_eq!(
        deny_index(
            KernelMode::Enforce,
            TrafficDir::Ingress,
            DenyReason::DnsQuery
        ),
        (2 + 1) * 7 + 6
    );
    assert_eq!(
        deny_index(KernelMode::Audit, TrafficDir::Egress, DenyReason::NoRule),
        0
    );
    assert_eq!(rule_stats_index(5, TrafficDir::Ingress), 11);
}

/// The XDP shield's counter names are metric labels and status keys.
#[test]
fn xdp_verdict_names_are_the_documented_ones() {
    assert_eq!(
        XdpVerdict::ALL.map(XdpVerdict::name),
        [
            "passed",
            "unsolicited_tcp",
            "closed_udp",
            "unsolicited_icmp",
            "malformed",
            "unknown_protocol",
        ]
    );
    assert_eq!(XDP_STAT_ENTRIES, 6);
    assert!(XDP_MAPS.iter().all(|n| n.len() <= 15));
}

#[test]
fn rule_capacity_has_headroom_a_floor_and_a_ceiling() {
    // Small policies get the least capacity.
    assert_eq!(rule_capacity_for(0), Some(MIN_RULE_CAPACITY));
    assert_eq!(rule_capacity_for(512), Some(1024));
    // Room for twice the rules, rounded up to a multiple of 1024.
    assert_eq!(rule_capacity_for(513), Some(2048));
    assert_eq!(rule_capacity_for(2006), Some(4096));
    assert_eq!(rule_capacity_for(3000), Some(6144));
    assert_eq!(rule_capacity_for(10_000), Some(20_480));
    assert_eq!(rule_capacity_for(12_000), Some(24_576));
    // Near the ceiling the headroom is cut, never the rules.
    assert_eq!(rule_capacity_for(70_000), Some(RULE_CEILING));
    assert_eq!(rule_capacity_for(RULE_CEILING), Some(RULE_CEILING));
    assert_eq!(rule_capacity_for(RULE_CEILING + 1), None);
    for rules in [0, 1, 1000, 10_000, 65_536, RULE_CEILING] {
        let cap = rule_capacity_for(rules).unwrap();
        assert!(cap >= rules && cap <= RULE_CEILING, "{rules} -> {cap}");
    }
}

#[test]
fn rule_slots_sit_side_by_side() {
    // No capacity in the index: slot 0 and 1 of a rule are neighbours.
    assert_eq!(rule_slot_index(0, 0), 0);
    assert_eq!(rule_slot_index(1, 0), 1);
    assert_eq!(rule_slot_index(0, 10_999), 21_998);
    assert_eq!(rule_slot_index(1, RULE_CEILING - 1), 2 * RULE_CEILING - 1);
}
