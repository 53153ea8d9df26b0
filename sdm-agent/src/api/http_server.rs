//! The connections of the HTTP server on `[http] listen`, held against a
//! local process (or anything that reaches the port) that would keep them
//! open forever or crowd the agent out of file descriptors and memory:
//!
//! - a request head must arrive in full within [`HEAD_TIMEOUT`] of the
//!   connection (on a kept-alive connection, of its first byte), and be at
//!   most [`MAX_HEAD_BYTES`] (else 431 and the connection is closed);
//! - a kept-alive connection idle for [`IDLE_TIMEOUT`] is closed;
//! - a response the client does not take (no byte accepted for
//!   [`WRITE_STALL_TIMEOUT`], or not all of it within [`RESPONSE_TIMEOUT`])
//!   is abandoned and its connection closed, so its buffers are freed;
//! - at most [`MAX_CONNECTIONS`] are open. At the cap a new connection takes
//!   the place of the one stalled longest (waiting for a head, idle, or
//!   blocked writing): a flood of idle connections cannot lock a scraper
//!   out. When every connection is busy answering, the new one is closed
//!   at once.
//!
//! Every connection closed by these rules is counted
//! (`sdm_http_connections_closed_total{reason}`,
//! `sdm_http_connections_refused_total`); reaching the cap is logged at most
//! once a minute while it lasts.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::Router;
use http_body_util::BodyExt as _;
use hyper::server::conn::http1;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

/// Connections open at once. Prometheus keeps one per scrape target and a
/// dashboard tab one or two; 64 leave room for many of both while the
/// agent's descriptors and the buffers of its answers stay bounded.
pub const MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this. A scraper on the same host or
/// network sends it at once; 10 s allow for a congested network, not for a
/// client trickling bytes.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A kept-alive connection is closed after this long without a request.
/// Clients reconnect transparently (Prometheus retries a GET on a closed
/// idle connection); a longer wait only serves a client holding slots.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A response the client accepts no byte of for this long is abandoned.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A response not written in full this long after its request arrived is
/// abandoned: a reader taking a byte every few seconds would otherwise
/// hold its buffers for days. The largest answer (`/api/flows` at its limit,
/// a few MiB) takes well under a second on any network a scraper uses.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest request head (request line and headers). The agent's
/// requests are a GET with a token at most; hyper's default is ~400 KiB.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The server's limits; [`Limits::default`] is what the agent uses (tests
/// shorten the timeouts).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_stall_timeout: Duration,
    pub response_timeout: Duration,
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            head_timeout: HEAD_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            write_stall_timeout: WRITE_STALL_TIMEOUT,
            response_timeout: RESPONSE_TIMEOUT,
            max_head_bytes: MAX_HEAD_BYTES,
        }
    }
}

impl Limits {
    /// How often a connection checks its deadlines: a fraction of the
    /// shortest, so a deadline is kept to within an eighth of it.
    fn tick(&self) -> Duration {
        [
            self.head_timeout,
            self.idle_timeout,
            self.write_stall_timeout,
            self.response_timeout,
        ]
        .into_iter()
        .min()
        .unwrap_or(HEAD_TIMEOUT)
        .div_f64(8.0)
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// Why the agent closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// At the cap, it was the connection stalled longest.
    Evicted,
    HeadTimeout,
    IdleTimeout,
    /// A response stalled or took too long to write.
    WriteTimeout,
}

impl CloseReason {
    pub const ALL: [CloseReason; 4] = [
        CloseReason::Evicted,
        CloseReason::HeadTimeout,
        CloseReason::IdleTimeout,
        CloseReason::WriteTimeout,
    ];

