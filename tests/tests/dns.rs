//! The kernel's DNS answer parser (sdm-ebpf/src/dns.rs) on crafted
//! packets through BPF_PROG_TEST_RUN: a query goes out through the real
//! egress program (which notes it), the answer comes in through the real
//! `sdm_dns_in` (which `sdm_ingress` tail-calls for the answers it passes,
//! see `handover`; run here directly, so that the parser's cases need no
//! allowed reply), and the verdict of a new connection to the answered
//! address shows what was learned. No packet
//! leaves the machine; the addresses are documentation ranges.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{maps::MapData, Ebpf};
use sdm_agent::{
    api::status::monotonic_ns,
    kernel::dataplane::{self, Maps},
    kernel::entries,
    policy::{Direction, Policy, PortRange, Proto, Rule, Target},
};
use sdm_common::{
    dns_host_id, dns_name_key, Learned, LEARNED_ENTRIES, MAP_LEARNED4, PROG_DNS_IN, PROG_EGRESS,
    PROG_INGRESS,
};
use sdm_tests::{
    guards::{Netns, Pins},
    packets::{
        dns_name, dns_ptr, ipv4, ipv6, l4, tcp_dns, udp, DnsMsg, Rr, V4Opts, DNS_A, DNS_AAAA, TCP,
        UDP,
    },
    require_root,
};

mod handover;

const PASS: u32 = 1;
const DROP: u32 = 0;

const ME: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const ME6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 7);
const RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
const SPOOFER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
const QPORT: u16 = 40053;
/// A resolver on loopback, as systemd-resolved is (127.0.0.53).
const LOCAL_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);

fn rule(name: &str, proto: Proto, port: u16, target: &str) -> Rule {
    let target = match target.parse() {
        Ok(net) => Target::Cidr(net),
        Err(_) => Target::Host(target.to_owned()),
    };
    Rule {
        name: name.to_owned(),
        direction: Direction::Egress,
        protos: vec![proto],
        ports: vec![PortRange::single(port)],
        targets: vec![target],
        required: true,
        roles: vec![],
        origin: "test".into(),
    }
}

fn policy() -> Policy {
    Policy {
        rules: vec![
            rule("resolver-udp", Proto::Udp, 53, "198.51.100.53/32"),
            rule("resolver-tcp", Proto::Tcp, 53, "198.51.100.53/32"),
            rule("spoofer", Proto::Udp, 53, "198.51.100.66/32"),
            rule("app", Proto::Tcp, 443, "app.example"),
            rule("cdn", Proto::Tcp, 8443, "*.cdn.example"),
            rule("long", Proto::Tcp, 443, "*.w.example"),
        ],
    }
}

struct Fixture {
    ebpf: Ebpf,
    maps: Maps,
    ns: Netns,
    ifindex: u32,
    _pins: Pins,
}

impl Fixture {
    fn new(ttl_floor: u32) -> Self {
        require_root();
        let pins = Pins::new("d");
        let ebpf = dataplane::load(&pins.layout, dataplane::EBPF_OBJECT, 0)
            .unwrap_or_else(|e| panic!("load the eBPF object: {e}"));
        let mut maps = Maps::open(&pins.layout).expect("open pinned maps");
        let ns = Netns::new("d");
        ns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
        ns.ip(&["link", "set", "va", "up"]);
        let ifindex = ns.ifindex("va");
        let p = policy();
        let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
        let ids: BTreeMap<String, u32> = maps.assign_rule_ids(&names).expect("rule ids");
        // No hostname is resolved by the agent here: whatever a host rule
        // allows comes from what the kernel learns.
        let e = entries::build(&p, &ids, |_| &[]);
        maps.apply(&e).expect("apply");
        maps.apply_dns(
            &entries::dns_names(&p),
            &[IpAddr::V4(RESOLVER), IpAddr::V4(LOCAL_RESOLVER)],
        )
        .expect("apply dns");
        maps.set_learn_ttl_min(ttl_floor).expect("ttl floor");
        maps.set_mode(sdm_common::KernelMode::Enforce)
            .expect("enforce");
        Fixture {
            ebpf,
            maps,
            ns,
            ifindex,
            _pins: pins,
        }
    }

