//! Prometheus metrics, read from the kernel maps at scrape time (nothing
//! is copied or cached in between, so a scrape is always the truth), and
//! the HTTP endpoint that serves them.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::{
    dataplane::{Layout, Maps},
    status::{self, Status},
};

/// The maps and layout the collector reads.
#[derive(Clone)]
pub struct Source {
    pub layout: Layout,
    pub maps: Arc<Mutex<Maps>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("layout", &self.layout).finish()
    }
}

impl Source {
    pub fn snapshot(&self) -> Option<Status> {
        let mut maps = self.maps.lock().ok()?;
        match status::snapshot(&self.layout, &mut maps) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "reading the maps for metrics failed");
                None
            }
        }
    }
}

#[derive(Debug)]
struct SdmCollector(Source);

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ConstCounter::new(*v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ConstGauge::new(*v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SdmCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.0.snapshot() else {
            return Ok(());
        };
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        for r in &s.rules {
            for (dir, c) in [("egress", r.egress), ("ingress", r.ingress)] {
                let labels = vec![("rule", r.name.clone()), ("direction", dir.to_string()), ("verdict", "allow".to_string())];
                packets.push((labels.clone(), c.packets));
                bytes.push((labels, c.bytes));
            }
        }
        counter_family(&mut encoder, "sdm_rule_packets", "Packets allowed by each rule, by direction (replies to an egress rule count under ingress).", &packets)?;
        counter_family(&mut encoder, "sdm_rule_bytes", "Bytes allowed by each rule, by direction.", &bytes)?;
        let denied: Vec<_> = s
            .denied
            .iter()
            .map(|d| (vec![("direction", d.direction.clone()), ("reason", d.reason.clone()), ("mode", d.mode.clone())], d.packets))
            .collect();
        counter_family(&mut encoder, "sdm_denied_packets", "Packets denied (dropped in enforce mode, passed and counted in audit mode), by direction, reason and mode.", &denied)?;
        let denied_bytes: Vec<_> = s
            .denied
            .iter()
            .map(|d| (vec![("direction", d.direction.clone()), ("reason", d.reason.clone()), ("mode", d.mode.clone())], d.bytes))
            .collect();
        counter_family(&mut encoder, "sdm_denied_bytes", "Bytes denied, by direction, reason and mode.", &denied_bytes)?;
        let addrs: Vec<_> = s
            .dns
            .iter()
            .map(|h| (vec![("hostname", h.hostname.clone())], h.addresses.len() as i64))
            .collect();
        gauge_family(&mut encoder, "sdm_hostname_addresses", "Addresses currently allowed for each hostname (latest answer plus those in their grace period).", &addrs)?;
        let failures: Vec<_> = s
            .dns
            .iter()
            .map(|h| (vec![("hostname", h.hostname.clone())], h.failures))
            .collect();
        counter_family(&mut encoder, "sdm_dns_failures", "Failed DNS lookups per hostname (the last good answer is kept).", &failures)?;
        let modes: Vec<_> = ["audit", "enforce"]
            .iter()
            .map(|m| (vec![("mode", m.to_string())], i64::from(s.mode == *m)))
            .collect();
        gauge_family(&mut encoder, "sdm_mode", "1 for the mode the kernel programs are in.", &modes)?;
        gauge_family(&mut encoder, "sdm_policy_generation", "Policy generation; increases with every applied change.", &[(vec![], i64::from(s.generation))])?;
        Ok(())
    }
}

pub fn registry(source: Source) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(SdmCollector(source)));
    r
}

/// Renders the metrics in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// Serves `/metrics` (and `/healthz`) on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) -> std::io::Result<()> {
    use axum::{http::header, routing::get, Router};
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let body = tokio::task::spawn_blocking(move || render(&registry)).await.unwrap_or_default();
                    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).await
}
