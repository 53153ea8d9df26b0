//! Port ranges without expansion (README, "Port ranges"): a range of more
//! than 16 ports is a handful of port prefixes under a port set, found
//! through the address's longest prefix. Verdicts of the real programs on
//! crafted packets through BPF_PROG_TEST_RUN, as in verdicts.rs: ports at
//! each range's edges pass, the ports just outside are dropped, for an
//! exact address and a CIDR, IPv4 and IPv6, egress and ingress, nested
//! CIDRs with different ranges, and a hostname's range for an address
//! learned from a DNS answer. The addresses (TEST-NET, 10/8, 2001:db8::/32)
//! are never sent to.

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
use sdm_common::{TrafficDir, PROG_DNS_IN, PROG_EGRESS, PROG_INGRESS};
use sdm_tests::{
    gateway::{any, expect_ok, sa, start_enforcing_with, OK_MS, OTHER},
    guards::{Netns, Pins},
    lab::{result, Lab},
    packets::{dns_ptr, ipv4, ipv6, l4, udp, DnsMsg, Rr, V4Opts, DNS_A, TCP, UDP},
    require_root,
};

const PASS: u32 = 1;
const DROP: u32 = 0;
const ME: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const ME6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 7);
const RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);

fn rule(name: &str, dir: Direction, proto: Proto, lo: u16, hi: u16, target: &str) -> Rule {
    let target = match target.parse() {
        Ok(net) => Target::Cidr(net),
        Err(_) => Target::Host(target.to_owned()),
    };
    Rule {
        name: name.to_owned(),
        direction: dir,
        protos: vec![proto],
        ports: vec![PortRange { lo, hi }],
        targets: vec![target],
        required: true,
        roles: vec![],
        origin: "test".into(),
    }
}

