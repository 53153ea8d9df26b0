//! The long lists over HTTP: a gateway with 10,000 rules and hostnames.

use serde_json::Value;

use super::*;

fn large(token: Option<&str>) -> Router {
    let big = Arc::new(Status::sample_large(10_000));
    let mut st = state(token, None, true);
    st.status = Arc::new(move || Some((*big).clone()));
    router(st)
}

async fn get_json(app: &Router, uri: &str) -> (StatusCode, Value, usize) {
    let (s, _, body) = get(app, uri, None).await;
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {body}"));
    (s, v, body.len())
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect()
}

#[tokio::test]
async fn status_carries_a_summary_and_the_first_page() {
    let app = large(None);
    let (s, v, bytes) = get_json(&app, "/api/status").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["rules"].as_array().map(Vec::len),
        Some(DEFAULT_PAGE_LIMIT)
    );
    assert_eq!(v["dns"].as_array().map(Vec::len), Some(DEFAULT_PAGE_LIMIT));
    assert_eq!(v["rules_active"], 10_000);
    assert_eq!(v["rules_page"]["total"], 10_000);
    assert_eq!(v["rules_page"]["limit"], 100);
    assert_eq!(v["dns_page"]["total"], 10_000);
    assert_eq!(v["dns_page"]["sort"], "failures");
    // 10,000 rules in full are megabytes; the summary is not.
    assert!(bytes < 100_000, "/api/status is {bytes} bytes");

    // The same parameters as the lists, prefixed.
    let (_, v, _) = get_json(
        &app,
        "/api/status?rules_q=db-0999&rules_sort=name&rules_order=desc&rules_limit=3&dns_limit=0",
    )
    .await;
    assert_eq!(
        names(&v["rules"]),
        [
            "resource/db-09999",
            "resource/db-09998",
            "resource/db-09997"
        ]
    );
    assert_eq!(v["rules_page"]["matched"], 10);
    assert_eq!(v["dns"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["dns_page"]["matched"], 10_000);
}

#[tokio::test]
async fn rules_page_filter_and_sort_on_the_server() {
    let app = large(None);
    let (s, v, _) = get_json(&app, "/api/rules?offset=9999&limit=5").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(names(&v["rules"]), ["resource/db-10000"], "{v}");
    assert_eq!(
        (v["total"].as_u64(), v["matched"].as_u64()),
        (Some(10_000), Some(10_000))
    );
    assert_eq!(
        (v["offset"].as_u64(), v["limit"].as_u64()),
        (Some(9999), Some(5))
    );

    let (_, v, _) = get_json(&app, "/api/rules?q=db-0004%20corp&sort=hits").await;
    assert_eq!(v["matched"], 10);
    assert_eq!(
        (v["sort"].as_str(), v["order"].as_str()),
        (Some("hits"), Some("desc"))
    );
    let hits: Vec<u64> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["egress"]["packets"].as_u64().unwrap() + r["ingress"]["packets"].as_u64().unwrap()
        })
        .collect();
    assert!(hits.windows(2).all(|w| w[0] >= w[1]), "{hits:?}");

    let (_, v, _) = get_json(&app, "/api/dns?q=db-00200").await;
    assert_eq!(v["dns"][0]["hostname"], "db-00200.corp.example");
    assert_eq!(v["dns"][0]["failures"], 3);
    let (_, v, _) = get_json(&app, "/api/learned").await;
    assert_eq!(
        (v["total"].as_u64(), v["learned"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn bad_parameters_are_a_400_that_names_them() {
    let app = large(None);
    for (uri, param) in [
        ("/api/rules?limit=x", "limit"),
        ("/api/rules?limit=5000", "limit"),
        ("/api/rules?offset=-3", "offset"),
        ("/api/rules?sort=size", "sort"),
        ("/api/rules?order=up", "order"),
        ("/api/rules?sortby=hits", "sortby"),
        ("/api/rules?limit=1&limit=2", "limit"),
        ("/api/dns?sort=hits", "sort"),
        ("/api/learned?limit=y", "limit"),
        ("/api/status?rules_sort=size", "rules_sort"),
        ("/api/status?dns_limit=2000", "dns_limit"),
        // The lists' own names are prefixed on /api/status.
        ("/api/status?limit=5", "limit"),
    ] {
        let (s, v, _) = get_json(&app, uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.starts_with(&format!("{param}:")), "{uri}: {msg}");
    }
    // The token as a parameter is not a list's.
    let locked = large(Some("s3cret"));
    let (s, _, body) = get(&locked, "/api/rules?token=s3cret&limit=1", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}
