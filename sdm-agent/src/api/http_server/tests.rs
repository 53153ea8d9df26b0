//! The attacks of issue 16's "no side doors" on the HTTP server, each
//! performed on a real listener on 127.0.0.1 with the agent's router.
//! Deadlines are asserted with wide margins (tens of seconds for timeouts
//! of two or three): what is checked is that a connection is closed, a
//! counter moves or a scrape is served, not how fast.

use std::net::SocketAddr;

use prometheus_client::registry::Registry;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::Semaphore,
    task::JoinHandle,
};

use super::*;
use crate::{
    api::http::{self, HttpState, StatusFn},
    api::status::{Count, RuleStatus, Status},
    flows::FlowTable,
};

/// Timeouts short enough for a test; the cap as in production.
fn short() -> Limits {
    Limits {
        head_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3),
        write_stall_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

/// Timeouts that never fire during a test: only the cap closes connections.
fn no_timeouts() -> Limits {
    Limits {
        head_timeout: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(600),
        write_stall_timeout: Duration::from_secs(600),
        response_timeout: Duration::from_secs(600),
        ..Limits::default()
    }
}

fn status_with_rules(rules: usize, addresses: usize) -> Status {
    Status {
        mode: "enforce".into(),
        rules: (0..rules)
            .map(|i| RuleStatus {
                name: format!("gateway/egress/rule-{i}"),
                id: i as u32,
                direction: Some("egress".into()),
                protos: vec!["tcp".into()],
                ports: vec!["443".into()],
                targets: vec![format!("host-{i}.example")],
                required: Some(true),
                origin: Some("guide".into()),
                active: true,
                addresses: (0..addresses)
                    .map(|a| format!("198.51.{}.{}", a % 256, i % 256))
                    .collect(),
                egress: Count::default(),
                ingress: Count::default(),
            })
            .collect(),
        denied: vec![],
        dns: vec![],
        learned: vec![],
        ..Status::sample()
    }
}

fn state(status: StatusFn) -> HttpState {
    HttpState {
        registry: Arc::new(Registry::default()),
        status,
        flows: FlowTable::shared(10),
        store: None,
        token: None,
        stats: HttpStats::default(),
        kernel_reads: Arc::new(Semaphore::new(1)),
    }
}

/// A server on 127.0.0.1:0, stopped when dropped.
struct Server {
    addr: SocketAddr,
    stats: HttpStats,
    task: JoinHandle<io::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(state: HttpState, limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = state.stats.clone();
    let task = tokio::spawn(http::serve_with(listener, state, limits));
    Server { addr, stats, task }
}

fn request(path: &str, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\r\n")
}

/// Everything the server sends until it closes the connection (EOF or a
/// reset); `None` if it is still open after `within`.
async fn until_closed(c: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()?;
    Some(out)
}

/// A whole answer on a fresh connection.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(request(path, true).as_bytes()).await.unwrap();
    let out = until_closed(&mut c, Duration::from_secs(30))
        .await
        .expect("the answer within 30 s");
    String::from_utf8_lossy(&out).into_owned()
}

/// Connect and send nothing; send half a head and trickle a header byte at
/// a time; trickle a body the route never reads; keep a served connection
/// alive and idle: the server closes every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_the_head_and_idle_timeouts() {
    let server = start(state(Arc::new(|| None)), short()).await;
    let silent = TcpStream::connect(server.addr).await.unwrap();

    let trickle = |first: &'static str| {
        let addr = server.addr;
        async move {
            let c = TcpStream::connect(addr).await.unwrap();
            let (mut rd, mut wr) = c.into_split();
            let writer = tokio::spawn(async move {
                wr.write_all(first.as_bytes()).await?;
                // A byte every 300 ms: never a whole head or body, always
                // something new, until the server closes the connection.
                for _ in 0..1000 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    wr.write_all(b"a").await?;
                }
                io::Result::Ok(())
            });
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await
            .is_ok();
            writer.abort();
            (closed, String::from_utf8_lossy(&got).into_owned())
        }
    };
    let head = trickle("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
    let body =
        trickle("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n");

    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(request("/healthz", false).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut answer = Vec::new();
    while !answer.ends_with(b"ok\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), kept.read(&mut buf))
            .await
            .expect("the answer within 30 s")
            .unwrap();
        assert_ne!(n, 0, "closed before the answer");
        answer.extend_from_slice(&buf[..n]);
    }

    let (mut silent, mut kept) = (silent, kept);
    let (head, body, silent_closed, kept_closed) = tokio::join!(
        head,
        body,
        until_closed(&mut silent, Duration::from_secs(30)),
        until_closed(&mut kept, Duration::from_secs(30)),
    );
    assert_eq!(
        silent_closed.as_deref(),
        Some(&b""[..]),
        "a connection that sends nothing is closed"
    );
    assert!(head.0, "a trickled head is closed");
    assert!(!head.1.contains("200 OK"), "{}", head.1);
    assert!(body.0, "a trickled body is closed: {}", body.1);
    assert_eq!(
        kept_closed.as_deref(),
        Some(&b""[..]),
        "an idle kept-alive connection is closed"
    );
    assert!(server.stats.closed(CloseReason::HeadTimeout) >= 2);
    assert!(server.stats.closed(CloseReason::IdleTimeout) >= 1);
    // The server itself is fine.
    assert!(get(server.addr, "/healthz").await.ends_with("ok\n"));
}

/// A request head larger than the cap: 431, and the connection closed.
#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let server = start(state(Arc::new(|| None)), short()).await;
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    let pad = "a".repeat(4 * MAX_HEAD_BYTES);
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n"
    );
    // The server may close before it has read it all: a failed write is fine.
    let _ = c.write_all(req.as_bytes()).await;
    let out = until_closed(&mut c, Duration::from_secs(30))
        .await
        .expect("closed within 30 s");
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );
}

