//! One hostname's bookkeeping: the addresses allowed, those in their grace
//! period, and when the name is refreshed. It takes the time as an
//! argument, so it is tested on a fake clock.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use super::DnsTiming;
use crate::dns::pacing::{draw, refresh_after};

/// One hostname's addresses and history. Kept small, as a gateway holds
/// 10,000 of them: the allowed addresses in one sorted vector, and only the
/// addresses in their grace period (usually none: no allocation) with the
/// time they left the answer.
#[derive(Clone, Debug)]
pub struct HostState {
    /// Every address still allowed, sorted: the latest answer and those in
    /// `left`.
    current: Vec<IpAddr>,
    /// The allowed addresses that are no longer in the answer, and when
    /// they left it.
    left: Vec<(IpAddr, Instant)>,
    pub next_refresh: Instant,
    pub failures: u64,
    pub last_error: Option<String>,
    pub last_success: Option<Instant>,
}

impl HostState {
    /// Whether the name was ever asked: answered or failed.
    pub fn asked(&self) -> bool {
        self.last_success.is_some() || self.failures > 0
    }

    pub fn new(now: Instant) -> Self {
        Self {
            current: Vec::new(),
            left: Vec::new(),
            next_refresh: now,
            failures: 0,
            last_error: None,
            last_success: None,
        }
    }

    /// The addresses allowed now.
    pub fn addresses(&self) -> &[IpAddr] {
        &self.current
    }

    /// Records an answer valid for `ttl`; the next refresh falls in the
    /// tenth after the TTL clamped to `[ttl_min, ttl_max]`
    /// ([`refresh_after`]). Returns whether the allowed set changed.
    pub fn on_answer(
        &mut self,
        now: Instant,
        answer: &[IpAddr],
        ttl: Duration,
        t: &DnsTiming,
    ) -> bool {
        if answer.is_empty() {
            // An empty answer (NOERROR, no records) is treated as a failure:
            // keep what worked.
            return self.on_failure(now, "empty answer".into(), t);
        }
        let before = std::mem::take(&mut self.current);
        // Addresses that were in the answer and are not any more start
        // their grace period now.
        for a in &before {
            if !answer.contains(a) && !self.left.iter().any(|(l, _)| l == a) {
                self.left.push((*a, now));
            }
        }
        // An address back in the answer is current again, not leaving.
        self.left.retain(|(l, _)| !answer.contains(l));
        let mut current: Vec<IpAddr> = answer
            .iter()
            .copied()
            .chain(self.left.iter().map(|(l, _)| *l))
            .collect();
        current.sort_unstable();
        current.dedup();
        current.shrink_to_fit();
        self.current = current;
        self.last_success = Some(now);
        self.last_error = None;
        self.next_refresh = now + refresh_after(ttl.clamp(t.ttl_min, t.ttl_max), draw());
        self.expire(now, t) | (before != self.current)
    }

    /// Records a failed lookup: nothing is forgotten, a retry is due in the
    /// tenth after ttl_min (failures of many names at once, a resolver
    /// outage, are retried spread out). Returns whether the allowed set
    /// changed (only by expiry).
    pub fn on_failure(&mut self, now: Instant, error: String, t: &DnsTiming) -> bool {
        self.failures += 1;
        self.last_error = Some(error);
        self.next_refresh = now + refresh_after(t.ttl_min, draw());
        self.expire(now, t)
    }

    /// Forgets addresses that left the answer set more than `grace` ago.
    /// Returns whether the allowed set changed.
    pub fn expire(&mut self, now: Instant, t: &DnsTiming) -> bool {
        let before = self.left.len();
        let current = &mut self.current;
        self.left.retain(|(addr, at)| {
            let keep = now.saturating_duration_since(*at) < t.grace;
            if !keep {
                current.retain(|c| c != addr);
            }
            keep
        });
        if self.left.is_empty() {
            self.left = Vec::new();
        }
        before != self.left.len()
    }

    /// When the next address leaves its grace period, if any does.
    pub fn next_expiry(&self, t: &DnsTiming) -> Option<Instant> {
        self.left.iter().map(|(_, at)| *at + t.grace).min()
    }
}
