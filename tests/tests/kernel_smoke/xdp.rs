//! The XDP shield on a gateway-like host: only inside the kernel matrix's
//! guests, where enforcing on the root cgroup (which the shield requires)
//! cuts nothing off. On the host this prints why it does not run.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    time::Duration,
};

use sdm_tests::{
    gateway::{sa, APP, OK_MS},
    lab::{result, AgentConfig, Lab},
    shield::{Replies, SynSender},
};
use serde_json::Value;

use super::{ipv4, Check};

/// The advertised port an ingress rule opens to the test host.
const ADVERTISED: u16 = 5000;
/// Closed ports of the gateway the test host scans.
const SCANNED: u16 = 7000;
const SCANNED_COUNT: u16 = 20;
/// Where the gateway connects out to (a flow it starts).
const OUT_PORT: u16 = 8080;
const FLOOD: u32 = 2000;
/// The net side's flooding address.
const SCANNER: u8 = 9;

/// Set by the kernel matrix's guest /init (xtask/src/kernel_matrix/guest.rs).
const GUEST_ENV: &str = "SDM_KERNEL_GUEST";

pub(super) fn in_a_guest() -> bool {
    std::env::var_os(GUEST_ENV).is_some()
}

/// The agent's config: no role, enforce, the shield on the host side of
/// the veth, and the rules the test host's own sockets need (they are in
/// the root cgroup too, so the same programs judge them).
fn config(lab: &Lab) -> AgentConfig {
    let n = lab.n;
    let host = lab.host_ip();
    let app = lab.net_ip(APP);
    AgentConfig {
        top: "role = []\nmode = \"enforce\"".into(),
        dns: String::new(),
        tables: format!(
            "[xdp]\ninterfaces = [\"h0\"]\n\n\
             [[allow]]\nname = \"advertised\"\ndirection = \"ingress\"\nport = {ADVERTISED}\nfrom = \"10.231.{n}.0/24\"\n\n\
             [[allow]]\nname = \"to-gateway\"\ndirection = \"egress\"\nport = {ADVERTISED}\nto = \"{host}/32\"\n\n\
             [[allow]]\nname = \"scan-tcp\"\ndirection = \"egress\"\nports = \"{SCANNED}-{last}\"\nto = \"{host}/32\"\n\n\
             [[allow]]\nname = \"scan-udp\"\ndirection = \"egress\"\nproto = \"udp\"\nports = \"{SCANNED}-{last}\"\nto = \"{host}/32\"\n\n\
             [[allow]]\nname = \"out\"\ndirection = \"egress\"\nport = {OUT_PORT}\nto = \"{app}/32\"\n\n\
             [[allow]]\nname = \"out-server\"\ndirection = \"ingress\"\nport = {OUT_PORT}\nfrom = \"{host}/32\"\n",
            last = SCANNED + SCANNED_COUNT - 1,
        ),
    }
}

/// The gateway's advertised service: accepts and says "ok", in the host
/// namespace.
fn serve_advertised(lab: &Lab) {
    let l = {
        let _inside = lab.host.enter();
        let addr = SocketAddrV4::new(ipv4(lab, 0), ADVERTISED);
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
    };
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"ok\n");
        }
    });
}

/// SYNs and datagrams to the scanned ports from the net side.
fn flood(lab: &Lab) -> (u32, u32) {
    let _inside = lab.net.enter();
    let host = ipv4(lab, 0);
    let syns = SynSender::new(ipv4(lab, SCANNER)).expect("a raw TCP socket in the net namespace");
    let udp = UdpSocket::bind(SocketAddrV4::new(ipv4(lab, SCANNER), 0)).expect("a UDP socket");
    let (mut tcp_sent, mut udp_sent) = (0, 0);
    for i in 0..FLOOD {
        let port = SCANNED + u16::try_from(i % u32::from(SCANNED_COUNT)).expect("a port");
        let dst = SocketAddrV4::new(host, port);
        let src_port = 40000 + u16::try_from(i % 20000).expect("a port");
        if syns.send(src_port, dst, i).is_ok() {
            tcp_sent += 1;
        }
        if udp.send_to(b"scan", dst).is_ok() {
            udp_sent += 1;
        }
    }
    (tcp_sent, udp_sent)
}

fn packets(s: &Value, reason: &str) -> u64 {
    s["xdp"]["packets"][reason].as_u64().unwrap_or(0)
}

