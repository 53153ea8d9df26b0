//! Prometheus metrics, read from the kernel maps at scrape time (nothing
//! is copied or cached in between, so a scrape is always the truth), plus
//! the agent's own counters ([`AgentStats`]). `crate::api::http` serves them.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::{
    api::http_server::{
        CloseReason, HttpStats, HEAD_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, RESPONSE_TIMEOUT,
        WRITE_STALL_TIMEOUT,
    },
    api::status::{self, Status},
    flows::store::StoreStats,
    kernel::dataplane::{Layout, Maps},
    policy::config::MetricsConfig,
};

mod series;

pub use series::{SERIES_PER_HOSTNAME, SERIES_PER_LISTED_ROW, SERIES_PER_RULE};

/// `[metrics]` as the collector reads it at every scrape: shared, so that
/// the running agent can change it without a new registry.
#[derive(Clone, Debug, Default)]
pub struct SeriesOptions {
    per_resource: Arc<AtomicBool>,
}

impl SeriesOptions {
    pub fn new(config: &MetricsConfig) -> Self {
        let options = Self::default();
        options.set(config);
        options
    }

    /// Takes `config` from the next scrape on.
    pub fn set(&self, config: &MetricsConfig) {
        self.per_resource
            .store(config.per_resource, Ordering::Relaxed);
    }

    pub fn per_resource(&self) -> bool {
        self.per_resource.load(Ordering::Relaxed)
    }
}

/// The maps and layout the collector reads.
#[derive(Clone)]
pub struct Source {
    pub layout: Layout,
    pub maps: Arc<Mutex<Maps>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("layout", &self.layout)
            .finish()
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
struct SdmCollector {
    source: Source,
    options: SeriesOptions,
}

/// Labelled rows of one family: label pairs and the value.
type Rows<V> = [(Vec<(&'static str, String)>, V)];

/// One family: a sample per row, with its labels. A family of a single
/// row without labels prints as `name_total 3` (`name 3` for a gauge), not
/// `name_total{} 3`: empty braces, which some scrapers and `promtool` flag.
fn family<V: Copy, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &Rows<V>,
    metric: fn(V) -> M,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    if let [(labels, v)] = rows {
        if labels.is_empty() {
            return metric(*v).encode(family);
        }
    }
    for (labels, v) in rows {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        metric(*v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &Rows<u64>,
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        name,
        help,
        MetricType::Counter,
        rows,
        ConstCounter::<u64>::new,
    )
}

fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &Rows<i64>,
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        name,
        help,
        MetricType::Gauge,
        rows,
        ConstGauge::<i64>::new,
    )
}

/// A counter family of one unlabelled sample.
fn counter_value(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    counter_family(encoder, name, help, &[(vec![], value)])
}

/// A gauge family of one unlabelled sample.
fn gauge_value(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    gauge_family(encoder, name, help, &[(vec![], value)])
}

impl Collector for SdmCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.source.snapshot() else {
            return Ok(());
        };
        encode_status(&s, self.options.per_resource(), encoder)
    }
}

/// The kernel's metrics for one snapshot of the maps. A free function so
/// that [`render_snapshot`] renders a given status through exactly the code
/// that serves `/metrics`.
fn encode_status(
    s: &Status,
    per_resource: bool,
    mut encoder: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let shape = series::Shape::new(s, per_resource);
    series::encode_rules(s, &shape, &mut encoder)?;
    encode_denied(s, &mut encoder)?;
    series::encode_hostnames(s, &shape, &mut encoder)?;
    series::encode_listed(s, &shape, &mut encoder)?;
    let modes: Vec<_> = ["audit", "enforce"]
        .iter()
        .map(|m| (vec![("mode", m.to_string())], i64::from(s.mode == *m)))
        .collect();
    gauge_family(
        &mut encoder,
        "sdm_mode",
        "1 for the mode the kernel programs are in.",
        &modes,
    )?;
    encode_dns_kernel(s, &mut encoder)?;
    encode_xdp(s, &mut encoder)?;
    series::encode_learned(s, &shape, &mut encoder)?;
    gauge_value(
        &mut encoder,
        "sdm_policy_generation",
        "Policy generation; increases with every applied change.",
        i64::from(s.generation),
    )
}

