use std::net::{Ipv4Addr, TcpListener};

use super::*;

fn arm(to: SocketAddrV4, mode: Mode) -> CrrArm {
    CrrArm {
        netns: "/run/netns/x".into(),
        cgroup: "/sys/fs/cgroup/y".into(),
        to,
        mode,
    }
}

#[test]
fn arms_parse_and_print_back() {
    let a: CrrArm = "/run/netns/a,/sys/fs/cgroup/b,10.232.0.2:7100,eperm"
        .parse()
        .expect("an arm");
    assert_eq!(a.mode, Mode::Eperm);
    assert_eq!(a.to, SocketAddrV4::new(Ipv4Addr::new(10, 232, 0, 2), 7100));
    assert_eq!(
        a.to_string(),
        "/run/netns/a,/sys/fs/cgroup/b,10.232.0.2:7100,eperm"
    );
    assert!("/a,/b,10.0.0.1:1,drop".parse::<CrrArm>().is_err());
    assert!("/a,/b,10.0.0.1:1".parse::<CrrArm>().is_err());
}

/// A server on loopback; the port of a listener that was closed again.
fn server_and_closed_port() -> (SocketAddrV4, SocketAddrV4) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let SocketAddr::V4(open) = l.local_addr().expect("addr") else {
        unreachable!("bound to IPv4")
    };
    thread::spawn(move || serve(&l));
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let SocketAddr::V4(closed_addr) = closed.local_addr().expect("addr") else {
        unreachable!("bound to IPv4")
    };
    drop(closed);
    (open, closed_addr)
}

#[test]
fn attempts_end_as_their_arm_expects() {
    let (open, closed) = server_and_closed_port();
    // Many short connections in a row: the RST on close leaves no
    // TIME_WAIT socket behind on the client.
    for _ in 0..200 {
        attempt(&arm(open, Mode::Connect)).expect("a short connection");
    }
    attempt(&arm(closed, Mode::Refused)).expect("refused by RST");
    let err = attempt(&arm(closed, Mode::Eperm)).expect_err("RST is not EPERM");
    assert!(err.to_string().contains("expected"), "{err:#}");
    let err = attempt(&arm(open, Mode::Refused)).expect_err("a listener accepts");
    assert!(err.to_string().contains("succeeded"), "{err:#}");
    attempt(&arm(closed, Mode::Connect)).expect_err("nothing listens");
}
