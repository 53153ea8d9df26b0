//! The socket hooks on real sockets: connect() to a denied destination
//! fails at once with EPERM in enforce mode (instead of hanging while SYNs
//! are dropped), passes in audit mode, and the deny event names the
//! process; an IPv4-mapped IPv6 destination is judged as the IPv4 it is;
//! a sendto() to a denied destination is refused by the sendmsg hooks
//! before it is a packet. Client processes run in a child cgroup of the
//! test's own and in a network namespace of the test's own; the server
//! lives in a second namespace behind a veth pair (the first test's own,
//! or the lab's).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sdm_agent::{
    kernel::dataplane::{self, Maps},
    kernel::entries,
    policy::{Direction, Policy, PortRange, Proto, Rule, Target},
};
use sdm_common::MAP_SOCK_STATE;
use sdm_tests::{
    gateway::{self, expect_ok, sa, wait_for, DB, DENY_MS, OK_MS, OTHER},
    guards::{Cgroup, Netns, Pins},
    lab::{denied_bytes, denied_packets, result, Lab},
    require_root,
};

/// Two namespaces joined by veth: `host` 10.233.<n>.1, `net` 10.233.<n>.2.
struct Net {
    host: Netns,
    net: Netns,
    server: Ipv4Addr,
}

impl Net {
    fn new() -> Self {
        let host = Netns::new("h");
        let net = Netns::new("n");
        let n = (std::process::id() % 200 + 20) as u8;
        host.ip(&[
            "link", "add", "h0", "type", "veth", "peer", "name", "n0", "netns", &net.name,
        ]);
        host.ip(&["addr", "add", &format!("10.233.{n}.1/24"), "dev", "h0"]);
        host.ip(&["link", "set", "h0", "up"]);
        net.ip(&["addr", "add", &format!("10.233.{n}.2/24"), "dev", "n0"]);
        net.ip(&["link", "set", "n0", "up"]);
        Self {
            host,
            net,
            server: Ipv4Addr::new(10, 233, n, 2),
        }
    }
}

/// TCP listeners in the `net` namespace that accept and close, until dropped.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Netns, addrs: &[SocketAddr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for addr in addrs {
            let listener = {
                let _in = ns.enter();
                TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
            };
            listener.set_nonblocking(true).expect("nonblocking");
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => drop(s),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        Self { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from a bash process placed in `cg` inside `ns` (bash's
/// /dev/tcp), returning (success, stderr, elapsed, pid).
fn connect_from(cg: &Cgroup, ns: &Netns, to: SocketAddr) -> (bool, String, Duration, u32) {
    let script = format!(
        "echo $$ > {}/cgroup.procs && echo $$ >&2 && exec 3<>/dev/tcp/{}/{}",
        cg.path.display(),
        to.ip(),
        to.port()
    );
    let start = Instant::now();
    // nsenter enters only the network namespace (`ip netns exec` would
    // remount /sys and hide the cgroup2 mount).
    let out = Command::new("timeout")
        .args([
            "5",
            "nsenter",
            &format!("--net={}", ns.path().display()),
            "--",
            "bash",
            "-c",
            &script,
        ])
        .output()
        .expect("run nsenter bash");
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let pid = stderr
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (out.status.success(), stderr, elapsed, pid)
}

#[test]
fn denied_connect_fails_fast_with_eperm_and_names_the_process() {
    require_root();
    let net = Net::new();
    let ok_addr = SocketAddr::new(IpAddr::V4(net.server), 8080);
    let denied_addr = SocketAddr::new(IpAddr::V4(net.server), 8081);
    let _servers = Servers::start(&net.net, &[ok_addr, denied_addr]);
    let pins = Pins::new("s");
    let cg = Cgroup::new("s");
    let (_, ebpf) = dataplane::attach(&pins.layout, &cg.path, dataplane::EBPF_OBJECT, None, 1)
        .unwrap_or_else(|e| panic!("attach to {}: {e}", cg.path.display()));
    let mut maps = Maps::open(&pins.layout).expect("maps");
    let policy = Policy {
        rules: vec![Rule {
            name: "web".into(),
            direction: Direction::Egress,
            protos: vec![Proto::Tcp],
            ports: vec![PortRange::single(8080)],
            targets: vec![Target::Cidr(format!("{}/32", net.server).parse().unwrap())],
            required: true,
            roles: vec![],
            origin: "test".into(),
        }],
    };
    let ids: BTreeMap<String, u32> = maps.assign_rule_ids(&["web"]).expect("ids");
    maps.apply(&entries::build(&policy, &ids, |_| &[]))
        .expect("apply");
    maps.set_mode(sdm_common::KernelMode::Enforce)
        .expect("enforce");

    let (ok, err, _, _) = connect_from(&cg, &net.host, ok_addr);
    assert!(ok, "allowed connect failed: {err}");

    let (ok, err, elapsed, pid) = connect_from(&cg, &net.host, denied_addr);
    assert!(!ok, "denied connect succeeded");
    assert!(
        err.contains("Operation not permitted"),
        "expected EPERM, got: {err}"
    );
    assert!(elapsed < Duration::from_secs(1), "EPERM took {elapsed:?}");

    let mut ring = sdm_agent::flows::events::open(&pins.layout).expect("ring");
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(sdm_agent::flows::events::Event::from_raw(
            &sdm_agent::flows::events::decode(&item).expect("event"),
        ));
    }
    let e = events
        .iter()
        .find(|e| e.remote == IpAddr::V4(net.server) && e.remote_port == 8081)
        .unwrap_or_else(|| panic!("no event for the refused connect in {events:?}"));
    assert_eq!(e.comm, "bash");
    assert_eq!(e.pid, pid, "the connecting process");
    assert_eq!(
        (e.verdict, e.direction, e.proto.as_str()),
        ("dropped", "egress", "tcp")
    );

    // A process outside the cgroup is not filtered at all.
    let out = Command::new("timeout")
        .args([
            "5",
            "nsenter",
            &format!("--net={}", net.host.path().display()),
            "--",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{}/8081", net.server),
        ])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "outside the cgroup: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    maps.set_mode(sdm_common::KernelMode::Audit).expect("audit");
    let (ok, err, _, _) = connect_from(&cg, &net.host, denied_addr);
    assert!(ok, "audit mode must refuse nothing: {err}");
    drop(ebpf);
}

fn new_lab() -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_lab-probe"))
}

