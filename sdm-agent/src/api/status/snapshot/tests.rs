//! The addresses `status` lists per rule, port ranges included.

use std::collections::BTreeMap;

use super::*;
use crate::{
    kernel::entries::build,
    policy::{Direction, Policy, PortRange, Proto, Rule, Target},
};

fn rule(name: &str, lo: u16, hi: u16, target: &str) -> Rule {
    Rule {
        name: name.into(),
        direction: Direction::Egress,
        protos: vec![Proto::Tcp],
        ports: vec![PortRange { lo, hi }],
        targets: vec![Target::Cidr(target.parse().expect("test CIDR"))],
        required: true,
        roles: vec![],
        origin: "test".into(),
    }
}

#[test]
fn range_rules_list_their_addresses() {
    let policy = Policy {
        rules: vec![
            rule("wide", 1024, 65535, "10.0.0.0/8"),
            rule("one", 1, 100, "192.0.2.1/32"),
            rule("v6", 0, 65535, "2001:db8::/32"),
            rule("port", 443, 443, "192.0.2.2/32"),
        ],
    };
    let ids: BTreeMap<String, u32> = [("wide", 1), ("one", 2), ("v6", 3), ("port", 4)]
        .into_iter()
        .map(|(n, i)| (n.to_string(), i))
        .collect();
    let addrs = live_addresses(&build(&policy, &ids, |_| &[]));
    let list = |id: u32| -> Vec<&str> { addrs[&id].iter().map(String::as_str).collect() };
    assert_eq!(list(1), ["10.0.0.0/8"]);
    assert_eq!(list(2), ["192.0.2.1"]);
    assert_eq!(list(3), ["2001:db8::/32"]);
    assert_eq!(list(4), ["192.0.2.2"]);
}
