#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom"
)]

use super::*;

mod responder;
use responder::{address_of, Responder};

/// The resolver tests below assume these numbers.
#[test]
fn default_timing_is_the_config_defaults() {
    assert_eq!(
        DnsTiming::default(),
        DnsTiming {
            ttl_min: Duration::from_secs(30),
            ttl_max: Duration::from_secs(3600),
            grace: Duration::from_secs(600),
            max_qps: 10_000,
            concurrency: 256,
        }
    );
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `next_refresh` is in the tenth after `ttl`.
fn assert_refresh_after(h: &HostState, t0: Instant, ttl: u64) {
    let after = h.next_refresh - t0;
    let ttl = Duration::from_secs(ttl);
    assert!(
        after >= ttl && after <= ttl + ttl / 10,
        "refresh {after:?} after the answer, for a TTL of {ttl:?}"
    );
}

#[test]
fn ttl_is_clamped_to_floor_and_ceiling() {
    let t = DnsTiming::default();
    let t0 = Instant::now();
    let mut h = HostState::new(t0);
    h.on_answer(t0, &[ip("192.0.2.1")], Duration::from_secs(5), &t);
    assert_refresh_after(&h, t0, 30);
    h.on_answer(t0, &[ip("192.0.2.1")], Duration::from_secs(86_400), &t);
    assert_refresh_after(&h, t0, 3600);
    h.on_answer(t0, &[ip("192.0.2.1")], Duration::from_secs(300), &t);
    assert_refresh_after(&h, t0, 300);
}

/// Issue 14: 10,000 names answered in the same second with the same TTL
/// were all due again in the same second. Now they fall due over the
/// tenth after the TTL, about evenly.
#[test]
fn names_answered_together_are_refreshed_spread_out() {
    let t = DnsTiming::default();
    let t0 = Instant::now();
    let mut per_second = [0u32; 31];
    for _ in 0..10_000 {
        let mut h = HostState::new(t0);
        h.on_answer(t0, &[ip("192.0.2.1")], Duration::from_secs(300), &t);
        per_second[(h.next_refresh - t0).as_secs() as usize - 300] += 1;
        h.on_failure(t0, "timeout".into(), &t);
        assert_refresh_after(&h, t0, 30);
    }
    assert!(
        per_second[..30].iter().all(|n| (150..700).contains(n)),
        "refreshes per second from 300 s on: {per_second:?}"
    );
}

#[test]
fn addresses_leaving_the_answer_stay_for_the_grace_period() {
    let t = DnsTiming::default();
    let t0 = Instant::now();
    let mut h = HostState::new(t0);
    assert!(h.on_answer(
        t0,
        &[ip("192.0.2.1"), ip("2001:db8::1")],
        Duration::from_secs(60),
        &t
    ));
    let t1 = t0 + Duration::from_secs(60);
    assert!(h.on_answer(t1, &[ip("192.0.2.2")], Duration::from_secs(60), &t));
    assert_eq!(
        h.addresses(),
        &[ip("192.0.2.1"), ip("192.0.2.2"), ip("2001:db8::1")]
    );
    assert_eq!(h.next_expiry(&t), Some(t1 + t.grace));
    // The same answer again: nothing changes, the grace still runs from t1.
    let t2 = t1 + Duration::from_secs(60);
    assert!(!h.on_answer(t2, &[ip("192.0.2.2")], Duration::from_secs(60), &t));
    assert_eq!(h.next_expiry(&t), Some(t1 + t.grace));
    assert!(
        !h.expire(t1 + t.grace - Duration::from_secs(1), &t),
        "still in grace"
    );
    assert!(h.expire(t1 + t.grace, &t), "grace over");
    assert_eq!(h.addresses(), &[ip("192.0.2.2")]);
    assert_eq!(h.next_expiry(&t), None);
}

#[test]
fn an_address_that_comes_back_is_current_again() {
    let t = DnsTiming::default();
    let t0 = Instant::now();
    let mut h = HostState::new(t0);
    h.on_answer(t0, &[ip("192.0.2.1")], Duration::from_secs(60), &t);
    h.on_answer(
        t0 + Duration::from_secs(60),
        &[ip("192.0.2.2")],
        Duration::from_secs(60),
        &t,
    );
    h.on_answer(
        t0 + Duration::from_secs(120),
        &[ip("192.0.2.1")],
        Duration::from_secs(60),
        &t,
    );
    // .1 is back in the answer: it must not expire with .2's grace.
    h.expire(t0 + Duration::from_secs(120) + t.grace, &t);
    assert_eq!(h.addresses(), &[ip("192.0.2.1")]);
}

#[test]
fn a_zero_grace_drops_a_left_address_at_once() {
    let t = DnsTiming {
        grace: Duration::ZERO,
        ..DnsTiming::default()
    };
    let t0 = Instant::now();
    let mut h = HostState::new(t0);
    h.on_answer(t0, &[ip("192.0.2.1")], Duration::from_secs(60), &t);
    assert!(h.on_answer(t0, &[ip("192.0.2.2")], Duration::from_secs(60), &t));
    assert_eq!(h.addresses(), &[ip("192.0.2.2")]);
}

#[test]
fn failures_keep_the_last_good_answer_and_are_counted() {
    let t = DnsTiming::default();
    let t0 = Instant::now();
    let mut h = HostState::new(t0);
    h.on_answer(t0, &[ip("192.0.2.1")], Duration::from_secs(60), &t);
    let t1 = t0 + Duration::from_secs(60);
    assert!(!h.on_failure(t1, "SERVFAIL".into(), &t));
    assert!(
        !h.on_answer(t1, &[], Duration::from_secs(60), &t),
        "empty answers count as failures"
    );
    // Even long after the grace period: a failure never empties the set.
    let t2 = t1 + Duration::from_secs(100_000);
    assert!(!h.on_failure(t2, "timeout".into(), &t));
    assert_eq!(h.addresses(), &[ip("192.0.2.1")]);
    assert_eq!(h.failures, 3);
    assert_refresh_after(&h, t2, t.ttl_min.as_secs());
    assert_eq!(h.last_error.as_deref(), Some("timeout"));
}

#[test]
fn the_two_families_merge_into_one_answer() {
    let a = |s: &str, ttl| Some(Outcome::Answer(vec![ip(s)], Duration::from_secs(ttl)));
    let none = || Some(Outcome::NoRecords("no records".into()));
    let failed = || Some(Outcome::Failed("timed out".into()));
    assert_eq!(
        lookups::merge(a("192.0.2.1", 300), a("2001:db8::1", 60)).unwrap(),
        Ok((
            vec![ip("192.0.2.1"), ip("2001:db8::1")],
            Duration::from_secs(60)
        ))
    );
    assert_eq!(
        lookups::merge(none(), a("2001:db8::1", 60)).unwrap(),
        Ok((vec![ip("2001:db8::1")], Duration::from_secs(60)))
    );
    // One family failing while the other answers: the answer stands.
    assert_eq!(
        lookups::merge(a("192.0.2.1", 30), failed()).unwrap(),
        Ok((vec![ip("192.0.2.1")], Duration::from_secs(30)))
    );
    // Neither: the failure is the reason given, not "no records".
    assert_eq!(
        lookups::merge(none(), failed()),
        Some(Err("timed out".into()))
    );
    assert_eq!(
        lookups::merge(none(), none()),
        Some(Err("no records".into()))
    );
    // A family not asked (time ran out): the name is left as it was.
    assert_eq!(
        lookups::merge(a("192.0.2.1", 30), Some(Outcome::Skipped)),
        None
    );
    assert_eq!(lookups::merge(None, none()), None);
    assert_eq!(
        lookups::merge(
            Some(Outcome::Answer(vec![], Duration::from_secs(9))),
            none()
        ),
        Some(Err("no records".into()))
    );
}

#[tokio::test]
async fn names_are_tracked_and_dropped() {
    let mut r = Resolver::new(&[ip("127.0.0.1")], DnsTiming::default()).expect("resolver");
    let now = Instant::now();
    assert!(!r.set_names(["a.example", "b.example"], now));
    assert_eq!(r.hosts().len(), 2);
    assert!(r.set_names(["b.example"], now));
    assert_eq!(r.next_due(), Some(now));
    assert!(r.addresses("a.example").is_empty());
}

/// The tests that talk to a responder take it in turn: each measures time
/// or rates, which the others' CPU would distort on a small machine.
static RESPONDER_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("host-{i}.scale.test")).collect()
}

