//! The backstop (`[backstop] interfaces`): a process of the enforced cgroup
//! holding CAP_NET_RAW writes Ethernet frames with an AF_PACKET socket,
//! below the IP layer where no cgroup program runs, and tries to reach an
//! address no rule allows. The tc program at the egress of the lab's veth
//! (h0) must judge those frames by the same allowlist.
//!
//! `without_a_backstop_a_packet_socket_gets_past` is the attack against an
//! agent without `[backstop]`: the frame arrives. It passes because that
//! is the gap the backstop closes; the other tests fail on such an agent.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use sdm_tests::{
    gateway::{gateway_config, sa, start_enforcing_with, wait_for, GATEWAY_HOSTS, OTHER},
    lab::{denied_packets, result, rule_packets, set_recv_timeout, Lab},
};

/// A UDP port an `[[allow]]` rule opens to ALLOWED only.
const PORT: u16 = 9100;
const ALLOWED: u8 = 3;
/// An ethertype of no protocol (IEEE 802 local experimental).
const EXPERIMENTAL: u16 = 0x88b5;

fn lab(backstop: bool) -> (Lab, std::path::PathBuf) {
    let mut lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    let mut extra = format!(
        "\n[[allow]]\n\
         name = \"udp-out\"\n\
         direction = \"egress\"\n\
         proto = \"udp\"\n\
         port = {PORT}\n\
         to = \"{}/32\"\n",
        lab.net_ip(ALLOWED)
    );
    if backstop {
        extra.push_str("\n[backstop]\ninterfaces = [\"h0\"]\n");
    }
    let path = start_enforcing_with(&mut lab, "backstop.toml", &extra);
    (lab, path)
}

/// The MAC address of the net side of the veth (n0).
fn n0_mac(lab: &Lab) -> String {
    let out = lab.net.ip(&["-o", "link", "show", "n0"]);
    let mut words = out.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "link/ether")
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no MAC in {out:?}"))
        .to_owned()
}

/// A UDP socket in the net namespace, bound to `addr`.
fn inbox(lab: &Lab, addr: SocketAddr) -> UdpSocket {
    let sock = {
        let _in = lab.net.enter();
        UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
    };
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    sock
}

/// Datagrams that arrive on `sock` within `wait`.
fn arrivals(sock: &UdpSocket, wait: Duration) -> usize {
    let start = Instant::now();
    let mut n = 0;
    let mut buf = [0u8; 2048];
    while start.elapsed() < wait {
        if sock.recv_from(&mut buf).is_ok() {
            n += 1;
        }
    }
    n
}

/// A packet socket on n0 that receives frames of `ethertype`.
fn frame_inbox(lab: &Lab, ethertype: u16) -> OwnedFd {
    let _in = lab.net.enter();
    let proto = ethertype.to_be();
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        raw >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let ifindex = lab.net.ifindex("n0");
    // SAFETY: sockaddr_ll built field by field; bind reads only what it is
    // given.
    unsafe {
        let mut sa: libc::sockaddr_ll = std::mem::zeroed();
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            sock.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    }
    set_recv_timeout(&sock, Duration::from_millis(100));
    sock
}

/// Frames that arrive on a [`frame_inbox`] within `wait`.
fn frames(sock: &OwnedFd, wait: Duration) -> usize {
    let start = Instant::now();
    let mut n = 0;
    let mut buf = [0u8; 2048];
    while start.elapsed() < wait {
        // SAFETY: recv into a buffer of the size given.
        let rc = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if rc > 0 {
            n += 1;
        }
    }
    n
}

/// `packet-send h0 <n0's MAC> ip <host>:40000 <dst>` from the cgroup (or
/// from outside it), optionally with PACKET_QDISC_BYPASS.
fn send_udp_frame(lab: &Lab, dst: SocketAddr, outside: bool, bypass: bool) -> serde_json::Value {
    let mac = n0_mac(lab);
    let src = sa(lab.host_ip(), 40000).to_string();
    let dst = dst.to_string();
    let mut args = vec!["packet-send", "h0", &mac, "ip", &src, &dst];
    if bypass {
        args.push("bypass");
    }
    if outside {
        lab.probe_outside(&args)
    } else {
        lab.probe(&args)
    }
}

