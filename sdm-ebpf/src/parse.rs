//! Reading a packet into a [`PacketFlow`]: the IPv4/IPv6 header, options and
//! extension headers (source routes refused), and the first bytes of the
//! transport header, in 32-bit words so that the stack stays small.

use core::ptr;

use aya_ebpf::programs::{sk_buff::SkBuff, SkBuffContext};
use sdm_common::{DenyReason, TrafficDir, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// IPv6 extension headers walked before the transport header.
pub(crate) const MAX_IPV6_EXT_HEADERS: usize = 8;

/// The parsed flow of one packet, seen from this host.
pub(crate) struct PacketFlow {
    pub(crate) v6: bool,
    pub(crate) proto: u8,
    /// Remote address; IPv4 in the first four bytes.
    pub(crate) remote: [u8; 16],
    /// Local address, as `remote`.
    pub(crate) local: [u8; 16],
    /// Remote port, or the ICMP type.
    pub(crate) remote_port: u16,
    /// Local port, or the ICMP type.
    pub(crate) local_port: u16,
    /// Offset of the transport header (0 where there is no packet).
    pub(crate) l4_off: u32,
}

/// Why a packet could not be judged by the allowlist.
#[derive(Clone, Copy)]
pub(crate) enum Unjudgeable {
    Malformed,
    Fragment,
    UnknownProto,
    SourceRoute,
}

impl Unjudgeable {
    /// The deny reason it is counted and reported under.
    #[inline(always)]
    pub(crate) fn reason(self) -> DenyReason {
        match self {
            Self::Malformed => DenyReason::Malformed,
            Self::Fragment => DenyReason::Fragment,
            Self::UnknownProto => DenyReason::UnknownProto,
            Self::SourceRoute => DenyReason::SourceRoute,
        }
    }
}

/// Reads `N` 32-bit words at `off` bytes past the network header, which
/// starts `B` bytes into the data (0 for cgroup_skb programs, the
/// link-layer header's length for the backstop at tc): straight from the
/// linear data when it is there, which costs no helper call, else through
/// bpf_skb_load_bytes. `B` is a constant, so each caller's offsets stay
/// constants for the verifier.
///
/// Words, not bytes: an address read byte by byte becomes sixteen scalars
/// that the compiler spills one by one around every helper call, which took
/// the egress frame to 456 bytes, past the 512-byte combined stack that
/// 5.10 and 6.1 allow once aya-log's subprogram frame is added.
#[inline(always)]
pub(crate) fn read_words<const B: usize, const N: usize>(
    skb: &SkBuff,
    off: usize,
) -> Result<[u32; N], Unjudgeable> {
    // SAFETY: reading the context's data pointers.
    let (data, end) = unsafe { ((*skb.skb).data as usize, (*skb.skb).data_end as usize) };
    if data + B + off + N * 4 <= end {
        // SAFETY: bounds checked against data_end just above. The load is a
        // plain word load (as `struct iphdr *` reads are in C): the kernel
        // allows packet loads at any alignment where the CPU has efficient
        // unaligned access (check_pkt_ptr_alignment, kernel/bpf/verifier.c),
        // as x86-64 and arm64 do; read_unaligned would compile to bytes.
        #[allow(clippy::cast_ptr_alignment)]
        return Ok(unsafe { ptr::read((data + B + off) as *const [u32; N]) });
    }
    read_at::<B, _>(skb, off)
}

/// An address of `W` words as the bytes the maps are keyed on.
#[inline(always)]
pub(crate) fn addr_bytes(words: &[u32], first: usize, count: usize) -> [u8; 16] {
    let mut w = [0u32; 4];
    let mut i = 0;
    while i < count && i < 4 {
        w[i] = words[first + i];
        i += 1;
    }
    // SAFETY: [u32; 4] and [u8; 16] have the same size and no invalid values.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

/// Reads a `T` at a variable offset through bpf_skb_load_bytes: the
/// verifier cannot follow direct packet access at offsets it only knows as
/// a range, and the helper also reaches non-linear data.
#[inline(always)]
pub(crate) fn read<T: Copy>(ctx: &SkBuffContext, off: usize) -> Result<T, Unjudgeable> {
    read_at::<0, T>(&ctx.skb, off)
}

/// [`read`] at `off` bytes past a network header `B` bytes into the data.
#[inline(always)]
pub(crate) fn read_at<const B: usize, T: Copy>(skb: &SkBuff, off: usize) -> Result<T, Unjudgeable> {
    skb.load::<T>(B + off).map_err(|_| Unjudgeable::Malformed)
}

#[inline(always)]
pub(crate) fn parse(ctx: &SkBuffContext, dir: TrafficDir) -> Result<PacketFlow, Unjudgeable> {
    parse_at::<0>(&ctx.skb, dir)
}

/// Parses the IP packet whose network header is `B` bytes into the data.
#[inline(always)]
pub(crate) fn parse_at<const B: usize>(
    skb: &SkBuff,
    dir: TrafficDir,
) -> Result<PacketFlow, Unjudgeable> {
    // Every IPv4 or IPv6 packet holds at least 20 bytes of header. (A
    // one-byte read would compile to `data_end > data`, which the verifier
    // grants no range: find_good_pkt_pointers in kernel/bpf/verifier.c.)
    let head: [u32; 5] = read_words::<B, 5>(skb, 0)?;
    match head[0].to_ne_bytes()[0] >> 4 {
        4 => parse_v4::<B>(skb, dir, &head),
        6 => parse_v6::<B>(skb, dir),
        _ => Err(Unjudgeable::Malformed),
    }
}

#[inline(always)]
pub(crate) fn parse_v4<const B: usize>(
    skb: &SkBuff,
    dir: TrafficDir,
    hdr: &[u32; 5],
) -> Result<PacketFlow, Unjudgeable> {
    let first = hdr[0].to_ne_bytes();
    let ihl = usize::from(first[0] & 0x0f);
    if ihl < 5 {
        return Err(Unjudgeable::Malformed);
    }
    let frag_word = hdr[1].to_ne_bytes();
    let frag = u16::from_be_bytes([frag_word[2], frag_word[3]]);
    if frag & 0x1fff != 0 {
        return Err(Unjudgeable::Fragment);
    }
    let proto = hdr[2].to_ne_bytes()[1];
    // Source is word 3, destination word 4.
    let (at, lat) = if dir == TrafficDir::Egress {
        (4, 3)
    } else {
        (3, 4)
    };
    let remote = addr_bytes(hdr, at, 1);
    let local = addr_bytes(hdr, lat, 1);
    if ihl > 5 {
        refuse_source_route_v4::<B>(skb, ihl * 4)?;
    }
    // Other IPv4 options are skipped by the header length.
    transport::<B>(skb, dir, false, proto, ihl * 4, remote, local)
}

/// IPv4 options: loose (131) or strict (137) source route (RFC 791 3.1).
pub(crate) const IPOPT_LSRR: u8 = 0x83;
pub(crate) const IPOPT_SSRR: u8 = 0x89;
/// IPv4 options examined at most. Real traffic carries one or two options
/// if any; a packet with more is refused as a possible source route rather
/// than walked further: every option walked multiplies the states the
/// verifier explores (40 one-byte NOPs took the egress program past the
/// million instructions 5.10 and 6.1 verify).
pub(crate) const IPV4_MAX_OPTIONS: usize = 4;

/// Walks the IPv4 options between byte 20 and `hdr_len`: a source route
/// option, or more options than [`IPV4_MAX_OPTIONS`], is refused; a
/// malformed option list is malformed. Only packets with options pay for
/// this (one load per option).
#[inline(always)]
pub(crate) fn refuse_source_route_v4<const B: usize>(
    skb: &SkBuff,
    hdr_len: usize,
) -> Result<(), Unjudgeable> {
    let mut pos = 20;
    let mut n = 0;
    while n < IPV4_MAX_OPTIONS {
        if pos >= hdr_len {
            return Ok(());
        }
        let kind: [u8; 1] = read_at::<B, _>(skb, pos)?;
        match kind[0] {
            // End of the option list.
            0 => return Ok(()),
            // No operation: one byte.
            1 => pos += 1,
            IPOPT_LSRR | IPOPT_SSRR => return Err(Unjudgeable::SourceRoute),
            _ => {
                let len: [u8; 1] = read_at::<B, _>(skb, pos + 1)?;
                if len[0] < 2 {
                    return Err(Unjudgeable::Malformed);
                }
                pos += usize::from(len[0]);
            }
        }
        n += 1;
    }
    if pos >= hdr_len {
        Ok(())
    } else {
        Err(Unjudgeable::SourceRoute)
    }
}

#[inline(always)]
pub(crate) fn parse_v6<const B: usize>(
    skb: &SkBuff,
    dir: TrafficDir,
) -> Result<PacketFlow, Unjudgeable> {
    let hdr: [u32; 10] = read_words::<B, 10>(skb, 0)?;
    let mut next = hdr[1].to_ne_bytes()[2];
    // Source is words 2-5, destination words 6-9.
    let (at, lat) = if dir == TrafficDir::Egress {
        (6, 2)
    } else {
        (2, 6)
    };
    let remote = addr_bytes(&hdr, at, 4);
    let local = addr_bytes(&hdr, lat, 4);
    let mut off: usize = 40;
    let mut n = 0;
    while n < MAX_IPV6_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet
            // units, not counting the first 8 (RFC 8200 4.3-4.6). A routing
            // header with segments left sends the packet on past the
            // address judged here.
            0 | 43 | 60 => {
                let ext: [u8; 4] = read_at::<B, _>(skb, off)?;
                if next == 43 && ext[3] != 0 {
                    return Err(Unjudgeable::SourceRoute);
                }
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            // Fragment header (RFC 8200 4.5).
            44 => {
                let ext: [u8; 4] = read_at::<B, _>(skb, off)?;
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    return Err(Unjudgeable::Fragment);
                }
                next = ext[0];
                off += 8;
            }
            // Authentication header: length in 4-octet units minus 2 (RFC 4302).
            51 => {
                let ext: [u8; 2] = read_at::<B, _>(skb, off)?;
                next = ext[0];
                off += (usize::from(ext[1]) + 2) * 4;
            }
            _ => break,
        }
        n += 1;
    }
    transport::<B>(skb, dir, true, next, off, remote, local)
}

