use super::*;

/// The most slots of `slots` (sorted) in any half-open second `[t, t+1s)`.
fn most_in_any_second(slots: &[Instant]) -> usize {
    let mut most = 0;
    let mut end = 0;
    for (i, start) in slots.iter().enumerate() {
        while end < slots.len() && slots[end] < *start + Duration::from_secs(1) {
            end += 1;
        }
        most = most.max(end - i);
    }
    most
}

#[test]
fn no_second_holds_more_than_max_qps_queries() {
    for max_qps in [1, 7, 1_000, 1_024, 10_000, 30_000] {
        let mut p = Pacer::new(max_qps);
        let t0 = Instant::now();
        // 3.5 s worth of queries, all asked for at once (start-up).
        let n = max_qps as usize * 7 / 2;
        let slots: Vec<Instant> = (0..n).map(|_| p.slot(t0)).collect();
        assert_eq!(
            most_in_any_second(&slots),
            max_qps as usize,
            "max_qps {max_qps}"
        );
        assert!(slots.windows(2).all(|w| w[1] - w[0] == p.interval()));
        // The whole batch takes its share of seconds, not less.
        let span = *slots.last().unwrap() - t0;
        assert_eq!(span, p.interval() * (n as u32 - 1));
        assert!(span.as_secs_f64() >= (n - 1) as f64 / f64::from(max_qps));
    }
}

#[test]
fn asked_at_different_times_the_ceiling_still_holds() {
    let mut p = Pacer::new(100);
    let t0 = Instant::now();
    let mut slots = Vec::new();
    // Queries asked for in clumps of 37 every 250 ms: more than the
    // ceiling on average, so they queue.
    for clump in 0..40u32 {
        let asked = t0 + Duration::from_millis(250) * clump;
        for _ in 0..37 {
            let s = p.slot(asked);
            assert!(s >= asked, "never before it was asked for");
            slots.push(s);
        }
    }
    assert!(most_in_any_second(&slots) <= 100);
}

#[test]
fn an_idle_pacer_earns_no_burst() {
    let mut p = Pacer::new(10);
    let t0 = Instant::now();
    assert_eq!(p.slot(t0), t0);
    // A minute later: the first is at once, the next an interval later,
    // not ten at once for the idle time.
    let t1 = t0 + Duration::from_secs(60);
    assert_eq!(p.slot(t1), t1);
    assert_eq!(p.slot(t1), t1 + Duration::from_millis(100));
    assert_eq!(p.slot(t1), t1 + Duration::from_millis(200));
}

#[test]
fn the_interval_rounds_up() {
    // 1 s / 3 is not whole in ns: rounded up, three never fit in < 1 s.
    assert_eq!(Pacer::new(3).interval(), Duration::from_nanos(333_333_334));
    assert_eq!(Pacer::new(0).interval(), Duration::from_secs(1));
}

#[test]
fn refreshes_fall_in_the_tenth_after_the_ttl() {
    let ttl = Duration::from_secs(300);
    assert_eq!(refresh_after(ttl, 0), Duration::from_secs(300));
    assert_eq!(refresh_after(ttl, u64::MAX), Duration::from_secs(330));
    assert_eq!(refresh_after(ttl, u64::MAX / 2), Duration::from_secs(315));
}

/// 10,000 names resolved in the same second with the same TTL are refreshed
/// spread over the whole window, about evenly: no second of it holds more
/// than twice its share.
#[test]
fn random_draws_spread_refreshes_over_the_window() {
    let ttl = Duration::from_secs(300);
    let mut per_second = [0u32; 331];
    for _ in 0..10_000 {
        let at = refresh_after(ttl, draw());
        assert!(at >= Duration::from_secs(300) && at <= Duration::from_secs(330));
        per_second[at.as_secs() as usize] += 1;
    }
    let window = &per_second[300..330];
    let share = 10_000 / 30;
    assert!(
        window.iter().all(|n| *n > share / 2 && *n < share * 2),
        "per second of the window: {window:?}"
    );
}
