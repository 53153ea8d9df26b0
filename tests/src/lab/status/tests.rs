use super::*;

#[test]
fn metric_lines_are_matched_by_labels() {
    let text = "# HELP x\n\
                sdm_rule_packets_total{rule=\"gateway/egress/app\",direction=\"egress\",verdict=\"allow\"} 12\n\
                sdm_rule_packets_total{rule=\"gateway/egress/app\",direction=\"ingress\",verdict=\"allow\"} 10\n\
                sdm_mode{mode=\"enforce\"} 1\n\
                sdm_up 1\n";
    assert_eq!(
        metric(
            text,
            "sdm_rule_packets_total",
            &[("rule", "gateway/egress/app"), ("direction", "egress")]
        ),
        Some(12.0)
    );
    assert_eq!(
        metric(
            text,
            "sdm_rule_packets_total",
            &[("rule", "gateway/egress/app")]
        ),
        Some(22.0)
    );
    assert_eq!(metric(text, "sdm_mode", &[("mode", "enforce")]), Some(1.0));
    assert_eq!(metric(text, "sdm_mode", &[("mode", "audit")]), None);
    assert_eq!(metric(text, "sdm_up", &[]), Some(1.0));
    assert_eq!(metric(text, "sdm_rule", &[]), None);
}
