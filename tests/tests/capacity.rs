//! Rule capacity (README, "Capacity"): the rule maps are sized from the
//! policy when the object is loaded, so a policy of 12,000 rules loads and
//! every rule judges and counts, ids past 1,024 and 10,000 included; a
//! restart whose policy outgrows the pinned maps replaces them with larger
//! ones, the new links first, the rule states, names and counters carried
//! over. Verdicts through BPF_PROG_TEST_RUN on crafted packets, as in
//! verdicts.rs: the addresses (10.64.0.0/16, TEST-NET-2) are never sent to.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use aya::Ebpf;
use sdm_agent::{
    kernel::dataplane::{self, pinned_rule_capacity, AttachOutcome, DataplaneError, Maps},
    kernel::entries,
    policy::{Direction, Policy, PortRange, Proto, Rule, Target},
};
use sdm_common::{TrafficDir, PROG_DNS_IN, PROG_EGRESS};
use sdm_tests::{
    guards::{Cgroup, Netns, Pins},
    packets::{dns_ptr, ipv4, l4, udp, DnsMsg, Rr, V4Opts, DNS_A, TCP, UDP},
    programs::{is_loaded, pinned_programs},
    require_root,
};

const PASS: u32 = 1;
const DROP: u32 = 0;
const ME: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// Rule `i`: tcp/443 to the /32 10.64.(i / 250).(i % 250 + 1).
fn addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 64, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// `n` rules "r0".. as `[[allow]]` CIDR rules compile to.
fn policy(n: u32) -> Policy {
    Policy {
        rules: (0..n)
            .map(|i| Rule {
                name: format!("allow/r{i}"),
                direction: Direction::Egress,
                protos: vec![Proto::Tcp],
                ports: vec![PortRange::single(443)],
                targets: vec![Target::Cidr(ipnet::IpNet::from(IpAddr::V4(addr(i))))],
                required: true,
                roles: vec![],
                origin: "test".into(),
            })
            .collect(),
    }
}

/// Assigns ids, writes the policy and enforces it; returns the ids.
fn apply(maps: &mut Maps, policy: &Policy) -> BTreeMap<String, u32> {
    let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    let ids = maps.assign_rule_ids(&names).expect("rule ids");
    maps.apply(&entries::build(policy, &ids, |_| &[]))
        .expect("apply");
    maps.set_mode(sdm_common::KernelMode::Enforce)
        .expect("enforce");
    ids
}

/// A netns with a veth, whose ifindex the test runs use.
fn test_netns() -> (Netns, u32) {
    let ns = Netns::new("c");
    ns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    ns.ip(&["link", "set", "va", "up"]);
    let ifindex = ns.ifindex("va");
    (ns, ifindex)
}

/// The egress program's verdict on a TCP SYN to `dst`:443.
fn egress(ebpf: &mut Ebpf, ns: &Netns, ifindex: u32, dst: Ipv4Addr) -> u32 {
    let pkt = ipv4(ME, dst, TCP, &l4(TCP, 40000, 443), V4Opts::default());
    run(ebpf, ns, ifindex, PROG_EGRESS, &pkt)
}

fn run(ebpf: &mut Ebpf, ns: &Netns, ifindex: u32, prog: &'static str, pkt: &[u8]) -> u32 {
    let prog = dataplane::program(ebpf, prog).expect("program");
    let _in = ns.enter();
    dataplane::test_run(prog, pkt, ifindex, 1)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
        .0
}

fn packets(maps: &Maps, id: u32) -> u64 {
    maps.rule_counter(id, TrafficDir::Egress)
        .expect("rule counter")
        .packets
}