/// Packets and bytes denied, one labelled row per (direction, reason, mode).
fn encode_denied(s: &Status, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let denied_rows = |value: fn(&crate::api::status::DenyStatus) -> u64| -> Vec<_> {
        s.denied
            .iter()
            .map(|d| {
                (
                    vec![
                        ("direction", d.direction.clone()),
                        ("reason", d.reason.clone()),
                        ("mode", d.mode.clone()),
                    ],
                    value(d),
                )
            })
            .collect()
    };
    let denied = denied_rows(|d| d.packets);
    counter_family(encoder, "sdm_denied_packets", "Packets denied (dropped in enforce mode, passed and counted in audit mode), by direction, reason and mode.", &denied)?;
    let denied_bytes = denied_rows(|d| d.bytes);
    counter_family(
        encoder,
        "sdm_denied_bytes",
        "Bytes denied, by direction, reason and mode.",
        &denied_bytes,
    )
}

/// The XDP shield's packets by verdict, only while it is on (no series
/// otherwise). One program serves every interface, so no interface label.
fn encode_xdp(s: &Status, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let Some(x) = &s.xdp else {
        return Ok(());
    };
    let rows: Vec<_> = x
        .packets
        .iter()
        .map(|(reason, n)| (vec![("reason", reason.clone())], *n))
        .collect();
    counter_family(
        encoder,
        "sdm_xdp_packets",
        "Packets the XDP shield judged on [xdp] interfaces, by reason: passed, or why it was dropped (unsolicited_tcp, closed_udp, unsolicited_icmp, malformed, unknown_protocol; counted but passed in audit mode).",
        &rows,
    )
}

/// What the kernel's DNS path counted: answers parsed, addresses not
/// learned, queries judged.
fn encode_dns_kernel(s: &Status, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let answers: Vec<_> = s
        .dns_answers
        .iter()
        .map(|(result, n)| (vec![("result", result.clone())], *n))
        .collect();
    counter_family(
        encoder,
        "sdm_dns_answers",
        "DNS answers from trusted resolvers handled by the kernel's parser, by result: learned (addresses allowed before the answer reached the application), not_allowed (a name no rule names), unasked (no matching query), malformed, error_rcode, no_address, truncated, not_resolver (port 53 traffic from a server that is not a trusted resolver).",
        &answers,
    )?;
    counter_value(
        encoder,
        "sdm_dns_learn_table_full",
        "Addresses in allowed DNS answers the kernel could not learn because the learned-address table (65,536 per family) was full; nothing learned is evicted before it expires, so a connect to such an address is allowed only if the agent's own resolution has it.",
        s.dns_learn_table_full,
    )?;
    let queries: Vec<_> = s
        .dns_queries
        .iter()
        .map(|(verdict, n)| (vec![("verdict", verdict.clone())], *n))
        .collect();
    counter_family(
        encoder,
        "sdm_dns_queries",
        "DNS queries to the trusted resolvers judged by the kernel under [dns] queries = \"policy\", by verdict: allowed (a policy hostname or a name under [dns] search), refused (dropped, the send failed with EPERM), would_refuse (audit mode: counted, passed).",
        &queries,
    )
}

/// What only the running agent counts.
#[derive(Clone, Debug, Default)]
pub struct AgentStats {
    /// Deny events the agent dropped (its channel to the flow pipeline was
    /// full); the kernel's own losses are read from `SDM_EVENT_STAT`.
    pub events_lost: Arc<AtomicU64>,
    pub store: StoreStats,
    /// Failed attempts to apply the policy to the maps (a map full, say);
    /// the previous policy stays in force meanwhile.
    pub policy_apply_errors: Arc<AtomicU64>,
    /// Flows the in-memory flow table dropped to stay within its capacity.
    pub flows_evicted: Arc<AtomicU64>,
    /// The HTTP server's connections.
    pub http: HttpStats,
    /// Config reloads (SIGHUP) that succeeded: applied, or the file was
    /// the running config already.
    pub config_reloads: Arc<AtomicU64>,
    /// Config reloads refused (a bad file, a setting that needs a restart,
    /// a policy the maps cannot hold); the running config stays.
    pub config_reload_errors: Arc<AtomicU64>,
    /// DNS queries the agent's own resolver sent (A and AAAA counted
    /// apart), for `sdm_resolver_queries_total`: its rate is the load on
    /// the resolvers, at most `[dns] max_qps`.
    pub resolver_queries: Arc<AtomicU64>,
}

