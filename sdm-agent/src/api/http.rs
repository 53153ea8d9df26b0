//! The agent's HTTP server on `[http] listen`: `/metrics`, `/healthz`, the
//! dashboard (`/`, one self-contained page embedded in the binary) and the
//! JSON API behind it: `/api/status`, `/api/rules`,
//! `/api/flows?since=1h&direction=egress&verdict=dropped&limit=500`.
//!
//! Read-only: GET routes only, nothing changes the mode or the policy.
//! With `[http] token` set, every request must carry
//! `Authorization: Bearer <token>` or `?token=<token>`, else 401. Without
//! a token (allowed on loopback binds only) a request whose `Host` is not a
//! loopback name is refused (403): a web page the operator visits could
//! otherwise rebind its own DNS name to 127.0.0.1 and read the API.
//!
//! Connections are served within the timeouts and cap of
//! [`crate::api::http_server`]; reads of the kernel maps run one at a time
//! ([`read_kernel`]).

use std::{io, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Query, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::{
    api::http_server::{self, HttpStats, Limits},
    api::metrics,
    api::status::Status,
    flows::store::StoreHandle,
    flows::{Flow, FlowQuery, SharedTable},
    policy::config::parse_duration,
};

/// The dashboard page.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// Default and largest `limit` of `/api/flows`.
pub const DEFAULT_FLOW_LIMIT: usize = 1000;
pub const MAX_FLOW_LIMIT: usize = 10_000;

/// Reads the kernel state (`status::snapshot`); `None` when it cannot.
pub type StatusFn = Arc<dyn Fn() -> Option<Status> + Send + Sync>;

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub registry: Arc<Registry>,
    pub status: StatusFn,
    /// The in-memory flows: the fallback when the store is unavailable.
    pub flows: SharedTable,
    pub store: Option<StoreHandle>,
    /// `[http] token`.
    pub token: Option<String>,
    /// The server's connection counters.
    pub stats: HttpStats,
    /// One read of the kernel maps at a time (see [`read_kernel`]).
    pub kernel_reads: Arc<Semaphore>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("store", &self.store)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl HttpState {
    /// The agent's state: status from the pinned maps through `source`.
    pub fn new(
        registry: Arc<Registry>,
        source: metrics::Source,
        flows: SharedTable,
        store: Option<StoreHandle>,
        token: Option<String>,
        stats: HttpStats,
    ) -> Self {
        Self {
            registry,
            status: Arc::new(move || source.snapshot()),
            flows,
            store,
            token,
            stats,
            kernel_reads: Arc::new(Semaphore::new(1)),
        }
    }
}

/// Runs `read` (a read of the kernel maps: `/metrics`, a status snapshot)
/// on a blocking thread, one at a time. The maps' lock is the main loop's
/// too (it applies the policy and expires learned addresses under it, on a
/// runtime thread), and every read waiting for the lock is one more turn
/// ahead of it: a flood of scrapes kept the main loop waiting for all of
/// them. Waiting here takes no thread and no lock, so the main loop waits
/// for one read at most. The permit goes with the blocking read, so a
/// client that hangs up does not let the next read start beside it.
async fn read_kernel<T: Send + 'static>(
    st: &HttpState,
    read: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let permit = st.kernel_reads.clone().acquire_owned().await.ok()?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        read()
    })
    .await
    .ok()
}

/// Compares in time that depends only on the lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes (a `+` stays a `+`: tokens have no spaces).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The value of a query parameter, decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<Vec<u8>> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

/// Whether a request carries the token (header or `?token=`).
pub fn authorized(token: &str, headers: &HeaderMap, query: Option<&str>) -> bool {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().as_bytes().to_vec())
        });
    let given = from_header.or_else(|| query_param(query, "token"));
    given.is_some_and(|g| ct_eq(&g, token.as_bytes()))
}

/// Whether a `Host` header names this machine's loopback: `localhost`,
/// 127.0.0.0/8 or `[::1]`, with or without a port. No header (HTTP/1.0) is
/// fine: browsers always send one.
pub fn loopback_host(host: Option<&HeaderValue>) -> bool {
    let Some(host) = host else { return true };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

async fn auth(State(st): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    if st.token.is_none() && !loopback_host(req.headers().get(header::HOST)) {
        return (
            StatusCode::FORBIDDEN,
            "forbidden: without [http] token only loopback Host names are served (http://127.0.0.1:<port>/); this guards against DNS rebinding\n",
        )
            .into_response();
    }
    if let Some(token) = &st.token {
        if !authorized(token, req.headers(), req.uri().query()) {
            let mut r = (
                StatusCode::UNAUTHORIZED,
                "unauthorized: send Authorization: Bearer <[http] token>, or ?token=<token>\n",
            )
                .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sdm-agent\""),
            );
            return r;
        }
    }
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    json(status, &ApiError { error: msg.into() })
}

