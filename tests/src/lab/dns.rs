//! The lab's fake DNS server: a table of answers (addresses, CNAME chains,
//! NXDOMAIN, SERVFAIL, silence), served over UDP and TCP from the `net`
//! namespace, with counts of what it was asked.

use super::*;

/// How the fake DNS server treats queries, whatever the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsMode {
    /// Answers from the table; NXDOMAIN for unknown names.
    Answer,
    /// SERVFAIL to everything.
    ServFail,
    /// Reads queries and answers nothing.
    Silent,
}

/// What the fake DNS server answers for one name of its table (in
/// [`DnsMode::Answer`]), for A and AAAA queries alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// These addresses (A or AAAA records by family) with this TTL. Over
    /// UDP an answer longer than the query's EDNS payload size (512 bytes
    /// without EDNS) is truncated (TC set, no records), as real servers
    /// do; the full answer is served over TCP.
    Addrs(Vec<IpAddr>, u32),
    /// NXDOMAIN (with an SOA), although the name is in the table.
    NxDomain,
    /// NOERROR with no record at all: no answer, no SOA.
    Empty,
    /// SERVFAIL.
    ServFail,
    /// No reply: the client times out.
    Silent,
    /// A CNAME to another name, followed through the table as a recursive
    /// resolver would, each link in the answer, until a name with
    /// addresses or one already visited (a loop).
    Cname(String, u32),
}

#[derive(Default)]
struct DnsTable {
    records: HashMap<String, Answer>,
    /// Names answered with a new address every time: (IPv4 /24 base, IPv6
    /// /64 base, TTL, answers so far).
    rotating: HashMap<String, (Ipv4Addr, Ipv6Addr, u32, u64)>,
    queries: HashMap<String, u64>,
}

struct DnsShared {
    table: Mutex<DnsTable>,
    mode: Mutex<DnsMode>,
    total: AtomicU64,
    /// Queries that came over TCP.
    tcp: AtomicU64,
    /// UDP replies sent truncated.
    truncated: AtomicU64,
}

/// The sockets and threads of a running server.
struct DnsRun {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// An authoritative-for-everything DNS server on UDP and TCP port 53 of
/// one address in the `net` namespace, answering A and AAAA queries from a
/// table the test may change at any time. It can be stopped (its sockets
/// closed: the resolver went away) and started again.
pub struct FakeDns {
    pub addr: SocketAddr,
    shared: Arc<DnsShared>,
    run: Mutex<Option<DnsRun>>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl FakeDns {
    pub(super) fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let dns = Self {
            addr,
            shared: Arc::new(DnsShared {
                table: Mutex::new(DnsTable::default()),
                mode: Mutex::new(DnsMode::Answer),
                total: AtomicU64::new(0),
                tcp: AtomicU64::new(0),
                truncated: AtomicU64::new(0),
            }),
            run: Mutex::new(None),
        };
        dns.serve(ns);
        dns
    }