/// Issue 15: nothing showed the sendmsg4/sendmsg6 hooks at work, since a
/// datagram dropped by the egress packet program makes sendto() fail with
/// EPERM too. What only the hooks do: they refuse before a packet exists,
/// so the refusal is counted as a denied packet of no bytes (the packet
/// program counts the datagram's length), and nothing reaches the wire.
#[test]
fn a_denied_sendto_is_refused_by_the_sendmsg_hooks_before_it_is_a_packet() {
    let mut lab = new_lab();
    gateway::start(&mut lab, "enforce", "");
    // UDP echo servers listen on 9000 and 9001 of every net-side address;
    // the policy allows 9000 to OTHER only.
    let denied4 = sa(lab.net_ip(OTHER), 9001);
    let denied6 = sa(lab.net_ip6(OTHER), 9001);
    let allowed = sa(lab.net_ip(OTHER), 9000);
    let sniffer = lab.sniff_udp(&[denied4, allowed]);
    let before = lab.status();

    for to in [denied4, denied6] {
        let v = lab.udp(to, DENY_MS);
        assert_eq!(
            (result(&v), v["phase"].as_str()),
            ("eperm", Some("send")),
            "a datagram to {to} is refused at sendto(): {v}"
        );
    }
    let after = lab.status();
    let packets = denied_packets(&after, "enforce", "egress", "no_rule")
        - denied_packets(&before, "enforce", "egress", "no_rule");
    let bytes = denied_bytes(&after, "enforce", "egress", "no_rule")
        - denied_bytes(&before, "enforce", "egress", "no_rule");
    assert_eq!(packets, 2, "two refused sends counted, {bytes} bytes");
    assert_eq!(
        bytes, 0,
        "the refusals were counted with {bytes} bytes: a packet program dropped a packet, \
         the sendmsg hooks refused nothing"
    );

    // The wire: not a datagram to the denied destination, while an allowed
    // one (the sniffer's proof that it sees datagrams) arrives.
    expect_ok("an allowed datagram", &lab.udp(allowed, OK_MS));
    // Sent after the denied ones: once the sniffer has read it, it has
    // read whatever came before.
    wait_for(Duration::from_secs(2), Duration::from_millis(20), || {
        (sniffer.count(allowed) > 0).then_some(())
    })
    .unwrap_or_else(|| panic!("the sniffer saw nothing of the allowed datagram: it does not work"));
    assert_eq!(
        sniffer.count(denied4),
        0,
        "a datagram to {denied4} reached the net side"
    );
}

