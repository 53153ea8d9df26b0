//! Crafted IPv4/IPv6 packets (from the IP header on) for BPF_PROG_TEST_RUN.
//! Checksums are left zero: the programs never look at them.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// A transport header: ports for TCP/UDP, the type for ICMP.
pub fn l4(proto: u8, src_port: u16, dst_port: u16) -> Vec<u8> {
    match proto {
        TCP => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&src_port.to_be_bytes());
            h[2..4].copy_from_slice(&dst_port.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = 0x02; // SYN
            h
        }
        UDP => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&src_port.to_be_bytes());
            h[2..4].copy_from_slice(&dst_port.to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            h
        }
        // ICMP / ICMPv6: type in the first byte (dst_port), code 0.
        _ => vec![dst_port as u8, 0, 0, 0, 0, 0, 0, 0],
    }
}

/// Options for an IPv4 packet.
#[derive(Clone, Copy, Default)]
pub struct V4Opts {
    /// 32-bit words of IP options (IHL = 5 + this).
    pub option_words: u8,
    /// Put a loose source route option (type 131) first in the options
    /// (needs `option_words` >= 2).
    pub loose_source_route: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub more_fragments: bool,
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8], o: V4Opts) -> Vec<u8> {
    let ihl = 5 + o.option_words as usize;
    let mut p = vec![0u8; ihl * 4];
    p[0] = 0x40 | ihl as u8;
    let total = (ihl * 4 + l4.len()) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    let mut frag = o.frag_offset & 0x1fff;
    if o.more_fragments {
        frag |= 0x2000;
    }
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    // Options: one timestamp option (type 68) spanning them all, its body
    // 0x01 bytes, which a parser that ignores IHL would misread as the
    // transport header (ports 0x440c and 257).
    for b in &mut p[20..] {
        *b = 1;
    }
    if ihl > 5 {
        p[20] = 68;
        p[21] = ((ihl - 5) * 4) as u8;
    }
    if o.loose_source_route {
        // Type, length 7, pointer 4, one address (RFC 791).
        p[20..27].copy_from_slice(&[0x83, 7, 4, 192, 0, 2, 1]);
    }
    p.extend_from_slice(l4);
    p
}

/// An IPv6 extension header to put before the transport header.
#[derive(Clone, Copy)]
pub enum Ext {
    HopByHop,
    DestOpts,
    /// A routing header whose segments are all visited (segments left 0):
    /// the destination is the last hop.
    Routing,
    /// A routing header with one segment left: a further hop.
    SourceRoute,
    /// Fragment header with this offset (8-byte units).
    Fragment(u16),
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, exts: &[Ext], l4: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let codes: Vec<u8> = exts
        .iter()
        .map(|e| match e {
            Ext::HopByHop => 0,
            Ext::DestOpts => 60,
            Ext::Routing | Ext::SourceRoute => 43,
            Ext::Fragment(_) => 44,
        })
        .collect();
    for (i, e) in exts.iter().enumerate() {
        let next = codes.get(i + 1).copied().unwrap_or(proto);
        match e {
            Ext::HopByHop | Ext::DestOpts => {
                // 16 bytes: hdr ext len 1 (in 8-octet units beyond the first 8).
                let mut h = vec![0u8; 16];
                h[0] = next;
                h[1] = 1;
                // PadN option filling the rest, so the bytes are not ports.
                h[2] = 1;
                h[3] = 12;
                body.extend_from_slice(&h);
            }
            Ext::Routing | Ext::SourceRoute => {
                // Routing type 0 (RFC 8200 4.4), one address; segments left
                // 0 or 1.
                let mut h = vec![0u8; 24];
                h[0] = next;
                h[1] = 2;
                h[3] = u8::from(matches!(e, Ext::SourceRoute));
                body.extend_from_slice(&h);
            }
            Ext::Fragment(off) => {
                let mut h = vec![0u8; 8];
                h[0] = next;
                h[2..4].copy_from_slice(&(off << 3).to_be_bytes());
                body.extend_from_slice(&h);
            }
        }
    }
    body.extend_from_slice(l4);
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    p[6] = codes.first().copied().unwrap_or(proto);
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p.extend_from_slice(&body);
    p
}

