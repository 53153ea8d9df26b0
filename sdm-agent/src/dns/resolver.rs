//! Keeping hostnames' addresses current: each name is resolved (A and
//! AAAA) with hickory-resolver and refreshed when its answer's TTL runs out,
//! clamped to [ttl_min, ttl_max]. An address that leaves the answer set
//! stays allowed for a grace period (round-robin answers rotate; clients
//! connect to what they resolved a moment ago). On a failure the last good
//! answer is kept, retried after ttl_min, and the failure is counted:
//! never an empty allowlist because DNS had a bad minute.
//!
//! The bookkeeping ([`HostState`]) takes the time as an argument, so it is
//! tested on a fake clock.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use hickory_resolver::{
    config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    TokioResolver,
};
use serde::Serialize;

/// How long answers are kept: the `[dns]` section's `ttl_min`, `ttl_max`
/// and `grace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsTiming {
    pub ttl_min: Duration,
    pub ttl_max: Duration,
    pub grace: Duration,
}

impl Default for DnsTiming {
    /// The `[dns]` defaults: refreshed between 30 s and 1 h, a left address
    /// allowed 10 min more.
    fn default() -> Self {
        use crate::policy::config::{DEFAULT_GRACE, DEFAULT_TTL_MAX, DEFAULT_TTL_MIN};
        Self {
            ttl_min: DEFAULT_TTL_MIN,
            ttl_max: DEFAULT_TTL_MAX,
            grace: DEFAULT_GRACE,
        }
    }
}

/// One hostname's addresses and history.
#[derive(Clone, Debug)]
pub struct HostState {
    /// Every address still allowed: `None` while it is in the latest answer,
    /// `Some(t)` once it left the answer set at `t`.
    seen: BTreeMap<IpAddr, Option<Instant>>,
    /// The allowed addresses, sorted (derived from `seen`, kept for cheap reads).
    current: Vec<IpAddr>,
    pub next_refresh: Instant,
    pub failures: u64,
    pub last_error: Option<String>,
    pub last_success: Option<Instant>,
}

impl HostState {
    pub fn new(now: Instant) -> Self {
        Self {
            seen: BTreeMap::new(),
            current: Vec::new(),
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

    /// Records an answer. Returns whether the allowed set changed.
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
        for v in self.seen.values_mut() {
            if v.is_none() {
                *v = Some(now);
            }
        }
        for a in answer {
            self.seen.insert(*a, None);
        }
        self.last_success = Some(now);
        self.last_error = None;
        self.next_refresh = now + ttl.clamp(t.ttl_min, t.ttl_max);
        self.expire(now, t)
    }

    /// Records a failed lookup: nothing is forgotten, a retry is due after
    /// ttl_min. Returns whether the allowed set changed (only by expiry).
    pub fn on_failure(&mut self, now: Instant, error: String, t: &DnsTiming) -> bool {
        self.failures += 1;
        self.last_error = Some(error);
        self.next_refresh = now + t.ttl_min;
        self.expire(now, t)
    }

    /// Forgets addresses that left the answer set more than `grace` ago.
    /// Returns whether the allowed set changed.
    pub fn expire(&mut self, now: Instant, t: &DnsTiming) -> bool {
        self.seen.retain(|_, left| match left {
            None => true,
            Some(at) => now.saturating_duration_since(*at) < t.grace,
        });
        let current: Vec<IpAddr> = self.seen.keys().copied().collect();
        let changed = current != self.current;
        self.current = current;
        changed
    }

    /// When the next address leaves its grace period, if any does.
    pub fn next_expiry(&self, t: &DnsTiming) -> Option<Instant> {
        self.seen.values().flatten().map(|at| *at + t.grace).min()
    }
}

/// What `status` and the metrics show of one hostname.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct HostReport {
    pub hostname: String,
    pub addresses: Vec<IpAddr>,
    pub failures: u64,
    pub last_error: Option<String>,
    /// Seconds until the next lookup.
    pub next_refresh_secs: u64,
    pub resolved: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("building the DNS resolver: {0}")]
    Build(String),
}

/// The hostnames of the policy and their states.
pub struct Resolver {
    inner: TokioResolver,
    timing: DnsTiming,
    hosts: BTreeMap<String, HostState>,
}

