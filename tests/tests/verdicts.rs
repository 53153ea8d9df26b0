//! Verdicts of the real kernel programs on crafted packets, through
//! BPF_PROG_TEST_RUN (the way the kernel's own selftests exercise
//! cgroup_skb: tools/testing/selftests/bpf/prog_tests/cgroup_skb_sk_lookup.c
//! and friends). Public addresses such as 1.1.1.1 are only ever tested here:
//! no packet leaves the machine.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::Ebpf;
use sdm_agent::{
    kernel::dataplane::{self, Maps},
    kernel::entries,
    policy::{Direction, Policy, PortRange, Proto, Rule, Target},
};
use sdm_common::{LOOPBACK_ENFORCE, LOOPBACK_PASS, PROG_EGRESS, PROG_INGRESS};
use sdm_tests::{
    guards::{Netns, Pins},
    packets::{ipv4, ipv6, l4, Ext, V4Opts, ICMP, ICMPV6, TCP, UDP},
    require_root,
};

const PASS: u32 = 1;
const DROP: u32 = 0;

fn rule(name: &str, direction: Direction, proto: Proto, ports: PortRange, target: &str) -> Rule {
    let target = match target.parse() {
        Ok(net) => Target::Cidr(net),
        Err(_) => Target::Host(target.to_owned()),
    };
    Rule {
        name: name.to_owned(),
        direction,
        protos: vec![proto],
        ports: vec![ports],
        targets: vec![target],
        required: true,
        roles: vec![],
        origin: "test".into(),
    }
}

/// Rule "bulk": tcp/9000 to `n` consecutive /32s from `first`.
fn bulk_rule(first: Ipv4Addr, n: u32) -> Rule {
    let mut r = rule(
        "bulk",
        Direction::Egress,
        Proto::Tcp,
        one(9000),
        "0.0.0.0/32",
    );
    r.targets = (0..n)
        .map(|i| {
            Target::Cidr(ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::from(
                u32::from(first) + i,
            ))))
        })
        .collect();
    r
}

fn one(p: u16) -> PortRange {
    PortRange::single(p)
}

/// The policy every test here starts from.
fn base_policy() -> Policy {
    use Direction::*;
    Policy {
        rules: vec![
            rule("app", Egress, Proto::Tcp, one(443), "app.example"),
            rule("dns-fallback", Egress, Proto::Udp, one(53), "1.1.1.1/32"),
            rule("db", Egress, Proto::Tcp, one(5432), "10.0.0.0/24"),
            rule(
                "range",
                Egress,
                Proto::Tcp,
                PortRange { lo: 8000, hi: 8100 },
                "10.1.0.0/16",
            ),
            rule("advertised", Ingress, Proto::Tcp, one(5000), "0.0.0.0/0"),
            rule("ping", Egress, Proto::Icmp, one(8), "192.0.2.10/32"),
            rule("app6", Egress, Proto::Tcp, one(443), "2001:db8::10/128"),
            rule("ssh6", Ingress, Proto::Tcp, one(22), "2001:db8:1::/48"),
            rule("ping6", Egress, Proto::Icmp, one(128), "2001:db8::10/128"),
        ],
    }
}

struct Fixture {
    ebpf: Ebpf,
    maps: Maps,
    ids: BTreeMap<String, u32>,
    ns: Netns,
    ifindex: u32,
    // Dropped last: unpins after the program fds are closed.
    _pins: Pins,
}

const APP_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const ME: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const ME6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 7);
const APP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

impl Fixture {
    fn new(policy: &Policy) -> Self {
        require_root();
        let pins = Pins::new("v");
        let ebpf = dataplane::load(&pins.layout, dataplane::EBPF_OBJECT, 0)
            .unwrap_or_else(|e| panic!("load the eBPF object: {e}"));
        let mut maps = Maps::open(&pins.layout).expect("open pinned maps");
        let ns = Netns::new("v");
        ns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
        ns.ip(&["link", "set", "va", "up"]);
        let ifindex = ns.ifindex("va");
        let mut f = Fixture {
            ebpf,
            maps: Maps::open(&pins.layout).expect("open pinned maps"),
            ids: BTreeMap::new(),
            ns,
            ifindex,
            _pins: pins,
        };
        maps.set_mode(sdm_common::KernelMode::Enforce)
            .expect("enforce");
        f.apply(policy);
        f
    }

