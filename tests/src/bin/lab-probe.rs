//! A client process for the lab (tests/src/lab.rs): it joins a network
//! namespace and a cgroup (in that order, before it opens any socket, so
//! every socket it opens belongs to both), performs one network action and
//! prints the outcome as one JSON line on standard output.
//!
//! ```text
//! lab-probe [--netns PATH] [--cgroup DIR] ACTION ARGS...
//!   tcp ADDR TIMEOUT_MS               connect, read the server's "ok" line
//!   udp ADDR TIMEOUT_MS               send a datagram, await its echo
//!   listen-tcp ADDR SECONDS           print {"result":"listening"}, then accept
//!                                     for SECONDS, answering "ok\n" to each
//!   tcp-hold ADDR SECONDS INTERVAL_MS connect, then exchange a line every
//!                                     INTERVAL_MS for SECONDS on that one connection
//!   tcp-loop ADDR SECONDS INTERVAL_MS TIMEOUT_MS
//!                                     a new `tcp` connection every INTERVAL_MS
//!   tcp-watch ADDR INTERVAL_MS TIMEOUT_MS STOP_FILE
//!                                     a new `tcp` connection every INTERVAL_MS
//!                                     until STOP_FILE exists; counts outcomes
//!                                     by result, with the first few of each
//!   resolve DNS_IP NAME [A|AAAA]      one UDP query to DNS_IP:53
//!   resolve-tcp DNS_IP NAME           one A query over TCP to DNS_IP:53
//!   resolve-connect DNS_IP NAME A|AAAA PORT COUNT TIMEOUT_MS
//!                                     COUNT times: resolve NAME, connect at once
//!                                     to the first address answered
//!   tcp-from PORT ADDR TIMEOUT_MS [SRC_IP]
//!                                     `tcp` from local port PORT (bound first,
//!                                     on SRC_IP if given)
//!   connect-then-listen PORT ADDR SECS  bind PORT, connect to ADDR, disconnect,
//!                                     then listen on the same socket for SECS
//!   udp-from PORT ADDR TIMEOUT_MS     `udp` from local port PORT (bound first)
//!   udp-recv ADDR SECONDS             bind ADDR, print {"result":"listening"},
//!                                     then count the datagrams that arrive
//!   udp-echo ADDR SECONDS             bind ADDR, print {"result":"listening"},
//!                                     then echo every datagram for SECONDS
//!   raw-udp ADDR COUNT [SRC_PORT]     COUNT UDP datagrams to ADDR (IPv4) through a
//!                                     raw socket, which no sock_addr hook sees
//!   packet-send IFACE DST_MAC ETHERTYPE SRC DST [bypass]
//!                                     one Ethernet frame through an AF_PACKET
//!                                     socket on IFACE: ETHERTYPE "ip" is an
//!                                     IPv4+UDP datagram SRC -> DST (IP:PORT,
//!                                     checksums right), any other (hex, e.g.
//!                                     0806) 46 bytes of zeros; "bypass" sets
//!                                     PACKET_QDISC_BYPASS first (its outcome
//!                                     is "bypass") and sends either way
//!   flood FIRST_IP COUNT              COUNT datagrams to COUNT consecutive IPv4
//!                                     addresses from FIRST_IP on, one each; half
//!                                     through a UDP socket, half through a raw one
//! ```
//!
//! `result` is "ok" on success, else "timeout", "refused", "eperm", "reset",
//! "eacces", "unreachable" or "errno<N>". Exit status 0 unless the arguments
//! are wrong or the namespace or cgroup cannot be joined (status 2).

use std::{
    fs,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RData, RecordType},
};
use sdm_testkit::senders::{Flood, RawUdp, Sent};
use serde_json::{json, Value};

fn usage(msg: &str) -> ! {
    eprintln!("lab-probe: {msg}");
    eprintln!("usage: lab-probe [--netns PATH] [--cgroup DIR] tcp|udp|tcp-from|connect-then-listen|udp-from|udp-recv|udp-echo|listen-tcp|tcp-hold|tcp-loop|tcp-watch|resolve|resolve-tcp|resolve-connect|raw-udp|packet-send|flood ARGS...");
    std::process::exit(2);
}

fn fatal(msg: String) -> ! {
    eprintln!("lab-probe: {msg}");
    std::process::exit(2);
}

