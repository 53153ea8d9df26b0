//! Probes that outlive one call (lab-probe in the background) and the
//! sniffer that counts what reaches the `net` side.

use super::*;

/// Checks `tcp-watch` probes once their stop file is written: each made at
/// least 50 attempts, every attempt to an allowed address (`true`)
/// connected, and every attempt to a denied one was refused (EPERM) or
/// timed out, across `what` (e.g. "20 kills").
pub fn assert_watches_held(probes: &mut [(SocketAddr, bool, BgProbe)], what: &str) {
    for (addr, ok, p) in probes {
        let v = p.line(Duration::from_secs(15));
        let counts = watch_outcomes(&v);
        let attempts = v["attempts"].as_u64().unwrap_or(0);
        eprintln!("tcp-watch {addr} (allowed: {ok}): {counts:?}");
        assert!(attempts >= 50, "{addr}: only {attempts} attempts: {v}");
        if *ok {
            assert_eq!(
                counts.keys().collect::<Vec<_>>(),
                ["ok"],
                "allowed {addr}: connections failed across {what}: {v}"
            );
        } else {
            assert!(
                counts.keys().all(|k| k == "eperm" || k == "timeout"),
                "denied {addr}: an outcome other than eperm or timeout across {what}: {v}"
            );
        }
    }
}

/// The outcome counts of a finished `tcp-watch`.
pub fn watch_outcomes(v: &Value) -> std::collections::BTreeMap<String, u64> {
    v["outcomes"]
        .as_object()
        .unwrap_or_else(|| panic!("tcp-watch: no outcomes in {v}"))
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect()
}

/// A probe running in the background (listen-tcp, tcp-hold, tcp-loop): its
/// output lines arrive as JSON values. Killed on drop.
pub struct BgProbe {
    pub(super) proc: Proc,
    pub(super) lines: mpsc::Receiver<String>,
    pub(super) what: String,
}

impl BgProbe {
    /// The next output line, parsed; panics after `timeout`.
    pub fn line(&mut self, timeout: Duration) -> Value {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => serde_json::from_str(&l)
                .unwrap_or_else(|e| panic!("probe {}: bad output {l:?}: {e}", self.what)),
            Err(e) => {
                let status = self.proc.0.try_wait();
                let mut err = String::new();
                if let Some(s) = self.proc.0.stderr.as_mut() {
                    if matches!(status, Ok(Some(_))) {
                        let _ = s.read_to_string(&mut err);
                    }
                }
                panic!(
                    "probe {}: no output line within {timeout:?} ({e}); status {status:?}; stderr: {err}",
                    self.what
                )
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

/// A raw socket in the `net` namespace that sees a copy of every TCP
/// segment (or UDP datagram) arriving there, and counts those sent to
/// chosen IPv4 destinations: proof that a denied packet never left the
/// host, whatever the client saw.
pub struct Sniffer {
    counts: Arc<Mutex<HashMap<SocketAddr, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sniffer {
    /// `proto`: `libc::IPPROTO_TCP` or `libc::IPPROTO_UDP` (both carry the
    /// destination port in the transport header's bytes 2 and 3).
    pub(super) fn start(ns: &Netns, proto: libc::c_int, dsts: &[SocketAddr]) -> Self {
        assert!(
            proto == libc::IPPROTO_TCP || proto == libc::IPPROTO_UDP,
            "the sniffer reads TCP or UDP ports, not protocol {proto}"
        );
        for d in dsts {
            assert!(d.is_ipv4(), "the sniffer counts IPv4 only: {d}");
        }
        let fd = {
            let _in = ns.enter();
            // SAFETY: plain socket(2); the fd is owned at once below.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, proto) }
        };
        assert!(
            fd >= 0,
            "raw TCP socket in {}: {}",
            ns.name,
            io::Error::last_os_error()
        );
        // SAFETY: a new fd we own.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        set_recv_timeout(&sock, Duration::from_millis(50));
        let counts: Arc<Mutex<HashMap<SocketAddr, u64>>> =
            Arc::new(Mutex::new(dsts.iter().map(|d| (*d, 0)).collect()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (counts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                // SAFETY: recv into a buffer of the length given.
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else { continue };
                let pkt = &buf[..n];
                let ihl = usize::from(pkt.first().map_or(0, |b| b & 0x0f)) * 4;
                if ihl < 20 || pkt.len() < ihl + 4 {
                    continue;
                }
                let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
                let port = u16::from_be_bytes([pkt[ihl + 2], pkt[ihl + 3]]);
                if let Some(n) = lock(&c).get_mut(&SocketAddr::new(dst.into(), port)) {
                    *n += 1;
                }
            }
        });
        Self {
            counts,
            stop,
            thread: Some(thread),
        }
    }

    /// Segments (datagrams) seen so far for `dst`.
    pub fn count(&self, dst: SocketAddr) -> u64 {
        *lock(&self.counts)
            .get(&dst)
            .unwrap_or_else(|| panic!("the sniffer does not watch {dst}"))
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sets a socket's receive timeout (SO_RCVTIMEO), failing the test if the
/// kernel refuses.
pub fn set_recv_timeout(sock: &std::os::fd::OwnedFd, timeout: Duration) {
    socket2::SockRef::from(sock)
        .set_read_timeout(Some(timeout))
        .unwrap_or_else(|e| panic!("SO_RCVTIMEO: {e}"));
}
