//! The flows that existed before the shield attached, from the socket
//! tables of the agent's network namespace (`/proc/net/tcp`, `tcp6`,
//! `udp`, `udp6`; format: `tcp4_seq_show` and `udp4_format_sock`,
//! <https://github.com/torvalds/linux/blob/v6.18/net/ipv4/tcp_ipv4.c>,
//! <https://github.com/torvalds/linux/blob/v6.18/net/ipv4/udp.c>).

use sdm_common::{XdpFlowKey, PROTO_TCP, PROTO_UDP};

/// TCP_LISTEN as the tables print it (include/net/tcp_states.h).
const TCP_LISTEN: &str = "0A";

/// The tables read, with the protocol and address family of each.
pub(super) const TABLES: [(&str, u8, bool); 4] = [
    ("/proc/net/tcp", PROTO_TCP, false),
    ("/proc/net/tcp6", PROTO_TCP, true),
    ("/proc/net/udp", PROTO_UDP, false),
    ("/proc/net/udp6", PROTO_UDP, true),
];

/// The flows of one table's text: every socket with a remote end (TCP
/// connections in any state but LISTEN, connected UDP sockets). IPv4-mapped
/// IPv6 addresses become IPv4 keys: their packets are IPv4 on the wire.
/// Lines that do not parse are skipped (the header, a format change).
pub(super) fn flows(text: &str, proto: u8, v6: bool) -> Vec<XdpFlowKey> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_sl, local, remote, state) = (f.next()?, f.next()?, f.next()?, f.next()?);
            if proto == PROTO_TCP && state == TCP_LISTEN {
                return None;
            }
            let (_, local_port) = endpoint(local, v6)?;
            let (addr, remote_port) = endpoint(remote, v6)?;
            if remote_port == 0 || addr == [0; 16] {
                return None;
            }
            let (addr, v6) = unmap(addr, v6);
            Some(XdpFlowKey {
                remote: addr,
                remote_port,
                local_port,
                proto,
                v6: u8::from(v6),
                _pad: [0; 2],
            })
        })
        .collect()
}

/// `ADDR:PORT` as the tables print it: the address as 32-bit words in
/// host byte order (`%08X` of each), the port in hex.
fn endpoint(s: &str, v6: bool) -> Option<([u8; 16], u16)> {
    let (addr, port) = s.split_once(':')?;
    let words = if v6 { 4 } else { 1 };
    if addr.len() != words * 8 {
        return None;
    }
    let mut out = [0u8; 16];
    for i in 0..words {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Some((out, u16::from_str_radix(port, 16).ok()?))
}

/// `::ffff:a.b.c.d` as the IPv4 address it stands for.
fn unmap(addr: [u8; 16], v6: bool) -> ([u8; 16], bool) {
    if v6 && addr[..10] == [0; 10] && addr[10..12] == [0xff, 0xff] {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&addr[12..16]);
        return (v4, false);
    }
    (addr, v6)
}
