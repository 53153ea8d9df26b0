//! Keeping hostnames' addresses current: each name is resolved (A and
//! AAAA, two queries) with hickory-resolver and refreshed when its answer's
//! TTL runs out, clamped to [ttl_min, ttl_max]. An address that leaves the
//! answer set stays allowed for a grace period (round-robin answers rotate;
//! clients connect to what they resolved a moment ago). On a failure the
//! last good answer is kept, retried after ttl_min, and the failure is
//! counted: never an empty allowlist because DNS had a bad minute.
//!
//! At scale (a gateway with 10,000 hostnames) the resolvers never see a
//! burst: queries are paced to `[dns] max_qps` with at most
//! `[dns] concurrency` in flight, and refreshes are spread over the tenth
//! after each TTL ([`crate::dns::pacing`]).
//!
//! The bookkeeping ([`HostState`]) takes the time as an argument, so it is
//! tested on a fake clock.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RecordType,
    TokioResolver,
};
use serde::Serialize;

use crate::dns::pacing::Pacer;
use crate::policy::config::DnsConfig;

mod host;
mod lookups;

pub use host::HostState;
use lookups::{Family, Gate, Outcome};

/// How long answers are kept and how fast names are asked: the `[dns]`
/// section's `ttl_min`, `ttl_max`, `grace`, `max_qps` and `concurrency`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsTiming {
    pub ttl_min: Duration,
    pub ttl_max: Duration,
    pub grace: Duration,
    /// Queries per second to the resolvers, A and AAAA counted apart.
    pub max_qps: u32,
    /// Queries in flight at once.
    pub concurrency: u32,
}

impl Default for DnsTiming {
    /// The `[dns]` defaults: refreshed between 30 s and 1 h, a left address
    /// allowed 10 min more, 10,000 queries per second, 256 in flight.
    fn default() -> Self {
        Self::from(&DnsConfig::default())
    }
}