/// The kernel's event counters (`EVENT_STAT_*`), summed over the CPUs;
/// zeros when the counters are not pinned (yet).
pub fn kernel_event_stats(layout: &Layout) -> [u64; sdm_common::EVENT_STAT_ENTRIES as usize] {
    use aya::maps::{Map, MapData, PerCpuArray};
    let mut out = [0; sdm_common::EVENT_STAT_ENTRIES as usize];
    let Ok(data) = MapData::from_pin(layout.map_pin(sdm_common::MAP_EVENT_STATS)) else {
        return out;
    };
    let Ok(stats) = PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(data)) else {
        return out;
    };
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = stats
            .get(&(i as u32), 0)
            .map(|v| v.iter().fold(0u64, |a, b| a.saturating_add(*b)))
            .unwrap_or(0);
    }
    out
}

#[derive(Debug)]
struct AgentCollector {
    layout: Layout,
    stats: AgentStats,
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kernel = kernel_event_stats(&self.layout);
        let lost = kernel[sdm_common::EventStat::Lost as usize]
            .saturating_add(self.stats.events_lost.load(Ordering::Relaxed));
        let rows: Vec<_> = sdm_common::EventStat::ALL
            .map(sdm_common::EventStat::name)
            .iter()
            .zip(kernel)
            .map(|(name, n)| (vec![("result", name.to_string())], n))
            .collect();
        counter_family(
            &mut encoder,
            "sdm_events",
            "Deny events by what the kernel did with them: sent to the agent, lost (ring buffer full), suppressed (the flow was reported less than a second ago) or throttled (the CPU's budget of events per second was spent; the flow is reported later).",
            &rows,
        )?;
        counter_value(
            &mut encoder,
            "sdm_events_lost",
            "Deny events lost: the kernel's ring buffer was full, or the agent's flow pipeline was behind. The packet counters still count every packet.",
            lost,
        )?;
        let stored =
            i64::try_from(self.stats.store.stored.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        gauge_value(
            &mut encoder,
            "sdm_flows_stored",
            "Denied flows in the flow store (as of its last write).",
            stored,
        )?;
        let store = &self.stats.store;
        for (name, help, value) in [
            (
                "sdm_store_errors",
                "Failures to open, write or read the flow store; flows are kept in memory meanwhile and enforcement is unaffected.",
                &store.errors,
            ),
            (
                "sdm_store_dropped_flows",
                "Flows dropped while the flow store was unavailable for long (its queue of pending flows was full, the least recently seen went first); the audit log has them.",
                &store.dropped,
            ),
            (
                "sdm_flow_store_evictions",
                "Flows evicted from the flow store (the least recently seen first) to keep it within [state] max_bytes.",
                &store.evictions,
            ),
            (
                "sdm_flows_evicted",
                "Flows dropped from the agent's in-memory flow table to stay within its capacity (the least recently seen first); the store keeps them, and a flow seen again is logged again.",
                &self.stats.flows_evicted,
            ),
            (
                "sdm_policy_apply_errors",
                "Failed attempts to apply the policy to the kernel maps (e.g. a DNS answer that does not fit); the previous policy stays in force and the attempt is retried.",
                &self.stats.policy_apply_errors,
            ),
            (
                "sdm_config_reloads",
                "Config reloads (SIGHUP, systemctl reload) that succeeded: the file's config is the running one.",
                &self.stats.config_reloads,
            ),
            (
                "sdm_config_reload_errors",
                "Config reloads refused (a bad file, a setting that needs a restart, a policy the maps cannot hold); the running config and policy stay in force.",
                &self.stats.config_reload_errors,
            ),
            (
                "sdm_resolver_queries",
                "DNS queries the agent's own resolver sent (A and AAAA counted apart): its rate is the agent's load on the resolvers, at most [dns] max_qps.",
                &self.stats.resolver_queries,
            ),
        ] {
            counter_value(&mut encoder, name, help, value.load(Ordering::Relaxed))?;
        }
        encode_http(&self.stats.http, &mut encoder)
    }
}