/// 12,000 rules: the maps are sized for them (24,576: twice the rules,
/// rounded up to a multiple of 1,024), and rules whose ids are past 1,024
/// and past 10,000 allow
/// their address and count their packets; an address of no rule is
/// dropped.
#[test]
fn twelve_thousand_rules_load_judge_and_count() {
    require_root();
    let pins = Pins::new("c");
    let policy = policy(12_000);
    let mut ebpf = dataplane::load(&pins.layout, dataplane::EBPF_OBJECT, policy.rules.len())
        .unwrap_or_else(|e| panic!("load the eBPF object: {e}"));
    let mut maps = Maps::open(&pins.layout).expect("open pinned maps");
    assert_eq!(maps.rule_capacity(), 24_576);
    assert_eq!(
        pinned_rule_capacity(&pins.layout).expect("capacity"),
        Some(24_576)
    );
    let ids = apply(&mut maps, &policy);
    let (ns, ifindex) = test_netns();
    let mut checked = 0;
    for i in [0, 1500, 10_500, 11_999] {
        let id = ids[&format!("allow/r{i}")];
        assert_eq!(
            egress(&mut ebpf, &ns, ifindex, addr(i)),
            PASS,
            "rule {i} (id {id})"
        );
        assert_eq!(packets(&maps, id), 1, "the counter of rule {i} (id {id})");
        checked += u32::from(id > 10_000);
    }
    assert!(
        checked >= 1,
        "no rule with an id past 10,000 was checked: {ids:?}"
    );
    assert!(
        ids.values().any(|id| (1024..10_000).contains(id)) && ids.values().max() == Some(&11_999),
        "ids are not 0..12,000"
    );
    assert_eq!(
        egress(&mut ebpf, &ns, ifindex, Ipv4Addr::new(10, 64, 200, 1)),
        DROP,
        "an address of no rule"
    );
    // `status --json` shows the capacity beside the rules.
    let status = sdm_agent::api::status::snapshot(&pins.layout, &mut maps).expect("status");
    let json = serde_json::to_value(&status).expect("status as JSON");
    assert_eq!(json["rule_capacity"], 24_576);
    assert_eq!(json["rules"].as_array().map(Vec::len), Some(12_000));
    // More rules than the maps hold: refused before anything is written,
    // saying what to do.
    let err = maps
        .assign_rule_ids(&vec!["x"; 40_000])
        .expect_err("40,000 rules in maps of 24,576");
    assert!(
        matches!(
            err,
            DataplaneError::RuleCapacity {
                rules: 40_000,
                capacity: 24_576
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("restart the agent"), "{err}");
}

/// A restart with a policy of 3,000 rules on maps pinned for 100 (1,024):
/// the pinned links are not adopted but replaced, the new programs run on
/// maps of 6,144 that took over the pins, and the rule ids, states and
/// counters carried over, so the new programs judge as the old ones did
/// before the new policy is even written. Then the new policy's rules past
/// 1,024 allow and count.
#[test]
fn a_restart_with_more_rules_grows_the_pinned_maps() {
    require_root();
    let pins = Pins::new("c");
    let cg = Cgroup::new("c");
    let (ns, ifindex) = test_netns();
    let small = policy(100);
    let (outcome, old) = dataplane::attach(
        &pins.layout,
        &cg.path,
        dataplane::EBPF_OBJECT,
        None,
        small.rules.len(),
    )
    .unwrap_or_else(|e| panic!("attach to {}: {e}", cg.path.display()));
    assert_eq!(outcome, AttachOutcome::Attached { replaced: false });
    let mut old = old.expect("a loaded object");
    let mut maps = Maps::open(&pins.layout).expect("maps");
    assert_eq!(maps.rule_capacity(), 1024);
    let ids = apply(&mut maps, &small);
    assert_eq!(egress(&mut old, &ns, ifindex, addr(42)), PASS);
    let id42 = ids["allow/r42"];
    assert_eq!(packets(&maps, id42), 1);
    let before = pinned_programs(&pins.layout);
    drop(maps);

    // The same object and cgroup would be adopted; too small maps are not.
    let big = policy(3000);
    let (outcome, new) = dataplane::attach(
        &pins.layout,
        &cg.path,
        dataplane::EBPF_OBJECT,
        None,
        big.rules.len(),
    )
    .unwrap_or_else(|e| panic!("re-attach with 3,000 rules: {e}"));
    assert_eq!(outcome, AttachOutcome::Attached { replaced: true });
    let mut new = new.expect("a loaded object");
    let after = pinned_programs(&pins.layout);
    for (pin, p) in &before {
        assert_ne!(
            after[pin].id, p.id,
            "the {pin} link still runs the old program"
        );
    }
    assert_eq!(
        pinned_rule_capacity(&pins.layout).expect("capacity"),
        Some(6144)
    );
    let mut maps = Maps::open(&pins.layout).expect("maps");
    assert_eq!(maps.rule_capacity(), 6144);
    let names = maps.rule_names().expect("names");
    assert_eq!(names.len(), 100, "the rule names carried over");
    assert_eq!(names[&id42], "allow/r42");
    assert_eq!(packets(&maps, id42), 1, "the counter carried over");
    // The old policy, as copied, judges in the new programs.
    assert_eq!(egress(&mut new, &ns, ifindex, addr(42)), PASS);
    assert_eq!(egress(&mut new, &ns, ifindex, addr(2500)), DROP);
    assert_eq!(packets(&maps, id42), 2);

    let ids = apply(&mut maps, &big);
    assert_eq!(ids["allow/r42"], id42, "a rule keeps its id");
    let id = ids["allow/r2500"];
    assert!(id > 1024, "id {id}");
    assert_eq!(egress(&mut new, &ns, ifindex, addr(2500)), PASS);
    assert_eq!(packets(&maps, id), 1);
    // The old object's programs are gone once nothing holds them.
    drop(old);
    for p in before.values() {
        let gone = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            !is_loaded(p.id)
        });
        assert!(gone, "program {} of the old links is still loaded", p.id);
    }
}

const RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);

/// 10,500 hostname rules (`h<i>.example`, tcp/443) and the resolver's: the
/// kernel's DNS learning holds every name (the names map took 4,096
/// before), and an answer for the 10,400th name teaches its address, which
/// its rule (id past 10,000) then allows and counts. The agent resolves
/// nothing here: only learning can allow the address.
#[test]
fn ten_thousand_hostnames_are_learned_from_answers() {
    require_root();
    let pins = Pins::new("c");
    let mut p = policy(0);
    p.rules = (0..10_500)
        .map(|i| Rule {
            name: format!("resource/h{i}"),
            direction: Direction::Egress,
            protos: vec![Proto::Tcp],
            ports: vec![PortRange::single(443)],
            targets: vec![Target::Host(format!("h{i}.example"))],
            required: true,
            roles: vec![],
            origin: "test".into(),
        })
        .chain([Rule {
            name: "resolver".into(),
            direction: Direction::Egress,
            protos: vec![Proto::Udp],
            ports: vec![PortRange::single(53)],
            targets: vec![Target::Cidr(ipnet::IpNet::from(IpAddr::V4(RESOLVER)))],
            required: true,
            roles: vec![],
            origin: "test".into(),
        }])
        .collect();
    let mut ebpf = dataplane::load(&pins.layout, dataplane::EBPF_OBJECT, p.rules.len())
        .unwrap_or_else(|e| panic!("load the eBPF object: {e}"));
    let mut maps = Maps::open(&pins.layout).expect("open pinned maps");
    let ids = apply(&mut maps, &p);
    let names = entries::dns_names(&p);
    assert_eq!(names.len(), 10_500);
    maps.apply_dns(&names, &[IpAddr::V4(RESOLVER)])
        .unwrap_or_else(|e| panic!("10,500 names in the DNS learning maps: {e}"));
    let (ns, ifindex) = test_netns();
    let addr = Ipv4Addr::new(203, 0, 113, 77);
    assert_eq!(
        egress(&mut ebpf, &ns, ifindex, addr),
        DROP,
        "not learned yet"
    );
    let q = DnsMsg::query(7, "h10400.example", DNS_A).bytes();
    let pkt = ipv4(ME, RESOLVER, UDP, &udp(40053, 53, &q), V4Opts::default());
    assert_eq!(
        run(&mut ebpf, &ns, ifindex, PROG_EGRESS, &pkt),
        PASS,
        "the query"
    );
    let a = DnsMsg::answer(
        7,
        "h10400.example",
        DNS_A,
        vec![Rr::a(dns_ptr(12), 300, addr)],
    );
    let pkt = ipv4(
        RESOLVER,
        ME,
        UDP,
        &udp(53, 40053, &a.bytes()),
        V4Opts::default(),
    );
    assert_eq!(
        run(&mut ebpf, &ns, ifindex, PROG_DNS_IN, &pkt),
        PASS,
        "the answer"
    );
    let learned: Vec<IpAddr> = maps
        .learned()
        .expect("learned")
        .into_iter()
        .map(|(a, _, _)| a)
        .collect();
    assert_eq!(learned, vec![IpAddr::V4(addr)]);
    assert_eq!(egress(&mut ebpf, &ns, ifindex, addr), PASS, "learned");
    let id = ids["resource/h10400"];
    assert!(id > 10_000, "id {id}");
    assert_eq!(packets(&maps, id), 1);
}