impl From<&DnsConfig> for DnsTiming {
    fn from(dns: &DnsConfig) -> Self {
        Self {
            ttl_min: dns.ttl_min,
            ttl_max: dns.ttl_max,
            grace: dns.grace,
            max_qps: dns.max_qps,
            concurrency: dns.concurrency,
        }
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

/// Which names a bounded round of refreshes asks.
#[derive(Clone, Copy, Debug)]
enum Wanted {
    /// Those whose refresh is due.
    Due,
    /// Those never asked (no answer, no failure yet).
    Unasked,
}

impl Wanted {
    fn wants(self, h: &HostState, now: Instant) -> bool {
        match self {
            Wanted::Due => h.next_refresh <= now,
            Wanted::Unasked => !h.asked(),
        }
    }
}

/// The hostnames of the policy and their states.
pub struct Resolver {
    inner: TokioResolver,
    timing: DnsTiming,
    hosts: BTreeMap<String, HostState>,
    pacer: Mutex<Pacer>,
    /// Queries sent, A and AAAA apart (`sdm_resolver_queries_total`).
    queries: Arc<AtomicU64>,
}

/// How long one call of [`Resolver::refresh_due`] starts queries for (the
/// agent's loop gets back to its other work in between).
const BATCH_TIME: Duration = Duration::from_secs(2);
/// At start, how much longer than the pacing needs the agent waits for
/// every name's first answer before it applies what it has (a resolver
/// that drops every query would cost each name the full timeout, in
/// turn); the rest are asked on.
const START_SLACK: Duration = Duration::from_secs(10);

/// Refreshes due within this long of the first one are made with it: the
/// agent wakes for refreshes about once a second, not once per name, when
/// they are spread out. A tenth of `ttl_min` when that is shorter.
const COALESCE: Duration = Duration::from_secs(1);

impl Resolver {
    /// A resolver that asks exactly `servers` (port 53, UDP then TCP), the
    /// resolvers the policy allows.
    pub fn new(servers: &[IpAddr], timing: DnsTiming) -> Result<Self, ResolverError> {
        let servers: Vec<SocketAddr> = servers.iter().map(|ip| SocketAddr::new(*ip, 53)).collect();
        Self::with_servers(&servers, timing)
    }

    /// A resolver that asks exactly `servers` (UDP then TCP), on their
    /// ports.
    pub fn with_servers(servers: &[SocketAddr], timing: DnsTiming) -> Result<Self, ResolverError> {
        let config = ResolverConfig::from_name_servers(
            servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect(),
        );
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        // No cache: every name is asked when its own refresh is due, which
        // already follows the TTL; hickory's cache (8,192 answers by
        // default) would only hold a second copy of 10,000 names' answers
        // in memory, and answer a due refresh with what it kept.
        opts.cache_size = 0;
        opts.positive_max_ttl = Some(timing.ttl_max);
        opts.negative_max_ttl = Some(timing.ttl_min);
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| ResolverError::Build(e.to_string()))?;
        Ok(Self {
            inner,
            pacer: Mutex::new(Pacer::new(timing.max_qps)),
            timing,
            hosts: BTreeMap::new(),
            queries: Arc::default(),
        })
    }

    /// Counts the queries sent in `counter` (the agent's stats) from now on.
    pub fn count_queries_in(&mut self, counter: Arc<AtomicU64>) {
        self.queries = counter;
    }

    /// The counter the queries are counted in, for a resolver that takes
    /// this one's place (a reload): the metric keeps counting.
    pub fn query_counter(&self) -> Arc<AtomicU64> {
        self.queries.clone()
    }

    /// Queries sent so far, A and AAAA apart.
    pub fn queries_sent(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
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
            if !self.hosts.contains_key(n) {
                self.hosts.insert(n.to_owned(), HostState::new(now));
            }
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

    /// A digest of what [`Resolver::report`] shows beyond the addresses
    /// (failures, errors, names resolved): equal digests, the report
    /// changed only in its countdowns.
    pub fn report_digest(&self) -> u64 {
        self.hosts.values().fold(0u64, |acc, s| {
            acc.wrapping_mul(31)
                .wrapping_add(s.failures)
                .wrapping_add(u64::from(s.last_error.is_some()) << 40)
                .wrapping_add(u64::from(s.last_success.is_some()) << 41)
        })
    }

    pub fn hosts(&self) -> &BTreeMap<String, HostState> {
        &self.hosts
    }

    /// How late a refresh may be made to take others with it.
    fn coalesce(&self) -> Duration {
        COALESCE.min(self.timing.ttl_min / 10)
    }

    /// When something is next due: a refresh or an expiry. A refresh of a
    /// name resolved before may wait up to a second (a tenth of ttl_min
    /// when shorter) for others to fall due with it; a name never asked is
    /// due at once.
    pub fn next_due(&self) -> Option<Instant> {
        let late = self.coalesce();
        self.hosts
            .values()
            .flat_map(|h| {
                let refresh = if h.asked() {
                    h.next_refresh + late
                } else {
                    h.next_refresh
                };
                [Some(refresh), h.next_expiry(&self.timing)]
            })
            .flatten()
            .min()
    }

    /// Resolves the names that are due, the earliest first, as many as
    /// about one second of queries at `max_qps` (the agent's loop gets back
    /// to its other work between batches), and expires old addresses.
    /// Returns whether any allowed set changed.
    pub async fn refresh_due(&mut self) -> bool {
        let batch = (self.timing.max_qps as usize / 2).max(1);
        let now = Instant::now();
        self.refresh_batch(now, batch, now + BATCH_TIME, Wanted::Due)
            .await
    }

    /// Resolves every name due now, in paced batches (at start: the policy
    /// is applied once every name has its first answer), for at most 1.5
    /// times what the pacing needs plus 10 s; names not asked by then stay
    /// due. Returns whether any allowed set changed.
    pub async fn refresh_all_due(&mut self) -> bool {
        self.refresh_all(Wanted::Due).await
    }

    /// Resolves every name never asked yet (a reload's new names), as
    /// [`Resolver::refresh_all_due`] does; the names carried over keep their
    /// own refresh times (asking them again here would hold the reload back
    /// by every refresh due meanwhile).
    pub async fn refresh_unasked(&mut self) -> bool {
        self.refresh_all(Wanted::Unasked).await
    }

    async fn refresh_all(&mut self, wanted: Wanted) -> bool {
        let start = Instant::now();
        let due = self
            .hosts
            .values()
            .filter(|h| wanted.wants(h, start))
            .count();
        let pacing =
            Duration::from_secs_f64(2.0 * due as f64 / f64::from(self.timing.max_qps.max(1)));
        let until = start + pacing.mul_f64(1.5) + START_SLACK;
        let mut changed = false;
        let batch = (self.timing.max_qps as usize / 2).max(1);
        let queries = self.queries_sent();
        while Instant::now() < until && self.hosts.values().any(|h| wanted.wants(h, start)) {
            changed |= self.refresh_batch(start, batch, until, wanted).await;
        }
        let left = self
            .hosts
            .values()
            .filter(|h| wanted.wants(h, start))
            .count();
        tracing::info!(
            names = due,
            left,
            queries = self.queries_sent() - queries,
            ms = start.elapsed().as_millis() as u64,
            "hostnames asked"
        );
        changed
    }

    /// Resolves at most `batch` names due by `now` (the earliest first),
    /// starting no query after `until`.
    async fn refresh_batch(
        &mut self,
        now: Instant,
        batch: usize,
        until: Instant,
        wanted: Wanted,
    ) -> bool {
        let mut due: Vec<(&String, Instant)> = self
            .hosts
            .iter()
            .filter(|(_, s)| wanted.wants(s, now))
            .map(|(h, s)| (h, s.next_refresh))
            .collect();
        due.sort_by_key(|(_, at)| *at);
        due.truncate(batch);
        let due: Vec<String> = due.into_iter().map(|(h, _)| h.clone()).collect();
        let results = self.lookup_all(&due, until).await;
        let now = Instant::now();
        let mut changed = false;
        for (host, result) in due.iter().zip(results) {
            let (Some(state), Some(result)) = (self.hosts.get_mut(host), result) else {
                continue;
            };
            match result {
                Ok((addrs, ttl)) => {
                    let before = state.addresses().len();
                    let c = state.on_answer(now, &addrs, ttl, &self.timing);
                    if c {
                        tracing::info!(%host, before, addresses = ?state.addresses(), "DNS answer changed the allowed addresses");
                    }
                    changed |= c;
                }
                Err(e) => {
                    tracing::warn!(%host, error = %e, failures = state.failures + 1, kept = ?state.addresses(), "DNS lookup failed; keeping the last good answer");
                    changed |= state.on_failure(now, e, &self.timing);
                }
            }
        }
        for state in self.hosts.values_mut() {
            changed |= state.expire(now, &self.timing);
        }
        changed
    }

    /// Looks `names` up (A and AAAA, paced, none started after `until`),
    /// in their order: the addresses and TTL of each, or why it failed;
    /// `None` for a name not asked in time.
    async fn lookup_all(
        &self,
        names: &[String],
        until: Instant,
    ) -> Vec<Option<Result<(Vec<IpAddr>, Duration), String>>> {
        // A trailing dot: the names are absolute, no search domains.
        let fqdns: Vec<String> = names.iter().map(|h| format!("{h}.")).collect();
        let jobs: Vec<(usize, Family)> = (0..names.len())
            .flat_map(|i| [(i, Family::V4), (i, Family::V6)])
            .collect();
        let gate = Gate {
            pacer: &self.pacer,
            sent: &self.queries,
            concurrency: self.timing.concurrency as usize,
            until,
        };
        let inner = &self.inner;
        let fqdns = &fqdns;
        let outcomes = lookups::run(jobs, &gate, |i, family| async move {
            let rtype = match family {
                Family::V4 => RecordType::A,
                Family::V6 => RecordType::AAAA,
            };
            match inner.lookup(fqdns[i].as_str(), rtype).await {
                Ok(l) => Outcome::Answer(
                    l.answers()
                        .iter()
                        .filter_map(|r| r.data.ip_addr())
                        .collect(),
                    l.valid_until().saturating_duration_since(Instant::now()),
                ),
                Err(e) if e.is_no_records_found() => Outcome::NoRecords(e.to_string()),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        })
        .await;
        let mut per_name: Vec<[Option<Outcome>; 2]> = vec![[None, None]; names.len()];
        for (i, family, o) in outcomes {
            per_name[i][family as usize] = Some(o);
        }
        per_name
            .into_iter()
            .map(|[a, b]| lookups::merge(a, b))
            .collect()
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
mod tests;
