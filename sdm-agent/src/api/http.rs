//! The agent's HTTP server on `[http] listen`: `/metrics`, `/healthz`, the
//! dashboard (`/`, one self-contained page embedded in the binary) and the
//! JSON API behind it: `/api/status`, `/api/rules`, `/api/dns`,
//! `/api/learned`,
//! `/api/flows?since=1h&direction=egress&verdict=dropped&limit=500`.
//!
//! The long lists (rules, hostnames, learned addresses: 10,000 each on a
//! large gateway) are paged, filtered and sorted here, not in the client:
//! `/api/rules?offset=0&limit=100&q=db&sort=hits&order=desc` answers
//! `{"total":..,"matched":..,"offset":..,"limit":..,"sort":..,"order":..,
//! "q":..,"rules":[...]}`; `/api/status` carries the first
//! [`DEFAULT_PAGE_LIMIT`] of each, with `rules_page`, `dns_page` and
//! `learned_page` saying of what, and takes the same parameters prefixed
//! (`rules_q`, `dns_offset`, ...). A parameter that is not valid, or not
//! known, is a 400 whose message names it.
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
//! (`read_kernel`).

use std::{io, sync::Arc};

use axum::{middleware, routing::get, Router};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::{
    api::http_server::{self, HttpStats, Limits},
    api::metrics,
    api::status::Status,
    flows::store::StoreHandle,
    flows::SharedTable,
};

mod auth;
#[doc(hidden)]
pub mod fixture;
mod routes;
#[cfg(test)]
mod tests;

pub use crate::api::status::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
pub use auth::{authorized, loopback_host};
pub use routes::{FlowParams, FlowsResponse};

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
    /// One read of the kernel maps at a time (see `read_kernel`).
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

/// The routes, with the token check.
pub fn router(state: HttpState) -> Router {
    let st = Arc::new(state);
    Router::new()
        .route("/", get(routes::dashboard))
        .route("/metrics", get(routes::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/status", get(routes::api_status))
        .route("/api/rules", get(routes::api_rules))
        .route("/api/dns", get(routes::api_dns))
        .route("/api/learned", get(routes::api_learned))
        .route("/api/flows", get(routes::api_flows))
        .layer(middleware::from_fn_with_state(st.clone(), auth::auth))
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