async fn metrics_handler(State(st): State<Arc<HttpState>>) -> Response {
    let registry = st.registry.clone();
    let body = read_kernel(&st, move || metrics::render(&registry))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn dashboard() -> Response {
    let mut r = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Body::from(DASHBOARD),
    )
        .into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

async fn snapshot(st: &HttpState) -> Option<Status> {
    let f = st.status.clone();
    read_kernel(st, move || f()).await.flatten()
}

const NO_STATUS: &str =
    "cannot read the kernel state (are the programs attached and the pins readable?)";

async fn api_status(State(st): State<Arc<HttpState>>) -> Response {
    // The processes' capabilities come from /proc, not the maps: read
    // outside the one-at-a-time kernel read.
    let full = match snapshot(&st).await {
        Some(mut s) => tokio::task::spawn_blocking(move || {
            crate::api::status::add_bypass_capable(&mut s);
            s
        })
        .await
        .ok(),
        None => None,
    };
    match full {
        Some(s) => json(StatusCode::OK, &s),
        None => error(StatusCode::SERVICE_UNAVAILABLE, NO_STATUS),
    }
}

async fn api_rules(State(st): State<Arc<HttpState>>) -> Response {
    match snapshot(&st).await {
        Some(s) => json(StatusCode::OK, &s.rules),
        None => error(StatusCode::SERVICE_UNAVAILABLE, NO_STATUS),
    }
}

/// `/api/flows` parameters.
#[derive(Debug, Default, Deserialize)]
pub struct FlowParams {
    /// A duration back from now: `15m`, `1h`, `7d`. Default `1h`.
    pub since: Option<String>,
    /// `egress` | `ingress`.
    pub direction: Option<String>,
    /// `dropped` | `audit`.
    pub verdict: Option<String>,
    pub limit: Option<usize>,
}

impl FlowParams {
    /// Checks the parameters into a query.
    pub fn query(&self) -> Result<FlowQuery, String> {
        let window = match self.since.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => parse_duration(s).map_err(|e| format!("since: {e}"))?,
            None => Duration::from_secs(3600),
        };
        let mut q = FlowQuery::within(window);
        let pick =
            |v: &Option<String>, key: &str, allowed: &[&str]| -> Result<Option<String>, String> {
                match v.as_deref().filter(|s| !s.is_empty()) {
                    None => Ok(None),
                    Some(s) if allowed.contains(&s) => Ok(Some(s.to_string())),
                    Some(s) => Err(format!("{key}: {s:?} is not one of {}", allowed.join(", "))),
                }
            };
        q.direction = pick(&self.direction, "direction", &["egress", "ingress"])?;
        q.verdict = pick(&self.verdict, "verdict", &["dropped", "audit"])?;
        q.limit = self.limit.unwrap_or(DEFAULT_FLOW_LIMIT).min(MAX_FLOW_LIMIT);
        Ok(q)
    }
}

/// The `/api/flows` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct FlowsResponse {
    /// "store", or "memory" when the store could not be read (then only the
    /// flows seen since the agent started, at most its table's size).
    pub source: String,
    pub store_error: Option<String>,
    pub flows: Vec<Flow>,
}

