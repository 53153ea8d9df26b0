#![allow(clippy::too_many_lines, reason = "a test reads as one scenario")]

use std::{net::IpAddr, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderMap, HeaderValue, StatusCode},
};

use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use super::{
    auth::{ct_eq, percent_decode},
    *,
};
use crate::{
    flows::store::{Store, StoreOptions, StoreStats},
    flows::{now_ms, Flow, FlowKey, FlowTable},
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
        remote_port: None,
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
        "/api/dns",
        "/api/learned",
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
    assert_eq!(v["rules_active"], 1);
    assert_eq!(v["rules_page"]["total"], 1);
    assert_eq!(v["dns_page"]["total"], 1);
    let (s, _, body) = get(&app, "/api/rules", None).await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rules"][0]["name"], "gateway/egress/app");
    assert_eq!(v["rules"][0]["egress"]["packets"], 5);
    assert_eq!(
        (v["total"].as_u64(), v["matched"].as_u64()),
        (Some(1), Some(1))
    );

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

mod paging;
