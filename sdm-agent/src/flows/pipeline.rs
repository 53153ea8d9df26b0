//! The pipeline from deny events to flows: aggregate, log what is new,
//! hand batches to the store.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::{
    audit::{audit_line, AuditLog},
    flow::{hostname_of, Flow, FlowKey, HostnameIndex},
    table::SharedTable,
};
use crate::{flows::events::Event, flows::store::StoreHandle};

/// The store gets a batch at least this often...
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// ... or after this many events, whichever comes first.
pub const DEFAULT_FLUSH_EVENTS: usize = 500;
/// Capacity of the channel from the ring buffer reader to the pipeline.
pub const EVENT_CHANNEL_CAPACITY: usize = 8192;

/// Consumes deny events: aggregates, logs new flows, batches to the store.
pub struct Pipeline {
    pub table: SharedTable,
    pub hostnames: HostnameIndex,
    pub audit: AuditLog,
    /// `None`: memory only.
    pub store: Option<StoreHandle>,
    pub flush_every: Duration,
    pub flush_events: usize,
    /// What has changed since the last batch went to the store (deltas:
    /// counts since then).
    pending: HashMap<FlowKey, Flow>,
    pending_events: usize,
    /// Flows the table evicted (`sdm_flows_evicted_total`).
    pub evicted: Arc<std::sync::atomic::AtomicU64>,
    /// When an eviction was last logged: at most one line a minute.
    evict_logged: Option<Instant>,
}

/// How often a full flow table is logged while it stays full.
pub(super) const EVICT_LOG_EVERY: Duration = Duration::from_secs(60);

impl Pipeline {
    pub fn new(
        table: SharedTable,
        hostnames: HostnameIndex,
        audit: AuditLog,
        store: Option<StoreHandle>,
    ) -> Self {
        Self {
            table,
            hostnames,
            audit,
            store,
            flush_every: DEFAULT_FLUSH_EVERY,
            flush_events: DEFAULT_FLUSH_EVENTS,
            pending: HashMap::new(),
            pending_events: 0,
            evicted: Default::default(),
            evict_logged: None,
        }
    }

    /// Handles a burst of events (the table is locked once).
    pub fn handle(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let observed: Vec<Flow> = events
            .iter()
            .map(|e| {
                // A refused DNS query: the name it asked for, not the
                // resolver's own name.
                let name = e
                    .qname
                    .clone()
                    .or_else(|| hostname_of(&self.hostnames, e.remote));
                Flow::from_event(e, name)
            })
            .collect();
        let (fresh, evicted, cap): (Vec<bool>, u64, usize) = match self.table.lock() {
            Ok(mut t) => {
                let before = t.evicted();
                let fresh = observed.iter().map(|f| t.record(f)).collect();
                (fresh, t.evicted() - before, t.capacity())
            }
            Err(_) => (vec![false; observed.len()], 0, 0),
        };
        if evicted > 0 {
            use std::sync::atomic::Ordering;
            let total = self.evicted.fetch_add(evicted, Ordering::Relaxed) + evicted;
            if self
                .evict_logged
                .is_none_or(|t| t.elapsed() >= EVICT_LOG_EVERY)
            {
                self.evict_logged = Some(Instant::now());
                tracing::warn!(evicted, total, capacity = cap, "the in-memory flow table is full: its least recently seen flows were dropped (the store keeps them; a flow seen again is logged again)");
            }
        }
        for ((e, f), new) in events.iter().zip(observed).zip(fresh) {
            if new {
                self.audit.write_line(&audit_line(e, f.hostname.as_deref()));
            }
            match self.pending.get_mut(&f.key) {
                Some(p) => p.merge(&f),
                None => {
                    self.pending.insert(f.key.clone(), f);
                }
            }
        }
        self.pending_events += events.len();
        self.audit.flush();
        if self.pending_events >= self.flush_events {
            self.flush();
        }
    }

    /// Hands what changed to the store.
    pub fn flush(&mut self) {
        self.pending_events = 0;
        if self.pending.is_empty() {
            return;
        }
        let batch: Vec<Flow> = self.pending.drain().map(|(_, f)| f).collect();
        if let Some(store) = &self.store {
            store.submit(batch);
        }
    }

    /// Runs until the sender side of `rx` is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(self.flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = Vec::with_capacity(512);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut buf, 512) => {
                    if n == 0 {
                        self.flush();
                        return;
                    }
                    self.handle(&buf);
                    buf.clear();
                }
                _ = tick.tick() => self.flush(),
            }
        }
    }
}
