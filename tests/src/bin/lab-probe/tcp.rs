//! TCP actions: connect, listen, hold a connection, loop and watch.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{errname, ms, parse, print};

/// The outcome of `action` if it is one of this module's, else None.
pub fn run(action: &str, rest: &[String]) -> Option<Value> {
    let out = match action {
        "tcp" => tcp_once(
            parse("address", rest.first()),
            Duration::from_millis(parse("timeout", rest.get(1))),
        ),
        "listen-tcp" => listen_tcp(
            parse("address", rest.first()),
            parse("seconds", rest.get(1)),
        ),
        "tcp-hold" => tcp_hold(
            parse("address", rest.first()),
            parse("seconds", rest.get(1)),
            Duration::from_millis(parse("interval", rest.get(2))),
        ),
        "tcp-loop" => tcp_loop(
            parse("address", rest.first()),
            parse("seconds", rest.get(1)),
            Duration::from_millis(parse("interval", rest.get(2))),
            Duration::from_millis(parse("timeout", rest.get(3))),
        ),
        "tcp-watch" => {
            let stop: String = parse("stop file", rest.get(3));
            tcp_watch(
                parse("address", rest.first()),
                Duration::from_millis(parse("interval", rest.get(1))),
                Duration::from_millis(parse("timeout", rest.get(2))),
                &stop,
            )
        }
        "connect-then-listen" => connect_then_listen(
            parse("port", rest.first()),
            parse("address", rest.get(1)),
            parse("seconds", rest.get(2)),
        ),
        "tcp-from" => tcp_from(
            parse("port", rest.first()),
            parse("address", rest.get(1)),
            Duration::from_millis(parse("timeout", rest.get(2))),
            rest.get(3).map(|_| parse("source address", rest.get(3))),
        ),
        _ => return None,
    };
    Some(out)
}

/// Reads one line (up to '\n' or EOF) with the stream's read timeout.
pub(crate) fn read_line(s: &mut TcpStream) -> io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => {
                out.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Connects and reads the server's first line.
pub(crate) fn tcp_once(addr: SocketAddr, timeout: Duration) -> Value {
    let start = Instant::now();
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            return json!({"result": errname(&e), "phase": "connect", "ms": ms(start), "detail": e.to_string()})
        }
    };
    let left = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(50));
    let _ = s.set_read_timeout(Some(left));
    match read_line(&mut s) {
        Ok(line) if line.trim() == "ok" => json!({"result": "ok", "ms": ms(start)}),
        Ok(line) => {
            json!({"result": "bad-reply", "phase": "read", "ms": ms(start), "detail": line})
        }
        Err(e) => {
            json!({"result": errname(&e), "phase": "read", "ms": ms(start), "detail": e.to_string()})
        }
    }
}

/// The unspecified address of `addr`'s family, on `port`.
pub(crate) fn any_addr(addr: SocketAddr, port: u16) -> SocketAddr {
    if addr.is_ipv4() {
        SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port)
    } else {
        SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port)
    }
}

/// `tcp` from a socket bound to local `port` first: what a process does
/// that tries to pass its connection off as a reply of an inbound flow.
fn tcp_from(port: u16, addr: SocketAddr, timeout: Duration, source: Option<IpAddr>) -> Value {
    use socket2::{Domain, SockAddr, Socket, Type};
    let start = Instant::now();
    let sock = match Socket::new(Domain::for_address(addr), Type::STREAM, None) {
        Ok(s) => s,
        Err(e) => return json!({"result": errname(&e), "phase": "socket"}),
    };
    let _ = sock.set_reuse_address(true);
    // The lab's servers listen with SO_REUSEPORT: a client may then use a
    // served port as its source port.
    let _ = sock.set_reuse_port(true);
    let local = match source {
        Some(ip) => SocketAddr::new(ip, port),
        None => any_addr(addr, port),
    };
    if let Err(e) = sock.bind(&SockAddr::from(local)) {
        return json!({"result": errname(&e), "phase": "bind", "detail": e.to_string()});
    }
    if let Err(e) = sock.connect_timeout(&SockAddr::from(addr), timeout) {
        return json!({"result": errname(&e), "phase": "connect", "ms": ms(start), "detail": e.to_string()});
    }
    let mut s: TcpStream = sock.into();
    let _ = s.set_read_timeout(Some(timeout));
    match read_line(&mut s) {
        Ok(line) if line.trim() == "ok" => json!({"result": "ok", "ms": ms(start)}),
        Ok(line) => json!({"result": "bad-reply", "phase": "read", "detail": line}),
        Err(e) => json!({"result": errname(&e), "phase": "read", "ms": ms(start)}),
    }
}

fn listen_tcp(addr: SocketAddr, secs: u64) -> Value {
    let l = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => return json!({"result": errname(&e), "phase": "bind", "detail": e.to_string()}),
    };
    l.set_nonblocking(true).expect("nonblocking listener");
    print(&json!({"result": "listening", "addr": addr.to_string()}));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut accepted = 0u64;
    let mut peers = Vec::new();
    while Instant::now() < end {
        match l.accept() {
            Ok((mut s, peer)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = s.write_all(b"ok\n");
                let _ = s.shutdown(std::net::Shutdown::Write);
                accepted += 1;
                peers.push(peer.to_string());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => {
                return json!({"result": errname(&e), "phase": "accept", "accepted": accepted})
            }
        }
    }
    json!({"result": "done", "accepted": accepted, "peers": peers})
}