fn send_frame_of_type(lab: &Lab, ethertype: u16) -> serde_json::Value {
    let mac = n0_mac(lab);
    let t = format!("{ethertype:04x}");
    let src = sa(lab.host_ip(), 40000).to_string();
    lab.probe(&["packet-send", "h0", &mac, &t, &src, &src])
}

/// The backstop's filters on h0's egress, as `tc` lists them.
fn tc_filters(lab: &Lab) -> usize {
    let out = std::process::Command::new("tc")
        .args([
            "-n",
            &lab.host.name,
            "filter",
            "show",
            "dev",
            "h0",
            "egress",
        ])
        .output()
        .expect("run tc");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("sdm_backstop"))
        .count()
}

#[test]
fn without_a_backstop_a_packet_socket_gets_past() {
    let (lab, _) = lab(false);
    let unlisted = sa(lab.net_ip(OTHER), PORT);
    let inbox = inbox(&lab, unlisted);
    // The cgroup programs refuse the same datagram from a UDP socket...
    let v = lab.udp(unlisted, 300);
    assert_eq!(result(&v), "eperm", "{v}");
    // ...but not a frame written below the IP layer.
    let v = send_udp_frame(&lab, unlisted, false, false);
    assert_eq!(result(&v), "ok", "{v}");
    assert_eq!(
        arrivals(&inbox, Duration::from_secs(1)),
        1,
        "the frame should get past an agent without a backstop (the gap)"
    );
    assert_eq!(tc_filters(&lab), 0);
}

#[test]
fn packet_socket_frames_are_judged_at_tc_egress() {
    let (lab, config) = lab(true);
    let st = lab.status();
    assert_eq!(st["backstop"], serde_json::json!(["h0"]), "{st}");
    assert_eq!(tc_filters(&lab), 1);
    let unlisted = sa(lab.net_ip(OTHER), PORT);
    let allowed = sa(lab.net_ip(ALLOWED), PORT);
    let unlisted_inbox = inbox(&lab, unlisted);
    let allowed_inbox = inbox(&lab, allowed);

    // The attack: an Ethernet+IPv4+UDP frame to an address no rule allows.
    let before = denied_packets(&lab.status(), "enforce", "egress", "no_rule");
    for _ in 0..3 {
        send_udp_frame(&lab, unlisted, false, false);
    }
    assert_eq!(
        arrivals(&unlisted_inbox, Duration::from_secs(1)),
        0,
        "a packet socket's frame reached an unlisted address"
    );
    let st = lab.status();
    assert!(
        denied_packets(&st, "enforce", "egress", "no_rule") >= before + 3,
        "the drops are counted: {}",
        st["denied"]
    );

    // The allowlist still applies to such frames as it does to sockets.
    let before = rule_packets(&lab.status(), "allow/udp-out", "egress");
    let v = send_udp_frame(&lab, allowed, false, false);
    assert_eq!(result(&v), "ok", "{v}");
    assert_eq!(arrivals(&allowed_inbox, Duration::from_secs(1)), 1);
    assert!(rule_packets(&lab.status(), "allow/udp-out", "egress") > before);

    // A frame of a process outside the policed cgroup is not touched.
    let v = send_udp_frame(&lab, unlisted, true, false);
    assert_eq!(result(&v), "ok", "{v}");
    assert_eq!(arrivals(&unlisted_inbox, Duration::from_secs(1)), 1);

    // A frame that carries no IP at all is dropped, reason packet_socket.
    let frame_inbox = frame_inbox(&lab, EXPERIMENTAL);
    let before = denied_packets(&lab.status(), "enforce", "egress", "packet_socket");
    send_frame_of_type(&lab, EXPERIMENTAL);
    send_frame_of_type(&lab, 0x0806);
    assert_eq!(frames(&frame_inbox, Duration::from_secs(1)), 0);
    assert!(denied_packets(&lab.status(), "enforce", "egress", "packet_socket") >= before + 2);

    // PACKET_QDISC_BYPASS (a transmit path without tc egress) is refused;
    // the frame then goes the normal way and is dropped there.
    let before = denied_packets(&lab.status(), "enforce", "egress", "packet_socket");
    let v = send_udp_frame(&lab, unlisted, false, true);
    assert_eq!(v["bypass"], "eperm", "{v}");
    assert_eq!(arrivals(&unlisted_inbox, Duration::from_secs(1)), 0);
    assert!(
        denied_packets(&lab.status(), "enforce", "egress", "packet_socket") > before,
        "the refused setsockopt is counted"
    );
    // Outside the cgroup the option is nobody's business.
    let v = send_udp_frame(&lab, unlisted, true, true);
    assert_eq!(v["bypass"], "ok", "{v}");

    // The drop is a denied flow, with its reason.
    let found = wait_for(Duration::from_secs(5), Duration::from_millis(200), || {
        let out = lab.agent_ok(&["flows", "--config", &config.display().to_string(), "--json"]);
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|f| {
                f["remote"] == lab.net_ip(OTHER).to_string()
                    && f["port"] == PORT
                    && f["reason"] == "no_rule"
                    && f["proto"] == "udp"
            })
    });
    assert!(found.is_some(), "no denied flow for the frame");
}

