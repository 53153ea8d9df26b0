//! The socket hooks on real sockets: connect() to a denied destination
//! fails at once with EPERM in enforce mode (instead of hanging while SYNs
//! are dropped), passes in audit mode, and the deny event names the
//! process. Client processes run in a child cgroup of the test's own and in
//! a network namespace of the test's own; the server lives in a second
//! namespace behind a veth pair.

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
use sdm_common::{MODE_AUDIT, MODE_ENFORCE};
use sdm_tests::{
    guards::{Cgroup, Netns, Pins},
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
    let (_, ebpf) = dataplane::attach(&pins.layout, &cg.path, dataplane::EBPF_OBJECT, None)
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
    maps.set_mode(MODE_ENFORCE).expect("enforce");

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

    maps.set_mode(MODE_AUDIT).expect("audit");
    let (ok, err, _, _) = connect_from(&cg, &net.host, denied_addr);
    assert!(ok, "audit mode must refuse nothing: {err}");
    drop(ebpf);
}