async fn api_flows(
    State(st): State<Arc<HttpState>>,
    params: Result<Query<FlowParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let q = match params.query() {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let from_store = match st.store.clone() {
        Some(store) => {
            let q = q.clone();
            match tokio::task::spawn_blocking(move || store.query(&q)).await {
                Ok(Ok(flows)) => Ok(flows),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        None => Err("no flow store".to_string()),
    };
    let resp = match from_store {
        Ok(flows) => FlowsResponse {
            source: "store".into(),
            store_error: None,
            flows,
        },
        Err(e) => {
            let flows = st.flows.lock().map(|t| t.query(&q)).unwrap_or_default();
            FlowsResponse {
                source: "memory".into(),
                store_error: Some(e),
                flows,
            }
        }
    };
    json(StatusCode::OK, &resp)
}

/// The routes, with the token check.
pub fn router(state: HttpState) -> Router {
    let st = Arc::new(state);
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/status", get(api_status))
        .route("/api/rules", get(api_rules))
        .route("/api/flows", get(api_flows))
        .layer(middleware::from_fn_with_state(st.clone(), auth))
        .with_state(st)
}

/// Serves until the task is dropped, within the default [`Limits`].
pub async fn serve(listener: tokio::net::TcpListener, state: HttpState) -> io::Result<()> {
    serve_with(listener, state, Limits::default()).await
}

/// Serves until the task is dropped, within `limits`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: HttpState,
    limits: Limits,
) -> io::Result<()> {
    let stats = state.stats.clone();
    http_server::serve(listener, router(state), limits, stats).await
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::{
        flows::store::{Store, StoreOptions, StoreStats},
        flows::{now_ms, FlowKey, FlowTable},
    };

    fn flow(remote: &str, comm: &str, verdict: &str, t: u64) -> Flow {
        Flow {
            key: FlowKey {
                direction: "egress".into(),
                proto: "tcp".into(),
                remote: remote.parse::<IpAddr>().unwrap(),
                port: 443,
                comm: comm.into(),
                verdict: verdict.into(),
            },
            hostname: Some("api.example.com".into()),
            reason: "no_rule".into(),
            local: None,
            pid: 77,
            uid: 0,
            cgroup_id: 1,
            first_seen: t,
            last_seen: t,
            count: 1,
        }
    }

    fn state(token: Option<&str>, store: Option<StoreHandle>, status: bool) -> HttpState {
        let table = FlowTable::shared(100);
        table
            .lock()
            .unwrap()
            .record(&flow("192.0.2.99", "memflow", "dropped", now_ms()));
        HttpState {
            registry: Arc::new(Registry::default()),
            status: if status {
                Arc::new(|| Some(Status::sample()))
            } else {
                Arc::new(|| None)
            },
            flows: table,
            store,
            token: token.map(String::from),
            stats: HttpStats::default(),
            kernel_reads: Arc::new(Semaphore::new(1)),
        }
    }

    async fn get(app: &Router, uri: &str, auth: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::builder().uri(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn token_comparison() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"", b"a"));
        assert!(ct_eq(b"", b""));
        let mut h = HeaderMap::new();
        assert!(!authorized("s3cret", &h, None));
        assert!(authorized("s3cret", &h, Some("a=1&token=s3cret")));
        assert!(authorized("a/b+c=", &h, Some("token=a%2Fb+c%3D")));
        assert!(!authorized("s3cret", &h, Some("token=s3cre")));
        assert!(!authorized("s3cret", &h, Some("xtoken=s3cret")));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(authorized("s3cret", &h, None));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  s3cret "),
        );
        assert!(authorized("s3cret", &h, None));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic s3cret"),
        );
        assert!(!authorized("s3cret", &h, None));
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
    }

    #[tokio::test]
    async fn token_is_checked_on_every_route() {
        let app = router(state(Some("s3cret"), None, true));
        for uri in [
            "/",
            "/metrics",
            "/healthz",
            "/api/status",
            "/api/rules",
            "/api/flows",
        ] {
            let (s, h, _) = get(&app, uri, None).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri}");
            assert!(h.contains_key(header::WWW_AUTHENTICATE));
            assert_eq!(
                get(&app, uri, Some("Bearer wrong")).await.0,
                StatusCode::UNAUTHORIZED,
                "{uri}"
            );
            assert_eq!(
                get(&app, &format!("{uri}?token=wrong"), None).await.0,
                StatusCode::UNAUTHORIZED,
                "{uri}"
            );
            assert_eq!(
                get(&app, uri, Some("Bearer s3cret")).await.0,
                StatusCode::OK,
                "{uri}"
            );
            assert_eq!(
                get(&app, &format!("{uri}?token=s3cret"), None).await.0,
                StatusCode::OK,
                "{uri}"
            );
        }
        // No token configured: open.
        let open = router(state(None, None, true));
        assert_eq!(get(&open, "/api/status", None).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn tokenless_server_serves_loopback_host_names_only() {
        let with_host = |app: &Router, host: &'static str| {
            let req = Request::builder()
                .uri("/api/status")
                .header(header::HOST, host)
                .body(Body::empty())
                .unwrap();
            let app = app.clone();
            async move { app.oneshot(req).await.unwrap().status() }
        };
        let open = router(state(None, None, true));
        for host in [
            "127.0.0.1:9850",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9850",
            "127.1.2.3",
        ] {
            assert_eq!(with_host(&open, host).await, StatusCode::OK, "{host}");
        }
        for host in [
            "evil.example:9850",
            "10.0.0.1",
            "[2001:db8::1]:80",
            "127.0.0.1.evil.example",
        ] {
            assert_eq!(
                with_host(&open, host).await,
                StatusCode::FORBIDDEN,
                "{host}"
            );
        }
        // With a token the token is the guard, whatever the name.
        let locked = router(state(Some("s3cret"), None, true));
        let req = Request::builder()
            .uri("/api/status")
            .header(header::HOST, "gw1.example")
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .body(Body::empty())
            .unwrap();
        assert_eq!(locked.oneshot(req).await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn read_only() {
        let app = router(state(None, None, true));
        for uri in ["/", "/api/status", "/api/flows"] {
            let req = Request::builder()
                .method("POST")
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{uri}");
        }
        assert_eq!(get(&app, "/api/mode", None).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn status_rules_and_page() {
        let app = router(state(None, None, true));
        let (s, h, body) = get(&app, "/api/status", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["mode"], "audit");
        assert_eq!(v["cgroup"], "/sys/fs/cgroup/test");
        assert_eq!(v["rules"][0]["addresses"][0], "192.0.2.10");
        let (s, _, body) = get(&app, "/api/rules", None).await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v[0]["name"], "gateway/egress/app");
        assert_eq!(v[0]["egress"]["packets"], 5);

        let down = router(state(None, None, false));
        let (s, _, body) = get(&down, "/api/status", None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("error"), "{body}");
        assert_eq!(
            get(&down, "/api/rules", None).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );

        let (s, h, body) = get(&app, "/", None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert!(
            body.contains("id=\"flows-table\"") && body.contains("id=\"chart\""),
            "page"
        );
        // Self-contained: nothing fetched from elsewhere.
        for bad in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "url(",
            "@import",
            "<link",
            "fetch('http",
            "fetch(\"http",
        ] {
            assert!(!body.contains(bad), "{bad} in the dashboard");
        }
        let (s, h, _) = get(&app, "/metrics", None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"));
        assert_eq!(get(&app, "/healthz", None).await.2, "ok\n");
    }

    #[tokio::test]
    async fn flows_from_the_store_or_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        let now = now_ms();
        {
            let mut s = Store::open(&path).unwrap();
            s.upsert([
                &flow("192.0.2.1", "curl", "dropped", now - 1000),
                &flow("192.0.2.2", "wget", "audit", now - 2000),
                &flow("192.0.2.3", "old", "dropped", now - 2 * 3600 * 1000),
            ])
            .unwrap();
        }
        let handle = StoreHandle::spawn(
            StoreOptions::new(&path, Duration::from_secs(86400 * 7)),
            StoreStats::default(),
        );
        let app = router(state(None, Some(handle), true));
        let (s, _, body) = get(&app, "/api/flows", None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let r: FlowsResponse = serde_json::from_str(&body).unwrap();
        assert_eq!(r.source, "store");
        let comms: Vec<&str> = r.flows.iter().map(|f| f.key.comm.as_str()).collect();
        assert_eq!(comms, vec!["curl", "wget"], "1h by default, newest first");
        let (_, _, body) = get(
            &app,
            "/api/flows?since=3h&verdict=dropped&direction=egress",
            None,
        )
        .await;
        let r: FlowsResponse = serde_json::from_str(&body).unwrap();
        let comms: Vec<&str> = r.flows.iter().map(|f| f.key.comm.as_str()).collect();
        assert_eq!(comms, vec!["curl", "old"]);
        let (_, _, body) = get(&app, "/api/flows?since=3h&limit=1", None).await;
        assert_eq!(
            serde_json::from_str::<FlowsResponse>(&body)
                .unwrap()
                .flows
                .len(),
            1
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let f = &v["flows"][0];
        for key in [
            "direction",
            "proto",
            "remote",
            "port",
            "comm",
            "verdict",
            "hostname",
            "pid",
            "count",
            "first_seen",
            "last_seen",
            "reason",
        ] {
            assert!(!f[key].is_null(), "{key} missing in {f}");
        }
        for bad in [
            "since=forever",
            "direction=out",
            "verdict=allowed",
            "limit=x",
        ] {
            let (s, _, body) = get(&app, &format!("/api/flows?{bad}"), None).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }

        // The store is gone: the in-memory table answers.
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        std::fs::remove_file(dir.path().join("flows.db-wal")).ok();
        std::fs::remove_file(dir.path().join("flows.db-shm")).ok();
        let broken = StoreHandle::spawn(
            StoreOptions::new(dir.path().join("missing/flows.db"), Duration::from_secs(1)),
            StoreStats::default(),
        );
        std::fs::write(dir.path().join("missing"), "").unwrap();
        for store in [None, Some(broken)] {
            let app = router(state(None, store, true));
            let (s, _, body) = get(&app, "/api/flows", None).await;
            assert_eq!(s, StatusCode::OK);
            let r: FlowsResponse = serde_json::from_str(&body).unwrap();
            assert_eq!(r.source, "memory");
            assert!(r.store_error.is_some());
            assert_eq!(r.flows.len(), 1);
            assert_eq!(r.flows[0].key.comm, "memflow");
        }
    }

    #[tokio::test]
    async fn serves_on_a_real_listener() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, state(Some("tok"), None, true)));
        for (req, want) in [
            ("GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nConnection: close\r\n\r\n", "200 OK"),
            ("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "401 Unauthorized"),
        ] {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(10), c.read_to_string(&mut out)).await.unwrap().unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {want}")), "{out}");
        }
        server.abort();
    }
}
