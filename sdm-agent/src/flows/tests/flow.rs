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

/// An ingress flow's key holds the local port; the remote's port (the
/// service a reply came from) rides along for TCP and UDP, and the latest
/// observation wins.
#[test]
fn ingress_flows_keep_the_remote_port() {
    let reply = event("ingress", "udp", "192.0.2.53", 41000, "dig", "audit", 1_000);
    let mut f = Flow::from_event(&reply, None);
    assert_eq!((f.key.port, f.remote_port), (41000, Some(50000)));
    let out = event("egress", "udp", "192.0.2.53", 53, "dig", "audit", 1_000);
    assert_eq!(Flow::from_event(&out, None).remote_port, None);
    let ping = event("ingress", "icmp", "192.0.2.53", 0, "", "audit", 1_000);
    assert_eq!(Flow::from_event(&ping, None).remote_port, None);

    let mut later = reply.clone();
    later.time += Duration::from_secs(1);
    later.remote_port = 53;
    f.merge(&Flow::from_event(&later, None));
    assert_eq!(f.remote_port, Some(53));
    let mut earlier = reply;
    earlier.time -= Duration::from_millis(500);
    earlier.remote_port = 123;
    f.merge(&Flow::from_event(&earlier, None));
    assert_eq!(f.remote_port, Some(53), "an older event does not win");
}
