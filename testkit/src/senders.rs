//! Senders that only the kernel's packet programs judge: UDP through a raw
//! IPv4 socket (the kernel adds the IP header, the sender writes the UDP
//! header; no socket hook sees it), and the flood of ever-new destinations.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// A raw IPv4 socket for UDP.
pub struct RawUdp(OwnedFd);

impl RawUdp {
    /// Needs CAP_NET_RAW.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Sends one UDP datagram with a 32-byte payload from `src_port` to
    /// `dst`:`port` (checksum zero: none, as IPv4 allows).
    pub fn send(&self, src_port: u16, dst: Ipv4Addr, port: u16) -> io::Result<()> {
        let mut pkt = [0u8; 40];
        pkt[0..2].copy_from_slice(&src_port.to_be_bytes());
        pkt[2..4].copy_from_slice(&port.to_be_bytes());
        pkt[4..6].copy_from_slice(&40u16.to_be_bytes());
        // SAFETY: sockaddr_in built field by field; sendto reads only the
        // buffers given with their lengths.
        let rc = unsafe {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
            libc::sendto(
                self.0.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// How one send of a [`Flood`] went.
pub enum Sent {
    Udp(io::Result<usize>),
    Raw(io::Result<()>),
}

/// Datagrams to ever-new destinations, alternating between a UDP socket
/// (judged by the sendmsg hook) and a raw socket (judged by the packet
/// program); every one a new flow, so the kernel's per-flow event limit
/// cannot fold them.
pub struct Flood {
    udp: UdpSocket,
    raw: RawUdp,
}

impl Flood {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            udp: UdpSocket::bind("0.0.0.0:0")?,
            raw: RawUdp::new()?,
        })
    }

    /// The `i`-th send of the flood: even ones through the UDP socket, odd
    /// ones through the raw socket (from port 40000).
    pub fn send(&self, i: u64, dst: Ipv4Addr, port: u16) -> Sent {
        const PAYLOAD: [u8; 32] = [0; 32];
        if i.is_multiple_of(2) {
            Sent::Udp(self.udp.send_to(&PAYLOAD, SocketAddrV4::new(dst, port)))
        } else {
            Sent::Raw(self.raw.send(40000, dst, port))
        }
    }
}
