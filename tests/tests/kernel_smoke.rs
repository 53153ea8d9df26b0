//! The smoke lab of the kernel matrix: what must hold on every kernel the
//! product supports. `cargo xtask test` runs this binary on the host's
//! kernel with the other privileged tests, and `cargo xtask kernels` (a
//! step of `cargo xtask test`) runs the very same binary inside emulated
//! guests booted with Debian's 5.10, 6.1 and 6.12 cloud kernels.
//!
//! Each check prints one line, `smoke: <check>: ok|FAILED <detail>`, and
//! the verifier test prints `verifier: <program> ...` lines: the kernel
//! matrix reads them off the guest's console into its table.

#![allow(
    clippy::too_many_lines,
    reason = "a privileged test reads as one scenario, top to bottom"
)]

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::Command,
    time::Duration,
};

use sdm_tests::{
    gateway::{sa, start_rotating_gateway, wait_for, APP, DENY_MS, OK_MS, OTHER},
    lab::{denied_packets, result, workspace_bin, Lab},
    require_root,
};
use serde_json::Value;

/// The name whose every answer is a new address (see gateway.rs).
const ROTATING: &str = "rot.lab.test";
const ROTATING_PORT: u16 = 8443;
/// UDP port on the net side that counts what raw sockets deliver.
const RAW_PORT: u16 = 9002;
const RAW_COUNT: u64 = 20;
#[path = "kernel_smoke/xdp.rs"]
mod xdp;

/// Verifier instructions a program may need on any kernel of the matrix:
/// a third of the kernel's limit (BPF_COMPLEXITY_LIMIT_INSNS, 1,000,000).
const INSNS_HEADROOM: u64 = 330_000;

/// One check of the smoke lab: prints its line when it ends, FAILED if it
/// ends by a panic (the panic's message follows in the test output).
struct Check(&'static str);

impl Check {
    fn ok(self, detail: &str) {
        println!("smoke: {}: ok {detail}", self.0);
        std::mem::forget(self);
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        println!("smoke: {}: FAILED", self.0);
    }
}

/// `sdm-agent check --kernel [--object PATH] --json`: the exit status and
/// the report.
fn check_kernel(object: Option<&Path>) -> (std::process::ExitStatus, Value, String) {
    let agent = workspace_bin("sdm-agent");
    let mut cmd = Command::new(&agent);
    cmd.args(["check", "--kernel", "--json"]);
    if let Some(o) = object {
        cmd.arg("--object").arg(o);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", agent.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("check --kernel --json printed {stdout:?} ({e}); stderr: {stderr}")
    });
    (out.status, report, stderr)
}

#[test]
fn every_program_passes_this_kernels_verifier() {
    require_root();
    let (status, report, stderr) = check_kernel(None);
    let programs = report["programs"]
        .as_array()
        .unwrap_or_else(|| panic!("no programs in {report}"));
    for p in programs {
        println!(
            "verifier: {} ok={} insns={} ms={}",
            p["program"].as_str().unwrap_or("?"),
            p["ok"],
            p["insns"]
                .as_u64()
                .map_or("n/a".to_owned(), |n| n.to_string()),
            p["verify_ms"]
        );
    }
    assert!(
        status.success(),
        "kernel {} refuses programs: {report}\n{stderr}",
        report["kernel"]
    );
    assert!(programs.len() >= 9, "every program is checked: {report}");
    // Headroom under the verifier's million instructions: 5.10 and 6.1
    // process two to three times what newer kernels do for the same
    // program, so a program near this bound here fails there.
    for p in programs {
        if let Some(n) = p["insns"].as_u64() {
            assert!(
                n < INSNS_HEADROOM,
                "{} needs {n} verifier instructions on {}, over {INSNS_HEADROOM}: older \
                 kernels would refuse it",
                p["program"],
                report["kernel"]
            );
        }
    }
}

#[test]
fn check_names_the_program_the_verifier_refuses_and_fails() {
    require_root();
    let fixture = Path::new(sdm_agent::kernel::check::REFUSED_FIXTURE);
    assert!(
        fixture.exists(),
        "the refused fixture {} is not built (sdm-ebpf's second bin)",
        fixture.display()
    );
    let (status, report, stderr) = check_kernel(Some(fixture));
    assert_eq!(status.code(), Some(1), "{report}\n{stderr}");
    let p = &report["programs"][0];
    assert_eq!(p["program"], "sdm_refused", "{report}");
    assert_eq!(p["ok"], false, "{report}");
    let tail = p["log_tail"].to_string();
    assert!(
        tail.contains("combined stack size") && tail.contains("Too large"),
        "the verifier's reason is quoted: {report}"
    );
    assert!(stderr.contains("sdm_refused"), "{stderr}");
}