fn resolver_for(dns: &Responder, timing: DnsTiming, names: &[String]) -> Resolver {
    let mut r = Resolver::with_servers(&[dns.addr], timing).expect("resolver");
    r.set_names(names.iter().map(String::as_str), Instant::now());
    r
}

/// Every name has exactly the responder's A and AAAA address.
fn assert_all_resolved(r: &Resolver, names: &[String]) {
    for n in names {
        let mut want = vec![address_of(n, false), address_of(n, true)];
        want.sort();
        assert_eq!(r.addresses(n), want, "{n}: {:?}", r.hosts().get(n));
    }
}

/// The most queries the responder received in any half-open second.
fn most_in_any_second(seen: &[responder::Seen]) -> usize {
    let mut at: Vec<Duration> = seen.iter().map(|s| s.at).collect();
    at.sort();
    let mut most = 0;
    let mut end = 0;
    for (i, start) in at.iter().enumerate() {
        while end < at.len() && at[end] < *start + Duration::from_secs(1) {
            end += 1;
        }
        most = most.max(end - i);
    }
    most
}

/// Issue 14: every due name was asked at once (2,000 names, 4,000 queries
/// in a fraction of a second). With `max_qps = 1,500` the responder never
/// sees more than 1,500 in a second, and every name resolves, A and AAAA.
#[tokio::test]
async fn two_thousand_names_resolve_under_the_ceiling() {
    let _turn = RESPONDER_TESTS.lock().await;
    let dns = Responder::start(300, Duration::ZERO).await;
    let names = names(2_000);
    let timing = DnsTiming {
        max_qps: 1_500,
        ..DnsTiming::default()
    };
    let mut r = resolver_for(&dns, timing, &names);
    let started = Instant::now();
    assert!(r.refresh_all_due().await);
    let took = started.elapsed();
    assert_all_resolved(&r, &names);
    let seen = dns.seen();
    assert_eq!(seen.len(), 4_000, "one A and one AAAA query per name");
    assert_eq!(seen.iter().filter(|s| s.qtype == 1).count(), 2_000);
    let asked: std::collections::BTreeSet<&str> = seen.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(asked.len(), 2_000, "every name asked");
    assert_eq!(r.queries_sent(), 4_000);
    let most = most_in_any_second(&seen);
    println!("2,000 names at max_qps 1,500: {took:.2?}, at most {most} queries in a second");
    // The sends are paced exactly (pacing/tests.rs) and a query that wakes
    // late takes a new slot; the kernel's receive times may still bunch a
    // little when the agent's threads stall between slot and send: 2%.
    assert!(most <= 1_530, "{most} queries in one second");
    assert!(
        took >= Duration::from_millis(2_600),
        "4,000 queries at 1,500/s take 2.7 s, took {took:?}"
    );
}

