//! One ingress parse: the attached `sdm_ingress` hands the DNS answers it
//! passes to the parser by a tail call (sdm-ebpf/src/dns.rs, step 2), in
//! place of a second attached program that parsed every inbound packet
//! again. What it drops teaches nothing; what audit mode lets through
//! teaches as an allowed answer would.

use std::net::Ipv4Addr;

use sdm_common::{KernelMode, PROG_INGRESS};
use sdm_tests::packets::{ipv4, udp, DnsMsg, Rr, V4Opts, DNS_A, UDP};

use super::{ip4, q, Fixture, DROP, ME, PASS, QPORT, RESOLVER};

/// An answer from the resolver to QPORT through the real ingress program.
fn answer_through_ingress(f: &mut Fixture, id: u16, last: u8) -> u32 {
    let msg = DnsMsg::answer(
        id,
        "app.example",
        DNS_A,
        vec![Rr::a(q(), 300, Ipv4Addr::new(203, 0, 113, last))],
    )
    .bytes();
    let pkt = ipv4(RESOLVER, ME, UDP, &udp(53, QPORT, &msg), V4Opts::default());
    f.run(PROG_INGRESS, &pkt)
}

#[test]
fn sdm_ingress_hands_the_answers_it_passes_to_the_parser() {
    let mut f = Fixture::new(30);
    // BPF_PROG_TEST_RUN gives every run a socket of its own, so the answer
    // is no reply of the query's socket here: enforce mode drops it, and a
    // dropped answer must teach nothing.
    f.ask(40, "app.example", DNS_A);
    assert_eq!(answer_through_ingress(&mut f, 40, 90), DROP);
    assert!(
        f.learned().is_empty(),
        "a dropped answer taught {:?}",
        f.learned()
    );
    assert_eq!(f.connect(ip4(203, 0, 113, 90), 443), DROP);

    // Audit mode passes it: the application reads the answer, so the
    // kernel learns its address as under a policy that allowed it.
    f.maps.set_mode(KernelMode::Audit).expect("audit");
    f.ask(41, "app.example", DNS_A);
    assert_eq!(answer_through_ingress(&mut f, 41, 91), PASS);
    assert_eq!(f.learned(), vec![ip4(203, 0, 113, 91)]);
    f.maps.set_mode(KernelMode::Enforce).expect("enforce");
    assert_eq!(
        f.connect(ip4(203, 0, 113, 91), 443),
        PASS,
        "learned through sdm_ingress"
    );
}
