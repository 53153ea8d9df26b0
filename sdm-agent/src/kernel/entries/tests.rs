//! Map entries built from policies: keys, first-rule-wins, capacity.

use super::*;
use crate::policy::PortRange;

fn rule(
    name: &str,
    dir: Direction,
    protos: Vec<Proto>,
    ports: Vec<PortRange>,
    targets: Vec<Target>,
) -> Rule {
    Rule {
        name: name.into(),
        direction: dir,
        protos,
        ports,
        targets,
        required: true,
        roles: vec![],
        origin: "test".into(),
    }
}

#[test]
fn diff_lists_only_changes() {
    let old: BTreeMap<u32, u32> = [(1, 1), (2, 2), (3, 3)].into();
    let new: BTreeMap<u32, u32> = [(1, 1), (2, 5), (4, 4)].into();
    let d = diff(&old, &new);
    assert_eq!(d.upsert, vec![(2, 5), (4, 4)]);
    assert_eq!(d.remove, vec![3]);
    assert!(diff(&new, &new).is_empty());
}

/// Two egress rules sharing a host and port (the first keeps the key), a
/// port range, CIDRs of both families, an ingress CIDR with host bits set,
/// and a rule without an id.
fn overlapping_rules() -> Policy {
    Policy {
        rules: vec![
            rule(
                "a",
                Direction::Egress,
                vec![Proto::Tcp],
                vec![PortRange::single(443)],
                vec![Target::Host("app.example".into())],
            ),
            rule(
                "b",
                Direction::Egress,
                vec![Proto::Tcp, Proto::Udp],
                vec![PortRange { lo: 8000, hi: 8002 }, PortRange::single(443)],
                vec![
                    Target::Host("app.example".into()),
                    Target::Cidr("10.0.0.0/8".parse().unwrap()),
                    Target::Cidr("2001:db8::1/128".parse().unwrap()),
                ],
            ),
            rule(
                "ssh",
                Direction::Ingress,
                vec![Proto::Tcp],
                vec![PortRange::single(22)],
                vec![Target::Cidr("10.1.2.3/8".parse().unwrap())],
            ),
            rule(
                "unnamed",
                Direction::Egress,
                vec![Proto::Tcp],
                vec![PortRange::single(1)],
                vec![Target::Cidr("1.2.3.4/32".parse().unwrap())],
            ),
        ],
    }
}

#[test]
fn hosts_cidrs_ranges_and_first_rule_wins() {
    let policy = overlapping_rules();
    let ids: BTreeMap<String, u32> = [
        ("a".to_string(), 7),
        ("b".to_string(), 9),
        ("ssh".to_string(), 3),
    ]
    .into();
    let addrs: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap()];
    let e = build(&policy, &ids, |h| {
        if h == "app.example" {
            &addrs[..]
        } else {
            &[]
        }
    });
    let k = |port, proto| Key4 {
        addr: [192, 0, 2, 1],
        port,
        proto,
        dir: sdm_common::TrafficDir::Egress as u8,
    };
    assert_eq!(
        e.exact4.get(&k(443, PROTO_TCP)),
        Some(&7),
        "first rule keeps the shared key"
    );
    assert_eq!(e.exact4.get(&k(443, PROTO_UDP)), Some(&9));
    assert_eq!(e.exact4.get(&k(8001, PROTO_TCP)), Some(&9));
    assert_eq!(e.exact4.get(&k(8003, PROTO_TCP)), None);
    // 1 (a) + 2 protos x 4 ports (b) on the host
    assert_eq!(e.exact4.len(), 1 + 8 - 1);
    assert_eq!(e.exact6.len(), 8);
    let c = Cidr4 {
        dir: sdm_common::TrafficDir::Egress as u8,
        proto: PROTO_TCP,
        port: 8000u16.to_be_bytes(),
        addr: [10, 0, 0, 0],
    };
    assert_eq!(e.cidr4.get(&(CIDR_HEADER_BITS + 8, c)), Some(&9));
    // host bits of a CIDR are cleared
    let s = Cidr4 {
        dir: sdm_common::TrafficDir::Ingress as u8,
        proto: PROTO_TCP,
        port: 22u16.to_be_bytes(),
        addr: [10, 0, 0, 0],
    };
    assert_eq!(e.cidr4.get(&(CIDR_HEADER_BITS + 8, s)), Some(&3));
    assert_eq!(e.rules, [3, 7, 9].into());
    assert!(
        !e.exact4.keys().any(|k| k.port == 1),
        "rules without an id are skipped"
    );
}

/// Two hostname rules on every port need 2 x 65535 hostname-port
/// entries, more than the map holds: refused before anything is
/// written, not halfway through applying.
/// `[dns] search` suffixes become query-only wildcard entries: the
/// kernel may let their names be asked but learns nothing for them, and
/// a policy name with the same key keeps its own (learnable) entry.
#[test]
fn search_suffixes_are_query_only_wildcards() {
    let policy = Policy {
        rules: vec![Rule {
            name: "wild".into(),
            direction: Direction::Egress,
            protos: vec![Proto::Tcp],
            ports: vec![PortRange { lo: 443, hi: 443 }],
            targets: vec![Target::Host("*.corp.example".into())],
            required: true,
            roles: vec![],
            origin: "config [[allow]] wild".into(),
        }],
    };
    let plain = dns_names(&policy);
    let names = dns_names_and_search(&policy, &["corp.example".into(), "lab.example".into()]);
    assert_eq!(names.len(), plain.len() + 1);
    let (lab_key, _) = dns_name_key("*.lab.example").expect("a key");
    assert_eq!(names[&lab_key].host, sdm_common::DNS_HOST_QUERY_ONLY);
    let (corp_key, _) = dns_name_key("*.corp.example").expect("a key");
    assert_eq!(
        names[&corp_key], plain[&corp_key],
        "the policy's entry stays"
    );
    assert_ne!(names[&corp_key].host, sdm_common::DNS_HOST_QUERY_ONLY);
}