    fn run(&mut self, prog: &'static str, pkt: &[u8]) -> u32 {
        let prog = dataplane::program(&mut self.ebpf, prog).expect("program");
        let _in = self.ns.enter();
        let (ret, _) = dataplane::test_run(prog, pkt, self.ifindex, 1)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        ret
    }

    /// A query from QPORT to the resolver, through the egress program.
    fn ask(&mut self, id: u16, name: &str, qtype: u16) {
        self.ask_from_port(QPORT, id, name, qtype);
    }

    fn ask_from_port(&mut self, port: u16, id: u16, name: &str, qtype: u16) {
        let q = DnsMsg::query(id, name, qtype).bytes();
        let pkt = ipv4(ME, RESOLVER, UDP, &udp(port, 53, &q), V4Opts::default());
        assert_eq!(self.run(PROG_EGRESS, &pkt), PASS, "the query is allowed");
    }

    /// An answer from `from`:53 to QPORT, through sdm_dns_in (always PASS).
    fn answer_from(&mut self, from: Ipv4Addr, msg: &[u8]) {
        let pkt = ipv4(from, ME, UDP, &udp(53, QPORT, msg), V4Opts::default());
        assert_eq!(self.run(PROG_DNS_IN, &pkt), PASS, "answers always pass");
    }

    fn answer(&mut self, msg: &DnsMsg) {
        self.answer_from(RESOLVER, &msg.bytes());
    }

    /// The verdict on a new TCP connection to `to`:`port`.
    fn connect(&mut self, to: IpAddr, port: u16) -> u32 {
        let pkt = match to {
            IpAddr::V4(a) => ipv4(ME, a, TCP, &l4(TCP, 41000, port), V4Opts::default()),
            IpAddr::V6(a) => ipv6(ME6, a, TCP, &[], &l4(TCP, 41000, port)),
        };
        self.run(PROG_EGRESS, &pkt)
    }

    fn learned(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .maps
            .learned()
            .expect("learned")
            .into_iter()
            .map(|(a, _, _)| a)
            .collect();
        v.sort();
        v
    }

    fn results(&self) -> BTreeMap<&'static str, u64> {
        self.maps
            .dns_stats()
            .expect("dns stats")
            .iter()
            .zip(sdm_common::DnsResult::ALL.map(sdm_common::DnsResult::name))
            .filter(|(n, _)| **n > 0)
            .map(|(n, name)| (name, *n))
            .collect()
    }
}

fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// The question's name is at offset 12 of every message built here.
fn q() -> Vec<u8> {
    dns_ptr(12)
}

#[test]
fn an_answer_teaches_exactly_its_addresses_and_ports() {
    let mut f = Fixture::new(30);
    let addr = ip4(203, 0, 113, 10);
    assert_eq!(f.connect(addr, 443), DROP, "unknown before the answer");
    f.ask(1, "app.example", DNS_A);
    f.answer(&DnsMsg::answer(
        1,
        "app.example",
        DNS_A,
        vec![Rr::a(q(), 300, Ipv4Addr::new(203, 0, 113, 10))],
    ));
    assert_eq!(f.learned(), vec![addr]);
    assert_eq!(
        f.connect(addr, 443),
        PASS,
        "the answered address, the rule's port"
    );
    assert_eq!(f.connect(addr, 444), DROP, "another port");
    assert_eq!(
        f.connect(ip4(203, 0, 113, 11), 443),
        DROP,
        "another address"
    );
    assert_eq!(f.results(), BTreeMap::from([("learned", 1)]));
    // Case does not matter; the learned entry belongs to app.example's rules.
    f.ask(2, "APP.Example", DNS_A);
    f.answer(&DnsMsg::answer(
        2,
        "APP.Example",
        DNS_A,
        vec![Rr::a(q(), 300, Ipv4Addr::new(203, 0, 113, 12))],
    ));
    assert_eq!(f.connect(ip4(203, 0, 113, 12), 443), PASS);
}