    fn apply(&mut self, policy: &Policy) -> usize {
        let e = self.entries(policy);
        self.maps.apply(&e).expect("apply entries")
    }

    /// The policy's entries, with rule ids assigned (app.example resolved).
    fn entries(&mut self, policy: &Policy) -> entries::Entries {
        let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        self.ids = self.maps.assign_rule_ids(&names).expect("rule ids");
        let app: Vec<IpAddr> = vec![IpAddr::V4(APP_ADDR)];
        entries::build(policy, &self.ids, |h| {
            if h == "app.example" {
                &app[..]
            } else {
                &[]
            }
        })
    }

    fn run(&mut self, dir: sdm_common::TrafficDir, pkt: &[u8], ifindex: u32, repeat: u32) -> u32 {
        let name = if dir == sdm_common::TrafficDir::Egress {
            PROG_EGRESS
        } else {
            PROG_INGRESS
        };
        let prog = dataplane::program(&mut self.ebpf, name).expect("program");
        let _in = self.ns.enter();
        let (ret, _) = dataplane::test_run(prog, pkt, ifindex, repeat)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        ret
    }

    fn egress(&mut self, pkt: &[u8]) -> u32 {
        self.run(sdm_common::TrafficDir::Egress, pkt, self.ifindex, 1)
    }

    fn ingress(&mut self, pkt: &[u8]) -> u32 {
        self.run(sdm_common::TrafficDir::Ingress, pkt, self.ifindex, 1)
    }

    fn denied(
        &self,
        enforce: bool,
        dir: sdm_common::TrafficDir,
        reason: sdm_common::DenyReason,
    ) -> u64 {
        self.maps
            .deny_counter(enforce, dir, reason)
            .expect("deny counter")
            .packets
    }

    fn rule_packets(&self, name: &str, dir: sdm_common::TrafficDir) -> u64 {
        let id = self.ids[name];
        self.maps
            .rule_counter(id, dir)
            .expect("rule counter")
            .packets
    }
}

fn v4(dst: Ipv4Addr, proto: u8, dport: u16) -> Vec<u8> {
    ipv4(ME, dst, proto, &l4(proto, 40000, dport), V4Opts::default())
}

fn v6(dst: Ipv6Addr, proto: u8, dport: u16) -> Vec<u8> {
    ipv6(ME6, dst, proto, &[], &l4(proto, 40000, dport))
}

#[test]
fn ipv4_egress_exact_cidr_range_and_public_addresses() {
    let mut f = Fixture::new(&base_policy());
    assert_eq!(
        f.egress(&v4(APP_ADDR, TCP, 443)),
        PASS,
        "resolved host, allowed port"
    );
    assert_eq!(
        f.egress(&v4(APP_ADDR, TCP, 444)),
        DROP,
        "resolved host, other port"
    );
    assert_eq!(
        f.egress(&v4(APP_ADDR, UDP, 443)),
        DROP,
        "resolved host, other protocol"
    );
    assert_eq!(
        f.egress(&v4(Ipv4Addr::new(1, 1, 1, 1), UDP, 53)),
        PASS,
        "fallback resolver"
    );
    assert_eq!(
        f.egress(&v4(Ipv4Addr::new(1, 1, 1, 1), TCP, 53)),
        DROP,
        "fallback is udp only"
    );
    assert_eq!(f.egress(&v4(Ipv4Addr::new(1, 0, 0, 1), UDP, 53)), DROP);
    assert_eq!(
        f.egress(&v4(Ipv4Addr::new(10, 0, 0, 200), TCP, 5432)),
        PASS,
        "in the CIDR"
    );
    assert_eq!(
        f.egress(&v4(Ipv4Addr::new(10, 0, 1, 1), TCP, 5432)),
        DROP,
        "outside the CIDR"
    );
    assert_eq!(
        f.egress(&v4(Ipv4Addr::new(10, 1, 9, 9), TCP, 8000)),
        PASS,
        "range start"
    );
    assert_eq!(
        f.egress(&v4(Ipv4Addr::new(10, 1, 9, 9), TCP, 8100)),
        PASS,
        "range end"
    );
    assert_eq!(
        f.egress(&v4(Ipv4Addr::new(10, 1, 9, 9), TCP, 8101)),
        DROP,
        "past the range"
    );
    assert_eq!(
        f.egress(&v4(Ipv4Addr::new(8, 8, 8, 8), TCP, 443)),
        DROP,
        "a public address"
    );
    assert_eq!(f.rule_packets("app", sdm_common::TrafficDir::Egress), 1);
    assert_eq!(f.rule_packets("range", sdm_common::TrafficDir::Egress), 2);
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::NoRule
        ),
        7
    );
}