/// The connect-then-listen attack: binds local `port`, connects to
/// `remote` (a destination the policy allows; refused or not, the attempt
/// is what the kernel judges), disconnects with AF_UNSPEC, then listens on
/// the same socket for `secs`, answering "ok" to whoever connects. Says
/// "listening" (with the connect's outcome) once it listens.
fn connect_then_listen(port: u16, remote: SocketAddr, secs: u64) -> Value {
    use std::os::fd::AsRawFd;

    use socket2::{Domain, SockAddr, Socket, Type};
    let sock = match Socket::new(Domain::for_address(remote), Type::STREAM, None) {
        Ok(s) => s,
        Err(e) => return json!({"result": errname(&e), "phase": "socket"}),
    };
    let _ = sock.set_reuse_address(true);
    if let Err(e) = sock.bind(&SockAddr::from(any_addr(remote, port))) {
        return json!({"result": errname(&e), "phase": "bind", "detail": e.to_string()});
    }
    let connected = match sock.connect_timeout(&SockAddr::from(remote), Duration::from_millis(1500))
    {
        Ok(()) => "ok".to_string(),
        Err(e) => errname(&e),
    };
    // connect(AF_UNSPEC) dissolves the association (tcp_disconnect) and
    // keeps the bound port; it also returns a socket whose connect failed
    // to SS_UNCONNECTED, the only state listen() accepts.
    let unspec = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: a valid socket and a sockaddr of the size given.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return json!({"result": errname(&e), "phase": "disconnect", "connect": connected});
    }
    if let Err(e) = sock.listen(8) {
        return json!({"result": errname(&e), "phase": "listen", "connect": connected});
    }
    let l: TcpListener = sock.into();
    l.set_nonblocking(true).expect("nonblocking listener");
    print(&json!({"result": "listening", "connect": connected}));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut accepted = 0u64;
    while Instant::now() < end {
        match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = s.write_all(b"ok\n");
                let _ = s.shutdown(std::net::Shutdown::Write);
                accepted += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => {
                return json!({"result": errname(&e), "phase": "accept", "accepted": accepted})
            }
        }
    }
    json!({"result": "done", "accepted": accepted, "connect": connected})
}

/// One connection, a line each way every `interval`; the server echoes.
fn tcp_hold(addr: SocketAddr, secs: u64, interval: Duration) -> Value {
    let start = Instant::now();
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => {
            return json!({"result": errname(&e), "phase": "connect", "ms": ms(start), "detail": e.to_string()})
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    match read_line(&mut s) {
        Ok(l) if l.trim() == "ok" => {}
        Ok(l) => return json!({"result": "bad-reply", "phase": "greeting", "detail": l}),
        Err(e) => {
            return json!({"result": errname(&e), "phase": "greeting", "detail": e.to_string()})
        }
    }
    print(&json!({"result": "connected", "ms": ms(start)}));
    let end = start + Duration::from_secs(secs);
    let (mut rounds, mut failures) = (0u64, 0u64);
    let mut first_failure = Value::Null;
    while Instant::now() < end {
        rounds += 1;
        let line = format!("ping {rounds}\n");
        let r = s
            .write_all(line.as_bytes())
            .and_then(|()| read_line(&mut s));
        let failed = match &r {
            Ok(echo) if *echo == line => None,
            Ok(echo) => Some(
                json!({"round": rounds, "at_ms": ms(start), "result": "bad-echo", "detail": echo}),
            ),
            Err(e) => Some(
                json!({"round": rounds, "at_ms": ms(start), "result": errname(e), "detail": e.to_string()}),
            ),
        };
        if let Some(f) = failed {
            failures += 1;
            if first_failure.is_null() {
                first_failure = f;
            }
            if failures >= 3 {
                break;
            }
        }
        std::thread::sleep(interval);
    }
    json!({
        "result": if failures == 0 { "ok" } else { "failed" },
        "rounds": rounds,
        "failures": failures,
        "first_failure": first_failure,
        "ms": ms(start),
    })
}

fn tcp_loop(addr: SocketAddr, secs: u64, interval: Duration, timeout: Duration) -> Value {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let (mut attempts, mut ok) = (0u64, 0u64);
    let mut failures = Vec::new();
    while Instant::now() < end {
        attempts += 1;
        let at = ms(start);
        let r = tcp_once(addr, timeout);
        if r["result"] == "ok" {
            ok += 1;
        } else {
            failures.push(json!({"at_ms": at, "outcome": r}));
        }
        std::thread::sleep(interval);
    }
    json!({
        "result": if failures.is_empty() { "ok" } else { "failed" },
        "attempts": attempts,
        "ok": ok,
        "failures": failures,
    })
}

/// Connects again and again until `stop` exists, judging nothing: every
/// outcome is counted by its result, and the first few of each result are
/// kept (with when they happened), so a test can assert that an allowed
/// destination never failed or a denied one never answered.
fn tcp_watch(addr: SocketAddr, interval: Duration, timeout: Duration, stop: &str) -> Value {
    const SAMPLES: usize = 5;
    let start = Instant::now();
    let mut attempts = 0u64;
    let mut outcomes: std::collections::BTreeMap<String, u64> = Default::default();
    let mut samples: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    while !std::path::Path::new(stop).exists() {
        attempts += 1;
        let at = ms(start);
        let r = tcp_once(addr, timeout);
        let result = r["result"].as_str().unwrap_or("?").to_string();
        *outcomes.entry(result.clone()).or_default() += 1;
        let kept = samples.entry(result).or_default();
        if kept.len() < SAMPLES {
            kept.push(json!({"at_ms": at, "outcome": r}));
        }
        std::thread::sleep(interval);
    }
    json!({
        "result": "done",
        "attempts": attempts,
        "outcomes": outcomes,
        "samples": samples,
        "ms": ms(start),
    })
}