#[test]
fn aaaa_tcp_and_cname_chains() {
    let mut f = Fixture::new(30);
    // AAAA, with the owner written out instead of compressed.
    let six: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
    f.ask(3, "app.example", DNS_AAAA);
    f.answer(&DnsMsg::answer(
        3,
        "app.example",
        DNS_AAAA,
        vec![Rr::aaaa(dns_name("app.example"), 60, six)],
    ));
    assert_eq!(f.connect(IpAddr::V6(six), 443), PASS, "learned AAAA");

    // A CNAME chain: app.example -> edge.cdn.test -> last.cdn.test -> A.
    // Records off the chain (other.test) teach nothing.
    let msg = {
        let mut m = DnsMsg::answer(4, "app.example", DNS_A, vec![]);
        let base = m.bytes().len() as u16;
        // Record 1 at `base`: owner ptr(12) (2 bytes) + 10 bytes of fields,
        // so its target name starts at base + 12.
        let edge = dns_name("edge.cdn.test");
        m.answers.push(Rr::cname(q(), 60, edge.clone()));
        let edge_at = base + 12;
        // Record 2: edge -> last.<cdn.test> (compressed into edge's name).
        let r2_at = edge_at + edge.len() as u16;
        let mut last = vec![4];
        last.extend_from_slice(b"last");
        last.extend(dns_ptr(edge_at + 5)); // "cdn.test" inside "edge.cdn.test"
        m.answers
            .push(Rr::cname(dns_ptr(edge_at), 60, last.clone()));
        let last_at = r2_at + 2 + 10;
        m.answers.push(Rr::a(
            dns_name("other.test"),
            60,
            Ipv4Addr::new(203, 0, 113, 99),
        ));
        m.answers
            .push(Rr::a(dns_ptr(last_at), 60, Ipv4Addr::new(203, 0, 113, 20)));
        m
    };
    f.ask(4, "app.example", DNS_A);
    f.answer(&msg);
    assert_eq!(
        f.connect(ip4(203, 0, 113, 20), 443),
        PASS,
        "end of the chain"
    );
    assert_eq!(f.connect(ip4(203, 0, 113, 99), 443), DROP, "off the chain");

    // DNS over TCP: the message after its length prefix, in one segment;
    // but only the segment its socket expects next is parsed, and under
    // BPF_PROG_TEST_RUN no TCP socket expects anything: a forged segment
    // with the right addresses and ports teaches nothing (hole 5 of the
    // containment issue). Learning from a real TCP answer: containment.rs.
    let q_tcp = DnsMsg::query(5, "app.example", DNS_A).bytes();
    let out = ipv4(
        ME,
        RESOLVER,
        TCP,
        &tcp_dns(QPORT, 53, &q_tcp),
        V4Opts::default(),
    );
    assert_eq!(f.run(PROG_EGRESS, &out), PASS);
    let a = DnsMsg::answer(
        5,
        "app.example",
        DNS_A,
        vec![Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, 30))],
    )
    .bytes();
    let back = ipv4(
        RESOLVER,
        ME,
        TCP,
        &tcp_dns(53, QPORT, &a),
        V4Opts::default(),
    );
    let unasked = f.results().get("unasked").copied().unwrap_or(0);
    assert_eq!(f.run(PROG_DNS_IN, &back), PASS);
    assert_eq!(
        f.connect(ip4(203, 0, 113, 30), 443),
        DROP,
        "a TCP segment no socket expects teaches nothing"
    );
    assert_eq!(
        f.results().get("unasked").copied().unwrap_or(0),
        unasked + 1
    );
}

