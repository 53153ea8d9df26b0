//! Prometheus metrics, read from the kernel maps at scrape time (nothing
//! is copied or cached in between, so a scrape is always the truth), plus
//! the agent's own counters ([`AgentStats`]). `crate::api::http` serves them.

use std::collections::BTreeMap;
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
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
};

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
struct SdmCollector(Source);

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    // A single sample without labels: `name_total 3`, not `name_total{} 3`.
    if let [(labels, v)] = rows {
        if labels.is_empty() {
            return ConstCounter::new(*v).encode(family);
        }
    }
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
    if let [(labels, v)] = rows {
        if labels.is_empty() {
            return ConstGauge::new(*v).encode(family);
        }
    }
    for (labels, v) in rows {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ConstGauge::new(*v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SdmCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.0.snapshot() else {
            return Ok(());
        };
        encode_status(&s, encoder)
    }
}

/// The kernel's metrics for one snapshot of the maps. A free function so
/// that [`render_snapshot`] renders a given status through exactly the code
/// that serves `/metrics`.
fn encode_status(s: &Status, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    for r in &s.rules {
        for (dir, c) in [("egress", r.egress), ("ingress", r.ingress)] {
            let labels = vec![
                ("rule", r.name.clone()),
                ("direction", dir.to_string()),
                ("verdict", "allow".to_string()),
            ];
            packets.push((labels.clone(), c.packets));
            bytes.push((labels, c.bytes));
        }
    }
    counter_family(&mut encoder, "sdm_rule_packets", "Packets allowed by each rule, by direction (replies to an egress rule count under ingress).", &packets)?;
    counter_family(
        &mut encoder,
        "sdm_rule_bytes",
        "Bytes allowed by each rule, by direction.",
        &bytes,
    )?;
    // One labelled row per (direction, reason, mode), for packets and bytes.
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
    counter_family(&mut encoder, "sdm_denied_packets", "Packets denied (dropped in enforce mode, passed and counted in audit mode), by direction, reason and mode.", &denied)?;
    let denied_bytes = denied_rows(|d| d.bytes);
    counter_family(
        &mut encoder,
        "sdm_denied_bytes",
        "Bytes denied, by direction, reason and mode.",
        &denied_bytes,
    )?;
    let addrs: Vec<_> = s
        .dns
        .iter()
        .map(|h| {
            (
                vec![("hostname", h.hostname.clone())],
                h.addresses.len() as i64,
            )
        })
        .collect();
    gauge_family(&mut encoder, "sdm_hostname_addresses", "Addresses currently allowed for each hostname (latest answer plus those in their grace period).", &addrs)?;
    let failures: Vec<_> = s
        .dns
        .iter()
        .map(|h| (vec![("hostname", h.hostname.clone())], h.failures))
        .collect();
    counter_family(
        &mut encoder,
        "sdm_dns_failures",
        "Failed DNS lookups per hostname (the last good answer is kept).",
        &failures,
    )?;
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
    let answers: Vec<_> = s
        .dns_answers
        .iter()
        .map(|(result, n)| (vec![("result", result.clone())], *n))
        .collect();
    counter_family(
        &mut encoder,
        "sdm_dns_answers",
        "DNS answers from trusted resolvers handled by the kernel's parser, by result: learned (addresses allowed before the answer reached the application), not_allowed (a name no rule names), unasked (no matching query), malformed, error_rcode, no_address, truncated, not_resolver (port 53 traffic from a server that is not a trusted resolver).",
        &answers,
    )?;
    counter_family(
        &mut encoder,
        "sdm_dns_learn_table_full",
        "Addresses in allowed DNS answers the kernel could not learn because the learned-address table (65,536 per family) was full; nothing learned is evicted before it expires, so a connect to such an address is allowed only if the agent's own resolution has it.",
        &[(vec![], s.dns_learn_table_full)],
    )?;
    let queries: Vec<_> = s
        .dns_queries
        .iter()
        .map(|(verdict, n)| (vec![("verdict", verdict.clone())], *n))
        .collect();
    counter_family(
        &mut encoder,
        "sdm_dns_queries",
        "DNS queries to the trusted resolvers judged by the kernel under [dns] queries = \"policy\", by verdict: allowed (a policy hostname or a name under [dns] search), refused (dropped, the send failed with EPERM), would_refuse (audit mode: counted, passed).",
        &queries,
    )?;
    let mut per_host: BTreeMap<String, i64> = BTreeMap::new();
    for l in &s.learned {
        *per_host
            .entry(l.hostname.clone().unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
    }
    let learned: Vec<_> = per_host
        .into_iter()
        .map(|(h, n)| (vec![("hostname", h)], n))
        .collect();
    gauge_family(
        &mut encoder,
        "sdm_dns_learned_addresses",
        "Addresses learned in the kernel from DNS answers and not expired, per hostname.",
        &learned,
    )?;
    gauge_family(
        &mut encoder,
        "sdm_policy_generation",
        "Policy generation; increases with every applied change.",
        &[(vec![], i64::from(s.generation))],
    )?;
    Ok(())
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
        let family = encoder.encode_descriptor(
            "sdm_events_lost",
            "Deny events lost: the kernel's ring buffer was full, or the agent's flow pipeline was behind. The packet counters still count every packet.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(lost).encode(family)?;
        let stored =
            i64::try_from(self.stats.store.stored.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let family = encoder.encode_descriptor(
            "sdm_flows_stored",
            "Denied flows in the flow store (as of its last write).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(stored).encode(family)?;
        let family = encoder.encode_descriptor(
            "sdm_store_errors",
            "Failures to open, write or read the flow store; flows are kept in memory meanwhile and enforcement is unaffected.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.stats.store.errors.load(Ordering::Relaxed)).encode(family)?;
        let family = encoder.encode_descriptor(
            "sdm_store_dropped_flows",
            "Flows dropped while the flow store was unavailable for long (its queue of pending flows was full, the least recently seen went first); the audit log has them.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.stats.store.dropped.load(Ordering::Relaxed)).encode(family)?;
        let family = encoder.encode_descriptor(
            "sdm_flow_store_evictions",
            "Flows evicted from the flow store (the least recently seen first) to keep it within [state] max_bytes.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.stats.store.evictions.load(Ordering::Relaxed)).encode(family)?;
        let family = encoder.encode_descriptor(
            "sdm_flows_evicted",
            "Flows dropped from the agent's in-memory flow table to stay within its capacity (the least recently seen first); the store keeps them, and a flow seen again is logged again.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.stats.flows_evicted.load(Ordering::Relaxed)).encode(family)?;
        let family = encoder.encode_descriptor(
            "sdm_policy_apply_errors",
            "Failed attempts to apply the policy to the kernel maps (e.g. a DNS answer that does not fit); the previous policy stays in force and the attempt is retried.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.stats.policy_apply_errors.load(Ordering::Relaxed)).encode(family)?;
        encode_http(&self.stats.http, &mut encoder)
    }
}

/// The HTTP server's connection metrics.
fn encode_http(http: &HttpStats, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let open = i64::try_from(http.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
    let family = encoder.encode_descriptor(
        "sdm_http_connections",
        &format!("Connections open to the agent's HTTP server ([http] listen), at most {MAX_CONNECTIONS}."),
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(open).encode(family)?;
    let family = encoder.encode_descriptor(
        "sdm_http_connections_refused",
        &format!("Connections to the agent's HTTP server closed at once: it was at its cap of {MAX_CONNECTIONS} and every connection was busy answering a request."),
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(http.refused.load(Ordering::Relaxed)).encode(family)?;
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

/// The kernel's metrics only.
pub fn registry(source: Source) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(SdmCollector(source)));
    r
}

/// The kernel's metrics and the agent's (`sdm_events_lost_total`,
/// `sdm_flows_stored`, `sdm_store_errors_total`,
/// `sdm_store_dropped_flows_total`, `sdm_flow_store_evictions_total`,
/// `sdm_flows_evicted_total`,
/// `sdm_policy_apply_errors_total`, `sdm_http_connections`,
/// `sdm_http_connections_refused_total`,
/// `sdm_http_connections_closed_total`).
pub fn registry_with(source: Source, stats: AgentStats) -> Registry {
    let layout = source.layout.clone();
    let mut r = registry(source);
    r.register_collector(Box::new(AgentCollector { layout, stats }));
    r
}

/// A status given rather than read from the maps.
#[derive(Debug)]
struct FixedStatus(Status);

impl Collector for FixedStatus {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_status(&self.0, encoder)
    }
}

/// What `/metrics` serves when the maps hold `status`: the registry of
/// [`registry_with`] with the kernel read replaced by `status`, so the text
/// (family names, `_total` suffixes, labels) is exactly the served one. The
/// Grafana dashboard's check uses it to know which series exist without a
/// kernel. `layout` is read only for the kernel's lost-event counter (0 when
/// nothing is pinned there).
pub fn render_snapshot(status: Status, layout: Layout, stats: AgentStats) -> String {
    let mut r = Registry::default();
    r.register_collector(Box::new(FixedStatus(status)));
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
mod tests {
    use super::*;

    /// Families of one unlabelled sample print as `name value`: no empty
    /// braces, which some scrapers and `promtool` flag.
    #[test]
    fn unlabelled_kernel_samples_print_without_braces() {
        let mut s = Status::sample();
        s.generation = 9;
        s.dns_learn_table_full = 3;
        let layout = Layout {
            pin_root: "/nonexistent/sdm-test".into(),
            run_dir: "/nonexistent/sdm-run".into(),
        };
        let text = render_snapshot(s, layout, AgentStats::default());
        for want in [
            "\nsdm_policy_generation 9\n",
            "# TYPE sdm_dns_learn_table_full counter",
            "\nsdm_dns_learn_table_full_total 3\n",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        assert!(!text.contains("{}"), "empty braces in:\n{text}");
    }

    #[test]
    fn agent_metrics_have_help_and_values() {
        let stats = AgentStats::default();
        stats.events_lost.store(3, Ordering::Relaxed);
        stats.store.stored.store(42, Ordering::Relaxed);
        stats.store.errors.store(2, Ordering::Relaxed);
        stats.store.dropped.store(4, Ordering::Relaxed);
        stats.store.evictions.store(7, Ordering::Relaxed);
        stats.flows_evicted.store(5, Ordering::Relaxed);
        stats.policy_apply_errors.store(6, Ordering::Relaxed);
        stats.http.open.store(2, Ordering::Relaxed);
        stats.http.refused.store(8, Ordering::Relaxed);
        stats.http.closed[1].store(9, Ordering::Relaxed);
        let layout = Layout {
            pin_root: "/nonexistent/sdm-test".into(),
            run_dir: "/nonexistent/sdm-run".into(),
        };
        assert_eq!(
            kernel_event_stats(&layout),
            [0; sdm_common::EVENT_STAT_ENTRIES as usize]
        );
        let mut r = Registry::default();
        r.register_collector(Box::new(AgentCollector { layout, stats }));
        let text = render(&r);
        for want in [
            "# HELP sdm_events_lost Deny events lost",
            "# TYPE sdm_events_lost counter",
            "sdm_events_lost_total 3",
            "# HELP sdm_flows_stored ",
            "# TYPE sdm_flows_stored gauge",
            "sdm_flows_stored 42",
            "# HELP sdm_store_errors ",
            "sdm_store_errors_total 2",
            "# TYPE sdm_store_dropped_flows counter",
            "sdm_store_dropped_flows_total 4",
            "# TYPE sdm_flow_store_evictions counter",
            "sdm_flow_store_evictions_total 7",
            "# HELP sdm_flows_evicted ",
            "sdm_flows_evicted_total 5",
            "# HELP sdm_policy_apply_errors Failed attempts",
            "sdm_policy_apply_errors_total 6",
            "# HELP sdm_events Deny events by what",
            "sdm_events_total{result=\"throttled\"} 0",
            "# HELP sdm_http_connections Connections open",
            "# TYPE sdm_http_connections gauge",
            "sdm_http_connections 2",
            "# HELP sdm_http_connections_refused Connections to the agent's HTTP server closed at once",
            "sdm_http_connections_refused_total 8",
            "# TYPE sdm_http_connections_closed counter",
            "sdm_http_connections_closed_total{reason=\"head_timeout\"} 9",
            "sdm_http_connections_closed_total{reason=\"evicted\"} 0",
            "sdm_http_connections_closed_total{reason=\"write_timeout\"} 0",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
    }
}