    /// The `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Evicted => "evicted",
            CloseReason::HeadTimeout => "head_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::WriteTimeout => "write_timeout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The server's counters, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct HttpStats {
    /// Connections open now.
    pub open: Arc<AtomicU64>,
    /// New connections closed at once: at the cap, with none to evict.
    pub refused: Arc<AtomicU64>,
    /// Connections closed by the agent, by [`CloseReason`] (its order).
    pub closed: Arc<[AtomicU64; 4]>,
}

impl HttpStats {
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()].load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head; a new connection starts here.
    Head,
    /// A request is being answered.
    Busy,
    /// Kept alive between requests.
    Idle,
}

#[derive(Debug)]
struct Activity {
    phase: Phase,
    since: Instant,
    in_flight: usize,
    /// Since when the socket has refused the bytes the agent has to write.
    write_blocked: Option<Instant>,
}

/// One connection's state, shared by its reader/writer, its requests, its
/// task and the accept loop (which may evict it).
#[derive(Debug)]
struct Conn {
    activity: Mutex<Activity>,
    evicting: AtomicBool,
    evict: Notify,
}

impl Conn {
    fn new(now: Instant) -> Self {
        Self {
            activity: Mutex::new(Activity {
                phase: Phase::Head,
                since: now,
                in_flight: 0,
                write_blocked: None,
            }),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    fn activity(&self) -> MutexGuard<'_, Activity> {
        // The state is plain data: a panic elsewhere leaves it usable.
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_read(&self) {
        let mut a = self.activity();
        if a.phase == Phase::Idle {
            a.phase = Phase::Head;
            a.since = Instant::now();
        }
    }

    fn on_write(&self, blocked: bool) {
        let mut a = self.activity();
        a.write_blocked = if blocked {
            Some(a.write_blocked.unwrap_or_else(Instant::now))
        } else {
            None
        };
    }

    fn begin_request(self: &Arc<Self>) -> RequestGuard {
        let mut a = self.activity();
        a.in_flight += 1;
        if a.phase != Phase::Busy {
            a.phase = Phase::Busy;
            a.since = Instant::now();
        }
        RequestGuard(self.clone())
    }

    /// Since when it has made no progress a client is waiting for: `None`
    /// while it is answering a request and its socket takes the answer.
    fn stalled_since(&self) -> Option<Instant> {
        let a = self.activity();
        match a.phase {
            Phase::Head | Phase::Idle => Some(a.since),
            Phase::Busy => a.write_blocked,
        }
    }

    fn expired(&self, limits: &Limits, now: Instant) -> Option<CloseReason> {
        let a = self.activity();
        if a.write_blocked
            .is_some_and(|t| now.duration_since(t) >= limits.write_stall_timeout)
        {
            return Some(CloseReason::WriteTimeout);
        }
        let age = now.duration_since(a.since);
        match a.phase {
            Phase::Head if age >= limits.head_timeout => Some(CloseReason::HeadTimeout),
            Phase::Idle if age >= limits.idle_timeout => Some(CloseReason::IdleTimeout),
            Phase::Busy if age >= limits.response_timeout => Some(CloseReason::WriteTimeout),
            _ => None,
        }
    }
}

/// Held by a request until hyper has taken the last byte of its response.
struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut a = self.0.activity();
        a.in_flight = a.in_flight.saturating_sub(1);
        if a.in_flight == 0 {
            a.phase = Phase::Idle;
            a.since = Instant::now();
        }
    }
}

