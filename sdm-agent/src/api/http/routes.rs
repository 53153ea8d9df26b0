//! The routes' handlers: `/metrics`, the dashboard, and the JSON API.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use super::{read_kernel, HttpState, DASHBOARD, DEFAULT_FLOW_LIMIT, MAX_FLOW_LIMIT};
use crate::{
    api::metrics as prom,
    api::status::{
        LearnedStatus, PageError, PageParams, PageQuery, Pageable, RuleStatus, Status, StatusPages,
        PARAMS,
    },
    dns::resolver::HostReport,
    flows::{Flow, FlowQuery},
    policy::config::parse_duration,
};

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

pub(super) async fn metrics(State(st): State<Arc<HttpState>>) -> Response {
    let registry = st.registry.clone();
    let body = read_kernel(&st, move || prom::render(&registry))
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

pub(super) async fn dashboard() -> Response {
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

/// The query parameters, by name; a name given twice is refused (which
/// one would count?).
type Params = std::collections::BTreeMap<String, String>;

type RawQuery = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

/// The parameters, checked against the lists' names; `Err`: the 400's
/// message.
fn params(raw: RawQuery, lists: &[&str]) -> Result<Params, String> {
    let Query(pairs) = raw.map_err(|e| e.body_text())?;
    let known: Vec<String> = lists
        .iter()
        .flat_map(|prefix| PARAMS.iter().map(move |p| format!("{prefix}{p}")))
        .collect();
    let mut out = Params::new();
    for (k, v) in pairs {
        // The token may come as a parameter (see `auth`).
        if k == "token" {
            continue;
        }
        if !known.contains(&k) {
            let e = PageError::Unknown {
                param: k,
                known: known.join(", "),
            };
            return Err(e.to_string());
        }
        if out.contains_key(&k) {
            return Err(format!("{k}: given more than once"));
        }
        out.insert(k, v);
    }
    Ok(out)
}

fn page_query<T: Pageable>(p: &Params, prefix: &str) -> Result<PageQuery, String> {
    let raw = PageParams::from_fn(prefix, |k| p.get(k).map(String::as_str));
    PageQuery::parse::<T>(prefix, &raw).map_err(|e| e.to_string())
}

/// `/api/status`: the summary, with a page of each long list: `rules_*`,
/// `dns_*` and `learned_*` parameters (`rules_q=db&rules_sort=hits`) page
/// them as `/api/rules`, `/api/dns` and `/api/learned` do.
pub(super) async fn api_status(State(st): State<Arc<HttpState>>, raw: RawQuery) -> Response {
    let pages = match status_pages(raw) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    // The processes' capabilities come from /proc, not the maps: read
    // outside the one-at-a-time kernel read.
    let full = match snapshot(&st).await {
        Some(mut s) => tokio::task::spawn_blocking(move || {
            crate::api::status::add_bypass_capable(&mut s);
            s.paginate(&pages);
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

fn status_pages(raw: RawQuery) -> Result<StatusPages, String> {
    let p = params(raw, &["rules_", "dns_", "learned_"])?;
    Ok(StatusPages {
        rules: page_query::<RuleStatus>(&p, "rules_")?,
        dns: page_query::<HostReport>(&p, "dns_")?,
        learned: page_query::<LearnedStatus>(&p, "learned_")?,
    })
}

/// One list's page as `{"total":..,"matched":..,..,"<name>":[...]}`.
async fn list_page<T: Pageable + Serialize + Send + 'static>(
    st: &HttpState,
    raw: RawQuery,
    name: &str,
    take: fn(Status) -> Vec<T>,
) -> Response {
    let query = match params(raw, &[""]).and_then(|p| page_query::<T>(&p, "")) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some(s) = snapshot(st).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, NO_STATUS);
    };
    let (rows, info) = query.apply(take(s));
    let mut v = match serde_json::to_value(&info) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match serde_json::to_value(&rows) {
        Ok(rows) => v[name] = rows,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    json(StatusCode::OK, &v)
}

pub(super) async fn api_rules(State(st): State<Arc<HttpState>>, raw: RawQuery) -> Response {
    list_page(&st, raw, "rules", |s| s.rules).await
}

pub(super) async fn api_dns(State(st): State<Arc<HttpState>>, raw: RawQuery) -> Response {
    list_page(&st, raw, "dns", |s| s.dns).await
}

pub(super) async fn api_learned(State(st): State<Arc<HttpState>>, raw: RawQuery) -> Response {
    list_page(&st, raw, "learned", |s| s.learned).await
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

pub(super) async fn api_flows(
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
