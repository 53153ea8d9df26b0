//! A DNS responder on loopback for the resolver's tests: answers every A
//! and AAAA question at once (or after a set delay) with one address made
//! from the name, and records when each query came (the kernel's receive
//! time, so that the responder's own scheduling does not bunch them) and
//! how many were waiting for their answer at most.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash as _, Hasher as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::net::UdpSocket;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// One query as the responder saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When the kernel received it (CLOCK_REALTIME, only compared).
    pub at: Duration,
    pub name: String,
    pub qtype: u16,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

pub struct Responder {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address the responder answers for `name` (lower case, no trailing
/// dot), by family.
pub fn address_of(name: &str, v6: bool) -> IpAddr {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    let n = h.finish();
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0,
            0,
            0,
            0,
            0,
            (n >> 16) as u16,
            n as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8))
    }
}

impl Responder {
    /// Answers on 127.0.0.1 (a free port) with `ttl`, each answer `delay`
    /// after its query.
    pub async fn start(ttl: u32, delay: Duration) -> Self {
        let sock = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind the test DNS responder"),
        );
        let addr = sock.local_addr().expect("local address");
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from, at)) = sock
                    .async_io(tokio::io::Interest::READABLE, || {
                        recv_stamped(&sock, &mut buf)
                    })
                    .await
                else {
                    continue;
                };
                let Some((name, qtype, end)) = parse_query(&buf[..n]) else {
                    continue;
                };
                let reply = response(&buf[..end], &name, qtype, ttl);
                s.seen.lock().expect("seen").push(Seen { at, name, qtype });
                let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                s.most_in_flight.fetch_max(now, Ordering::SeqCst);
                let (sock, s) = (sock.clone(), s.clone());
                let send = async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    s.in_flight.fetch_sub(1, Ordering::SeqCst);
                    let _ = sock.send_to(&reply, from).await;
                };
                if delay.is_zero() {
                    send.await;
                } else {
                    tokio::spawn(send);
                }
            }
        });
        Self { addr, shared, task }
    }

    /// The queries so far, in the order they came.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("seen").clone()
    }

    /// The most queries that were waiting for their answer at once.
    pub fn most_in_flight(&self) -> usize {
        self.shared.most_in_flight.load(Ordering::SeqCst)
    }
}

/// One datagram into `buf`: its length, sender and kernel receive time.
fn recv_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Duration)> {
    let mut from: libc::sockaddr_in = unsafe_zeroed();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    let mut msg: libc::msghdr = unsafe_zeroed();
    msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` points at a live buffer of the size
    // given, for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut at = None;
    // SAFETY: walking the control messages the kernel wrote into `msg`.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is a control message header inside `control`; an
        // SCM_TIMESTAMPNS one carries a timespec.
        unsafe {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                at = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let at = at.ok_or_else(|| std::io::Error::other("no receive timestamp"))?;
    let ip = Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr));
    let from = SocketAddr::new(IpAddr::V4(ip), u16::from_be(from.sin_port));
    Ok((n as usize, from, at))
}

/// A zeroed C struct (`sockaddr_in`, `msghdr`: all-zero is valid for them).
fn unsafe_zeroed<T>() -> T {
    // SAFETY: only used for plain C structs whose all-zero value is valid.
    unsafe { std::mem::zeroed() }
}

/// The question's name (lower case), type, and the end of the question.
fn parse_query(m: &[u8]) -> Option<(String, u16, usize)> {
    if m.len() < 12 || m[2] & 0x80 != 0 || u16::from_be_bytes([m[4], m[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*m.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(m.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
    m.get(i + 3)?;
    Some((labels.join("."), qtype, i + 4))
}

/// The answer to `query` (header and question only): one record of the
/// asked family, NOERROR without records for other types.
fn response(query: &[u8], name: &str, qtype: u16, ttl: u32) -> Vec<u8> {
    let rdata: Vec<u8> = match (qtype, address_of(name, qtype == TYPE_AAAA)) {
        (TYPE_A, IpAddr::V4(a)) => a.octets().to_vec(),
        (TYPE_AAAA, IpAddr::V6(a)) => a.octets().to_vec(),
        _ => Vec::new(),
    };
    let mut r = query[..2].to_vec();
    // QR, the query's opcode and RD; RA, NOERROR.
    r.push(0x80 | (query[2] & 0x79));
    r.push(0x80);
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&u16::from(!rdata.is_empty()).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&query[12..]);
    if !rdata.is_empty() {
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&rdata);
    }
    r
}
