//! What the XDP shield check of the smoke lab and the benchmark's figure 10
//! need on the scanning side: SYNs through a raw socket, and a capture of
//! what the gateway answers (RSTs, ICMP destination unreachable).

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// The ones' complement sum of `data` as 16-bit big-endian words.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).map_or(0, |b| u32::from(*b));
        acc += hi | lo;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A TCP SYN of 20 bytes from `src` to `dst`, checksummed (RFC 9293 3.1),
/// so that the receiving stack would answer it.
pub fn syn(src: SocketAddrV4, dst: SocketAddrV4, seq: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&src.port().to_be_bytes());
    h[2..4].copy_from_slice(&dst.port().to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x02;
    h[14..16].copy_from_slice(&1024u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let c = fold(sum16(&h, sum16(&pseudo, 0)));
    h[16..18].copy_from_slice(&c.to_be_bytes());
    h
}

fn check(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r)
}

/// A raw IPPROTO_TCP socket bound to `src` (the source address of what it
/// sends; the kernel writes the IP header).
pub struct SynSender(OwnedFd, Ipv4Addr);

impl SynSender {
    pub fn new(src: Ipv4Addr) -> io::Result<Self> {
        // SAFETY: plain socket(2); owned at once.
        let fd = check(
            unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_TCP,
                )
            },
            "socket(SOCK_RAW, IPPROTO_TCP)",
        )?;
        // SAFETY: a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sa = sockaddr(SocketAddrV4::new(src, 0));
        // SAFETY: a valid sockaddr_in of its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&sa).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        check(r, "bind")?;
        Ok(Self(fd, src))
    }

    /// One SYN from `src_port` to `dst`.
    pub fn send(&self, src_port: u16, dst: SocketAddrV4, seq: u32) -> io::Result<()> {
        let seg = syn(SocketAddrV4::new(self.1, src_port), dst, seq);
        let to = sockaddr(SocketAddrV4::new(*dst.ip(), 0));
        // SAFETY: a valid buffer and sockaddr_in.
        let r = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                seg.as_ptr().cast(),
                seg.len(),
                0,
                std::ptr::from_ref(&to).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            ) as libc::c_int
        };
        check(r, "sendto")?;
        Ok(())
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Counts the gateway's answers that reach an interface: an AF_PACKET
/// socket (not an inet socket, so no cgroup program judges what it reads)
/// on `ifindex`, reading IPv4 packets from `from`.
pub struct Replies(OwnedFd, Ipv4Addr);

/// What [`Replies::count`] saw since the last call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Answers {
    /// TCP segments with RST set.
    pub rst: u64,
    /// ICMP destination unreachable.
    pub unreachable: u64,
}

impl Replies {
    pub fn new(ifindex: u32, from: Ipv4Addr) -> io::Result<Self> {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket(2); owned at once.
        let fd = check(
            unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    i32::from(proto),
                )
            },
            "socket(AF_PACKET)",
        )?;
        // SAFETY: a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data.
        let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = proto;
        ll.sll_ifindex = ifindex as i32;
        // SAFETY: a valid sockaddr_ll of its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        check(r, "bind AF_PACKET")?;
        let r = Self(fd, from);
        r.count();
        Ok(r)
    }

    /// Reads everything queued; counts the answers from `from`.
    pub fn count(&self) -> Answers {
        let mut a = Answers::default();
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: a valid buffer of its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else {
                return a;
            };
            let p = &buf[..n];
            if p.len() < 20 || p[0] >> 4 != 4 || p[12..16] != self.1.octets() {
                continue;
            }
            let l4 = usize::from(p[0] & 0x0f) * 4;
            match (p[9], p.get(l4), p.get(l4 + 13)) {
                (6, _, Some(flags)) if flags & 0x04 != 0 => a.rst += 1,
                (1, Some(3), _) => a.unreachable += 1,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum of a SYN verifies: summing it with its pseudo header
    /// gives 0xffff (RFC 1071).
    #[test]
    fn syn_checksum_verifies() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 231, 1, 9), 42000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 231, 1, 1), 7001);
        let h = syn(src, dst, 7);
        let pseudo = [10, 231, 1, 9, 10, 231, 1, 1, 0, 6, 0, 20];
        assert_eq!(fold(sum16(&h, sum16(&pseudo, 0))), 0);
        assert_eq!(h[13], 0x02);
    }
}
