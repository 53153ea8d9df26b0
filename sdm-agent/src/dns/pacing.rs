//! How the agent's lookups are spread over time, so that the resolvers
//! never see a burst: a ceiling on queries per second ([`Pacer`]) and a
//! random point in the tenth after a name's TTL at which it is refreshed
//! ([`refresh_after`]). Both are pure (the time and the random draw are
//! arguments), so they are tested on a fake clock.

use std::{
    hash::BuildHasher as _,
    time::{Duration, Instant},
};

/// The width of the window a refresh falls in, as a share of the TTL.
const WINDOW: f64 = 0.1;

/// When a name whose answer is valid for `ttl` (already clamped to
/// `[ttl_min, ttl_max]`) is refreshed: at a point of the tenth after the
/// TTL chosen by `draw` (uniform over `u64`), so between 100% and 110% of
/// it. Names resolved together (at start, or after an outage) are then
/// refreshed spread over a tenth of their TTL instead of together.
///
/// After the TTL, not before: a caching resolver (systemd-resolved, a
/// cloud VPC resolver) asked before its copy expires answers with what is
/// left of the TTL, a few seconds, and the name would be asked again
/// (`ttl_min` later) and again; asked after, it answers a fresh TTL. The
/// few seconds the allowed set may lag are covered by the grace period for
/// addresses that leave, and by the kernel learning the answers the
/// clients themselves get.
pub fn refresh_after(ttl: Duration, draw: u64) -> Duration {
    // The draw's share of u64, in [0, 1]; f64 rounding is harmless here.
    let u = draw as f64 / u64::MAX as f64;
    ttl.mul_f64(1.0 + WINDOW * u)
}

/// A random draw for [`refresh_after`]: std's per-process random SipHash
/// keys (each `RandomState` differs) make it unpredictable without a
/// dependency; it spreads load and guards nothing.
pub fn draw() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}

/// Hands out the times at which queries may be sent: at most `max_qps` in
/// any second. Queries are spaced evenly (one every `1 s / max_qps`), so
/// there is no burst at all, and an idle period earns no credit for a
/// burst later.
#[derive(Clone, Debug)]
pub struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer for `max_qps` queries per second (at least one).
    pub fn new(max_qps: u32) -> Self {
        let qps = u64::from(max_qps.max(1));
        // Rounded up: `max_qps` intervals never add up to less than 1 s.
        let nanos = 1_000_000_000u64.div_ceil(qps);
        Self {
            interval: Duration::from_nanos(nanos),
            next: None,
        }
    }

    /// The time between two queries.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Reserves the next sending time for a query asked for at `now`: now
    /// if the previous one is at least an interval ago, else one interval
    /// after it.
    pub fn slot(&mut self, now: Instant) -> Instant {
        let at = self.next.map_or(now, |n| n.max(now));
        self.next = Some(at + self.interval);
        at
    }
}

#[cfg(test)]
mod tests;
