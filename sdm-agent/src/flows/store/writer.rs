//! The writer thread: it owns its connection, merges the batches it is
//! sent, (re)opens the database, writes, applies retention and the size
//! cap, and reports failures without ever stopping.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError},
        Arc,
    },
    time::{Duration, Instant},
};

use super::{db_path, quarantine, Store, StoreError, DEFAULT_BUSY_TIMEOUT, SCHEMA_VERSION};
use crate::flows::flow::{now_ms, Flow, FlowKey};

/// Counters for `/metrics` and the dashboard.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    /// Failed opens, writes and reads (`sdm_store_errors_total`).
    pub errors: Arc<AtomicU64>,
    /// Flows in the database after the last write (`sdm_flows_stored`).
    pub stored: Arc<AtomicU64>,
    /// Whether the writer has the database open.
    pub available: Arc<AtomicBool>,
    /// Flows dropped from the pending queue while the store was unavailable
    /// (`sdm_store_dropped_flows_total`).
    pub dropped: Arc<AtomicU64>,
    /// Flows evicted from the database to keep it within `[state]
    /// max_bytes` (`sdm_flow_store_evictions_total`).
    pub evictions: Arc<AtomicU64>,
}

/// Where and how the agent keeps its store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub path: PathBuf,
    /// Flows last seen longer ago are deleted.
    pub retention: Duration,
    /// How often retention runs.
    pub retention_every: Duration,
    /// Wait before opening again after a failure.
    pub retry: Duration,
    pub busy_timeout: Duration,
    /// Most distinct flows kept for the store while it is unavailable.
    pub max_pending: usize,
    /// The most the database may use (`[state] max_bytes`).
    pub max_bytes: u64,
}

impl StoreOptions {
    pub fn new(path: impl Into<PathBuf>, retention: Duration) -> Self {
        Self {
            path: path.into(),
            retention,
            retention_every: Duration::from_secs(3600),
            retry: Duration::from_secs(30),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            max_pending: 100_000,
            max_bytes: crate::policy::config::DEFAULT_STORE_MAX_BYTES,
        }
    }

    /// From `[state]`.
    pub fn from_config(c: &crate::policy::config::StateConfig) -> Self {
        Self {
            max_bytes: c.max_bytes,
            ..Self::new(db_path(&c.dir), c.retention)
        }
    }
}

/// What the writer thread is sent.
pub(super) enum WriterMsg {
    Batch(Vec<Flow>),
    /// Write what is pending now, then answer (used at shutdown).
    Sync(mpsc::Sender<()>),
}

/// Logs the first failure at once and then at most once a minute, and the
/// recovery.
#[derive(Default)]
struct Reporter {
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl Reporter {
    fn error(&mut self, e: &StoreError) {
        let now = Instant::now();
        self.failing_since.get_or_insert(now);
        if self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            tracing::error!(error = %e, suppressed = self.suppressed, "flow store failure; enforcement is unaffected and flows are kept in memory; retrying");
            self.last_logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }

    fn ok(&mut self, path: &Path) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(path = %path.display(), down_secs = since.elapsed().as_secs(), "flow store available again");
            self.last_logged = None;
            self.suppressed = 0;
        }
    }
}

/// Logs evictions at most once a minute while they go on (a flood of new
/// flows evicts on every write).
#[derive(Default)]
struct EvictionLog {
    last: Option<Instant>,
    since_last: u64,
}

impl EvictionLog {
    fn note(&mut self, n: u64, total: u64, max_bytes: u64) {
        self.since_last += n;
        if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(evicted = self.since_last, total, max_bytes, "the flow store reached [state] max_bytes: the least recently seen flows were evicted");
            self.last = Some(Instant::now());
            self.since_last = 0;
        }
    }
}

fn merge_into(pending: &mut HashMap<FlowKey, Flow>, batch: Vec<Flow>) {
    for f in batch {
        match pending.get_mut(&f.key) {
            Some(p) => p.merge(&f),
            None => {
                pending.insert(f.key.clone(), f);
            }
        }
    }
}

fn cap_pending(pending: &mut HashMap<FlowKey, Flow>, max: usize) -> usize {
    if pending.len() <= max {
        return 0;
    }
    let mut ages: Vec<(u64, FlowKey)> = pending
        .iter()
        .map(|(k, f)| (f.last_seen, k.clone()))
        .collect();
    ages.sort_unstable_by_key(|(t, _)| *t);
    let drop = pending.len() - max;
    for (_, k) in ages.into_iter().take(drop) {
        pending.remove(&k);
    }
    drop
}

/// The writer thread's state. Each round of [`Writer::run`] answers the
/// syncs of the last round, takes what was sent, bounds what is pending,
/// opens the database if it is closed and due, writes, and settles the
/// outcome.
struct Writer {
    opts: StoreOptions,
    stats: StoreStats,
    /// Bumped on every (re)open, for the readers.
    generation: Arc<AtomicU64>,
    store: Option<Store>,
    retry_at: Instant,
    retain_at: Instant,
    /// Flows not written yet, merged by key.
    pending: HashMap<FlowKey, Flow>,
    report: Reporter,
    evict_log: EvictionLog,
    /// Syncs to answer after this round's write.
    waiting: Vec<mpsc::Sender<()>>,
}

/// The writer thread's body: runs until every sender is gone.
pub(super) fn writer_loop(
    opts: StoreOptions,
    stats: StoreStats,
    generation: Arc<AtomicU64>,
    rx: mpsc::Receiver<WriterMsg>,
) {
    Writer::new(opts, stats, generation).run(&rx);
}

