//! A tiny authoritative DNS responder over UDP, run on a thread inside one
//! of the benchmark's network namespaces, so that the agent under test
//! resolves against it (and nothing else).

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

pub const TYPE_A: u16 = 1;

/// What to answer to one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A records with this TTL (seconds).
    A(Vec<Ipv4Addr>, u32),
    /// NOERROR without records (e.g. AAAA of an IPv4-only name).
    NoData,
    NxDomain,
}

pub trait Responder: Send + 'static {
    fn answer(&mut self, name: &str, qtype: u16) -> Answer;
}

pub struct DnsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds `addr` inside the namespace at `netns` (a /run/netns file) and
    /// answers until dropped.
    pub fn start(netns: PathBuf, addr: SocketAddr, mut responder: impl Responder) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let sock = match bind_in(&netns, addr) {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Some(q) = parse_query(&buf[..n]) else {
                    continue;
                };
                let answer = responder.answer(&q.name, q.qtype);
                let _ = sock.send_to(&response(&buf[..n], &q, &answer), from);
            }
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!("the DNS responder did not start"),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind_in(netns: &PathBuf, addr: SocketAddr) -> Result<UdpSocket> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    // SAFETY: setns on a valid namespace fd, for this (dedicated) thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns for the DNS responder");
    }
    let sock = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(sock)
}

#[derive(Debug, PartialEq, Eq)]
struct Query {
    /// Lower case, without the trailing dot.
    name: String,
    qtype: u16,
    /// End of the question section in the message.
    end: usize,
}

fn parse_query(m: &[u8]) -> Option<Query> {
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
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(m.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
    m.get(i + 3)?;
    Some(Query {
        name: labels.join("."),
        qtype,
        end: i + 4,
    })
}

fn response(query: &[u8], q: &Query, a: &Answer) -> Vec<u8> {
    let mut r = Vec::with_capacity(q.end + 64);
    r.extend_from_slice(&query[0..2]);
    // QR, the query's opcode and RD, RA; rcode below.
    let rcode = if *a == Answer::NxDomain { 3 } else { 0 };
    r.push(0x80 | (query[2] & 0x79));
    r.push(0x80 | rcode);
    let records: &[Ipv4Addr] = match a {
        Answer::A(v, _) if q.qtype == TYPE_A => v,
        _ => &[],
    };
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(records.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&query[12..q.end]);
    let ttl = match a {
        Answer::A(_, ttl) => *ttl,
        _ => 0,
    };
    for ip in records {
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&TYPE_A.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&ip.octets());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        // An EDNS OPT record in the additional section, ignored.
        m.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        m
    }

    #[test]
    fn answers_a_questions() {
        let m = query("Probe.Bench.TEST", TYPE_A);
        let q = parse_query(&m).unwrap();
        assert_eq!(q.name, "probe.bench.test");
        assert_eq!(q.qtype, TYPE_A);
        let r = response(&m, &q, &Answer::A(vec![Ipv4Addr::new(10, 232, 128, 1)], 0));
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[2] & 0x80, 0x80, "a response");
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 232, 128, 1]);
        let r = response(&m, &q, &Answer::NxDomain);
        assert_eq!(r[3] & 0x0f, 3);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0);
        let aaaa = query("probe.bench.test", 28);
        let q = parse_query(&aaaa).unwrap();
        let r = response(&aaaa, &q, &Answer::A(vec![Ipv4Addr::LOCALHOST], 5));
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0, "no A records for AAAA");
        assert!(parse_query(&r).is_none(), "responses are not queries");
        assert!(parse_query(&[0; 5]).is_none());
    }
}