/// How an I/O error is reported.
fn errname(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "eperm".into(),
        Some(libc::EACCES) => "eacces".into(),
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => "reset".into(),
        Some(libc::ETIMEDOUT) | Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => "timeout".into(),
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => "unreachable".into(),
        Some(n) => format!("errno{n}"),
        None => match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout".into(),
            io::ErrorKind::UnexpectedEof => "eof".into(),
            k => format!("{k:?}").to_lowercase(),
        },
    }
}

fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

fn parse<T: std::str::FromStr>(what: &str, s: Option<&String>) -> T {
    let s = s.unwrap_or_else(|| usage(&format!("missing {what}")));
    s.parse()
        .unwrap_or_else(|_| usage(&format!("bad {what}: {s:?}")))
}

fn join_netns(path: &str) {
    let f = fs::File::open(path).unwrap_or_else(|e| fatal(format!("open {path}: {e}")));
    // SAFETY: setns on a valid namespace fd; this process is single-threaded.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        fatal(format!("setns {path}: {}", io::Error::last_os_error()));
    }
}

fn join_cgroup(dir: &str) {
    let procs = format!("{dir}/cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .unwrap_or_else(|e| fatal(format!("write {procs}: {e}")));
}

/// Reads one line (up to '\n' or EOF) with the stream's read timeout.
fn read_line(s: &mut TcpStream) -> io::Result<String> {
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
fn tcp_once(addr: SocketAddr, timeout: Duration) -> Value {
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
fn any_addr(addr: SocketAddr, port: u16) -> SocketAddr {
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

/// Binds `addr`, says so, then counts the datagrams that arrive in `secs`.
fn udp_recv(addr: SocketAddr, secs: u64) -> Value {
    let s = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => return json!({"result": errname(&e), "phase": "bind", "detail": e.to_string()}),
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    print(&json!({"result": "listening", "addr": addr.to_string()}));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut received = 0u64;
    let mut from = Vec::new();
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        if let Ok((_, peer)) = s.recv_from(&mut buf) {
            received += 1;
            from.push(peer.to_string());
        }
    }
    json!({"result": "done", "received": received, "from": from})
}

/// Binds `addr`, says so, then echoes every datagram for `secs`; counts
/// the echoes the kernel refused.
fn udp_echo(addr: SocketAddr, secs: u64) -> Value {
    let s = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => return json!({"result": errname(&e), "phase": "bind", "detail": e.to_string()}),
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    print(&json!({"result": "listening", "addr": addr.to_string()}));
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut echoed, mut refused) = (0u64, 0u64);
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        if let Ok((n, peer)) = s.recv_from(&mut buf) {
            match s.send_to(&buf[..n], peer) {
                Ok(_) => echoed += 1,
                Err(_) => refused += 1,
            }
        }
    }
    json!({"result": "done", "echoed": echoed, "refused": refused})
}

fn udp(addr: SocketAddr, timeout: Duration) -> Value {
    udp_from(0, addr, timeout)
}

fn udp_from(port: u16, addr: SocketAddr, timeout: Duration) -> Value {
    let start = Instant::now();
    let s = match UdpSocket::bind(any_addr(addr, port)) {
        Ok(s) => s,
        Err(e) => return json!({"result": errname(&e), "phase": "bind", "detail": e.to_string()}),
    };
    let payload = format!(
        "probe-{}-{}",
        std::process::id(),
        start.elapsed().as_nanos()
    );
    if let Err(e) = s.send_to(payload.as_bytes(), addr) {
        return json!({"result": errname(&e), "phase": "send", "ms": ms(start), "detail": e.to_string()});
    }
    let mut buf = [0u8; 1500];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return json!({"result": "timeout", "phase": "recv", "ms": ms(start)});
        }
        let _ = s.set_read_timeout(Some(left));
        match s.recv_from(&mut buf) {
            Ok((n, from)) if from == addr && &buf[..n] == payload.as_bytes() => {
                return json!({"result": "ok", "ms": ms(start)})
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return json!({"result": errname(&e), "phase": "recv", "ms": ms(start), "detail": e.to_string()})
            }
        }
    }
}

/// Prints one JSON line; objects get the probe's pid, so tests can match
/// it against what the agent attributed.
fn print(v: &Value) {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("pid".into(), json!(std::process::id()));
    }
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
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