/// A name crafted so that its 64-bit hash is an allowed name's (simulated:
/// the allowed name's entry is put under the crafted name's key, as a
/// collision would find it) teaches nothing: the kernel compares the names.
#[test]
fn a_name_whose_hash_collides_with_an_allowed_one_teaches_nothing() {
    let mut f = Fixture::new(30);
    let p = policy();
    let mut names = entries::dns_names(&p);
    let (app_key, _) = dns_name_key("app.example").expect("app's key");
    let (evil_key, _) = dns_name_key("evil.attacker.test").expect("evil's key");
    let app = names[&app_key];
    names.insert(evil_key, app);
    f.maps
        .apply_dns(&names, &[IpAddr::V4(RESOLVER)])
        .expect("apply the colliding entry");
    f.ask(40, "evil.attacker.test", DNS_A);
    f.answer(&DnsMsg::answer(
        40,
        "evil.attacker.test",
        DNS_A,
        vec![Rr::a(q(), 86_400, Ipv4Addr::new(203, 0, 113, 140))],
    ));
    assert_eq!(
        f.connect(ip4(203, 0, 113, 140), 443),
        DROP,
        "the crafted name's answer was learned for app.example"
    );
    assert_eq!(
        f.results().get("not_allowed"),
        Some(&1),
        "{:?}",
        f.results()
    );
    // The real name still teaches.
    f.ask(41, "app.example", DNS_A);
    f.answer(&DnsMsg::answer(
        41,
        "app.example",
        DNS_A,
        vec![Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, 141))],
    ));
    assert_eq!(f.connect(ip4(203, 0, 113, 141), 443), PASS);
}

/// Loopback, link-local, multicast, broadcast and unspecified addresses in
/// an answer for an allowed name are never learned; the others are.
#[test]
fn addresses_no_service_has_are_never_learned() {
    let mut f = Fixture::new(30);
    let never = [
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(224, 0, 0, 251),
        Ipv4Addr::new(255, 255, 255, 255),
        Ipv4Addr::new(0, 0, 0, 0),
    ];
    let mut answers: Vec<Rr> = never.iter().map(|a| Rr::a(q(), 60, *a)).collect();
    answers.push(Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, 150)));
    f.ask(42, "app.example", DNS_A);
    f.answer(&DnsMsg::answer(42, "app.example", DNS_A, answers));
    assert_eq!(f.learned(), vec![ip4(203, 0, 113, 150)]);
    f.ask(43, "app.example", DNS_AAAA);
    let v6_never = [
        Ipv6Addr::LOCALHOST,
        Ipv6Addr::UNSPECIFIED,
        "fe80::1".parse().expect("link-local"),
        "ff02::1".parse().expect("multicast"),
    ];
    let answers = v6_never
        .iter()
        .map(|a| Rr::aaaa(dns_name("app.example"), 60, *a))
        .collect();
    f.answer(&DnsMsg::answer(43, "app.example", DNS_AAAA, answers));
    assert_eq!(f.learned(), vec![ip4(203, 0, 113, 150)]);
}

/// The first answer to a query consumes it: a second answer with the same
/// id, port and resolver (forged, or a duplicate) teaches nothing.
#[test]
fn a_query_is_consumed_by_its_first_answer() {
    let mut f = Fixture::new(30);
    f.ask(44, "app.example", DNS_A);
    let answer = |last| {
        DnsMsg::answer(
            44,
            "app.example",
            DNS_A,
            vec![Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, last))],
        )
    };
    f.answer(&answer(160));
    f.answer(&answer(161));
    assert_eq!(
        f.connect(ip4(203, 0, 113, 160), 443),
        PASS,
        "the first answer"
    );
    assert_eq!(
        f.connect(ip4(203, 0, 113, 161), 443),
        DROP,
        "a second answer to the same query"
    );
    assert_eq!(f.results().get("unasked"), Some(&1), "{:?}", f.results());
}