#[test]
fn icmp_by_type() {
    let mut f = Fixture::new(&base_policy());
    assert_eq!(
        f.egress(&v4(APP_ADDR, ICMP, 8)),
        PASS,
        "echo request to an allowed host"
    );
    assert_eq!(f.egress(&v4(APP_ADDR, ICMP, 13)), DROP, "timestamp request");
    assert_eq!(f.egress(&v4(ME, ICMP, 8)), DROP, "echo request elsewhere");
    let reply = ipv4(APP_ADDR, ME, ICMP, &l4(ICMP, 0, 0), V4Opts::default());
    assert_eq!(f.ingress(&reply), PASS, "echo reply from the allowed host");
    assert_eq!(
        f.egress(&v6(APP6, ICMPV6, 128)),
        PASS,
        "ICMPv6 echo request"
    );
    assert_eq!(f.egress(&v6(APP6, ICMPV6, 135)), DROP, "ICMPv6 other type");
    let reply6 = ipv6(APP6, ME6, ICMPV6, &[], &l4(ICMPV6, 0, 129));
    assert_eq!(f.ingress(&reply6), PASS, "ICMPv6 echo reply");
    // An echo reply is a reply only to an echo request: from a host this
    // one may ping but never pinged, it is refused.
    let mut policy = base_policy();
    policy.rules.push(Rule {
        name: "ping-8.8".into(),
        direction: Direction::Egress,
        protos: vec![Proto::Icmp],
        ports: vec![PortRange::single(8)],
        targets: vec![Target::Cidr("8.8.8.0/24".parse().unwrap())],
        required: true,
        roles: vec![],
        origin: "test".into(),
    });
    let mut f = Fixture::new(&policy);
    let unasked = ipv4(
        Ipv4Addr::new(8, 8, 8, 8),
        ME,
        ICMP,
        &l4(ICMP, 0, 0),
        V4Opts::default(),
    );
    assert_eq!(f.ingress(&unasked), DROP, "an echo reply nobody asked for");
    assert_eq!(f.egress(&v4(Ipv4Addr::new(8, 8, 8, 8), ICMP, 8)), PASS);
    assert_eq!(f.ingress(&unasked), PASS, "the reply to that request");
}

#[test]
fn ipv6_exact_and_cidr_ingress() {
    let mut f = Fixture::new(&base_policy());
    assert_eq!(f.egress(&v6(APP6, TCP, 443)), PASS);
    assert_eq!(f.egress(&v6(APP6, TCP, 80)), DROP);
    let ssh_from = |src: Ipv6Addr| ipv6(src, ME6, TCP, &[], &l4(TCP, 50000, 22));
    assert_eq!(
        f.ingress(&ssh_from("2001:db8:1:2::5".parse().unwrap())),
        PASS
    );
    assert_eq!(f.ingress(&ssh_from("2001:db8:2::5".parse().unwrap())), DROP);
    assert_eq!(f.rule_packets("ssh6", sdm_common::TrafficDir::Ingress), 1);
}

#[test]
fn ipv4_options_are_skipped_not_misread() {
    let mut f = Fixture::new(&base_policy());
    // Options are one timestamp option of 0x01 bytes: a parser that ignored
    // IHL would read ports 17420/257 and drop this packet.
    let opts = V4Opts {
        option_words: 3,
        ..Default::default()
    };
    let p = ipv4(ME, APP_ADDR, TCP, &l4(TCP, 40000, 443), opts);
    assert_eq!(f.egress(&p), PASS);
    let p = ipv4(ME, APP_ADDR, TCP, &l4(TCP, 40000, 257), opts);
    assert_eq!(f.egress(&p), DROP);
    let max = V4Opts {
        option_words: 10,
        ..Default::default()
    };
    assert_eq!(
        f.egress(&ipv4(ME, APP_ADDR, TCP, &l4(TCP, 40000, 443), max)),
        PASS,
        "IHL 15"
    );
}