/// The A and AAAA addresses of a reply, as strings.
fn reply_addresses(reply: &Message) -> Vec<String> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// One A query for `name` over TCP (RFC 1035 4.2.2: a two-byte length,
/// then the message).
fn resolve_tcp(server: IpAddr, name: &str) -> Value {
    let start = Instant::now();
    let fqdn = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .unwrap_or_else(|e| usage(&format!("bad name {name:?}: {e}")));
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(fqdn, RecordType::A));
    let bytes = msg.to_vec().expect("encode the query");
    let to = SocketAddr::new(server, 53);
    let mut s = match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => return json!({"result": errname(&e), "phase": "connect"}),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    if let Err(e) = s.write_all(&out) {
        return json!({"result": errname(&e), "phase": "send"});
    }
    let mut len = [0u8; 2];
    if let Err(e) = s.read_exact(&mut len) {
        return json!({"result": errname(&e), "phase": "recv"});
    }
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    if let Err(e) = s.read_exact(&mut buf) {
        return json!({"result": errname(&e), "phase": "recv"});
    }
    match Message::from_vec(&buf) {
        Ok(reply) => json!({"result": "ok", "addresses": reply_addresses(&reply), "ms": ms(start)}),
        Err(_) => json!({"result": "bad-reply", "ms": ms(start)}),
    }
}

fn resolve(server: IpAddr, name: &str, qtype: RecordType) -> Value {
    let start = Instant::now();
    let fqdn = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .unwrap_or_else(|e| usage(&format!("bad name {name:?}: {e}")));
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(fqdn, qtype));
    let bytes = msg.to_vec().expect("encode the query");
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = UdpSocket::bind(bind).expect("bind a UDP socket");
    let to = SocketAddr::new(server, 53);
    if let Err(e) = s.send_to(&bytes, to) {
        return json!({"result": errname(&e), "phase": "send", "detail": e.to_string()});
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4096];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) if from == to => {
                let Ok(reply) = Message::from_vec(&buf[..n]) else {
                    return json!({"result": "bad-reply", "ms": ms(start)});
                };
                if reply.metadata.id != msg.metadata.id {
                    continue;
                }
                let addrs = reply_addresses(&reply);
                let ttl: Vec<u32> = reply.answers.iter().map(|r| r.ttl).collect();
                return json!({
                    "result": "ok",
                    "rcode": format!("{:?}", reply.metadata.response_code),
                    "addresses": addrs,
                    "ttls": ttl,
                    "ms": ms(start),
                });
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return json!({"result": errname(&e), "phase": "recv", "ms": ms(start), "detail": e.to_string()})
            }
        }
    }
}

/// The one's complement sum of 16-bit words (RFC 1071), folded.
fn csum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for c in part.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame to `mac`: IPv4 + UDP `src` -> `dst` for "ip", else
/// 46 zero bytes under that ethertype.
fn build_frame(mac: [u8; 6], ethertype: &str, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0x5d, 0x01]);
    if ethertype != "ip" {
        let t = u16::from_str_radix(ethertype.trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| usage(&format!("bad ethertype {ethertype:?}")));
        f.extend_from_slice(&t.to_be_bytes());
        f.extend_from_slice(&[0u8; 46]);
        return f;
    }
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        usage("packet-send ip: IPv4 addresses only");
    };
    let payload = b"sdm-backstop-probe";
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&s.octets());
    pseudo.extend_from_slice(&d.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let c = csum(&[&pseudo, &udp]);
    udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&s.octets());
    ip.extend_from_slice(&d.octets());
    let c = csum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

