//! What the agent serves on `http.listen`: the HTTP API and dashboard
//! ([`http`]) behind a hardened server ([`http_server`]), Prometheus
//! metrics ([`metrics`]), and the status snapshot both read ([`status`]).

pub mod http;
pub mod http_server;
pub mod metrics;
pub mod status;