#[test]
fn wildcards_match_subdomains_only_and_long_names_work() {
    let mut f = Fixture::new(30);
    f.ask(6, "a.b.cdn.example", DNS_A);
    f.answer(&DnsMsg::answer(
        6,
        "a.b.cdn.example",
        DNS_A,
        vec![Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, 40))],
    ));
    assert_eq!(f.connect(ip4(203, 0, 113, 40), 8443), PASS, "*.cdn.example");
    f.ask(7, "cdn.example", DNS_A);
    f.answer(&DnsMsg::answer(
        7,
        "cdn.example",
        DNS_A,
        vec![Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, 41))],
    ));
    assert_eq!(
        f.connect(ip4(203, 0, 113, 41), 8443),
        DROP,
        "not the bare suffix"
    );
    f.ask(8, "xcdn.example", DNS_A);
    f.answer(&DnsMsg::answer(
        8,
        "xcdn.example",
        DNS_A,
        vec![Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, 42))],
    ));
    assert_eq!(
        f.connect(ip4(203, 0, 113, 42), 8443),
        DROP,
        "labels, not text"
    );

    // A name of the maximum length (255 bytes on the wire) under *.w.example:
    // its walk takes more than one program run.
    let mut labels = Vec::new();
    let tail = dns_name("w.example").len();
    let mut used = tail;
    while used + 64 <= 255 {
        labels.push("a".repeat(63));
        used += 64;
    }
    let rest = 255 - used;
    if rest > 1 {
        labels.push("b".repeat(rest - 1));
    }
    let name = format!("{}.w.example", labels.join("."));
    assert_eq!(dns_name(&name).len(), 255, "{name}");
    f.ask(9, &name, DNS_A);
    f.answer(&DnsMsg::answer(
        9,
        &name,
        DNS_A,
        vec![Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, 50))],
    ));
    assert_eq!(
        f.connect(ip4(203, 0, 113, 50), 443),
        PASS,
        "a 255-byte name"
    );
}

#[test]
fn many_answers_are_all_learned() {
    let mut f = Fixture::new(30);
    let n = 24u8;
    let answers = (0..n)
        .map(|i| Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, 100 + i)))
        .collect();
    f.ask(10, "app.example", DNS_A);
    f.answer(&DnsMsg::answer(10, "app.example", DNS_A, answers));
    assert_eq!(f.learned().len(), usize::from(n));
    for i in 0..n {
        assert_eq!(
            f.connect(ip4(203, 0, 113, 100 + i), 443),
            PASS,
            "answer {i}"
        );
    }
}

#[test]
fn untrusted_unasked_and_malformed_answers_teach_nothing() {
    let mut f = Fixture::new(30);
    let good = |id| {
        DnsMsg::answer(
            id,
            "app.example",
            DNS_A,
            vec![Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, 60))],
        )
    };
    // From an address that is not a trusted resolver (even one the policy
    // lets this host query).
    f.ask(11, "app.example", DNS_A);
    f.answer_from(SPOOFER, &good(11).bytes());
    // Not asked: an id never asked, and an id asked from another local
    // port than the one the answer goes to.
    f.answer(&good(12));
    f.ask_from_port(QPORT + 1, 16, "app.example", DNS_A);
    f.answer(&good(16));
    // A name no rule names.
    f.ask(13, "evil.example", DNS_A);
    f.answer(&DnsMsg::answer(
        13,
        "evil.example",
        DNS_A,
        vec![Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, 61))],
    ));
    // NXDOMAIN.
    f.ask(14, "app.example", DNS_A);
    let mut nx = good(14);
    nx.flags |= 3;
    f.answer(&nx);
    // Malformed: a query (QR clear), two questions, a pointer loop, a
    // forward pointer, a record running past the end, a truncated header.
    f.ask(15, "app.example", DNS_A);
    let mut not_response = good(15);
    not_response.flags = 0x0100;
    f.answer(&not_response);
    let mut two = good(15);
    two.questions.push((dns_name("app.example"), DNS_A));
    f.answer(&two);
    let looped = DnsMsg::answer(
        15,
        "app.example",
        DNS_A,
        vec![Rr::a(dns_ptr(29), 60, Ipv4Addr::new(203, 0, 113, 62))],
    );
    // The record starts at 29 (12 + 13 + 4): its owner points at itself.
    // (Each answer with a valid header consumes the query: ask it again
    // before the next one.)
    f.answer(&looped);
    f.ask(15, "app.example", DNS_A);
    let forward = DnsMsg::answer(
        15,
        "app.example",
        DNS_A,
        vec![Rr::a(dns_ptr(200), 60, Ipv4Addr::new(203, 0, 113, 63))],
    );
    f.answer(&forward);
    f.ask(15, "app.example", DNS_A);
    let mut past_end = good(15).bytes();
    let n = past_end.len();
    past_end[n - 6..n - 4].copy_from_slice(&40u16.to_be_bytes()); // rdlength 40
    f.answer_from(RESOLVER, &past_end);
    f.ask(15, "app.example", DNS_A);
    f.answer_from(RESOLVER, &good(15).bytes()[..10]);
    // A label type 0x40 (reserved) in the answer's owner.
    let reserved = DnsMsg::answer(
        15,
        "app.example",
        DNS_A,
        vec![Rr::a(
            vec![0x41, b'x', 0],
            60,
            Ipv4Addr::new(203, 0, 113, 64),
        )],
    );
    f.answer(&reserved);

    assert!(f.learned().is_empty(), "learned {:?}", f.learned());
    for last in 60..=64 {
        assert_eq!(f.connect(ip4(203, 0, 113, last), 443), DROP);
    }
    let r = f.results();
    assert_eq!(r.get("not_resolver"), Some(&1), "{r:?}");
    assert_eq!(r.get("unasked"), Some(&2), "{r:?}");
    assert_eq!(r.get("not_allowed"), Some(&1), "{r:?}");
    assert_eq!(r.get("error_rcode"), Some(&1), "{r:?}");
    assert!(r.get("malformed").copied().unwrap_or(0) >= 6, "{r:?}");
    assert_eq!(r.get("learned"), None, "{r:?}");
}