/// One frame through an AF_PACKET socket (below the IP layer: no cgroup
/// program sees it); see the usage for the arguments.
fn packet_send(
    iface: &str,
    mac: &str,
    ethertype: &str,
    src: SocketAddr,
    dst: SocketAddr,
    bypass: bool,
) -> Value {
    use std::os::fd::FromRawFd as _;
    let mut m = [0u8; 6];
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 {
        usage(&format!("bad MAC {mac:?}"));
    }
    for (o, p) in m.iter_mut().zip(&parts) {
        *o = u8::from_str_radix(p, 16).unwrap_or_else(|_| usage(&format!("bad MAC {mac:?}")));
    }
    let frame = build_frame(m, ethertype, src, dst);
    let name = std::ffi::CString::new(iface).unwrap_or_else(|_| usage("bad interface"));
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return json!({"result": errname(&io::Error::last_os_error()), "phase": "ifindex"});
    }
    // SAFETY: plain socket(2). Protocol 0: this socket sends only.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if raw < 0 {
        return json!({"result": errname(&io::Error::last_os_error()), "phase": "socket"});
    }
    // SAFETY: a new fd we own.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let mut bypass_result = Value::Null;
    if bypass {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one int.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        bypass_result = if rc == 0 {
            "ok".into()
        } else {
            errname(&io::Error::last_os_error()).into()
        };
    }
    // SAFETY: sockaddr_ll built field by field; sendto reads only the
    // buffers given with their lengths.
    let rc = unsafe {
        let mut sa: libc::sockaddr_ll = std::mem::zeroed();
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = ifindex as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&m);
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    let result = if rc >= 0 {
        "ok".to_string()
    } else {
        errname(&io::Error::last_os_error())
    };
    json!({"result": result, "bypass": bypass_result, "bytes": frame.len()})
}

/// The raw UDP socket of the test kit (only the cgroup_skb programs see
/// what it sends).
fn raw_udp_socket() -> RawUdp {
    RawUdp::new().unwrap_or_else(|e| fatal(format!("raw socket: {e}")))
}

/// How a send ended: `<kind>-sent` or `<kind>-<errname>`.
fn outcome<T>(kind: &str, r: io::Result<T>) -> String {
    match r {
        Ok(_) => format!("{kind}-sent"),
        Err(e) => format!("{kind}-{}", errname(&e)),
    }
}

/// `count` raw UDP datagrams to `to` from `src_port`, counted by outcome.
fn raw_udp(to: std::net::SocketAddrV4, count: u64, src_port: u16) -> Value {
    let start = Instant::now();
    let raw = raw_udp_socket();
    let mut outcomes: std::collections::BTreeMap<String, u64> = Default::default();
    for _ in 0..count {
        *outcomes
            .entry(outcome("raw", raw.send(src_port, *to.ip(), to.port())))
            .or_default() += 1;
    }
    json!({"result": "done", "count": count, "outcomes": outcomes, "ms": ms(start)})
}

