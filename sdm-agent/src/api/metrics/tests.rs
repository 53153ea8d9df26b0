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

mod series;

/// The XDP shield's counters: a family only while it is on, one series
/// per reason; status shows its interfaces, modes and drops.
#[test]
fn xdp_shield_counters_appear_only_while_it_is_on() {
    use crate::kernel::xdp::{AttachMode, Shielded};
    let layout = Layout {
        pin_root: "/nonexistent/sdm-test".into(),
        run_dir: "/nonexistent/sdm-run".into(),
    };
    let off = render_snapshot(Status::sample(), layout.clone(), AgentStats::default());
    assert!(!off.contains("sdm_xdp"), "{off}");
    let mut s = Status::sample();
    s.mode = "enforce".into();
    s.xdp = Some(crate::api::status::XdpStatus {
        interfaces: vec![
            Shielded {
                interface: "eth0".into(),
                mode: AttachMode::Native,
            },
            Shielded {
                interface: "ens5".into(),
                mode: AttachMode::Generic,
            },
        ],
        packets: [("passed", 100), ("unsolicited_tcp", 7), ("closed_udp", 0)]
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect(),
    });
    let human = crate::api::status::render(&s);
    assert!(
        human.contains(
            "xdp shield: eth0 (native), ens5 (generic); 100 passed, dropped: unsolicited_tcp 7\n"
        ),
        "{human}"
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["xdp"]["interfaces"][1]["mode"], "generic");
    assert_eq!(json["xdp"]["packets"]["unsolicited_tcp"], 7);
    let text = render_snapshot(s, layout, AgentStats::default());
    for want in [
        "# TYPE sdm_xdp_packets counter",
        "\nsdm_xdp_packets_total{reason=\"unsolicited_tcp\"} 7\n",
        "\nsdm_xdp_packets_total{reason=\"passed\"} 100\n",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}
