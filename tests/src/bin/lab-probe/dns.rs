//! DNS actions: queries over UDP and TCP, resolve then connect.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RData, RecordType},
};
use serde_json::{json, Value};

use crate::{errname, ms, parse, tcp::tcp_once, usage};

/// The outcome of `action` if it is one of this module's, else None.
pub fn run(action: &str, rest: &[String]) -> Option<Value> {
    let out = match action {
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
        _ => return None,
    };
    Some(out)
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