/// Sends `count` datagrams to `count` consecutive addresses from `first`
/// on, one each (every one a new flow: the kernel's per-flow event limit
/// cannot fold them), alternating between a UDP socket (judged at sendmsg)
/// and a raw socket (judged by the packet program). Counts how each send
/// ended.
fn flood(first: std::net::Ipv4Addr, count: u32) -> Value {
    let start = Instant::now();
    let sender = Flood::new().unwrap_or_else(|e| fatal(format!("flood sockets: {e}")));
    let base = u32::from(first);
    let Some(last) = base.checked_add(count.saturating_sub(1)) else {
        usage(&format!(
            "flood: {count} addresses from {first} run past 255.255.255.255"
        ));
    };
    let mut outcomes: std::collections::BTreeMap<String, u64> = Default::default();
    for i in 0..count {
        let dst = std::net::Ipv4Addr::from(base + i);
        let port = 1 + (i % 65_000) as u16;
        let outcome = match sender.send(u64::from(i), dst, port) {
            Sent::Udp(r) => outcome("udp", r),
            Sent::Raw(r) => outcome("raw", r),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    json!({
        "result": "done",
        "count": count,
        "first": first.to_string(),
        "last": std::net::Ipv4Addr::from(last).to_string(),
        "outcomes": outcomes,
        "ms": ms(start),
    })
}

/// Resolve, then connect at once, `count` times: what an application does
/// with a short-lived answer. Reports failures and the slowest connect (a
/// dropped SYN would show as about one second: the retransmission timer).
fn resolve_connect(
    server: IpAddr,
    name: &str,
    qtype: RecordType,
    port: u16,
    count: u64,
    timeout: Duration,
) -> Value {
    let start = Instant::now();
    let (mut ok, mut max_ms, mut slow) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..count {
        let r = resolve(server, name, qtype);
        let Some(addr) = r["addresses"][0]
            .as_str()
            .and_then(|a| a.parse::<IpAddr>().ok())
        else {
            if failures.len() < 5 {
                failures.push(json!({"round": i, "phase": "resolve", "outcome": r}));
            }
            continue;
        };
        seen.insert(addr);
        let t = Instant::now();
        let c = tcp_once(SocketAddr::new(addr, port), timeout);
        let took = ms(t);
        max_ms = max_ms.max(took);
        if took >= 500 {
            slow += 1;
            if failures.len() < 5 {
                failures.push(
                    json!({"round": i, "addr": addr.to_string(), "slow_ms": took, "outcome": c}),
                );
            }
        }
        if c["result"] == "ok" {
            ok += 1;
        } else if failures.len() < 5 {
            failures.push(json!({"round": i, "addr": addr.to_string(), "outcome": c}));
        }
    }
    json!({
        "result": if ok == count { "ok" } else { "failed" },
        "count": count,
        "ok": ok,
        "distinct": seen.len(),
        "max_connect_ms": max_ms,
        "slow": slow,
        "failures": failures,
        "ms": ms(start),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let (mut netns, mut cgroup) = (None, None);
    while i < args.len() && args[i].starts_with("--") {
        let v = args
            .get(i + 1)
            .cloned()
            .unwrap_or_else(|| usage(&format!("{} needs a value", args[i])));
        match args[i].as_str() {
            "--netns" => netns = Some(v),
            "--cgroup" => cgroup = Some(v),
            o => usage(&format!("unknown option {o}")),
        }
        i += 2;
    }
    // The namespace first: sockets take the namespace of their creation,
    // and the cgroup of the process that creates them.
    if let Some(p) = &netns {
        join_netns(p);
    }
    if let Some(d) = &cgroup {
        join_cgroup(d);
    }
    let action = args.get(i).cloned().unwrap_or_else(|| usage("no action"));
    let rest = &args[i + 1..];
    let out = match action.as_str() {
        "tcp" => tcp_once(
            parse("address", rest.first()),
            Duration::from_millis(parse("timeout", rest.get(1))),
        ),
        "udp" => udp(
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
        "resolve" => {
            let qtype = match rest.get(2).map(String::as_str) {
                None | Some("A") => RecordType::A,
                Some("AAAA") => RecordType::AAAA,
                Some(o) => usage(&format!("bad query type {o}")),
            };
            let name: String = parse("name", rest.get(1));
            resolve(parse("server", rest.first()), &name, qtype)
        }
        "resolve-tcp" => {
            let name: String = parse("name", rest.get(1));
            resolve_tcp(parse("server", rest.first()), &name)
        }
        "resolve-connect" => {
            let qtype = match rest.get(2).map(String::as_str) {
                Some("A") => RecordType::A,
                Some("AAAA") => RecordType::AAAA,
                o => usage(&format!("bad query type {o:?}")),
            };
            let name: String = parse("name", rest.get(1));
            resolve_connect(
                parse("server", rest.first()),
                &name,
                qtype,
                parse("port", rest.get(3)),
                parse("count", rest.get(4)),
                Duration::from_millis(parse("timeout", rest.get(5))),
            )
        }
        "raw-udp" => raw_udp(
            parse("address", rest.first()),
            parse("count", rest.get(1)),
            rest.get(2).map_or(40000, |p| parse("source port", Some(p))),
        ),
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
        "udp-from" => udp_from(
            parse("port", rest.first()),
            parse("address", rest.get(1)),
            Duration::from_millis(parse("timeout", rest.get(2))),
        ),
        "udp-echo" => udp_echo(
            parse("address", rest.first()),
            parse("seconds", rest.get(1)),
        ),
        "udp-recv" => udp_recv(
            parse("address", rest.first()),
            parse("seconds", rest.get(1)),
        ),
        "packet-send" => {
            let iface: String = parse("interface", rest.first());
            let mac: String = parse("destination MAC", rest.get(1));
            let ethertype: String = parse("ethertype", rest.get(2));
            let src: SocketAddr = parse("source", rest.get(3));
            let dst: SocketAddr = parse("destination", rest.get(4));
            let bypass = rest.get(5).is_some_and(|a| a == "bypass");
            packet_send(&iface, &mac, &ethertype, src, dst, bypass)
        }
        "flood" => flood(
            parse("first address", rest.first()),
            parse("count", rest.get(1)),
        ),
        o => usage(&format!("unknown action {o}")),
    };
    print(&out);
}