/// A UDP header (length filled in, checksum zero) followed by `payload`.
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = l4(UDP, src_port, dst_port);
    h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A TCP header (ACK|PSH) followed by a DNS message with its 2-byte length
/// prefix, as DNS over TCP sends it (RFC 1035 4.2.2).
pub fn tcp_dns(src_port: u16, dst_port: u16, msg: &[u8]) -> Vec<u8> {
    let mut h = l4(TCP, src_port, dst_port);
    h[13] = 0x18;
    h.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    h.extend_from_slice(msg);
    h
}

/// A name in DNS wire format (labels, then the root's zero byte).
pub fn dns_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// A compression pointer to offset `off` of the message (RFC 1035 4.1.4).
pub fn dns_ptr(off: u16) -> Vec<u8> {
    vec![0xc0 | (off >> 8) as u8, off as u8]
}

/// A resource record; `name` is wire format and may hold pointers.
#[derive(Clone)]
pub struct Rr {
    pub name: Vec<u8>,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
}

pub const DNS_A: u16 = 1;
pub const DNS_CNAME: u16 = 5;
pub const DNS_AAAA: u16 = 28;

impl Rr {
    pub fn a(name: Vec<u8>, ttl: u32, addr: Ipv4Addr) -> Self {
        Self {
            name,
            rtype: DNS_A,
            class: 1,
            ttl,
            rdata: addr.octets().to_vec(),
        }
    }
    pub fn aaaa(name: Vec<u8>, ttl: u32, addr: Ipv6Addr) -> Self {
        Self {
            name,
            rtype: DNS_AAAA,
            class: 1,
            ttl,
            rdata: addr.octets().to_vec(),
        }
    }
    pub fn cname(name: Vec<u8>, ttl: u32, target: Vec<u8>) -> Self {
        Self {
            name,
            rtype: DNS_CNAME,
            class: 1,
            ttl,
            rdata: target,
        }
    }
}

/// A DNS message: header, questions (wire name, type; class IN), answers.
#[derive(Clone)]
pub struct DnsMsg {
    pub id: u16,
    pub flags: u16,
    pub questions: Vec<(Vec<u8>, u16)>,
    pub answers: Vec<Rr>,
}

/// Flags of a plain answer: QR, RD, RA, RCODE 0.
pub const DNS_RESPONSE: u16 = 0x8180;
/// Flags of a query: RD.
pub const DNS_QUERY: u16 = 0x0100;

impl DnsMsg {
    pub fn query(id: u16, name: &str, qtype: u16) -> Self {
        Self {
            id,
            flags: DNS_QUERY,
            questions: vec![(dns_name(name), qtype)],
            answers: vec![],
        }
    }

    /// The answer to [`DnsMsg::query`] with these records.
    pub fn answer(id: u16, name: &str, qtype: u16, answers: Vec<Rr>) -> Self {
        Self {
            id,
            flags: DNS_RESPONSE,
            questions: vec![(dns_name(name), qtype)],
            answers,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&self.id.to_be_bytes());
        m.extend_from_slice(&self.flags.to_be_bytes());
        m.extend_from_slice(&(self.questions.len() as u16).to_be_bytes());
        m.extend_from_slice(&(self.answers.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        for (name, qtype) in &self.questions {
            m.extend_from_slice(name);
            m.extend_from_slice(&qtype.to_be_bytes());
            m.extend_from_slice(&1u16.to_be_bytes());
        }
        for rr in &self.answers {
            m.extend_from_slice(&rr.name);
            m.extend_from_slice(&rr.rtype.to_be_bytes());
            m.extend_from_slice(&rr.class.to_be_bytes());
            m.extend_from_slice(&rr.ttl.to_be_bytes());
            m.extend_from_slice(&(rr.rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(&rr.rdata);
        }
        m
    }
}