/// Every check of the matrix on one lab: one agent start (verification is
/// slow in the emulated guests), then the checks in an order that leaves
/// the agent's restart for last.
#[test]
fn smoke_lab() {
    let mut lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    let config = start_rotating_gateway(&mut lab, ROTATING, ROTATING_PORT);

    let check = Check("attach");
    let s = lab.status();
    assert_eq!(s["mode"], "enforce", "{s}");
    assert_eq!(s["agent_running"], true, "{s}");
    check.ok("programs loaded and attached to a child cgroup");

    let check = Check("allowed");
    let v = lab.tcp(sa(lab.net_ip(APP), 443), OK_MS);
    assert_eq!(result(&v), "ok", "an allowed connect: {v}");
    check.ok("");

    let check = Check("denied-eperm");
    let v = lab.tcp(sa(lab.net_ip(OTHER), 443), DENY_MS);
    assert_eq!(result(&v), "eperm", "a denied connect fails at once: {v}");
    let pid = v["pid"].as_u64().expect("the probe prints its pid");
    check.ok("");

    let check = Check("connect-then-listen");
    let detail = connect_then_listen(&lab);
    check.ok(detail);

    let counter = raw_counter(&lab);
    let raw_to = SocketAddrV4::new(ipv4(&lab, OTHER), RAW_PORT);
    let check = Check("raw-dropped");
    let before = denied_packets(&lab.status(), "enforce", "egress", "no_rule");
    lab.probe(&["raw-udp", &raw_to.to_string(), &RAW_COUNT.to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(received(&counter), 0, "raw datagrams got through");
    let after = denied_packets(&lab.status(), "enforce", "egress", "no_rule");
    assert!(
        after >= before + RAW_COUNT,
        "raw datagrams are counted: {before} -> {after}"
    );
    check.ok("");

    let check = Check("audit");
    lab.agent_ok(&["mode", "audit"]);
    let before = denied_packets(&lab.status(), "audit", "egress", "no_rule");
    let v = lab.tcp(sa(lab.net_ip(OTHER), 443), OK_MS);
    assert_eq!(result(&v), "ok", "audit mode passes a denied flow: {v}");
    lab.probe(&["raw-udp", &raw_to.to_string(), &RAW_COUNT.to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(received(&counter), RAW_COUNT, "audit passes raw datagrams");
    let after = denied_packets(&lab.status(), "audit", "egress", "no_rule");
    assert!(after > before, "audit counts: {before} -> {after}");
    lab.agent_ok(&["mode", "enforce"]);
    check.ok("");

    let check = Check("flows");
    let other = lab.net_ip(OTHER).to_string();
    let flow = wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        denied_flow(&lab, &config, &other, 443, pid)
    })
    .unwrap_or_else(|| panic!("the denied flow of pid {pid} never reached flows --json"));
    assert_eq!(flow["comm"], "lab-probe", "{flow}");
    check.ok("");

    let check = Check("dns-learning");
    lab.kill_agent();
    let v = lab.probe(&[
        "resolve-connect",
        &lab.dns_ip().to_string(),
        ROTATING,
        "A",
        &ROTATING_PORT.to_string(),
        "20",
        "3000",
    ]);
    assert_eq!(
        v["ok"], 20,
        "every fresh answer connects with the agent dead: {v}"
    );
    assert_eq!(v["distinct"], 20, "{v}");
    check.ok("20 fresh addresses learned in the kernel, agent killed");

    let check = Check("restart-adopts");
    let app = sa(lab.net_ip(APP), 443);
    let link = lab.pins.layout.link_pin("egress");
    let inode = std::fs::metadata(&link)
        .unwrap_or_else(|e| panic!("{}: {e}", link.display()))
        .ino();
    let mut probe = lab.spawn_probe(&["tcp-loop", &app.to_string(), "6", "100", "2000"], false);
    std::thread::sleep(Duration::from_millis(500));
    let log_before = lab.agent_log().len();
    lab.restart_agent();
    let out = probe.line(Duration::from_secs(30));
    assert_eq!(result(&out), "ok", "connections across the restart: {out}");
    assert!(
        lab.agent_log()[log_before..].contains("adopted"),
        "the restarted agent adopts the pins"
    );
    let same = std::fs::metadata(&link).expect("link pin").ino();
    assert_eq!(inode, same, "the egress link was replaced, not adopted");
    let v = lab.tcp(sa(lab.net_ip(OTHER), 443), DENY_MS);
    assert_eq!(
        result(&v),
        "eperm",
        "still enforcing after the restart: {v}"
    );
    check.ok("no failed connect across kill -9 and restart");
}

/// The XDP shield (`[xdp] interfaces`) on a gateway-like host: a flood of
/// unsolicited SYNs and UDP to closed ports while the advertised port keeps
/// working, no RST or ICMP unreachable answering the scan, and a flow the
/// host starts still getting its replies. The shield needs the root cgroup
/// as target, which only the kernel matrix's guests can enforce on.
#[test]
fn xdp_shield() {
    if !xdp::in_a_guest() {
        println!(
            "xdp_shield: not run on this host: the shield needs the root cgroup enforced, \
             which would cut this host off; `cargo xtask kernels` runs it in every guest \
             (rows xdp-baseline, xdp-attach, xdp-flood, xdp-own-flow)"
        );
        return;
    }
    xdp::run();
}

/// The connect-then-listen attack (containment.rs has the story): a socket
/// connects out to APP:443, disconnects and listens; APP connects back
/// from port 443, hoping the socket's cached egress verdict lets it in.
/// Kernels that refuse listen() after connect() stop it themselves.
fn connect_then_listen(lab: &Lab) -> &'static str {
    let app = sa(lab.net_ip(APP), 443);
    let mut attacker = lab.spawn_probe(
        &["connect-then-listen", "6100", &app.to_string(), "20"],
        false,
    );
    // Generous: a guest under TCG emulation is slow to start a process.
    let ready = attacker.line(Duration::from_secs(60));
    assert_eq!(ready["connect"], "ok", "the allowed connect: {ready}");
    if ready["phase"] == "listen" && result(&ready) == "errno22" {
        return "this kernel refuses listen() after connect() (EINVAL)";
    }
    assert_eq!(result(&ready), "listening", "{ready}");
    let here = sa(lab.host_ip(), 6100);
    let v = lab.probe_from_net(&[
        "tcp-from",
        "443",
        &here.to_string(),
        // Long enough that a slow guest's handshake would complete.
        "5000",
        &lab.net_ip(APP).to_string(),
    ]);
    assert_ne!(result(&v), "ok", "the allowed remote connected in: {v}");
    let done = attacker.line(Duration::from_secs(60));
    assert_eq!(done["accepted"], 0, "{done}");
    "listen() after connect() allowed; the remote's SYN into the listener was dropped"
}

/// `10.231.N.<last>` on the net side; 0 for the host side (the gateway).
fn ipv4(lab: &Lab, last: u8) -> Ipv4Addr {
    if last == 0 {
        return xdp::gateway_ip(lab.n);
    }
    match lab.net_ip(last) {
        std::net::IpAddr::V4(a) => a,
        other => panic!("net_ip({last}) is not IPv4: {other}"),
    }
}

/// A UDP socket in the net namespace on OTHER:RAW_PORT that nobody answers
/// from: it only counts what arrives.
fn raw_counter(lab: &Lab) -> UdpSocket {
    let _inside = lab.net.enter();
    let addr = SocketAddr::V4(SocketAddrV4::new(ipv4(lab, OTHER), RAW_PORT));
    let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    sock.set_nonblocking(true).expect("non-blocking counter");
    sock
}

/// How many datagrams arrived since the last call.
fn received(sock: &UdpSocket) -> u64 {
    let mut buf = [0u8; 64];
    let mut n = 0;
    while sock.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// The flow to `remote`:`port` of process `pid` in `flows --json`.
fn denied_flow(lab: &Lab, config: &Path, remote: &str, port: u16, pid: u64) -> Option<Value> {
    let out = lab.agent_ok(&["flows", "--config", &config.display().to_string(), "--json"]);
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|f| f["remote"] == remote && f["port"] == port && f["pid"] == pid)
}
