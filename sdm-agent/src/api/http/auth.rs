//! Who may read the API: the token (`Authorization: Bearer` or
//! `?token=`), compared in constant time, and without a token only
//! loopback `Host` names (against DNS rebinding).

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::HttpState;

/// Compares in time that depends only on the lengths.
pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
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
pub(super) fn percent_decode(s: &str) -> Vec<u8> {
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

/// The middleware in front of every route: the checks above, then the
/// headers every answer carries.
pub(super) async fn auth(State(st): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
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
