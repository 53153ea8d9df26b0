//! The flow vocabulary: the hostname index and the time format.

use super::*;

#[test]
fn index_maps_addresses_to_sorted_names() {
    let idx = index(&[
        ("b.example", &["192.0.2.1", "::ffff:192.0.2.9"]),
        ("a.example", &["192.0.2.1"]),
        ("c.example", &[]),
    ]);
    let m = idx.read().unwrap();
    assert_eq!(
        m[&"192.0.2.1".parse::<IpAddr>().unwrap()],
        vec!["a.example", "b.example"]
    );
    // IPv4-mapped addresses are folded into IPv4.
    assert_eq!(
        m[&"192.0.2.9".parse::<IpAddr>().unwrap()],
        vec!["b.example"]
    );
    drop(m);
    assert_eq!(
        hostname_of(&idx, "192.0.2.1".parse().unwrap()).as_deref(),
        Some("a.example")
    );
    assert_eq!(hostname_of(&idx, "192.0.2.2".parse().unwrap()), None);
}

#[test]
fn rfc3339_times() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
    assert_eq!(rfc3339(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
    assert_eq!(rfc3339(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
}