#[inline(always)]
pub(crate) fn transport<const B: usize>(
    skb: &SkBuff,
    dir: TrafficDir,
    v6: bool,
    proto: u8,
    off: usize,
    remote: [u8; 16],
    local: [u8; 16],
) -> Result<PacketFlow, Unjudgeable> {
    // Keeps the offset provably bounded for the verifier.
    if off > 40 + MAX_IPV6_EXT_HEADERS * 2048 {
        return Err(Unjudgeable::Malformed);
    }
    let icmp = (proto == PROTO_ICMP && !v6) || (proto == PROTO_ICMPV6 && v6);
    if proto != PROTO_TCP && proto != PROTO_UDP && !icmp {
        return Err(match proto {
            0 | 43 | 44 | 51 | 60 => Unjudgeable::Malformed,
            _ => Unjudgeable::UnknownProto,
        });
    }
    // The first four bytes of the transport header: ports, or ICMP type,
    // code and checksum (an ICMP header is 8 bytes, so they are there).
    let l4 = first_l4_bytes::<B>(skb, off)?;
    let (src, dst) = if icmp {
        (u16::from(l4[0]), u16::from(l4[0]))
    } else {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    };
    let (remote_port, local_port) = if dir == TrafficDir::Egress {
        (dst, src)
    } else {
        (src, dst)
    };
    Ok(PacketFlow {
        v6,
        proto,
        remote,
        local,
        remote_port,
        local_port,
        l4_off: off as u32,
    })
}

/// Reads four bytes at `off`. The common cases (IPv4 without options,
/// IPv6 without extension headers) are constant offsets that direct packet
/// access covers, so a plain TCP or UDP packet is parsed without any helper
/// call.
#[inline(always)]
pub(crate) fn first_l4_bytes<const B: usize>(
    skb: &SkBuff,
    off: usize,
) -> Result<[u8; 4], Unjudgeable> {
    if off == 20 {
        let w: [u32; 1] = read_words::<B, 1>(skb, 20)?;
        return Ok(w[0].to_ne_bytes());
    }
    if off == 40 {
        let w: [u32; 1] = read_words::<B, 1>(skb, 40)?;
        return Ok(w[0].to_ne_bytes());
    }
    read_at::<B, _>(skb, off)
}