/// Source routing names hops past the address a verdict is about: an IPv4
/// loose source route option or an IPv6 routing header with segments left
/// is refused even to an allowed destination, with its own reason.
#[test]
fn source_routes_are_refused() {
    let mut f = Fixture::new(&base_policy());
    let lsrr = V4Opts {
        option_words: 2,
        loose_source_route: true,
        ..Default::default()
    };
    let p = ipv4(ME, APP_ADDR, TCP, &l4(TCP, 40000, 443), lsrr);
    assert_eq!(
        f.egress(&p),
        DROP,
        "IPv4 loose source route to an allowed address"
    );
    let p = ipv6(ME6, APP6, TCP, &[Ext::SourceRoute], &l4(TCP, 40000, 443));
    assert_eq!(
        f.egress(&p),
        DROP,
        "IPv6 routing header with a segment left"
    );
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::SourceRoute
        ),
        2
    );
    // More options than the program walks: refused as a possible source
    // route (five NOPs, then the end of the list).
    let mut many = ipv4(
        ME,
        APP_ADDR,
        TCP,
        &l4(TCP, 40000, 443),
        V4Opts {
            option_words: 2,
            ..Default::default()
        },
    );
    many[20..28].copy_from_slice(&[1, 1, 1, 1, 1, 0, 0, 0]);
    assert_eq!(f.egress(&many), DROP, "five NOPs");
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::SourceRoute
        ),
        3
    );
    // A routing header whose segments are used up is only walked.
    let p = ipv6(ME6, APP6, TCP, &[Ext::Routing], &l4(TCP, 40000, 443));
    assert_eq!(f.egress(&p), PASS);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let mut f = Fixture::new(&base_policy());
    let l = l4(TCP, 40000, 443);
    let chain = [
        Ext::HopByHop,
        Ext::DestOpts,
        Ext::Routing,
        Ext::Fragment(0),
        Ext::DestOpts,
    ];
    assert_eq!(
        f.egress(&ipv6(ME6, APP6, TCP, &chain, &l)),
        PASS,
        "five extension headers"
    );
    let wrong = ipv6(ME6, APP6, TCP, &[Ext::HopByHop], &l4(TCP, 40000, 444));
    assert_eq!(f.egress(&wrong), DROP);
    let nine = [Ext::DestOpts; 9];
    assert_eq!(
        f.egress(&ipv6(ME6, APP6, TCP, &nine, &l)),
        DROP,
        "more headers than walked"
    );
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::Malformed
        ),
        1
    );
}

#[test]
fn fragments_have_their_own_verdict() {
    let mut f = Fixture::new(&base_policy());
    let first = V4Opts {
        more_fragments: true,
        ..Default::default()
    };
    let p = ipv4(ME, APP_ADDR, TCP, &l4(TCP, 40000, 443), first);
    assert_eq!(f.egress(&p), PASS, "a first fragment carries the ports");
    let later = V4Opts {
        frag_offset: 185,
        ..Default::default()
    };
    let p = ipv4(ME, APP_ADDR, TCP, &[0u8; 32], later);
    assert_eq!(f.egress(&p), DROP, "non-first IPv4 fragment");
    let p = ipv6(ME6, APP6, TCP, &[Ext::Fragment(100)], &[0u8; 32]);
    assert_eq!(f.egress(&p), DROP, "non-first IPv6 fragment");
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::Fragment
        ),
        2
    );
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::NoRule
        ),
        0
    );
}

#[test]
fn truncated_malformed_and_unknown_protocols() {
    let mut f = Fixture::new(&base_policy());
    // (BPF_PROG_TEST_RUN itself refuses packets shorter than an IP header.)
    let full = v4(APP_ADDR, TCP, 443);
    assert_eq!(f.egress(&full[..22]), DROP, "TCP ports cut short");
    let opts = V4Opts {
        option_words: 2,
        ..Default::default()
    };
    let cut = ipv4(ME, APP_ADDR, TCP, &l4(TCP, 40000, 443), opts);
    assert_eq!(f.egress(&cut[..26]), DROP, "IPv4 options cut short");
    let mut bad_ihl = full.clone();
    bad_ihl[0] = 0x44;
    assert_eq!(f.egress(&bad_ihl), DROP, "IHL below 5");
    let mut v5 = full.clone();
    v5[0] = 0x55;
    assert_eq!(f.egress(&v5), DROP, "IP version 5");
    let ext = ipv6(ME6, APP6, TCP, &[Ext::HopByHop], &l4(TCP, 40000, 443));
    assert_eq!(
        f.egress(&ext[..41]),
        DROP,
        "IPv6 extension header cut short"
    );
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::Malformed
        ),
        5
    );
    let sctp = ipv4(ME, APP_ADDR, 132, &[0u8; 12], V4Opts::default());
    assert_eq!(f.egress(&sctp), DROP);
    let gre6 = ipv6(ME6, APP6, 47, &[], &[0u8; 8]);
    assert_eq!(f.egress(&gre6), DROP);
    let icmp_in_v6 = ipv6(ME6, APP6, ICMP, &[], &l4(ICMP, 0, 8));
    assert_eq!(f.egress(&icmp_in_v6), DROP, "ICMPv4 inside IPv6");
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::UnknownProto
        ),
        3
    );
}