fn policy() -> Policy {
    use Direction::{Egress, Ingress};
    Policy {
        rules: vec![
            rule("exact", Egress, Proto::Tcp, 1024, 65535, "192.0.2.20/32"),
            rule("wide", Egress, Proto::Tcp, 2000, 2999, "10.20.0.0/16"),
            rule("narrow", Egress, Proto::Tcp, 40000, 40999, "10.20.5.0/24"),
            rule("udp-all", Egress, Proto::Udp, 0, 65535, "10.21.0.0/16"),
            rule("v6", Egress, Proto::Tcp, 1, 65534, "2001:db8:20::/48"),
            rule(
                "in-exact",
                Ingress,
                Proto::Tcp,
                30000,
                30100,
                "192.0.2.30/32",
            ),
            rule("in-wide", Ingress, Proto::Tcp, 1024, 65535, "10.30.0.0/16"),
            rule("host", Egress, Proto::Tcp, 10000, 10999, "range.example"),
            rule("resolver", Egress, Proto::Udp, 53, 53, "198.51.100.53/32"),
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

impl Fixture {
    fn new() -> (Self, entries::Entries) {
        require_root();
        let pins = Pins::new("r");
        let ebpf = dataplane::load(&pins.layout, dataplane::EBPF_OBJECT, 0)
            .unwrap_or_else(|e| panic!("load the eBPF object: {e}"));
        let mut maps = Maps::open(&pins.layout).expect("open pinned maps");
        let p = policy();
        let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
        let ids = maps.assign_rule_ids(&names).expect("rule ids");
        let e = entries::build(&p, &ids, |_| &[]);
        maps.apply(&e).expect("apply entries");
        maps.apply_dns(&entries::dns_names(&p), &[IpAddr::V4(RESOLVER)])
            .expect("DNS learning maps");
        maps.set_mode(sdm_common::KernelMode::Enforce)
            .expect("enforce");
        let ns = Netns::new("r");
        ns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
        ns.ip(&["link", "set", "va", "up"]);
        let ifindex = ns.ifindex("va");
        let f = Fixture {
            ebpf,
            maps,
            ids,
            ns,
            ifindex,
            _pins: pins,
        };
        (f, e)
    }

    fn run(&mut self, prog: &'static str, pkt: &[u8]) -> u32 {
        let prog = dataplane::program(&mut self.ebpf, prog).expect("program");
        let _in = self.ns.enter();
        dataplane::test_run(prog, pkt, self.ifindex, 1)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
            .0
    }

    /// Egress to `dst`:`port`.
    fn out4(&mut self, dst: [u8; 4], proto: u8, port: u16) -> u32 {
        let pkt = ipv4(
            ME,
            Ipv4Addr::from(dst),
            proto,
            &l4(proto, 40000, port),
            V4Opts::default(),
        );
        self.run(PROG_EGRESS, &pkt)
    }

    fn out6(&mut self, dst: Ipv6Addr, port: u16) -> u32 {
        let pkt = ipv6(ME6, dst, TCP, &[], &l4(TCP, 40000, port));
        self.run(PROG_EGRESS, &pkt)
    }

    /// Ingress from `src` to local `port`.
    fn in4(&mut self, src: [u8; 4], port: u16) -> u32 {
        let pkt = ipv4(
            Ipv4Addr::from(src),
            ME,
            TCP,
            &l4(TCP, 33333, port),
            V4Opts::default(),
        );
        self.run(PROG_INGRESS, &pkt)
    }

    fn packets(&self, rule: &str, dir: TrafficDir) -> u64 {
        self.maps
            .rule_counter(self.ids[rule], dir)
            .expect("rule counter")
            .packets
    }
}

fn verdict(v: u32) -> &'static str {
    if v == PASS {
        "pass"
    } else {
        "drop"
    }
}

/// Every range at its edges and just outside, both families and
/// directions, nested CIDRs; and the entries that took (a few per range,
/// not one per port).
#[test]
fn range_edges_and_just_outside_are_judged_right() {
    let (mut f, e) = Fixture::new();
    // 9 rules, ranges up to 65,536 ports: a few dozen entries in all,
    // only the resolver's single port expanded.
    assert_eq!((e.exact4.len(), e.cidr4.len(), e.exact6.len()), (1, 0, 0));
    // One entry per (direction, protocol, prefix) with ranges and one per
    // hostname; at most 30 port prefixes per range.
    assert_eq!(
        (e.range4.len(), e.range6.len(), e.host_ranges.len()),
        (6, 1, 1)
    );
    assert!(
        e.port_sets.len() <= 9 * 30,
        "{} port prefixes",
        e.port_sets.len()
    );
    let mut wrong = Vec::new();
    let mut check = |what: &str, got: u32, want: u32| {
        if got != want {
            wrong.push(format!("{what}: {} (want {})", verdict(got), verdict(want)));
        }
    };
    for (dst, proto, port, want, what) in [
        // An exact address, 1024-65535.
        ([192, 0, 2, 20], TCP, 1024, PASS, "exact lo"),
        ([192, 0, 2, 20], TCP, 65535, PASS, "exact hi"),
        ([192, 0, 2, 20], TCP, 1023, DROP, "exact lo - 1"),
        ([192, 0, 2, 20], UDP, 2000, DROP, "exact, other protocol"),
        ([192, 0, 2, 21], TCP, 2000, DROP, "the next address"),
        // A /16 with 2000-2999 and a /24 inside with 40000-40999.
        ([10, 20, 1, 1], TCP, 2000, PASS, "/16 lo"),
        ([10, 20, 1, 1], TCP, 2999, PASS, "/16 hi"),
        ([10, 20, 1, 1], TCP, 1999, DROP, "/16 lo - 1"),
        ([10, 20, 1, 1], TCP, 3000, DROP, "/16 hi + 1"),
        ([10, 20, 1, 1], TCP, 40000, DROP, "/16, the /24's range"),
        ([10, 20, 5, 9], TCP, 40000, PASS, "/24 lo"),
        ([10, 20, 5, 9], TCP, 40999, PASS, "/24 hi"),
        ([10, 20, 5, 9], TCP, 39999, DROP, "/24 lo - 1"),
        ([10, 20, 5, 9], TCP, 41000, DROP, "/24 hi + 1"),
        (
            [10, 20, 5, 9],
            TCP,
            2000,
            PASS,
            "/24, the covering /16's lo",
        ),
        (
            [10, 20, 5, 9],
            TCP,
            2999,
            PASS,
            "/24, the covering /16's hi",
        ),
        ([10, 20, 5, 9], TCP, 3000, DROP, "/24, the /16's hi + 1"),
        ([10, 22, 0, 1], TCP, 2000, DROP, "outside the /16"),
        // Every UDP port of a /16, 0 and 65535 included.
        ([10, 21, 7, 7], UDP, 0, PASS, "udp 0"),
        ([10, 21, 7, 7], UDP, 65535, PASS, "udp 65535"),
        ([10, 21, 7, 7], TCP, 80, DROP, "the udp /16 on tcp"),
    ] {
        let got = f.out4(dst, proto, port);
        check(
            &format!("egress {dst:?} {proto}/{port} ({what})"),
            got,
            want,
        );
    }
    let v6 = |last: u16| Ipv6Addr::new(0x2001, 0xdb8, 0x20, 0, 0, 0, 0, last);
    for (dst, port, want, what) in [
        (v6(1), 1, PASS, "v6 lo"),
        (v6(1), 65534, PASS, "v6 hi"),
        (v6(1), 0, DROP, "v6 lo - 1"),
        (v6(1), 65535, DROP, "v6 hi + 1"),
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0x21, 0, 0, 0, 0, 1),
            80,
            DROP,
            "outside the /48",
        ),
    ] {
        let got = f.out6(dst, port);
        check(&format!("egress {dst}/{port} ({what})"), got, want);
    }
    for (src, port, want, what) in [
        ([192, 0, 2, 30], 30000, PASS, "ingress exact lo"),
        ([192, 0, 2, 30], 30100, PASS, "ingress exact hi"),
        ([192, 0, 2, 30], 29999, DROP, "ingress exact lo - 1"),
        ([192, 0, 2, 30], 30101, DROP, "ingress exact hi + 1"),
        ([10, 30, 200, 1], 1024, PASS, "ingress /16 lo"),
        ([10, 30, 200, 1], 65535, PASS, "ingress /16 hi"),
        ([10, 30, 200, 1], 1023, DROP, "ingress /16 lo - 1"),
        ([10, 31, 0, 1], 5000, DROP, "ingress outside the /16"),
    ] {
        let got = f.in4(src, port);
        check(
            &format!("ingress from {src:?} to {port} ({what})"),
            got,
            want,
        );
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
    // Each pass counted for its rule: the /24's packets on the /16's range
    // for the /16's rule.
    assert_eq!(f.packets("exact", TrafficDir::Egress), 2);
    assert_eq!(f.packets("wide", TrafficDir::Egress), 4);
    assert_eq!(f.packets("narrow", TrafficDir::Egress), 2);
    assert_eq!(f.packets("v6", TrafficDir::Egress), 2);
    assert_eq!(f.packets("in-wide", TrafficDir::Ingress), 2);
}

/// A hostname's range, for an address the kernel learned from a DNS
/// answer (the agent resolved nothing): its edges pass, just outside not.
#[test]
fn a_hostnames_range_applies_to_learned_addresses() {
    let (mut f, e) = Fixture::new();
    assert!(e.host_ports.is_empty(), "the hostname's range not expanded");
    assert_eq!(e.host_ranges.len(), 1);
    let addr = [203, 0, 113, 80];
    assert_eq!(f.out4(addr, TCP, 10000), DROP, "not learned yet");
    let q = DnsMsg::query(9, "range.example", DNS_A).bytes();
    let pkt = ipv4(ME, RESOLVER, UDP, &udp(40053, 53, &q), V4Opts::default());
    assert_eq!(f.run(PROG_EGRESS, &pkt), PASS, "the query");
    let a = DnsMsg::answer(
        9,
        "range.example",
        DNS_A,
        vec![Rr::a(dns_ptr(12), 300, Ipv4Addr::from(addr))],
    );
    let pkt = ipv4(
        RESOLVER,
        ME,
        UDP,
        &udp(53, 40053, &a.bytes()),
        V4Opts::default(),
    );
    assert_eq!(f.run(PROG_DNS_IN, &pkt), PASS, "the answer");
    assert_eq!(f.maps.learned().expect("learned").len(), 1, "learned");
    assert_eq!(f.out4(addr, TCP, 10000), PASS, "learned, lo");
    assert_eq!(f.out4(addr, TCP, 10999), PASS, "learned, hi");
    assert_eq!(f.out4(addr, TCP, 9999), DROP, "learned, lo - 1");
    assert_eq!(f.out4(addr, TCP, 11000), DROP, "learned, hi + 1");
    assert_eq!(f.out4(addr, UDP, 10000), DROP, "learned, other protocol");
    assert_eq!(f.packets("host", TrafficDir::Egress), 2);
}

/// The real agent enforcing `ports = "20000-20999"` on one address of the
/// lab: real connections to the range's edges succeed; to the ports just
/// outside, `connect()` itself is refused (EPERM, the sock_addr program
/// judging the range), though servers listen there too.
#[test]
fn an_agent_enforces_a_range_at_connect() {
    let mut lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    let extra = format!(
        "\n[[allow]]\n\
         name = \"range\"\n\
         direction = \"egress\"\n\
         proto = \"tcp\"\n\
         ports = \"20000-20999\"\n\
         to = \"10.231.{}.{OTHER}/32\"\n",
        lab.n
    );
    lab.serve_tcp(&[any(19999), any(20000), any(20999), any(21000)]);
    start_enforcing_with(&mut lab, "ranges.toml", &extra);
    let other = lab.net_ip(OTHER);
    expect_ok("the range's first port", &lab.tcp(sa(other, 20000), OK_MS));
    expect_ok("the range's last port", &lab.tcp(sa(other, 20999), OK_MS));
    for port in [19999, 21000] {
        let r = lab.tcp(sa(other, port), OK_MS);
        assert_eq!(result(&r), "eperm", "port {port}, just outside: {r}");
    }
    // Outside the cgroup the same ports answer: the servers are there.
    for port in [19999, 21000] {
        let addr = sa(other, port).to_string();
        let r = lab.probe_outside(&["tcp", &addr, &OK_MS.to_string()]);
        expect_ok("outside the cgroup", &r);
    }
}
