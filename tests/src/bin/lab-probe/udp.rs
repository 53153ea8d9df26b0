//! UDP actions: send and await an echo, receive, echo.

use std::{
    io::{self},
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{errname, ms, parse, print, tcp::any_addr};

/// The outcome of `action` if it is one of this module's, else None.
pub fn run(action: &str, rest: &[String]) -> Option<Value> {
    let out = match action {
        "udp" => udp(
            parse("address", rest.first()),
            Duration::from_millis(parse("timeout", rest.get(1))),
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
        "udp-gather" => udp_gather(
            parse("address", rest.first()),
            parse("count", rest.get(1)),
            parse("seconds", rest.get(2)),
        ),
        "udp-many" => udp_many(
            parse("address", rest.first()),
            parse("count", rest.get(1)),
            Duration::from_millis(parse("timeout", rest.get(2))),
        ),
        _ => return None,
    };
    Some(out)
}

/// Binds `addr` with a short read timeout (so a receive loop sees its
/// deadline) and prints that it listens; the bind failure as the action's
/// outcome otherwise.
fn bind_announced(addr: SocketAddr) -> Result<UdpSocket, Value> {
    let s = UdpSocket::bind(addr)
        .map_err(|e| json!({"result": errname(&e), "phase": "bind", "detail": e.to_string()}))?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    print(&json!({"result": "listening", "addr": addr.to_string()}));
    Ok(s)
}

/// Binds `addr`, says so, then counts the datagrams that arrive in `secs`.
fn udp_recv(addr: SocketAddr, secs: u64) -> Value {
    let s = match bind_announced(addr) {
        Ok(s) => s,
        Err(failure) => return failure,
    };
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
    let s = match bind_announced(addr) {
        Ok(s) => s,
        Err(failure) => return failure,
    };
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

/// Binds `addr`, says so, receives `count` datagrams (within `secs`), and
/// only then echoes each to its sender: a server with several peers at
/// once, answering with `sendto()` after its socket has heard from all.
fn udp_gather(addr: SocketAddr, count: usize, secs: u64) -> Value {
    let s = match bind_announced(addr) {
        Ok(s) => s,
        Err(failure) => return failure,
    };
    let end = Instant::now() + Duration::from_secs(secs);
    let mut got: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let mut buf = [0u8; 1500];
    while got.len() < count && Instant::now() < end {
        if let Ok((n, peer)) = s.recv_from(&mut buf) {
            got.push((buf[..n].to_vec(), peer));
        }
    }
    let (mut echoed, mut refused) = (0u64, 0u64);
    for (data, peer) in &got {
        match s.send_to(data, peer) {
            Ok(_) => echoed += 1,
            Err(_) => refused += 1,
        }
    }
    json!({"result": "done", "received": got.len(), "echoed": echoed, "refused": refused})
}

/// `count` sockets each send one datagram to `addr`, all before any awaits
/// its echo; then each waits for its own. "ok" when every one came back.
fn udp_many(addr: SocketAddr, count: usize, timeout: Duration) -> Value {
    let start = Instant::now();
    let mut socks = Vec::new();
    for i in 0..count {
        let s = match UdpSocket::bind(any_addr(addr, 0)) {
            Ok(s) => s,
            Err(e) => {
                return json!({"result": errname(&e), "phase": "bind", "detail": e.to_string()})
            }
        };
        let payload = format!("many-{}-{i}", std::process::id());
        if let Err(e) = s.send_to(payload.as_bytes(), addr) {
            return json!({"result": errname(&e), "phase": "send", "detail": e.to_string()});
        }
        socks.push((s, payload));
    }
    let mut answered = 0u64;
    let mut buf = [0u8; 1500];
    for (s, payload) in &socks {
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1));
        let _ = s.set_read_timeout(Some(left));
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            if from == addr && &buf[..n] == payload.as_bytes() {
                answered += 1;
            }
        }
    }
    let result = if answered == count as u64 {
        "ok"
    } else {
        "timeout"
    };
    json!({"result": result, "answered": answered, "ms": ms(start)})
}
