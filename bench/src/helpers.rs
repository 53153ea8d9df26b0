//! The small programs the benchmark starts inside its namespaces and
//! cgroups (as `sdm-bench <helper>`): a UDP echo server, a request/response
//! client, a flood of denied packets and a probe for the first allowed
//! packet. Each stops by itself after a bounded time and prints one JSON
//! line (or, for the probe, one line per address).

pub mod tcp;

use std::{
    io::{self, BufRead as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use sdm_testkit::senders::{Flood, Sent};
use serde_json::json;

use crate::sys::mono_ns;

/// Echoes every datagram back to its sender on each address, for at most
/// `max_secs`.
pub fn udp_echo(binds: &[SocketAddr], max_secs: u64) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(max_secs);
    let mut threads = Vec::new();
    for addr in binds {
        let sock = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        threads.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while Instant::now() < end {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        }));
    }
    println!("ready");
    io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// One datagram at a time to `to`, waiting for its echo, for `secs`;
/// prints the number of transactions. With `probe`, sends one datagram and
/// prints whether it was blocked (refused, or no answer within 300 ms).
pub fn udp_rr(to: SocketAddr, secs: f64, size: usize, probe: bool) -> Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    if probe {
        let blocked = match sock.connect(to).and_then(|()| sock.send(&[0u8; 8])) {
            Err(e) => Some(e.to_string()),
            Ok(_) => {
                sock.set_read_timeout(Some(Duration::from_millis(300)))?;
                let mut buf = [0u8; 64];
                match sock.recv(&mut buf) {
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                }
            }
        };
        println!(
            "{}",
            json!({ "blocked": blocked.is_some(), "how": blocked })
        );
        return Ok(());
    }
    sock.connect(to)
        .with_context(|| format!("connect to {to}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let msg = vec![0x5au8; size];
    let mut buf = vec![0u8; size.max(64) + 64];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut n, mut timeouts) = (0u64, 0u64);
    while Instant::now() < end {
        sock.send(&msg).context("send")?;
        match sock.recv(&mut buf) {
            Ok(_) => n += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                timeouts += 1;
                if timeouts > 20 {
                    bail!("more than 20 requests to {to} went unanswered");
                }
            }
            Err(e) => return Err(e).context("recv"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "transactions": n, "secs": secs, "timeouts": timeouts })
    );
    Ok(())
}

/// One arm of [`udp_rr_multi`]: a socket made inside a namespace and a
/// cgroup, connected to an echo server.
#[derive(Clone, Debug)]
pub struct RrArm {
    pub netns: std::path::PathBuf,
    pub cgroup: std::path::PathBuf,
    pub to: SocketAddr,
}

impl std::str::FromStr for RrArm {
    type Err = String;
    /// `<netns file>,<cgroup dir>,<ip:port>`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').collect();
        let [ns, cg, to] = parts.as_slice() else {
            return Err(format!("{s:?}: expected <netns>,<cgroup>,<ip:port>"));
        };
        Ok(Self {
            netns: ns.into(),
            cgroup: cg.into(),
            to: to.parse().map_err(|e| format!("{to:?}: {e}"))?,
        })
    }
}

/// Request/response rates of several arms, measured by one process in
/// short slices, round after round in a shuffled order, so that arms are
/// compared within moments of each other without process start-ups in
/// between. A socket belongs to the namespace and the cgroup its creator
/// was in when it made it (`sk_alloc` records the cgroup): the process
/// joins each arm's cgroup and namespace in turn to make that arm's socket.
/// Prints `{"rates": [[per arm, in arm order] per round]}` (per second).
pub fn udp_rr_multi(arms: &[RrArm], rounds: usize, slice_ms: u64, seed: u64) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    let pid = std::process::id().to_string();
    let mut socks = Vec::new();
    for arm in arms {
        std::fs::write(arm.cgroup.join("cgroup.procs"), &pid)
            .with_context(|| format!("join {}", arm.cgroup.display()))?;
        let ns = std::fs::File::open(&arm.netns)?;
        // SAFETY: setns on valid namespace fds, for this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).context("setns");
        }
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(arm.to)
            .with_context(|| format!("connect to {}", arm.to))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        socks.push(sock);
        // SAFETY: as above.
        if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).context("setns back");
        }
    }
    let msg = [0x5au8; 64];
    let mut buf = [0u8; 256];
    let mut rng = crate::stats::Rng::new(seed);
    let mut order: Vec<usize> = (0..arms.len()).collect();
    let slice = Duration::from_millis(slice_ms);
    let mut rates = Vec::with_capacity(rounds);
    // One round more than asked: the first warms caches up and is dropped.
    for round in 0..=rounds {
        rng.shuffle(&mut order);
        let mut row = vec![0.0f64; arms.len()];
        for &i in &order {
            let sock = &socks[i];
            let (mut n, mut timeouts) = (0u64, 0u32);
            let start = Instant::now();
            while start.elapsed() < slice {
                sock.send(&msg).context("send")?;
                match sock.recv(&mut buf) {
                    Ok(_) => n += 1,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        timeouts += 1;
                        if timeouts > 5 {
                            bail!("requests to {} go unanswered", arms[i].to);
                        }
                    }
                    Err(e) => return Err(e).context("recv"),
                }
            }
            row[i] = n as f64 / start.elapsed().as_secs_f64();
        }
        if round > 0 {
            rates.push(row);
        }
    }
    println!("{}", json!({ "rates": rates }));
    Ok(())
}