/// 300 connections that never send a byte: the server keeps at most its
/// cap open, closing the oldest, and a scrape on a new connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_cannot_lock_a_scraper_out() {
    const FLOOD: usize = 300;
    let server = start(state(Arc::new(|| None)), no_timeouts()).await;
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let excess = FLOOD - MAX_CONNECTIONS;
    // The oldest are closed (the timeouts are ten minutes: only the cap
    // can close them).
    for (i, c) in flood.iter_mut().take(excess).enumerate() {
        assert!(
            until_closed(c, Duration::from_secs(30)).await.is_some(),
            "connection {i} of {FLOOD} is still open"
        );
    }
    let scrape = get(server.addr, "/metrics").await;
    assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape}");
    // The newest are still open: the oldest went first.
    for (i, c) in flood.iter_mut().enumerate().skip(FLOOD - 50) {
        assert!(
            until_closed(c, Duration::from_millis(100)).await.is_none(),
            "connection {i}, one of the newest, was closed"
        );
    }
    assert!(server.stats.closed(CloseReason::Evicted) >= excess as u64);
    assert!(server.stats.open.load(Ordering::Relaxed) <= MAX_CONNECTIONS as u64);
    assert_eq!(server.stats.refused.load(Ordering::Relaxed), 0);
}

/// At the cap with every connection busy answering, a new connection is
/// closed at once and counted; the busy ones are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_with_every_connection_busy_a_new_one_is_refused() {
    const CAP: usize = 8;
    // The status read blocks until the test lets it go (drops `release`).
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let status: StatusFn = Arc::new(move || {
        let _ = wait.lock().unwrap_or_else(|p| p.into_inner()).recv();
        Some(status_with_rules(1, 1))
    });
    let limits = Limits {
        max_connections: CAP,
        ..no_timeouts()
    };
    let server = start(state(status), limits).await;
    let mut busy = Vec::new();
    for _ in 0..CAP {
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        c.write_all(request("/api/status", true).as_bytes())
            .await
            .unwrap();
        busy.push(c);
    }
    // Time for the server to read the eight requests (it takes
    // microseconds; two seconds on a loaded machine).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    let _ = refused
        .write_all(request("/healthz", true).as_bytes())
        .await;
    let out = until_closed(&mut refused, Duration::from_secs(30))
        .await
        .expect("closed within 30 s");
    assert!(
        out.is_empty(),
        "refused without an answer: {}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(server.stats.refused.load(Ordering::Relaxed), 1);
    drop(release);
    for c in &mut busy {
        let out = until_closed(c, Duration::from_secs(30)).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 200 OK"));
    }
    assert_eq!(server.stats.closed(CloseReason::Evicted), 0);
    assert!(get(server.addr, "/healthz").await.ends_with("ok\n"));
}

