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
//!   udp-gather ADDR COUNT SECONDS     bind ADDR, receive COUNT datagrams, then
//!                                     echo each to its sender (sendto)
//!   udp-many ADDR COUNT TIMEOUT_MS    COUNT sockets each send to ADDR, then each
//!                                     awaits its own echo
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
//! "eacces", "unreachable" or `errno<N>`. Exit status 0 unless the arguments
//! are wrong or the namespace or cgroup cannot be joined (status 2).

mod dns;
mod raw;
mod tcp;
mod udp;

use serde_json::{json, Value};
use std::{
    fs,
    io::{self, Write as _},
    os::fd::AsRawFd as _,
    time::Instant,
};

pub(crate) fn usage(msg: &str) -> ! {
    eprintln!("lab-probe: {msg}");
    eprintln!("usage: lab-probe [--netns PATH] [--cgroup DIR] tcp|udp|tcp-from|connect-then-listen|udp-from|udp-recv|udp-echo|udp-gather|udp-many|listen-tcp|tcp-hold|tcp-loop|tcp-watch|resolve|resolve-tcp|resolve-connect|raw-udp|packet-send|flood ARGS...");
    std::process::exit(2);
}

pub(crate) fn fatal(msg: String) -> ! {
    eprintln!("lab-probe: {msg}");
    std::process::exit(2);
}

/// How an I/O error is reported.
pub(crate) fn errname(e: &io::Error) -> String {
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

pub(crate) fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

pub(crate) fn parse<T: std::str::FromStr>(what: &str, s: Option<&String>) -> T {
    let s = s.unwrap_or_else(|| usage(&format!("missing {what}")));
    s.parse()
        .unwrap_or_else(|_| usage(&format!("bad {what}: {s:?}")))
}

pub(crate) fn join_netns(path: &str) {
    let f = fs::File::open(path).unwrap_or_else(|e| fatal(format!("open {path}: {e}")));
    // SAFETY: setns on a valid namespace fd; this process is single-threaded.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        fatal(format!("setns {path}: {}", io::Error::last_os_error()));
    }
}

pub(crate) fn join_cgroup(dir: &str) {
    let procs = format!("{dir}/cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .unwrap_or_else(|e| fatal(format!("write {procs}: {e}")));
}

/// Prints one JSON line; objects get the probe's pid, so tests can match
/// it against what the agent attributed.
pub(crate) fn print(v: &Value) {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("pid".into(), json!(std::process::id()));
    }
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
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
    let out = tcp::run(&action, rest)
        .or_else(|| udp::run(&action, rest))
        .or_else(|| dns::run(&action, rest))
        .or_else(|| raw::run(&action, rest))
        .unwrap_or_else(|| usage(&format!("unknown action {action}")));
    print(&out);
}