impl Writer {
    fn new(opts: StoreOptions, stats: StoreStats, generation: Arc<AtomicU64>) -> Self {
        let now = Instant::now();
        Self {
            opts,
            stats,
            generation,
            store: None,
            retry_at: now,
            retain_at: now,
            pending: HashMap::new(),
            report: Reporter::default(),
            evict_log: EvictionLog::default(),
            waiting: Vec::new(),
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<WriterMsg>) {
        let mut running = true;
        while running {
            // Whoever asked for a sync is answered after this round's write,
            // whatever its outcome (a broken store must not hang a shutdown).
            self.answer_syncs();
            running = self.receive(rx);
            self.bound_pending();
            let now = Instant::now();
            if self.store.is_none() && now >= self.retry_at {
                self.open(now);
            }
            if self.store.is_none() {
                continue;
            }
            let result = self.write(now);
            self.settle(result, now);
        }
    }

    fn answer_syncs(&mut self) {
        for ack in self.waiting.drain(..) {
            let _ = ack.send(());
        }
    }

    /// Waits up to a second for a message, then takes all that are queued.
    /// False once every sender is gone (this is the last round).
    fn receive(&mut self, rx: &mpsc::Receiver<WriterMsg>) -> bool {
        let mut running = true;
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(msg) => self.take(msg),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => running = false,
        }
        while let Ok(msg) = rx.try_recv() {
            self.take(msg);
        }
        running
    }

    fn take(&mut self, msg: WriterMsg) {
        match msg {
            WriterMsg::Batch(batch) => merge_into(&mut self.pending, batch),
            WriterMsg::Sync(ack) => self.waiting.push(ack),
        }
    }

    /// Drops the oldest pending flows over `max_pending`, counted.
    fn bound_pending(&mut self) {
        let dropped = cap_pending(&mut self.pending, self.opts.max_pending);
        if dropped > 0 {
            let total = self
                .stats
                .dropped
                .fetch_add(dropped as u64, Ordering::Relaxed)
                + dropped as u64;
            tracing::warn!(dropped, total, max_pending = self.opts.max_pending, "flow store unavailable for long: the oldest pending flows were dropped (the audit log has them)");
        }
    }

    fn fail(&mut self, e: &StoreError) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.report.error(e);
    }

    /// Opens (creating or migrating) the database; on failure, retries
    /// later, at once if an unreadable file could be moved aside.
    fn open(&mut self, now: Instant) {
        let opts = &self.opts;
        match Store::open_with(&opts.path, opts.busy_timeout) {
            Ok(s) => {
                self.report.ok(&opts.path);
                tracing::info!(path = %s.path().display(), schema = SCHEMA_VERSION, "flow store open");
                self.generation.fetch_add(1, Ordering::Relaxed);
                self.stats.available.store(true, Ordering::Relaxed);
                if let Ok(n) = s.count() {
                    self.stats.stored.store(n, Ordering::Relaxed);
                }
                self.retain_at = now;
                self.store = Some(s);
            }
            Err(e) => {
                self.stats.available.store(false, Ordering::Relaxed);
                self.fail(&e);
                self.retry_at = now + self.opts.retry;
                if e.is_corrupt() {
                    let path = &self.opts.path;
                    match quarantine(path) {
                        Ok(Some(aside)) => {
                            tracing::error!(path = %path.display(), moved_to = %aside.display(), "the flow store was not a readable database; moved it aside and starting a new one");
                            self.retry_at = now;
                        }
                        Ok(None) => {}
                        Err(qe) => {
                            tracing::error!(path = %path.display(), error = %qe, "cannot move the corrupted flow store aside")
                        }
                    }
                }
            }
        }
    }

    /// This round's writes, each only if the one before succeeded: the
    /// pending flows, the retention when due, then (if anything was
    /// written) the size cap and the count.
    fn write(&mut self, now: Instant) -> Result<(), StoreError> {
        let Some(s) = self.store.as_mut() else {
            return Ok(());
        };
        let mut wrote = false;
        if !self.pending.is_empty() {
            s.upsert(self.pending.values())?;
            self.pending.clear();
            wrote = true;
        }
        if now >= self.retain_at {
            let cutoff = now_ms()
                .saturating_sub(u64::try_from(self.opts.retention.as_millis()).unwrap_or(u64::MAX));
            let n = s.retain(cutoff)?;
            if n > 0 {
                tracing::info!(deleted = n, "flow store retention applied");
            }
            wrote = true;
            self.retain_at = now + self.opts.retention_every;
        }
        if wrote {
            // The cap is checked after every write, so the database exceeds
            // it by one batch at most, and only until this runs.
            let n = s.evict_to(self.opts.max_bytes)?;
            if n > 0 {
                let total = self.stats.evictions.fetch_add(n, Ordering::Relaxed) + n;
                self.evict_log.note(n, total, self.opts.max_bytes);
            }
            self.stats.stored.store(s.count()?, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reports the round's outcome; a failure other than a busy database
    /// closes the store, to be reopened (and moved aside if corrupted).
    fn settle(&mut self, result: Result<(), StoreError>, now: Instant) {
        let e = match result {
            Ok(()) => return self.report.ok(&self.opts.path),
            Err(e) => e,
        };
        self.fail(&e);
        if e.is_busy() {
            return;
        }
        // Reopen (and move a corrupted file aside) on the next round.
        self.store = None;
        self.stats.available.store(false, Ordering::Relaxed);
        self.retry_at = now + self.opts.retry;
        if e.is_corrupt() {
            if let Ok(Some(aside)) = quarantine(&self.opts.path) {
                self.retry_at = now;
                tracing::error!(moved_to = %aside.display(), "the flow store is corrupted; moved it aside and starting a new one");
            }
        }
    }
}