/// A client that asks for a large answer and never reads it: the answer is
/// abandoned and the connection closed, and the maps' lock is free the
/// whole time (the snapshot is taken under it, the writing is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_cut_off_and_holds_no_lock() {
    // Larger than the socket buffers on both ends (4 MiB at most for the
    // sender by default): the largest page of rules (1,000), each with many
    // addresses.
    let big = status_with_rules(crate::api::http::MAX_PAGE_LIMIT, 1200);
    let full = serde_json::to_vec(&big.rules).unwrap().len();
    assert!(full > 16 << 20, "{full}");
    let maps = Arc::new(Mutex::new(()));
    let status: StatusFn = {
        let maps = maps.clone();
        let big = Arc::new(big);
        Arc::new(move || {
            let _g = maps.lock().unwrap_or_else(|p| p.into_inner());
            Some((*big).clone())
        })
    };
    let limits = Limits {
        write_stall_timeout: Duration::from_secs(2),
        ..no_timeouts()
    };
    let server = start(state(status), limits).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut c = socket.connect(server.addr).await.unwrap();
    c.write_all(request("/api/rules?limit=1000", true).as_bytes())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.stats.closed(CloseReason::WriteTimeout) == 0 {
        assert!(
            Instant::now() < deadline,
            "the stalled answer was not abandoned within 60 s"
        );
        // The main loop's turn: the lock is not held by the stalled answer.
        let t = Instant::now();
        drop(maps.lock().unwrap());
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = until_closed(&mut c, Duration::from_secs(30))
        .await
        .expect("closed within 30 s");
    assert!(out.starts_with(b"HTTP/1.1 200 OK"));
    assert!(
        out.len() < full,
        "{} bytes of {full}: the answer was cut off",
        out.len()
    );
}

/// 48 clients asking for the status over and over while a read of the maps
/// takes 100 ms: the main loop (here, a thread taking the maps' lock as it
/// does) waits for one read at most, not for every scrape in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_scrapes_leaves_the_maps_lock_to_the_main_loop() {
    const SCRAPERS: usize = 48;
    let maps = Arc::new(Mutex::new(()));
    let status: StatusFn = {
        let maps = maps.clone();
        Arc::new(move || {
            let _g = maps.lock().unwrap_or_else(|p| p.into_inner());
            std::thread::sleep(Duration::from_millis(100));
            Some(status_with_rules(1, 1))
        })
    };
    let server = start(state(status), Limits::default()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut scrapers = Vec::new();
    for _ in 0..SCRAPERS {
        let (addr, stop, served) = (server.addr, stop.clone(), served.clone());
        scrapers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if get(addr, "/api/status").await.starts_with("HTTP/1.1 200") {
                    served.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let main_loop = {
        let maps = maps.clone();
        std::thread::spawn(move || {
            let mut waits = Vec::new();
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(300));
                let t = Instant::now();
                drop(maps.lock().unwrap_or_else(|p| p.into_inner()));
                waits.push(t.elapsed());
            }
            waits
        })
    };
    let waits = tokio::task::spawn_blocking(move || main_loop.join().unwrap())
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for s in scrapers {
        tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .expect("scrapers stop")
            .unwrap();
    }
    let longest = waits.iter().max().copied().unwrap_or_default();
    // One read takes 100 ms; all 48 would take about 5 s.
    assert!(
        longest < Duration::from_millis(1500),
        "the main loop waited {longest:?} for the maps ({waits:?})"
    );
    assert!(served.load(Ordering::Relaxed) > 0);
}