/// An IPv4-mapped IPv6 destination (`::ffff:a.b.c.d`, from an AF_INET6
/// socket, which sends it as IPv4) is judged as that IPv4 address by the
/// connect6 hook: refused at connect() when the IPv4 address is denied,
/// connected when it is allowed.
#[test]
fn an_ipv4_mapped_connect_is_judged_as_its_ipv4_address() {
    let mut lab = new_lab();
    gateway::start(&mut lab, "enforce", "");
    let mapped = |last: u8| match lab.net_ip(last) {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => panic!("net_ip gave {v6}"),
    };
    // A server listens on 443 of every net-side address; no rule allows
    // OTHER:443, the db resource is DB:5432.
    let denied = sa(mapped(OTHER), 443);
    let allowed = sa(mapped(DB), 5432);
    let (denied4, allowed4) = (sa(lab.net_ip(OTHER), 443), sa(lab.net_ip(DB), 5432));
    let sniffer = lab.sniff_tcp(&[denied4, allowed4]);

    let v = lab.tcp(denied, DENY_MS);
    assert_eq!(
        (result(&v), v["phase"].as_str()),
        ("eperm", Some("connect")),
        "a connect to {denied} is refused at once: {v}"
    );
    expect_ok(&format!("a connect to {allowed}"), &lab.tcp(allowed, OK_MS));
    wait_for(Duration::from_secs(2), Duration::from_millis(20), || {
        (sniffer.count(allowed4) > 0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!("the sniffer saw nothing of the allowed connection: it does not work")
    });
    assert_eq!(
        sniffer.count(denied4),
        0,
        "a SYN for {denied} reached the net side"
    );
}

/// Socket storage only where caching pays (sdm-ebpf/src/sock.rs
/// `remember`): a TCP connection that asks once never gets any (creating
/// it at socket() cost a short connection about a third of the programs'
/// time, BENCHMARKS.md figure 8); one that lives past 16 segments gets its
/// verdict cached. In audit mode, a connect() that enforce mode would
/// refuse records its process on the socket, so the packet path's
/// would-be drop still names it.
#[test]
fn tcp_sockets_get_storage_only_where_caching_pays() {
    let mut lab = new_lab();
    let config = gateway::start(&mut lab, "enforce", "");
    let pin = lab
        .pins
        .layout
        .map_pin(MAP_SOCK_STATE)
        .display()
        .to_string();
    let db = sa(lab.net_ip(DB), 5432).to_string();
    let short = lab.probe(&["tcp-storage", &pin, &db, "1"]);
    assert_eq!(result(&short), "ok", "{short}");
    assert_eq!(
        short["early"], false,
        "a new TCP socket has storage: {short}"
    );
    assert_eq!(
        short["late"], false,
        "a one-request connection got storage: {short}"
    );
    let long = lab.probe(&["tcp-storage", &pin, &db, "20"]);
    assert_eq!(result(&long), "ok", "{long}");
    assert_eq!(
        long["late"], true,
        "a long connection's verdict was never cached: {long}"
    );

    lab.agent_ok(&["mode", "audit"]);
    let other = lab.net_ip(OTHER);
    let v = lab.tcp(sa(other, 443), OK_MS);
    assert_eq!(result(&v), "ok", "audit mode passes: {v}");
    let pid = v["pid"].as_u64().expect("the probe prints its pid");
    let config = config.display().to_string();
    let flow = wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        let out = lab.agent_ok(&["flows", "--config", &config, "--json"]);
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|f| f["remote"] == other.to_string().as_str() && f["port"] == 443)
    })
    .unwrap_or_else(|| panic!("the would-be drop never reached flows --json"));
    assert_eq!(flow["verdict"], "audit", "{flow}");
    assert_eq!(
        flow["pid"], pid,
        "the would-be drop names the process: {flow}"
    );
    assert_eq!(flow["comm"], "lab-probe", "{flow}");
}