#[test]
fn ttl_floor_and_expiry() {
    // Floor 0 and TTL 0: expired at once, so a new connection is refused.
    let mut f = Fixture::new(0);
    f.ask(20, "app.example", DNS_A);
    f.answer(&DnsMsg::answer(
        20,
        "app.example",
        DNS_A,
        vec![Rr::a(q(), 0, Ipv4Addr::new(203, 0, 113, 70))],
    ));
    assert_eq!(f.learned(), vec![ip4(203, 0, 113, 70)]);
    assert_eq!(f.connect(ip4(203, 0, 113, 70), 443), DROP, "expired");
    // With a floor, a 0-TTL answer still lets the connect through.
    let mut f = Fixture::new(30);
    f.ask(21, "app.example", DNS_A);
    f.answer(&DnsMsg::answer(
        21,
        "app.example",
        DNS_A,
        vec![Rr::a(q(), 0, Ipv4Addr::new(203, 0, 113, 71))],
    ));
    assert_eq!(f.connect(ip4(203, 0, 113, 71), 443), PASS, "the floor");
    let (_, _, expires) = f.maps.learned().expect("learned")[0];
    let now = monotonic_ns();
    let left = expires.saturating_sub(now) / 1_000_000_000;
    assert!((28..=30).contains(&left), "{left} s left");
    // The agent's clean-up removes it only after it expired (plus grace).
    assert_eq!(f.maps.expire_learned(now, 0).expect("expire"), 0);
    assert_eq!(
        f.maps
            .expire_learned(now + 31_000_000_000, 0)
            .expect("expire"),
        1
    );
    assert!(f.learned().is_empty());
}

#[test]
fn a_resolver_on_loopback_is_learned_from() {
    let mut f = Fixture::new(30);
    let ask_local = |f: &mut Fixture, id: u16| {
        let q = DnsMsg::query(id, "app.example", DNS_A).bytes();
        let pkt = ipv4(
            Ipv4Addr::LOCALHOST,
            LOCAL_RESOLVER,
            UDP,
            &udp(QPORT, 53, &q),
            V4Opts::default(),
        );
        // On the loopback device (ifindex 1 in every namespace).
        let prog = dataplane::program(&mut f.ebpf, PROG_EGRESS).expect("program");
        let _in = f.ns.enter();
        let (ret, _) = dataplane::test_run(prog, &pkt, 1, 1).expect("test run");
        assert_eq!(ret, PASS, "loopback passes");
    };
    let answer_local = |f: &mut Fixture, id: u16, last: u8| {
        let a = DnsMsg::answer(
            id,
            "app.example",
            DNS_A,
            vec![Rr::a(q(), 60, Ipv4Addr::new(203, 0, 113, last))],
        )
        .bytes();
        let pkt = ipv4(
            LOCAL_RESOLVER,
            Ipv4Addr::LOCALHOST,
            UDP,
            &udp(53, QPORT, &a),
            V4Opts::default(),
        );
        // Through the attached ingress program, on loopback, which passes
        // it at step 1 and hands it to the parser.
        let prog = dataplane::program(&mut f.ebpf, PROG_INGRESS).expect("program");
        let _in = f.ns.enter();
        let (ret, _) = dataplane::test_run(prog, &pkt, 1, 1).expect("test run");
        assert_eq!(ret, PASS, "loopback passes");
    };
    // Without a loopback resolver configured, loopback queries are not
    // even parsed: the answer was not asked for.
    ask_local(&mut f, 30);
    answer_local(&mut f, 30, 80);
    assert_eq!(f.connect(ip4(203, 0, 113, 80), 443), DROP);
    f.maps.set_loopback_dns(true).expect("loopback dns");
    ask_local(&mut f, 31);
    answer_local(&mut f, 31, 81);
    assert_eq!(
        f.connect(ip4(203, 0, 113, 81), 443),
        PASS,
        "learned via 127.0.0.53"
    );
}