    /// Opens the sockets (in `ns`) and starts answering; a no-op while
    /// running.
    pub(super) fn serve(&self, ns: &Netns) {
        let mut run = lock(&self.run);
        if run.is_some() {
            return;
        }
        let addr = self.addr;
        let (udp, tcp) = {
            let _in = ns.enter();
            (
                UdpSocket::bind(addr).unwrap_or_else(|e| panic!("fake DNS: bind udp {addr}: {e}")),
                TcpListener::bind(addr)
                    .unwrap_or_else(|e| panic!("fake DNS: bind tcp {addr}: {e}")),
            )
        };
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp timeout");
        tcp.set_nonblocking(true).expect("tcp nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (self.shared.clone(), stop.clone());
        let t_udp = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = dns_reply(&s, &buf[..n], true) {
                    let _ = udp.send_to(&reply, from);
                }
            }
        });
        let (s, st) = (self.shared.clone(), stop.clone());
        let t_tcp = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((conn, _)) => dns_tcp_conn(&s, conn, &st),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        *run = Some(DnsRun {
            stop,
            threads: vec![t_udp, t_tcp],
        });
    }

    /// Closes the sockets: queries are refused (ICMP port unreachable,
    /// TCP reset) until [`Lab::dns_up`].
    pub(super) fn shutdown(&self) {
        if let Some(run) = lock(&self.run).take() {
            run.stop.store(true, Ordering::Relaxed);
            for t in run.threads {
                let _ = t.join();
            }
        }
    }

    /// Answers `name` with `addrs` (A and AAAA by family) and this TTL.
    pub fn set(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        self.set_answer(name, Answer::Addrs(addrs.to_vec(), ttl));
    }

    /// Answers `name` so.
    pub fn set_answer(&self, name: &str, answer: Answer) {
        lock(&self.shared.table)
            .records
            .insert(normalize(name), answer);
    }

    /// Answers `name` with a new address on every answer: the next of
    /// `v4`'s /24 (A) or of `v6`'s /64 (AAAA), with this TTL.
    pub fn rotate(&self, name: &str, v4: Ipv4Addr, v6: Ipv6Addr, ttl: u32) {
        lock(&self.shared.table)
            .rotating
            .insert(normalize(name), (v4, v6, ttl, 0));
    }

    /// Makes `name` unknown (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        lock(&self.shared.table).records.remove(&normalize(name));
    }

    pub fn set_mode(&self, mode: DnsMode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Queries received, in total.
    pub fn queries(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Queries received over TCP.
    pub fn tcp_queries(&self) -> u64 {
        self.shared.tcp.load(Ordering::Relaxed)
    }

    /// UDP replies sent truncated (TC set) because they were too long.
    pub fn truncated(&self) -> u64 {
        self.shared.truncated.load(Ordering::Relaxed)
    }

    /// Queries received for one name (any type).
    pub fn queries_for(&self, name: &str) -> u64 {
        lock(&self.shared.table)
            .queries
            .get(&normalize(name))
            .copied()
            .unwrap_or(0)
    }

    /// The table and query counts, for failure messages (long answers are
    /// summarised).
    pub fn describe(&self) -> String {
        let t = lock(&self.shared.table);
        let records: Vec<String> = t
            .records
            .iter()
            .map(|(n, a)| match a {
                Answer::Addrs(v, ttl) if v.len() > 8 => {
                    format!("{n}: {} addresses (ttl {ttl})", v.len())
                }
                a => format!("{n}: {a:?}"),
            })
            .collect();
        format!(
            "mode {:?}, {} queries ({} over TCP, {} UDP replies truncated), running {}; \
             records {records:?}; queries by name {:?}",
            *lock(&self.shared.mode),
            self.queries(),
            self.tcp_queries(),
            self.truncated(),
            lock(&self.run).is_some(),
            t.queries
        )
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn soa() -> Record {
    let root = Name::root();
    let mname = Name::from_ascii("ns.lab.test.").expect("name");
    let rname = Name::from_ascii("hostmaster.lab.test.").expect("name");
    Record::from_rdata(
        root,
        1,
        RData::SOA(SOA::new(mname, rname, 1, 60, 60, 60, 1)),
    )
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{name}.")).unwrap_or_else(|e| panic!("fake DNS: name {name}: {e}"))
}

/// A CNAME chain: (owner, target, ttl) per link.
type CnameChain = Vec<(String, String, u32)>;

/// What the table answers for `name`: the entry at the end of its CNAME
/// chain (None at a loop or an unknown name) and the chain; a rotating
/// name answers its next addresses.
fn lookup(s: &DnsShared, name: &str) -> (Option<(String, Answer)>, CnameChain) {
    let name = name.to_owned();
    let mut t = lock(&s.table);
    *t.queries.entry(name.clone()).or_default() += 1;
    if let Some((v4, v6, ttl, n)) = t.rotating.get_mut(&name) {
        *n += 1;
        let o = v4.octets();
        let a4 = Ipv4Addr::new(o[0], o[1], o[2], (1 + (*n - 1) % 254) as u8);
        let a6 = Ipv6Addr::from(u128::from(*v6) + u128::from(*n));
        let answer = Answer::Addrs(vec![IpAddr::V4(a4), IpAddr::V6(a6)], *ttl);
        (Some((name.clone(), answer)), Vec::new())
    } else {
        // Follow CNAMEs through the table, stopping at a loop.
        let mut chain: Vec<(String, String, u32)> = Vec::new();
        let mut at = name.clone();
        let mut seen = std::collections::HashSet::from([name.clone()]);
        let entry = loop {
            match t.records.get(&at).cloned() {
                Some(Answer::Cname(target, ttl)) => {
                    let target = normalize(&target);
                    chain.push((at.clone(), target.clone(), ttl));
                    if !seen.insert(target.clone()) {
                        break None;
                    }
                    at = target;
                }
                other => break other.map(|a| (at.clone(), a)),
            }
        };
        (entry, chain)
    }
}

/// The reply to one DNS message, or None to stay silent. `udp`: a reply
/// longer than the query allows is sent truncated.
fn dns_reply(s: &DnsShared, query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let q = req.queries.first()?.clone();
    let name = normalize(&q.name.to_ascii());
    s.total.fetch_add(1, Ordering::Relaxed);
    if !udp {
        s.tcp.fetch_add(1, Ordering::Relaxed);
    }
    let (entry, chain) = lookup(s, &name);
    let mode = *lock(&s.mode);
    if mode == DnsMode::Silent || matches!(entry, Some((_, Answer::Silent))) {
        return None;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    if mode == DnsMode::ServFail || matches!(entry, Some((_, Answer::ServFail))) {
        resp.metadata.response_code = ResponseCode::ServFail;
        return resp.to_vec().ok();
    }
    resp.metadata.authoritative = true;
    for (owner, target, ttl) in &chain {
        resp.add_answer(Record::from_rdata(
            fqdn(owner),
            *ttl,
            RData::CNAME(CNAME(fqdn(target))),
        ));
    }
    match entry {
        // The end of a CNAME loop: the chain is all there is.
        None if !chain.is_empty() => {}
        None | Some((_, Answer::NxDomain)) => {
            resp.metadata.response_code = ResponseCode::NXDomain;
            resp.add_authority(soa());
        }
        Some((_, Answer::Empty)) => {}
        Some((owner, Answer::Addrs(addrs, ttl))) => {
            let before = resp.answers.len();
            for a in addrs {
                let rdata = match (a, q.query_type) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(fqdn(&owner), ttl, rdata));
            }
            if resp.answers.len() == before {
                // NODATA: the name exists, without records of this type.
                resp.add_authority(soa());
            }
        }
        Some((_, Answer::ServFail | Answer::Silent | Answer::Cname(..))) => {
            unreachable!("handled above")
        }
    }
    let bytes = resp.to_vec().ok()?;
    if udp && bytes.len() > usize::from(req.max_payload()) {
        s.truncated.fetch_add(1, Ordering::Relaxed);
        let mut tc = resp.truncate();
        tc.edns = None;
        return tc.to_vec().ok();
    }
    Some(bytes)
}

/// DNS over TCP: two-byte length prefixes, several queries per connection.
fn dns_tcp_conn(s: &DnsShared, mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    while !stop.load(Ordering::Relaxed) {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if conn.read_exact(&mut msg).is_err() {
            return;
        }
        let Some(reply) = dns_reply(s, &msg, false) else {
            continue;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = n.to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if conn.write_all(&out).is_err() {
            return;
        }
    }
}