/// Every port, as 4096 ranges of 16: each expanded to one entry per port
/// (a single range of more than 16 ports takes at most 30 entries).
fn every_port_expanded() -> Vec<PortRange> {
    (0..4096u16)
        .map(|i| PortRange {
            lo: i * 16,
            hi: i * 16 + 15,
        })
        .collect()
}

#[test]
fn hostname_ports_are_counted_before_anything_resolves() {
    let host_rule = |name: &str, host: &str| {
        rule(
            name,
            Direction::Egress,
            vec![Proto::Tcp],
            every_port_expanded(),
            vec![Target::Host(host.into())],
        )
    };
    let one = Policy {
        rules: vec![host_rule("a", "a.example")],
    };
    assert_eq!(static_overflow(&one), None);
    let two = Policy {
        rules: vec![host_rule("a", "a.example"), host_rule("b", "b.example")],
    };
    let o = static_overflow(&two).expect("2 x 65536 hostname ports overflow");
    assert_eq!(o.what, "hostname port");
    assert_eq!(o.max, MAX_HOST_PORTS);
    // The same as one range each: a port set per hostname.
    let mut two = two;
    for r in &mut two.rules {
        r.ports = vec![PortRange { lo: 0, hi: 65535 }];
    }
    assert_eq!(static_overflow(&two), None);
}

#[test]
fn overflow_names_the_first_full_map() {
    let wide = |targets: Vec<Target>| Policy {
        rules: vec![rule(
            "wide",
            Direction::Egress,
            vec![Proto::Tcp],
            every_port_expanded(),
            targets,
        )],
    };
    let ips = |n: u8| -> Vec<Target> {
        (1..=n)
            .map(|i| Target::Cidr(format!("192.0.2.{i}/32").parse().unwrap()))
            .collect()
    };
    // 2 x 65536 fit in 131072; 3 x 65536 do not.
    assert_eq!(static_overflow(&wide(ips(2))), None);
    let o = static_overflow(&wide(ips(3))).expect("3 x 65536 entries overflow");
    assert_eq!(o.what, "exact IPv4");
    assert_eq!(o.max, MAX_EXACT_ENTRIES);
    assert!(o.need > MAX_EXACT_ENTRIES as usize, "{o:?}");
    assert!(o.to_string().contains("more than the 131072"), "{o}");
    // Hostnames count only once resolved: not statically.
    let host = wide(vec![Target::Host("big.example".into())]);
    assert_eq!(static_overflow(&host), None);
    let ids: BTreeMap<String, u32> = [("wide".to_string(), 1)].into();
    let addrs: Vec<IpAddr> = (1..=3).map(|i| IpAddr::from([192, 0, 2, i])).collect();
    let e = build(&host, &ids, |_| &addrs[..]);
    assert_eq!(e.overflow().map(|o| o.need), Some(3 * 65536));
    let e = build(&host, &ids, |_| &addrs[..2]);
    assert_eq!(e.overflow(), None);
    // As one range, the three addresses take one entry each and share a set.
    let mut one_range = host.clone();
    one_range.rules[0].ports = vec![PortRange { lo: 0, hi: 65535 }];
    let e = build(&one_range, &ids, |_| &addrs[..]);
    assert_eq!(
        (e.overflow(), e.range4.len(), e.port_sets.len()),
        (None, 3, 1)
    );
    // CIDRs fill the trie.
    let cidrs: Vec<Target> = (0..=255u8)
        .map(|i| Target::Cidr(format!("10.{i}.0.0/16").parse().unwrap()))
        .collect();
    let mut p = wide(cidrs);
    p.rules[0].ports = every_port_expanded()[..64].to_vec();
    let o = static_overflow(&p).expect("256 x 1024 CIDR entries overflow");
    assert_eq!((o.what, o.max), ("IPv4 CIDR", MAX_CIDR_ENTRIES));
}

#[test]
fn loopback_ingress_rules_open_both_ends() {
    let policy = Policy {
        rules: vec![rule(
            "cli",
            Direction::Ingress,
            vec![Proto::Tcp],
            vec![PortRange::single(65220)],
            vec![
                Target::Cidr("127.0.0.0/8".parse().unwrap()),
                Target::Cidr("::1/128".parse().unwrap()),
            ],
        )],
    };
    let ids: BTreeMap<String, u32> = [("cli".to_string(), 1)].into();
    let e = build(&policy, &ids, |_| &[]);
    assert_eq!(e.cidr4.len(), 2);
    assert!(e
        .cidr4
        .keys()
        .any(|(_, k)| k.dir == sdm_common::TrafficDir::Egress));
    assert_eq!(e.exact6.len(), 2);
}