/// Sends datagrams to ever new (address, port) pairs of `net`.x (x in
/// 100..250) for `secs`, half through a UDP socket (judged by the sendmsg
/// hook) and half through a raw socket (judged by the packet program).
/// Prints how many were sent and how many the kernel refused.
pub fn flood(net: Ipv4Addr, secs: f64) -> Result<()> {
    let sender = Flood::new().context("flood sockets")?;
    let base = net.octets();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut sent, mut refused, mut raw_sent, mut raw_refused) = (0u64, 0u64, 0u64, 0u64);
    let mut i: u64 = 0;
    while Instant::now() < end {
        for _ in 0..64 {
            let host = 100 + (i % 150) as u8;
            let port = 1 + ((i / 150) % 65_000) as u16;
            let dst = Ipv4Addr::new(base[0], base[1], base[2], host);
            i += 1;
            match sender.send(i, dst, port) {
                Sent::Udp(r) => {
                    sent += 1;
                    refused += u64::from(r.is_err());
                }
                Sent::Raw(r) => {
                    raw_sent += 1;
                    raw_refused += u64::from(r.is_err());
                }
            }
        }
    }
    println!(
        "{}",
        json!({
            "secs": start.elapsed().as_secs_f64(),
            "udp_sent": sent, "udp_refused": refused,
            "raw_sent": raw_sent, "raw_refused": raw_refused,
        })
    );
    Ok(())
}

/// Reads IPv4 addresses on stdin, one a line; for each, sends a datagram to
/// it (on `port`) every 20 µs until the kernel lets one through, then prints
/// `<address> <CLOCK_MONOTONIC ns>` (or `<address> timeout` after
/// `timeout_ms`). Stops at end of input or after `max_secs`.
/// Sends to `addr`:`port` every 20 µs until the kernel accepts; returns the
/// CLOCK_MONOTONIC ns of the accepted send, or "timeout".
fn knock(sock: &UdpSocket, addr: Ipv4Addr, port: u16, timeout_ms: u64) -> String {
    let until = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        if sock
            .send_to(&[0u8; 8], SocketAddrV4::new(addr, port))
            .is_ok()
        {
            return mono_ns().to_string();
        }
        if Instant::now() > until {
            return "timeout".to_owned();
        }
        thread::sleep(Duration::from_micros(20));
    }
}

pub fn probe(port: u16, timeout_ms: u64, max_secs: u64) -> Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    let stop = Instant::now() + Duration::from_secs(max_secs);
    let stdin = io::stdin();
    let mut out = io::stdout();
    for line in stdin.lock().lines() {
        let line = line?;
        let addr: Ipv4Addr = line.trim().parse().with_context(|| format!("{line:?}"))?;
        let result = knock(&sock, addr, port, timeout_ms);
        writeln!(out, "{addr} {result}")?;
        out.flush()?;
        if Instant::now() > stop {
            break;
        }
    }
    Ok(())
}

/// The first A record of a DNS answer, if any (compressed or plain owner
/// names both skipped).
fn first_a(m: &[u8]) -> Option<Ipv4Addr> {
    if m.len() < 12 || m[2] & 0x80 == 0 {
        return None;
    }
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let b = *m.get(i)?;
            if b & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            if b == 0 {
                return Some(i + 1);
            }
            i += 1 + usize::from(b);
        }
    };
    let mut i = skip_name(12)? + 4;
    let answers = u16::from_be_bytes([m[6], m[7]]);
    for _ in 0..answers {
        i = skip_name(i)?;
        let rtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
        let rdlen = usize::from(u16::from_be_bytes([*m.get(i + 8)?, *m.get(i + 9)?]));
        let rdata = m.get(i + 10..i + 10 + rdlen)?;
        if rtype == 1 && rdlen == 4 {
            return Some(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        i += 10 + rdlen;
    }
    None
}

/// Figure 4, in-kernel path: `count` times, resolve `name` through
/// `server` and send to the answered address at once, again every 20 µs
/// until the kernel accepts; prints "ADDR T1" (CLOCK_MONOTONIC ns of the
/// first accepted send) or "ADDR timeout" per answer.
pub fn resolve_knock(
    server: SocketAddr,
    name: &str,
    port: u16,
    count: u64,
    timeout_ms: u64,
) -> Result<()> {
    let dns = UdpSocket::bind("0.0.0.0:0")?;
    dns.set_read_timeout(Some(Duration::from_secs(2)))?;
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    let mut out = io::stdout();
    let mut buf = [0u8; 1500];
    for i in 0..count {
        let id = (i as u16).wrapping_add(1);
        let mut q = Vec::with_capacity(64);
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        dns.send_to(&q, server).context("send the query")?;
        let addr = loop {
            let (n, from) = dns.recv_from(&mut buf).context("await the answer")?;
            if from == server && n >= 2 && buf[..2] == id.to_be_bytes() {
                break first_a(&buf[..n]).context("an answer without an A record")?;
            }
        };
        let result = knock(&sock, addr, port, timeout_ms);
        writeln!(out, "{addr} {result}")?;
        out.flush()?;
    }
    Ok(())
}