#[test]
fn audit_mode_passes_and_counts_and_switching_is_immediate() {
    let mut f = Fixture::new(&base_policy());
    let denied = v4(Ipv4Addr::new(8, 8, 8, 8), TCP, 443);
    assert_eq!(f.egress(&denied), DROP);
    f.maps
        .set_mode(sdm_common::KernelMode::Audit)
        .expect("audit");
    assert_eq!(f.egress(&denied), PASS, "audit passes a would-be drop");
    let mut v5 = denied.clone();
    v5[0] = 0x55;
    assert_eq!(f.egress(&v5), PASS, "audit passes even malformed packets");
    assert_eq!(
        f.denied(
            false,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::NoRule
        ),
        1,
        "counted under audit"
    );
    assert_eq!(
        f.denied(
            false,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::Malformed
        ),
        1
    );
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::NoRule
        ),
        1,
        "the enforce-mode drop"
    );
    f.maps
        .set_mode(sdm_common::KernelMode::Enforce)
        .expect("enforce");
    assert_eq!(f.egress(&denied), DROP, "back to enforce, same program");
}

#[test]
fn counters_are_exact_per_rule_and_direction() {
    let mut f = Fixture::new(&base_policy());
    let p = v4(APP_ADDR, TCP, 443);
    let ifindex = f.ifindex;
    assert_eq!(
        f.run(sdm_common::TrafficDir::Egress, &p, ifindex, 1000),
        PASS
    );
    let id = f.ids["app"];
    let c = f
        .maps
        .rule_counter(id, sdm_common::TrafficDir::Egress)
        .expect("counter");
    assert_eq!(c.packets, 1000);
    assert_eq!(c.bytes, 1000 * p.len() as u64);
    let reply = ipv4(APP_ADDR, ME, TCP, &l4(TCP, 443, 40000), V4Opts::default());
    assert_eq!(
        f.run(sdm_common::TrafficDir::Ingress, &reply, ifindex, 10),
        PASS,
        "replies pass"
    );
    assert_eq!(
        f.rule_packets("app", sdm_common::TrafficDir::Ingress),
        10,
        "and count under ingress"
    );
    let denied = v4(Ipv4Addr::new(8, 8, 8, 8), UDP, 53);
    assert_eq!(
        f.run(sdm_common::TrafficDir::Egress, &denied, ifindex, 777),
        DROP
    );
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::NoRule
        ),
        777
    );
}

#[test]
fn replies_and_unsolicited_inbound() {
    let mut f = Fixture::new(&base_policy());
    let from = |src: Ipv4Addr, sport: u16, dport: u16| {
        ipv4(src, ME, TCP, &l4(TCP, sport, dport), V4Opts::default())
    };
    assert_eq!(
        f.ingress(&from(APP_ADDR, 443, 40000)),
        PASS,
        "reply from an allowed remote"
    );
    assert_eq!(
        f.ingress(&from(APP_ADDR, 444, 40000)),
        DROP,
        "other port of that host"
    );
    assert_eq!(
        f.ingress(&from(Ipv4Addr::new(8, 8, 8, 8), 443, 40000)),
        DROP,
        "unsolicited"
    );
    assert_eq!(
        f.ingress(&from(Ipv4Addr::new(8, 8, 8, 8), 50000, 5000)),
        PASS,
        "advertised port"
    );
    assert_eq!(
        f.ingress(&from(Ipv4Addr::new(8, 8, 8, 8), 50000, 5001)),
        DROP
    );
    // The gateway answers its clients from the advertised port: its SYN-ACK
    // (l4() makes a bare SYN; a server's answer carries ACK).
    let mut syn_ack = l4(TCP, 5000, 50000);
    syn_ack[13] = 0x12;
    let answer = ipv4(
        ME,
        Ipv4Addr::new(8, 8, 8, 8),
        TCP,
        &syn_ack,
        V4Opts::default(),
    );
    assert_eq!(f.egress(&answer), PASS, "reply to an allowed inbound flow");
    assert_eq!(
        f.rule_packets("advertised", sdm_common::TrafficDir::Egress),
        1
    );
    // A bare SYN from the advertised port opens a connection: never a reply.
    let dial_out = ipv4(
        ME,
        Ipv4Addr::new(8, 8, 8, 8),
        TCP,
        &l4(TCP, 5000, 443),
        V4Opts::default(),
    );
    assert_eq!(
        f.egress(&dial_out),
        DROP,
        "a SYN from an ingress rule's port"
    );
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::NoRule
        ),
        1
    );
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Ingress,
            sdm_common::DenyReason::NoRule
        ),
        3
    );
}