impl Resolver {
    /// A resolver that asks exactly `servers` (port 53, UDP then TCP), the
    /// resolvers the policy allows.
    pub fn new(servers: &[IpAddr], timing: DnsTiming) -> Result<Self, ResolverError> {
        let config = ResolverConfig::from_name_servers(
            servers
                .iter()
                .map(|ip| NameServerConfig::udp_and_tcp(*ip))
                .collect(),
        );
        let mut opts = ResolverOpts::default();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        // Refreshes decide their own timing; an answer cached past our
        // ceiling would hide rotations.
        opts.positive_max_ttl = Some(timing.ttl_max);
        opts.negative_max_ttl = Some(timing.ttl_min);
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| ResolverError::Build(e.to_string()))?;
        Ok(Self {
            inner,
            timing,
            hosts: BTreeMap::new(),
        })
    }

    pub fn timing(&self) -> &DnsTiming {
        &self.timing
    }

    /// Tracks exactly these names: new ones are due at once, dropped ones
    /// are forgotten. Returns whether names were dropped.
    pub fn set_names<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> bool {
        let wanted: std::collections::BTreeSet<&str> = names.into_iter().collect();
        let before = self.hosts.len();
        self.hosts.retain(|h, _| wanted.contains(h.as_str()));
        let dropped = self.hosts.len() != before;
        for n in wanted {
            self.hosts
                .entry(n.to_owned())
                .or_insert_with(|| HostState::new(now));
        }
        dropped
    }

    /// Replaces a tracked name's state (used to carry over what a previous
    /// agent had resolved).
    pub fn seed(&mut self, host: &str, state: HostState) {
        if let Some(s) = self.hosts.get_mut(host) {
            *s = state;
        }
    }

    pub fn addresses(&self, host: &str) -> &[IpAddr] {
        self.hosts.get(host).map(|h| h.addresses()).unwrap_or(&[])
    }

    pub fn hosts(&self) -> &BTreeMap<String, HostState> {
        &self.hosts
    }

    /// When something is next due: a refresh or an expiry.
    pub fn next_due(&self) -> Option<Instant> {
        self.hosts
            .values()
            .flat_map(|h| [Some(h.next_refresh), h.next_expiry(&self.timing)])
            .flatten()
            .min()
    }

    /// Resolves every name that is due (concurrently), and expires old
    /// addresses. Returns whether any allowed set changed.
    pub async fn refresh_due(&mut self) -> bool {
        let now = Instant::now();
        let due: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, s)| s.next_refresh <= now)
            .map(|(h, _)| h.clone())
            .collect();
        let lookups = due.iter().map(|h| {
            let inner = &self.inner;
            // A trailing dot: the name is absolute, no search domains.
            let fqdn = format!("{h}.");
            async move { (h.clone(), inner.lookup_ip(fqdn).await) }
        });
        let results = futures_util::future::join_all(lookups).await;
        let now = Instant::now();
        let mut changed = false;
        for (host, result) in results {
            let Some(state) = self.hosts.get_mut(&host) else {
                continue;
            };
            match result {
                Ok(lookup) => {
                    let addrs: Vec<IpAddr> = lookup.iter().collect();
                    let ttl = lookup.valid_until().saturating_duration_since(now);
                    let before = state.addresses().to_vec();
                    changed |= state.on_answer(now, &addrs, ttl, &self.timing);
                    if before != state.addresses() {
                        tracing::info!(%host, addresses = ?state.addresses(), "DNS answer changed the allowed addresses");
                    }
                }
                Err(e) => {
                    tracing::warn!(%host, error = %e, failures = state.failures + 1, kept = ?state.addresses(), "DNS lookup failed; keeping the last good answer");
                    changed |= state.on_failure(now, e.to_string(), &self.timing);
                }
            }
        }
        for state in self.hosts.values_mut() {
            changed |= state.expire(now, &self.timing);
        }
        changed
    }

    pub fn report(&self) -> Vec<HostReport> {
        let now = Instant::now();
        self.hosts
            .iter()
            .map(|(h, s)| HostReport {
                hostname: h.clone(),
                addresses: s.addresses().to_vec(),
                failures: s.failures,
                last_error: s.last_error.clone(),
                next_refresh_secs: s.next_refresh.saturating_duration_since(now).as_secs(),
                resolved: s.last_success.is_some(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resolver tests below assume these numbers.
    #[test]
    fn default_timing_is_the_config_defaults() {
        assert_eq!(
            DnsTiming::default(),
            DnsTiming {
                ttl_min: Duration::from_secs(30),
                ttl_max: Duration::from_secs(3600),
                grace: Duration::from_secs(600),
            }
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ttl_is_clamped_to_floor_and_ceiling() {
        let t = DnsTiming::default();
        let t0 = Instant::now();
        let mut h = HostState::new(t0);
        h.on_answer(t0, &[ip("192.0.2.1")], Duration::from_secs(5), &t);
        assert_eq!(h.next_refresh, t0 + Duration::from_secs(30));
        h.on_answer(t0, &[ip("192.0.2.1")], Duration::from_secs(86_400), &t);
        assert_eq!(h.next_refresh, t0 + Duration::from_secs(3600));
        h.on_answer(t0, &[ip("192.0.2.1")], Duration::from_secs(300), &t);
        assert_eq!(h.next_refresh, t0 + Duration::from_secs(300));
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
        assert!(
            !h.expire(t1 + t.grace - Duration::from_secs(1), &t),
            "still in grace"
        );
        assert!(h.expire(t1 + t.grace, &t), "grace over");
        assert_eq!(h.addresses(), &[ip("192.0.2.2")]);
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
        assert!(!h.on_failure(t1 + Duration::from_secs(100_000), "timeout".into(), &t));
        assert_eq!(h.addresses(), &[ip("192.0.2.1")]);
        assert_eq!(h.failures, 3);
        assert_eq!(
            h.next_refresh,
            t1 + Duration::from_secs(100_000) + t.ttl_min
        );
        assert_eq!(h.last_error.as_deref(), Some("timeout"));
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
}
