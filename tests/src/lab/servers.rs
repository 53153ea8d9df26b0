//! The lab's TCP "ok"+echo and UDP echo servers, on threads whose sockets
//! live in the `net` namespace.

use super::*;

/// TCP servers that greet every connection with "ok\n" and then echo what
/// they receive until the client closes, and UDP echo servers.
#[derive(Default)]
pub(super) struct Servers {
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Servers {
    pub(super) fn tcp(&self, ns: &Netns, addr: SocketAddr) {
        let listener = {
            let _in = ns.enter();
            reuseport_listener(addr)
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = self.stop.clone();
        let threads = self.threads.clone();
        let t = std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let stop = stop.clone();
                        let h = std::thread::spawn(move || tcp_conn(conn, &stop));
                        lock(&threads).push(h);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        lock(&self.threads).push(t);
    }

    pub(super) fn udp_echo(&self, ns: &Netns, addr: SocketAddr) {
        let sock = {
            let _in = ns.enter();
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"))
        };
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp timeout");
        let stop = self.stop.clone();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        lock(&self.threads).push(t);
    }
}

fn tcp_conn(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    if conn.write_all(b"ok\n").is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Connection threads are added by the accept threads: drain until
        // nothing is left.
        loop {
            let batch: Vec<JoinHandle<()>> = lock(&self.threads).drain(..).collect();
            if batch.is_empty() {
                break;
            }
            for t in batch {
                let _ = t.join();
            }
        }
    }
}

/// A listener with SO_REUSEPORT, so that a test may also connect *from*
/// the served port (an allowed remote's service port as a source port: see
/// `tcp-from` in lab-probe).
fn reuseport_listener(addr: SocketAddr) -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .unwrap_or_else(|e| panic!("tcp socket for {addr}: {e}"));
    sock.set_reuse_address(true)
        .and_then(|()| sock.set_reuse_port(true))
        .unwrap_or_else(|e| panic!("SO_REUSEPORT on {addr}: {e}"));
    if addr.is_ipv6() {
        // As std's listener: a wildcard IPv6 listener also takes IPv4.
        let _ = sock.set_only_v6(false);
    }
    sock.bind(&addr.into())
        .and_then(|()| sock.listen(128))
        .unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
    sock.into()
}