#[test]
fn loopback_passes_unless_enforced() {
    let mut f = Fixture::new(&base_policy());
    let lo = 1;
    let p = ipv4(
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::LOCALHOST,
        TCP,
        &l4(TCP, 40000, 6000),
        V4Opts::default(),
    );
    assert_eq!(f.run(sdm_common::TrafficDir::Egress, &p, lo, 1), PASS);
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::NoRule
        ),
        0,
        "loopback is not even counted"
    );
    f.maps
        .set_loopback(LOOPBACK_ENFORCE)
        .expect("loopback enforce");
    assert_eq!(f.run(sdm_common::TrafficDir::Egress, &p, lo, 1), DROP);
    let mut policy = base_policy();
    policy.rules.push(rule(
        "cli",
        Direction::Ingress,
        Proto::Tcp,
        one(6000),
        "127.0.0.0/8",
    ));
    f.apply(&policy);
    assert_eq!(
        f.run(sdm_common::TrafficDir::Egress, &p, lo, 1),
        PASS,
        "an allowed loopback port, client side"
    );
    let inbound = ipv4(
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::LOCALHOST,
        TCP,
        &l4(TCP, 40000, 6000),
        V4Opts::default(),
    );
    assert_eq!(
        f.run(sdm_common::TrafficDir::Ingress, &inbound, lo, 1),
        PASS,
        "and listener side"
    );
    f.maps.set_loopback(LOOPBACK_PASS).expect("loopback pass");
}

#[test]
fn policy_changes_flip_atomically_and_only_the_difference_is_written() {
    let mut f = Fixture::new(&base_policy());
    let db = v4(Ipv4Addr::new(10, 0, 0, 5), TCP, 5432);
    assert_eq!(f.egress(&db), PASS);
    let g0 = f.maps.config().expect("config").generation;
    assert_eq!(
        f.apply(&base_policy()),
        0,
        "same policy: nothing written, nothing flipped"
    );
    assert_eq!(f.maps.config().expect("config").generation, g0);
    let mut smaller = base_policy();
    smaller.rules.retain(|r| r.name != "db");
    let writes = f.apply(&smaller);
    assert_eq!(f.egress(&db), DROP, "the removed rule no longer allows");
    assert_eq!(f.maps.config().expect("config").generation, g0 + 1);
    // The idle slot still held generation 0's entries: the diff is the whole
    // policy once; from then on only the change.
    assert!(writes > 1);
    let writes = f.apply(&base_policy());
    assert_eq!(f.egress(&db), PASS);
    assert!(
        writes <= 3,
        "re-adding one CIDR rule wrote {writes} entries"
    );
}