/// Issue 14's target: 10,000 hostnames (20,000 queries) resolved in at
/// most 5 s at start with the default settings, the resolver answering at
/// once (before: every name at once, 20,000 queries in one burst that
/// overflowed the responder's socket buffer; hickory re-sent the lost ones
/// after 333 ms, three times, and the start took seconds per thousand
/// names). The pacing alone takes 2 s; the figure is printed. One thread:
/// half the CPU of two in a debug build, so the bound holds on a loaded
/// machine.
#[tokio::test]
async fn ten_thousand_names_resolve_within_five_seconds() {
    let _turn = RESPONDER_TESTS.lock().await;
    let dns = Responder::start(300, Duration::ZERO).await;
    let names = names(10_000);
    let mut r = resolver_for(&dns, DnsTiming::default(), &names);
    let started = Instant::now();
    assert!(r.refresh_all_due().await);
    let took = started.elapsed();
    println!("10,000 names (20,000 queries) resolved in {took:.2?}");
    assert_all_resolved(&r, &names);
    assert_eq!(dns.seen().len(), 20_000);
    assert!(took <= Duration::from_secs(5), "took {took:?}");
}

/// At most `concurrency` queries wait for an answer at once, however many
/// are due and whatever the ceiling.
#[tokio::test]
async fn no_more_than_concurrency_queries_are_in_flight() {
    let _turn = RESPONDER_TESTS.lock().await;
    let dns = Responder::start(300, Duration::from_millis(40)).await;
    let names = names(200);
    let timing = DnsTiming {
        concurrency: 16,
        ..DnsTiming::default()
    };
    let mut r = resolver_for(&dns, timing, &names);
    r.refresh_all_due().await;
    assert_all_resolved(&r, &names);
    let most = dns.most_in_flight();
    println!("at most {most} of 400 queries in flight");
    assert!((8..=16).contains(&most), "{most} in flight at once");
}

/// One call of `refresh_due` asks about a second of queries' worth of
/// names (the agent's loop gets back to its other work in between), the
/// ones due first; `refresh_all_due` goes on until every due name is
/// asked.
#[tokio::test]
async fn refresh_due_takes_a_batch_the_earliest_first() {
    let _turn = RESPONDER_TESTS.lock().await;
    let dns = Responder::start(300, Duration::ZERO).await;
    let names = names(7);
    let timing = DnsTiming {
        max_qps: 6,
        ..DnsTiming::default()
    };
    let mut r = resolver_for(&dns, timing, &names);
    // host-6 is due first.
    let mut early = HostState::new(Instant::now() - Duration::from_secs(5));
    early.next_refresh = Instant::now() - Duration::from_secs(5);
    r.seed("host-6.scale.test", early);
    r.refresh_due().await;
    let asked: Vec<String> = r
        .hosts()
        .iter()
        .filter(|(_, s)| s.last_success.is_some())
        .map(|(h, _)| h.clone())
        .collect();
    assert_eq!(asked.len(), 3, "max_qps / 2 names: {asked:?}");
    assert!(asked.contains(&"host-6.scale.test".to_string()));
    r.refresh_all_due().await;
    assert_all_resolved(&r, &names);
    assert_eq!(dns.seen().len(), 14);
}