#[test]
fn restart_replaces_the_filter_and_detach_removes_it() {
    let (mut lab, config) = lab(true);
    let unlisted = sa(lab.net_ip(OTHER), PORT);
    let inbox = inbox(&lab, unlisted);
    assert_eq!(tc_filters(&lab), 1);

    // A killed and restarted agent: one filter, still judging.
    lab.kill_agent();
    send_udp_frame(&lab, unlisted, false, false);
    assert_eq!(arrivals(&inbox, Duration::from_millis(500)), 0);
    lab.restart_agent();
    assert_eq!(tc_filters(&lab), 1, "two copies after a restart");
    send_udp_frame(&lab, unlisted, false, false);
    assert_eq!(arrivals(&inbox, Duration::from_millis(500)), 0);

    // The same config without [backstop]: removed on start.
    lab.stop_agent();
    let text = std::fs::read_to_string(&config).expect("config");
    let off = text.replace("[backstop]\ninterfaces = [\"h0\"]\n", "");
    assert_ne!(off, text);
    let off_path = lab.dir.path().join("off.toml");
    std::fs::write(&off_path, off).expect("write");
    lab.start_agent(&off_path, "enforce", &GATEWAY_HOSTS);
    assert_eq!(tc_filters(&lab), 0);
    assert_eq!(lab.status()["backstop"], serde_json::json!([]));
    let v = send_udp_frame(&lab, unlisted, false, true);
    assert_eq!(v["bypass"], "ok", "no setsockopt refusal while off: {v}");
    assert_eq!(arrivals(&inbox, Duration::from_millis(500)), 1);

    // On again, then `detach`: no filter left, frames pass.
    lab.stop_agent();
    lab.start_agent(&config, "enforce", &GATEWAY_HOSTS);
    assert_eq!(tc_filters(&lab), 1);
    lab.stop_agent();
    let out = lab.agent_cmd_in_host(&["detach"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(tc_filters(&lab), 0);
    let v = send_udp_frame(&lab, unlisted, false, false);
    assert_eq!(result(&v), "ok", "{v}");
    assert_eq!(arrivals(&inbox, Duration::from_millis(500)), 1);
}

#[test]
fn check_refuses_an_interface_the_host_lacks() {
    let lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    let mut config = gateway_config(&lab, "audit", "");
    config
        .tables
        .push_str("\n[backstop]\ninterfaces = [\"h0\", \"nosuch0\"]\n");
    let path = lab.write_config("missing.toml", &config);
    let out = lab.agent_cmd_in_host(&["check", "--config", &path.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("[backstop] key `interfaces`") && err.contains("\"nosuch0\""),
        "{err}"
    );
    // h0 alone is fine.
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, text.replace(", \"nosuch0\"", "")).expect("write");
    let out = lab.agent_cmd_in_host(&["check", "--config", &path.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
}