/// Attack on the operator's intent: `sdm-agent mode enforce` (another
/// process, its own map handles) while the agent applies policies. Each
/// apply used to read the whole config entry, write its maps, then write
/// the whole entry back with a new generation and the mode it had read,
/// undoing a mode change made in between. Two policies of a thousand
/// entries each keep an apply in progress nearly all the time.
#[test]
fn mode_changes_are_never_lost_to_a_policy_apply() {
    let mut f = Fixture::new(&base_policy());
    let bulk = |lo: u16| {
        let mut p = base_policy();
        p.rules.push(rule(
            "bulk",
            Direction::Egress,
            Proto::Tcp,
            PortRange { lo, hi: lo + 999 },
            "10.9.0.0/16",
        ));
        p
    };
    // Entries built up front: the loop below does nothing but apply.
    let (a, b) = (f.entries(&bulk(20_000)), f.entries(&bulk(30_000)));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let layout = f._pins.layout.clone();
    let lost = std::thread::scope(|scope| {
        let operator = scope.spawn(|| {
            let mut cli = Maps::open(&layout).expect("open pinned maps as the CLI does");
            let mut lost = Vec::new();
            for i in 0..20u32 {
                let mode = if i % 2 == 0 {
                    sdm_common::KernelMode::Audit
                } else {
                    sdm_common::KernelMode::Enforce
                };
                cli.set_mode(mode).expect("set mode");
                // Wait until two applies have finished since: the one in
                // flight when the mode was written, and a whole one after.
                let g0 = cli.config().expect("config").generation;
                while cli.config().expect("config").generation.wrapping_sub(g0) < 2 {
                    std::thread::yield_now();
                }
                let now = cli.config().expect("config").mode;
                if now != mode {
                    lost.push((i, mode, now));
                }
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            lost
        });
        let mut flip = false;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            f.maps
                .apply(if flip { &a } else { &b })
                .expect("apply entries");
            flip = !flip;
        }
        operator.join().expect("operator thread")
    });
    assert!(
        lost.is_empty(),
        "mode changes undone by a policy apply (round, written, read back): {lost:?}"
    );
}

/// "Never a mix": while another handle applies three policies in turn
/// (each naming a thousand addresses; only policy k allows address k),
/// verdicts judged within one generation are those of exactly one policy.
/// With three policies over two slots every apply rewrites the idle slot
/// in full (removals, then additions), so a policy written into the slot
/// the kernel reads would show a moment where no probe, or two, pass.
#[test]
fn concurrent_applies_never_show_a_mix_of_two_policies() {
    let mut f = Fixture::new(&base_policy());
    let policy = |k: u8| {
        let mut p = base_policy();
        p.rules
            .push(bulk_rule(Ipv4Addr::new(10, 60 + k, 0, 0), 1_000));
        p
    };
    let all: Vec<_> = (0..3).map(|k| f.entries(&policy(k))).collect();
    // The first address of each policy: allowed by that policy only.
    let probes: Vec<Vec<u8>> = (0..3)
        .map(|k| v4(Ipv4Addr::new(10, 60 + k, 0, 0), TCP, 9000))
        .collect();
    // Policy 2 in force before sampling starts: every generation sampled
    // has one of the three.
    f.maps.apply(&all[2]).expect("apply policy 2");
    let layout = f._pins.layout.clone();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (samples, flips, mixes) = std::thread::scope(|scope| {
        let applier = scope.spawn(|| {
            let mut maps = Maps::open(&layout).expect("open pinned maps as a second agent would");
            let mut applied = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let writes = maps
                    .apply(&all[applied as usize % 3])
                    .expect("apply entries");
                // From the second apply on, the idle slot holds the policy
                // before last: all of it goes, all of the new one comes.
                assert!(
                    applied < 1 || writes >= 2_000,
                    "apply {applied} rewrote only {writes} entries"
                );
                applied += 1;
            }
            applied
        });
        let (mut samples, mut mixes) = (0u32, Vec::new());
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(3) {
            let g0 = f.maps.config().expect("config").generation;
            let passed: Vec<bool> = probes.iter().map(|p| f.egress(p) == PASS).collect();
            let g1 = f.maps.config().expect("config").generation;
            if g0 != g1 {
                continue;
            }
            samples += 1;
            if passed.iter().filter(|p| **p).count() != 1 {
                mixes.push((g0, passed));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (samples, applier.join().expect("applier thread"), mixes)
    });
    assert!(
        samples >= 100 && flips >= 20,
        "too little overlap to judge: {samples} samples within one generation, {flips} applies"
    );
    assert!(
        mixes.is_empty(),
        "verdicts of more or fewer than one policy within one generation ({} of {samples}): {:?}",
        mixes.len(),
        &mixes[..mixes.len().min(10)]
    );
}

#[test]
fn many_addresses_do_not_change_verdicts() {
    // 50,000 exact addresses: still one hash lookup, still the same answers.
    let mut f = Fixture::new(&base_policy());
    let mut policy = base_policy();
    policy
        .rules
        .push(bulk_rule(Ipv4Addr::from(0x0b00_0000), 50_000));
    f.apply(&policy);
    assert_eq!(
        f.egress(&v4(Ipv4Addr::from(0x0b00_0000 + 49_999), TCP, 9000)),
        PASS
    );
    assert_eq!(
        f.egress(&v4(Ipv4Addr::from(0x0b00_0000 + 50_000), TCP, 9000)),
        DROP
    );
    assert_eq!(f.egress(&v4(APP_ADDR, TCP, 443)), PASS);
}

fn drain_events(f: &Fixture) -> Vec<sdm_common::DenyEvent> {
    let mut ring =
        sdm_agent::flows::events::open(&f._pins.layout).expect("open the event ring buffer");
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(sdm_agent::flows::events::decode(&item).expect("a whole event"));
    }
    out
}

