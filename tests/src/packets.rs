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
    // Options: NOPs (type 1), which a parser that ignores IHL would misread
    // as the transport header.
    for b in &mut p[20..] {
        *b = 1;
    }
    p.extend_from_slice(l4);
    p
}

/// An IPv6 extension header to put before the transport header.
#[derive(Clone, Copy)]
pub enum Ext {
    HopByHop,
    DestOpts,
    Routing,
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
            Ext::Routing => 43,
            Ext::Fragment(_) => 44,
        })
        .collect();
    for (i, e) in exts.iter().enumerate() {
        let next = codes.get(i + 1).copied().unwrap_or(proto);
        match e {
            Ext::HopByHop | Ext::DestOpts | Ext::Routing => {
                // 16 bytes: hdr ext len 1 (in 8-octet units beyond the first 8).
                let mut h = vec![0u8; 16];
                h[0] = next;
                h[1] = 1;
                // PadN option filling the rest, so the bytes are not ports.
                h[2] = 1;
                h[3] = 12;
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
