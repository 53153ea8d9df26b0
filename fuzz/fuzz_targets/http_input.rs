//! What the HTTP server reads from a request before any handler: the
//! `Host` header check (DNS rebinding), the token in a header or the query
//! string (percent-decoded), and the `/api/flows` parameters. Nothing may
//! panic; a token is accepted only when it is the configured one.
#![no_main]

use axum::http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sdm_agent::api::http::{authorized, loopback_host, FlowParams};

const TOKEN: &str = "s3cret%2Btoken";

fuzz_target!(|data: &[u8]| {
    // Fields separated by 0xff bytes: host, authorization, query, since,
    // direction, verdict, limit.
    let mut parts = data.split(|b| *b == 0xff);
    let mut next = || parts.next().unwrap_or_default();
    let (host, auth, query) = (next(), next(), next());
    let (since, direction, verdict, limit) = (next(), next(), next(), next());

    if let Ok(v) = HeaderValue::from_bytes(host) {
        let _ = loopback_host(Some(&v));
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(auth) {
        headers.insert(header::AUTHORIZATION, v);
    }
    let query = std::str::from_utf8(query).ok();
    if authorized(TOKEN, &headers, query) {
        let in_header = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(TOKEN));
        let in_query = query.is_some_and(|q| q.contains("token="));
        assert!(
            in_header || in_query,
            "authorized without the token: {headers:?} {query:?}"
        );
    }

    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    let params = FlowParams {
        since: text(since),
        direction: text(direction),
        verdict: text(verdict),
        limit: text(limit).and_then(|l| l.parse().ok()),
    };
    if let Ok(q) = params.query() {
        assert!(q.limit <= 10_000, "limit {} over the cap", q.limit);
    }
});