fn event_stat(f: &Fixture, stat: sdm_common::EventStat) -> u64 {
    let path = f._pins.layout.map_pin(sdm_common::MAP_EVENT_STATS);
    let data = aya::maps::MapData::from_pin(&path).expect("event stats pin");
    let arr: aya::maps::PerCpuArray<aya::maps::MapData, u64> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).expect("per-CPU array");
    arr.get(&u32::from(stat), 0).expect("read").iter().sum()
}

#[test]
fn denies_are_reported_once_per_flow_per_interval() {
    let mut f = Fixture::new(&base_policy());
    let ifindex = f.ifindex;
    let denied = v4(Ipv4Addr::new(8, 8, 8, 8), TCP, 443);
    assert_eq!(
        f.run(sdm_common::TrafficDir::Egress, &denied, ifindex, 1000),
        DROP
    );
    let other = v4(Ipv4Addr::new(9, 9, 9, 9), UDP, 53);
    assert_eq!(f.egress(&other), DROP);
    assert_eq!(
        f.egress(&v4(APP_ADDR, TCP, 443)),
        PASS,
        "allowed packets make no events"
    );
    let events = drain_events(&f);
    assert_eq!(
        events.len(),
        2,
        "one event per flow, however many packets: {events:?}"
    );
    let e = events
        .iter()
        .find(|e| e.remote[..4] == [8, 8, 8, 8])
        .expect("the 8.8.8.8 event");
    assert_eq!(
        (e.proto, e.remote_port, e.local_port, e.dir, e.dropped),
        (TCP, 443, 40000, sdm_common::TrafficDir::Egress as u8, 1)
    );
    assert_eq!(e.local[..4], ME.octets());
    assert_eq!(e.reason, sdm_common::DenyReason::NoRule);
    assert_eq!(e.v6, 0);
    assert_eq!(e.packets, 1);
    assert_eq!(event_stat(&f, sdm_common::EventStat::Sent), 2);
    assert_eq!(event_stat(&f, sdm_common::EventStat::Suppressed), 999);
    assert_eq!(event_stat(&f, sdm_common::EventStat::Lost), 0);
    assert_eq!(
        f.denied(
            true,
            sdm_common::TrafficDir::Egress,
            sdm_common::DenyReason::NoRule
        ),
        1001,
        "counters still count every packet"
    );
    // After the interval the next packet reports again, carrying the
    // packets suppressed in between.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(f.egress(&denied), DROP);
    let events = drain_events(&f);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].packets, 1000, "999 suppressed + this one");
}

#[test]
fn audit_mode_reports_would_be_drops_and_malformed_packets() {
    let mut f = Fixture::new(&base_policy());
    f.maps
        .set_mode(sdm_common::KernelMode::Audit)
        .expect("audit");
    let p6 = v6("2001:db8:9::1".parse().unwrap(), UDP, 1234);
    assert_eq!(f.egress(&p6), PASS);
    let mut bad = v4(APP_ADDR, TCP, 443);
    bad[0] = 0x55;
    assert_eq!(f.egress(&bad), PASS);
    let events = drain_events(&f);
    assert_eq!(events.len(), 2, "{events:?}");
    let e6 = events.iter().find(|e| e.v6 == 1).expect("the IPv6 event");
    assert_eq!((e6.dropped, e6.remote_port, e6.proto), (0, 1234, UDP));
    assert_eq!(
        e6.remote,
        "2001:db8:9::1".parse::<Ipv6Addr>().unwrap().octets()
    );
    assert!(events
        .iter()
        .any(|e| e.reason == sdm_common::DenyReason::Malformed && e.dropped == 0));
}