/// A due refresh asks the resolver again: hickory's own cache (off) does
/// not answer it from a copy, and holds no second copy of every answer.
#[tokio::test]
async fn a_due_refresh_asks_the_resolver_again() {
    let _turn = RESPONDER_TESTS.lock().await;
    let dns = Responder::start(300, Duration::ZERO).await;
    let names = names(3);
    let mut r = resolver_for(&dns, DnsTiming::default(), &names);
    r.refresh_all_due().await;
    assert_eq!(dns.seen().len(), 6);
    for n in &names {
        let mut s = r.hosts()[n].clone();
        s.next_refresh = Instant::now();
        r.seed(n, s);
    }
    r.refresh_all_due().await;
    assert_eq!(dns.seen().len(), 12, "{:?}", dns.seen());
    assert_all_resolved(&r, &names);
}

/// A name resolved before waits up to a second (a tenth of ttl_min) so
/// that refreshes due close together are made in one wake; a name never
/// asked is due at once.
#[tokio::test]
async fn refreshes_close_together_are_made_together() {
    let mut r = Resolver::new(&[ip("127.0.0.1")], DnsTiming::default()).expect("resolver");
    let t0 = Instant::now();
    r.set_names(["a.example", "b.example"], t0);
    assert_eq!(r.next_due(), Some(t0));
    let t = r.timing().clone();
    for n in ["a.example", "b.example"] {
        let mut s = HostState::new(t0);
        s.on_answer(t0, &[ip("192.0.2.1")], Duration::from_secs(60), &t);
        s.next_refresh = t0 + Duration::from_secs(60);
        r.seed(n, s);
    }
    assert_eq!(r.next_due(), Some(t0 + Duration::from_secs(61)));
}

/// A resolver that drops every query costs each one the full timeout: no
/// query starts after the gate's time, the rest are skipped (left due),
/// not waited for in turn.
#[tokio::test]
async fn no_query_starts_after_the_gate_closes() {
    let pacer = Mutex::new(Pacer::new(20));
    let sent = AtomicU64::new(0);
    let started = Instant::now();
    let gate = Gate {
        pacer: &pacer,
        sent: &sent,
        concurrency: 4,
        until: started + Duration::from_millis(120),
    };
    let jobs: Vec<(usize, Family)> = (0..50).map(|i| (i, Family::V4)).collect();
    let out = lookups::run(jobs, &gate, |_, _| async {
        // A query nobody answers, until the resolver's timeout.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Outcome::Failed("timed out".into())
    })
    .await;
    let asked = out
        .iter()
        .filter(|(_, _, o)| *o != Outcome::Skipped)
        .count();
    // At 20 a second, 120 ms hold the slots at 0, 50 and 100 ms (fewer
    // if this thread wakes late).
    assert!((1..=3).contains(&asked), "{out:?}");
    assert_eq!(
        sent.load(std::sync::atomic::Ordering::Relaxed),
        asked as u64
    );
    assert!(started.elapsed() < Duration::from_millis(1_000));
}

/// A reload asks only the names it adds: a carried-over name whose
/// refresh is due waits for the agent's loop (asking it in the reload
/// held the flip back by every refresh due meanwhile).
#[tokio::test]
async fn refresh_unasked_asks_only_new_names() {
    let _turn = RESPONDER_TESTS.lock().await;
    let dns = Responder::start(300, Duration::ZERO).await;
    let names = names(4);
    let mut r = resolver_for(&dns, DnsTiming::default(), &names[..3]);
    r.refresh_all_due().await;
    assert_eq!(dns.seen().len(), 6);
    for n in &names[..3] {
        let mut s = r.hosts()[n].clone();
        s.next_refresh = Instant::now();
        r.seed(n, s);
    }
    r.set_names(names.iter().map(String::as_str), Instant::now());
    r.refresh_unasked().await;
    assert_eq!(dns.seen().len(), 8, "{:?}", dns.seen());
    assert_all_resolved(&r, &names);
    r.refresh_all_due().await;
    assert_eq!(dns.seen().len(), 14, "the due names were not asked after");
}
