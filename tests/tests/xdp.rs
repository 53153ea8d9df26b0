//! The XDP shield's verdicts on crafted frames (BPF_PROG_TEST_RUN: nothing
//! attached, safe on any host), and its counters. The shield on a real
//! interface, with a flood, runs in the kernel matrix's guests
//! (kernel_smoke.rs, `xdp_shield`).

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{HashMap, MapData},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use sdm_agent::kernel::{
    dataplane::{self, Maps},
    xdp,
};
use sdm_common::{KernelMode, XdpFlowKey, XdpVerdict, MAP_XDP_FLOWS, PROG_XDP};
use sdm_tests::{
    guards::Pins,
    packets::{ipv4, ipv6, l4, V4Opts, ICMP, ICMPV6, TCP, UDP},
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const ME: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// An Ethernet frame of `ethertype` around `payload`.
fn frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn v4(src: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    frame(0x0800, &ipv4(src, ME, proto, l4, V4Opts::default()))
}

/// A TCP segment with `flags` from `sport` to `dport`.
fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = l4(TCP, sport, dport);
    h[13] = flags;
    h
}

/// ICMP destination unreachable (port) quoting a packet this host sent to
/// `to` from `sport` to `dport`.
fn unreachable(to: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut m = vec![3, 3, 0, 0, 0, 0, 0, 0];
    let quoted = ipv4(ME, to, TCP, &l4(TCP, sport, dport), V4Opts::default());
    m.extend_from_slice(&quoted[..28]);
    m
}

fn run(ebpf: &mut aya::Ebpf, f: &[u8]) -> u32 {
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_XDP)
        .expect("sdm_xdp in the object")
        .try_into()
        .expect("an XDP program");
    let opts = TestRunOptions {
        data_in: Some(f),
        ..TestRunOptions::new()
    };
    prog.test_run(opts)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
        .return_value
}

fn counted(pins: &Pins, v: XdpVerdict) -> u64 {
    xdp::counters(&pins.layout)
        .expect("the shield's counters are pinned")
        .into_iter()
        .find(|(k, _)| *k == v)
        .map_or(0, |(_, n)| n)
}

#[test]
fn shield_admits_what_the_host_asked_for_and_drops_the_rest() {
    require_root();
    let pins = Pins::new("x");
    let mut ebpf = dataplane::load(&pins.layout, dataplane::EBPF_OBJECT, 0)
        .unwrap_or_else(|e| panic!("load the eBPF object: {e}"));
    let mut maps = Maps::open(&pins.layout).expect("open pinned maps");
    maps.set_mode(KernelMode::Enforce).expect("enforce");

    // A flow this host started: REMOTE:443 from local port 40000, as the
    // egress program (or the seed) records it.
    let data = MapData::from_pin(pins.layout.map_pin(MAP_XDP_FLOWS)).expect("flows map");
    let mut flows: HashMap<MapData, XdpFlowKey, u8> =
        HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("an LRU hash");
    let mut remote = [0u8; 16];
    remote[..4].copy_from_slice(&REMOTE.octets());
    let key = XdpFlowKey {
        remote,
        remote_port: 443,
        local_port: 40000,
        proto: TCP,
        v6: 0,
        _pad: [0; 2],
    };
    flows.insert(key, 0, 0).expect("record the flow");

    let ns = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    let me6 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
    let cases: [(&str, Vec<u8>, u32); 11] = [
        ("ARP", frame(0x0806, &[0; 28]), XDP_PASS),
        (
            "a reply of the host's flow",
            v4(REMOTE, TCP, &tcp(443, 40000, 0x12)),
            XDP_PASS,
        ),
        (
            "a SYN to a closed port",
            v4(REMOTE, TCP, &tcp(50000, 7001, 0x02)),
            XDP_DROP,
        ),
        (
            "the flow's ports from another remote",
            v4(ROUTER, TCP, &tcp(443, 40000, 0x12)),
            XDP_DROP,
        ),
        (
            "UDP to a closed port",
            v4(REMOTE, UDP, &l4(UDP, 50000, 7002)),
            XDP_DROP,
        ),
        ("a DHCP reply", v4(ROUTER, UDP, &l4(UDP, 67, 68)), XDP_PASS),
        (
            "ICMP unreachable for the host's flow",
            v4(ROUTER, ICMP, &unreachable(REMOTE, 40000, 443)),
            XDP_PASS,
        ),
        (
            "ICMP unreachable for no flow",
            v4(ROUTER, ICMP, &unreachable(REMOTE, 40001, 443)),
            XDP_DROP,
        ),
        (
            "an echo request no rule admits",
            v4(REMOTE, ICMP, &l4(ICMP, 0, 8)),
            XDP_DROP,
        ),
        (
            "IPv6 neighbour solicitation",
            frame(0x86dd, &ipv6(ns, me6, ICMPV6, &[], &l4(ICMPV6, 0, 135))),
            XDP_PASS,
        ),
        (
            "a truncated IPv4 header",
            frame(0x0800, &[0x45, 0, 0, 20]),
            XDP_DROP,
        ),
    ];
    for (what, f, want) in &cases {
        assert_eq!(run(&mut ebpf, f), *want, "{what}");
    }
    for (v, n) in [
        (XdpVerdict::UnsolicitedTcp, 2),
        (XdpVerdict::ClosedUdp, 1),
        (XdpVerdict::UnsolicitedIcmp, 2),
        (XdpVerdict::Malformed, 1),
        (XdpVerdict::Passed, 5),
    ] {
        assert_eq!(counted(&pins, v), n, "{}", v.name());
    }

    // Audit mode: counted, passed.
    maps.set_mode(KernelMode::Audit).expect("audit");
    let syn = v4(REMOTE, TCP, &tcp(50001, 7003, 0x02));
    assert_eq!(run(&mut ebpf, &syn), XDP_PASS, "audit mode passes");
    assert_eq!(counted(&pins, XdpVerdict::UnsolicitedTcp), 3, "and counts");
}