/// "Never a silent loss": the learned-address table full of live entries
/// (as a host that talks to 65,536 CDN addresses within their TTLs would
/// have it). A new address in an allowed answer must not push out one that
/// is still alive (the next connect to that one would fail with EPERM
/// before its TTL, which an LRU did without a trace): it is not learned,
/// and the kernel counts it. Once the agent's sweep has removed expired
/// entries, learning resumes.
#[test]
fn a_full_learned_table_keeps_every_live_address_and_counts_the_new_one() {
    let mut f = Fixture::new(30);
    let path = f._pins.layout.map_pin(MAP_LEARNED4);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut table: aya::maps::HashMap<MapData, [u8; 4], Learned> =
        aya::maps::Map::from_map_data(data)
            .and_then(|m| m.try_into())
            .unwrap_or_else(|e| panic!("{MAP_LEARNED4} as a hash of Learned: {e}"));
    let (app_key, _) = dns_name_key("app.example").expect("app's key");
    let host = dns_host_id(app_key);
    let an_hour = monotonic_ns() + 3_600_000_000_000;
    // 10.128.0.0 upwards: distinct from every address the answer teaches.
    let filler = |i: u32| (0x0a80_0000 + i).to_be_bytes();
    for i in 0..LEARNED_ENTRIES {
        let live = Learned {
            host,
            _pad: 0,
            expires_ns: if i == 0 { 1 } else { an_hour },
        };
        table
            .insert(filler(i), live, 0)
            .unwrap_or_else(|e| panic!("prefill entry {i} of {LEARNED_ENTRIES}: {e}"));
    }

    let new = ip4(203, 0, 113, 77);
    f.ask(70, "app.example", DNS_A);
    f.answer(&DnsMsg::answer(
        70,
        "app.example",
        DNS_A,
        vec![Rr::a(q(), 300, Ipv4Addr::new(203, 0, 113, 77))],
    ));
    assert_eq!(
        f.maps.learn_table_full().expect("learn table full counter"),
        1,
        "the address that found no room is counted"
    );
    assert_eq!(f.connect(new, 443), DROP, "not learned: no room");
    let kept = f.learned();
    assert_eq!(
        kept.len(),
        LEARNED_ENTRIES as usize,
        "every live entry is still there"
    );
    assert!(!kept.contains(&new));
    let live = IpAddr::from(filler(LEARNED_ENTRIES - 1));
    assert_eq!(f.connect(live, 443), PASS, "a live learned address allows");

    // The agent's sweep removes the one expired entry (expiry 1 ns); the
    // next answer has room again.
    assert_eq!(f.maps.expire_learned(monotonic_ns(), 0).expect("expire"), 1);
    f.ask(71, "app.example", DNS_A);
    f.answer(&DnsMsg::answer(
        71,
        "app.example",
        DNS_A,
        vec![Rr::a(q(), 300, Ipv4Addr::new(203, 0, 113, 77))],
    ));
    assert_eq!(f.connect(new, 443), PASS, "learned once there is room");
    assert_eq!(f.maps.learn_table_full().expect("counter"), 1);
}
