use super::*;
use crate::api::status::Status;

fn params<'a>(pairs: &'a [(&'a str, &'a str)]) -> PageParams<'a> {
    PageParams::from_fn("", |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v))
}

fn rules(pairs: &[(&str, &str)]) -> (Vec<RuleStatus>, PageInfo) {
    let q = PageQuery::parse::<RuleStatus>("", &params(pairs)).unwrap();
    q.apply(Status::sample_large(10_000).rules)
}

fn names(rows: &[RuleStatus]) -> Vec<&str> {
    rows.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn the_default_page_is_the_first_hundred_in_the_policys_order() {
    let (page, info) = rules(&[]);
    assert_eq!(page.len(), DEFAULT_PAGE_LIMIT);
    assert_eq!(page[0].name, "resource/db-00001");
    assert_eq!(page[99].name, "resource/db-00100");
    assert_eq!(
        info,
        PageInfo {
            total: 10_000,
            matched: 10_000,
            offset: 0,
            limit: Some(100),
            sort: "policy".into(),
            order: Order::Asc,
            q: String::new(),
        }
    );
}

#[test]
fn paging_reaches_the_last_rule() {
    let (page, info) = rules(&[("offset", "9990"), ("limit", "1000")]);
    assert_eq!(page.len(), 10, "what is left after the offset");
    assert_eq!(page[9].name, "resource/db-10000");
    assert_eq!((info.offset, info.matched), (9990, 10_000));
    let (page, info) = rules(&[("offset", "20000")]);
    assert!(page.is_empty());
    assert_eq!(info.matched, 10_000);
    let (page, _) = rules(&[("limit", "0")]);
    assert!(page.is_empty(), "limit 0: only the counts");
}

#[test]
fn the_filter_matches_every_word_in_name_targets_or_addresses() {
    let (page, info) = rules(&[("q", "DB-0999")]);
    assert_eq!(info.matched, 10, "db-09990 to db-09999: {:?}", names(&page));
    assert!(page.iter().all(|r| r.name.contains("db-0999")));
    // By the address the maps hold (rule 258 is 10.0.1.2).
    let (page, _) = rules(&[("q", "10.0.1.2")]);
    assert!(
        names(&page).contains(&"resource/db-00258"),
        "{:?}",
        names(&page)
    );
    // Two words: both must match, in any field.
    let (page, info) = rules(&[("q", "corp.example db-00042")]);
    assert_eq!(names(&page), ["resource/db-00042"], "{info:?}");
    let (page, info) = rules(&[("q", "nothing-like-this")]);
    assert!(page.is_empty());
    assert_eq!((info.total, info.matched), (10_000, 0));
}

#[test]
fn sorting_by_a_count_puts_the_largest_first_and_keeps_ties_in_policy_order() {
    let (page, info) = rules(&[("sort", "hits"), ("limit", "1000")]);
    assert_eq!(info.order, Order::Desc, "counts: largest first");
    let hits = |r: &RuleStatus| r.egress.packets + r.ingress.packets;
    assert!(page.windows(2).all(|w| hits(&w[0]) >= hits(&w[1])));
    // Egress packets are i*7 % 1000: 999 (i = 857, 1857, ...) is the
    // largest; ties in the policy's order.
    assert_eq!(
        names(&page[..3]),
        [
            "resource/db-00857",
            "resource/db-01857",
            "resource/db-02857"
        ]
    );
    let (asc, _) = rules(&[("sort", "hits"), ("order", "asc"), ("limit", "2")]);
    assert_eq!(names(&asc), ["resource/db-01000", "resource/db-02000"]);
    let (by_name, _) = rules(&[("sort", "name"), ("order", "desc"), ("limit", "1")]);
    assert_eq!(by_name[0].name, "resource/db-10000");
}

#[test]
fn hostnames_that_fail_come_first() {
    let q = PageQuery::parse::<HostReport>("", &params(&[("limit", "3")])).unwrap();
    let (page, info) = q.apply(Status::sample_large(1000).dns);
    assert_eq!((info.sort.as_str(), info.order), ("failures", Order::Desc));
    let hosts: Vec<&str> = page.iter().map(|h| h.hostname.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "db-00100.corp.example",
            "db-00200.corp.example",
            "db-00300.corp.example"
        ],
        "ties by hostname"
    );
    let q = PageQuery::parse::<HostReport>("", &params(&[("q", "timed out")])).unwrap();
    assert_eq!(q.apply(Status::sample_large(1000).dns).1.matched, 10);
}

#[test]
fn a_status_pages_its_three_lists() {
    let mut s = Status::sample_large(10_000);
    let pages = crate::api::status::StatusPages {
        rules: PageQuery::parse::<RuleStatus>("rules_", &PageParams::default()).unwrap(),
        dns: PageQuery::parse::<HostReport>("dns_", &params(&[("limit", "5")])).unwrap(),
        learned: PageQuery::all::<LearnedStatus>(),
    };
    s.paginate(&pages);
    assert_eq!((s.rules.len(), s.dns.len()), (100, 5));
    assert_eq!(s.rules_active, 10_000);
    assert_eq!(s.rules_page.as_ref().map(|p| p.total), Some(10_000));
    assert_eq!(s.dns_page.as_ref().map(|p| p.total), Some(10_000));
    let json = serde_json::to_string(&s).unwrap();
    assert!(
        json.len() < 100_000,
        "the summary with a page of each: {} bytes",
        json.len()
    );
}

#[test]
fn bad_parameters_are_named() {
    let err = |pairs: &[(&str, &str)]| {
        PageQuery::parse::<RuleStatus>(
            "rules_",
            &PageParams::from_fn("rules_", |k| {
                pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
            }),
        )
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        err(&[("rules_limit", "x")]),
        "rules_limit: \"x\" is not a whole number"
    );
    assert_eq!(
        err(&[("rules_offset", "-1")]),
        "rules_offset: \"-1\" is not a whole number"
    );
    assert!(err(&[("rules_limit", "1001")]).starts_with("rules_limit: 1001 is more than 1000"));
    assert_eq!(
        err(&[("rules_sort", "size")]),
        "rules_sort: \"size\" is not one of policy, name, hits, bytes, egress, ingress, direction"
    );
    assert_eq!(
        err(&[("rules_order", "up")]),
        "rules_order: \"up\" is not one of asc, desc"
    );
    let long = "x".repeat(MAX_QUERY_LEN + 1);
    assert!(err(&[("rules_q", &long)]).starts_with("rules_q: longer than"));
    // Empty values are the defaults (an empty search box).
    assert!(PageQuery::parse::<RuleStatus>("", &params(&[("q", ""), ("sort", "")])).is_ok());
}