pub(super) fn run() {
    let mut lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    let host = ipv4(&lab, 0);
    let closed = sa(lab.host_ip(), SCANNED + 1);
    serve_advertised(&lab);
    lab.serve_tcp(&[sa(lab.net_ip(APP), OUT_PORT)]);
    let replies = {
        let _inside = lab.net.enter();
        Replies::new(lab.net.ifindex("n0"), host).expect("an AF_PACKET capture on n0")
    };

    // Without the shield the gateway answers a scan: what must stop.
    let check = Check("xdp-baseline");
    let v = lab.probe_from_net(&["tcp", &closed.to_string(), &OK_MS.to_string()]);
    assert_eq!(
        result(&v),
        "refused",
        "a closed port answers RST without the shield: {v}"
    );
    let sent = flood(&lab);
    std::thread::sleep(Duration::from_millis(500));
    let before = replies.count();
    assert!(
        before.rst > 0 && before.unreachable > 0,
        "without the shield the scan gets RSTs and ICMP unreachable back: {before:?} for {sent:?} sent"
    );
    check.ok(&format!("{before:?}"));

    let check = Check("xdp-attach");
    let path = lab.write_config("xdp.toml", &config(&lab));
    lab.start_agent_with(&path, &["--cgroup", "/sys/fs/cgroup"], "enforce", &[]);
    let s = lab.status();
    assert_eq!(s["xdp"]["interfaces"][0]["interface"], "h0", "{s}");
    // veth runs XDP in its driver (veth_xdp_rcv, drivers/net/veth.c).
    assert_eq!(s["xdp"]["interfaces"][0]["mode"], "native", "{s}");
    check.ok("native on the veth, root cgroup enforced");

    let check = Check("xdp-flood");
    let before = lab.status();
    let stack_before = stack_answers(&lab);
    let advertised = sa(lab.host_ip(), ADVERTISED).to_string();
    let scan = std::thread::scope(|scope| {
        let flooder = scope.spawn(|| flood(&lab));
        // The advertised port keeps working during the flood.
        for _ in 0..5 {
            let v = lab.probe_from_net(&["tcp", &advertised, &OK_MS.to_string()]);
            assert_eq!(
                result(&v),
                "ok",
                "the advertised port during the flood: {v}"
            );
        }
        flooder.join().expect("the flood")
    });
    std::thread::sleep(Duration::from_millis(500));
    let answers = replies.count();
    assert_eq!(
        (answers.rst, answers.unreachable),
        (0, 0),
        "the shield lets no RST or ICMP unreachable answer the scan ({scan:?} sent)"
    );
    let v = lab.probe_from_net(&["tcp", &closed.to_string(), "1500"]);
    assert_eq!(
        result(&v),
        "timeout",
        "a scanned closed port stays silent: {v}"
    );
    // No RST left the gateway, but its egress program would drop one too
    // (the root cgroup is enforced): that the stack never saw the scan is
    // what shows the shield dropped it (the counters rise when the kernel
    // answers, before any egress hook).
    let stack_after = stack_answers(&lab);
    assert_eq!(
        stack_after, stack_before,
        "the gateway's stack answered the scan (Tcp OutRsts, Udp NoPorts before and after): the shield did not drop it"
    );
    let after = lab.status();
    let tcp = packets(&after, "unsolicited_tcp") - packets(&before, "unsolicited_tcp");
    let udp = packets(&after, "closed_udp") - packets(&before, "closed_udp");
    assert!(
        tcp >= u64::from(scan.0) && udp >= u64::from(scan.1),
        "the drops are counted: {tcp} unsolicited_tcp, {udp} closed_udp for {scan:?} sent: {}",
        after["xdp"]
    );
    check.ok(&format!(
        "{tcp} SYNs and {udp} datagrams dropped, no answer"
    ));

    let check = Check("xdp-own-flow");
    let out = sa(lab.net_ip(APP), OUT_PORT).to_string();
    let v = lab.probe(&["tcp", &out, &OK_MS.to_string()]);
    assert_eq!(
        result(&v),
        "ok",
        "a connection the gateway starts gets its replies: {v}"
    );
    check.ok("");
}

/// The gateway's `Tcp: OutRsts` and `Udp: NoPorts` (its namespace's
/// /proc/net/snmp): RSTs it sent and datagrams it found no socket for.
/// tcp_v4_send_reset counts before the reply reaches any egress hook
/// (https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_ipv4.c), and
/// __udp4_lib_rcv counts a closed port on receipt
/// (https://github.com/torvalds/linux/blob/v6.1/net/ipv4/udp.c).
fn stack_answers(lab: &Lab) -> (u64, u64) {
    let text = {
        let _inside = lab.host.enter();
        // thread-self: /proc/self/net is the thread group leader's
        // namespace, not this thread's.
        std::fs::read_to_string("/proc/thread-self/net/snmp")
            .unwrap_or_else(|e| panic!("read the gateway's /proc/net/snmp: {e}"))
    };
    (snmp(&text, "Tcp", "OutRsts"), snmp(&text, "Udp", "NoPorts"))
}

/// One counter of /proc/net/snmp: a line of names under `proto`, then a
/// line of values.
fn snmp(text: &str, proto: &str, name: &str) -> u64 {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next(), lines.next());
    names
        .zip(values)
        .and_then(|(n, v)| {
            let i = n.split_whitespace().position(|f| f == name)?;
            v.split_whitespace().nth(i)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {proto} {name} in /proc/net/snmp:\n{text}"))
}

/// 10.231.N.1, the gateway (`ipv4(lab, 0)` stands for it).
pub(super) fn gateway_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 231, n, 1)
}
