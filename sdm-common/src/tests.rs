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
