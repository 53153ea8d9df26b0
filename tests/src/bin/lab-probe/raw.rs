//! Actions below the socket hooks: raw UDP, Ethernet frames through AF_PACKET, the flood of new destinations.

use std::{
    io::{self},
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    time::Instant,
};

use sdm_testkit::senders::{Flood, RawUdp, Sent};
use serde_json::{json, Value};

use crate::{errname, fatal, ms, parse, usage};

/// The outcome of `action` if it is one of this module's, else None.
pub fn run(action: &str, rest: &[String]) -> Option<Value> {
    let out = match action {
        "raw-udp" => raw_udp(
            parse("address", rest.first()),
            parse("count", rest.get(1)),
            rest.get(2).map_or(40000, |p| parse("source port", Some(p))),
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

        _ => return None,
    };
    Some(out)
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
pub(crate) fn raw_udp_socket() -> RawUdp {
    RawUdp::new().unwrap_or_else(|e| fatal(format!("raw socket: {e}")))
}

/// How a send ended: `<kind>-sent` or `<kind>-<errname>`.
pub(crate) fn outcome<T>(kind: &str, r: io::Result<T>) -> String {
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