/// The socket, reporting reads and blocked writes to its [`Conn`].
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl Watched {
    fn note_write<T>(&self, r: &Poll<io::Result<T>>) {
        self.conn.on_write(r.is_pending());
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_flush(cx);
        self.note_write(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Logs at most once a minute, with how many were not logged.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed)` when a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[derive(Debug, Default)]
struct Conns {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    cap_log: Throttle,
}

/// Removes a connection from the table when its task ends, however it ends.
struct Registered {
    id: u64,
    conns: Arc<Mutex<Conns>>,
    stats: HttpStats,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut c = lock(&self.conns);
        c.open.remove(&self.id);
        self.stats
            .open
            .store(c.open.len() as u64, Ordering::Relaxed);
    }
}

fn lock(conns: &Mutex<Conns>) -> MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(|p| p.into_inner())
}

/// Admits a new connection, evicting the connection stalled longest at the
/// cap; `None` when every connection is busy answering.
fn admit(
    conns: &Arc<Mutex<Conns>>,
    limits: &Limits,
    stats: &HttpStats,
) -> Option<(Arc<Conn>, Registered)> {
    let mut c = lock(conns);
    let live = || {
        c.open
            .values()
            .filter(|x| !x.evicting.load(Ordering::Relaxed))
    };
    if live().count() >= limits.max_connections {
        let victim = live()
            .filter_map(|x| x.stalled_since().map(|t| (t, x)))
            .min_by_key(|(t, _)| *t)
            .map(|(_, x)| x.clone());
        let evicted = victim.is_some();
        if let Some(suppressed) = c.cap_log.allow() {
            tracing::warn!(
                max = limits.max_connections,
                suppressed,
                evicted,
                "the HTTP server is at its connection cap: the connection stalled longest is closed for a new one, or the new one is refused if all are busy (sdm_http_connections_closed_total, sdm_http_connections_refused_total)"
            );
        }
        match victim {
            Some(v) => {
                v.evicting.store(true, Ordering::Relaxed);
                v.evict.notify_one();
            }
            None => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
    }
    let id = c.next_id;
    c.next_id += 1;
    let conn = Arc::new(Conn::new(Instant::now()));
    c.open.insert(id, conn.clone());
    stats.open.store(c.open.len() as u64, Ordering::Relaxed);
    Some((
        conn,
        Registered {
            id,
            conns: conns.clone(),
            stats: stats.clone(),
        },
    ))
}

/// Serves one connection until it ends or breaks a limit.
async fn run_connection(
    conn: Arc<Conn>,
    stream: TcpStream,
    router: Router,
    limits: Limits,
) -> Option<CloseReason> {
    let tower = TowerToHyperService::new(router);
    let per_request = conn.clone();
    let service = hyper::service::service_fn(move |req| {
        let guard = per_request.begin_request();
        let answer = hyper::service::Service::call(&tower, req);
        async move {
            let resp: axum::response::Response = answer.await?;
            // The guard lives in the body, which hyper drops once it has
            // taken the last byte: until then the connection is busy.
            Ok::<_, Infallible>(resp.map(|body| {
                body.map_frame(move |frame| {
                    let _busy = &guard;
                    frame
                })
            }))
        }
    });
    let io = TokioIo::new(Watched {
        stream,
        conn: conn.clone(),
    });
    let served = http1::Builder::new()
        .max_header_size(limits.max_head_bytes)
        .serve_connection(io, service);
    tokio::pin!(served);
    let mut tick = tokio::time::interval(limits.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return None;
            }
            () = conn.evict.notified() => return Some(CloseReason::Evicted),
            _ = tick.tick() => {
                if let Some(reason) = conn.expired(&limits, Instant::now()) {
                    return Some(reason);
                }
            }
        }
    }
}

/// Accept errors about one connection (it went away before it was
/// accepted) are not the listener's.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves `router` on `listener` within `limits` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stats: HttpStats,
) -> io::Result<()> {
    let conns = Arc::new(Mutex::new(Conns::default()));
    let mut accept_log = Throttle::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors, say: wait for some to be freed rather
                // than spin on the error.
                if let Some(suppressed) = accept_log.allow() {
                    tracing::error!(error = %e, suppressed, "accepting an HTTP connection failed; retrying in a second");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some((conn, registered)) = admit(&conns, &limits, &stats) else {
            // Dropped: closed at once.
            continue;
        };
        let router = router.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let _registered = registered;
            if let Some(reason) = run_connection(conn, stream, router, limits).await {
                stats.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(reason = reason.name(), "closed an HTTP connection");
            }
        });
    }
}

#[cfg(test)]
mod tests;