/// The HTTP server's connection metrics.
fn encode_http(http: &HttpStats, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let open = i64::try_from(http.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
    gauge_value(
        encoder,
        "sdm_http_connections",
        &format!("Connections open to the agent's HTTP server ([http] listen), at most {MAX_CONNECTIONS}."),
        open,
    )?;
    counter_value(
        encoder,
        "sdm_http_connections_refused",
        &format!("Connections to the agent's HTTP server closed at once: it was at its cap of {MAX_CONNECTIONS} and every connection was busy answering a request."),
        http.refused.load(Ordering::Relaxed),
    )?;
    let rows: Vec<_> = CloseReason::ALL
        .iter()
        .map(|r| (vec![("reason", r.name().to_string())], http.closed(*r)))
        .collect();
    counter_family(
        encoder,
        "sdm_http_connections_closed",
        &format!(
            "Connections the agent's HTTP server closed, by reason: evicted (at the cap of {MAX_CONNECTIONS}, the connection stalled longest made room for a new one), head_timeout (no complete request head within {}s), idle_timeout (kept alive without a request for {}s), write_timeout (the client took no byte of a response for {}s, or not all of it within {}s).",
            HEAD_TIMEOUT.as_secs(),
            IDLE_TIMEOUT.as_secs(),
            WRITE_STALL_TIMEOUT.as_secs(),
            RESPONSE_TIMEOUT.as_secs()
        ),
        &rows,
    )
}

/// The kernel's metrics only, shaped by `options`.
pub fn registry(source: Source, options: SeriesOptions) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(SdmCollector { source, options }));
    r
}

/// The kernel's metrics and the agent's (`sdm_events_lost_total`,
/// `sdm_flows_stored`, `sdm_store_errors_total`,
/// `sdm_store_dropped_flows_total`, `sdm_flow_store_evictions_total`,
/// `sdm_flows_evicted_total`,
/// `sdm_policy_apply_errors_total`, `sdm_http_connections`,
/// `sdm_http_connections_refused_total`,
/// `sdm_http_connections_closed_total`).
pub fn registry_with(source: Source, stats: AgentStats, options: SeriesOptions) -> Registry {
    let layout = source.layout.clone();
    let mut r = registry(source, options);
    r.register_collector(Box::new(AgentCollector { layout, stats }));
    r
}

/// A status given rather than read from the maps.
#[derive(Debug)]
struct FixedStatus {
    status: Status,
    per_resource: bool,
}

impl Collector for FixedStatus {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_status(&self.status, self.per_resource, encoder)
    }
}

/// What `/metrics` serves, with the default `[metrics]`, when the maps hold
/// `status`: the registry of [`registry_with`] with the kernel read
/// replaced by `status`, so the text (family names, `_total` suffixes,
/// labels) is exactly the served one. The Grafana dashboard's check uses it
/// to know which series exist without a kernel. `layout` is read only for
/// the kernel's lost-event counter (0 when nothing is pinned there).
pub fn render_snapshot(status: Status, layout: Layout, stats: AgentStats) -> String {
    render_snapshot_with(status, layout, stats, &MetricsConfig::default())
}

/// [`render_snapshot`] under the given `[metrics]`.
pub fn render_snapshot_with(
    status: Status,
    layout: Layout,
    stats: AgentStats,
    config: &MetricsConfig,
) -> String {
    let mut r = Registry::default();
    r.register_collector(Box::new(FixedStatus {
        status,
        per_resource: config.per_resource,
    }));
    r.register_collector(Box::new(AgentCollector { layout, stats }));
    render(&r)
}

/// Renders the metrics in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

#[cfg(test)]
mod tests;
