//! The agent's handle on its store: a writer thread and a reader connection.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use super::{
    writer::{writer_loop, WriterMsg},
    Store, StoreError, StoreOptions, StoreStats,
};
use crate::flows::flow::{Flow, FlowQuery};

struct Reader {
    store: Option<Store>,
    generation: u64,
    failed_at: Option<Instant>,
}

struct Inner {
    opts: StoreOptions,
    stats: StoreStats,
    tx: SyncSender<WriterMsg>,
    /// Bumped by the writer on every (re)open, so readers follow a
    /// database that was moved aside and recreated.
    generation: Arc<AtomicU64>,
    reader: Mutex<Reader>,
}

/// The agent's handle on its store: batches go to a writer thread; queries
/// run on a reader connection (blocking: call them from
/// `spawn_blocking`).
#[derive(Clone)]
pub struct StoreHandle(Arc<Inner>);

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreHandle({})", self.0.opts.path.display())
    }
}

impl StoreHandle {
    /// Starts the writer thread. Opening happens there, so a broken store
    /// never delays or fails the caller.
    pub fn spawn(opts: StoreOptions, stats: StoreStats) -> Self {
        let (tx, rx) = mpsc::sync_channel(256);
        let generation = Arc::new(AtomicU64::new(0));
        let thread = {
            let (opts, stats, generation) = (opts.clone(), stats.clone(), generation.clone());
            std::thread::Builder::new()
                .name("sdm-flow-store".into())
                .spawn(move || writer_loop(opts, stats, generation, rx))
        };
        if let Err(e) = thread {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "cannot start the flow store thread; flows are kept in memory only");
        }
        Self(Arc::new(Inner {
            opts,
            stats,
            tx,
            generation,
            reader: Mutex::new(Reader {
                store: None,
                generation: 0,
                failed_at: None,
            }),
        }))
    }

    pub fn stats(&self) -> &StoreStats {
        &self.0.stats
    }

    pub fn path(&self) -> &Path {
        &self.0.opts.path
    }

    /// Queues a batch for the writer; never blocks. A batch that does not
    /// fit (the writer is stuck) is dropped and counted as an error.
    pub fn submit(&self, batch: Vec<Flow>) {
        match self.0.tx.try_send(WriterMsg::Batch(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(WriterMsg::Batch(b))) => {
                self.0.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    flows = b.len(),
                    "flow store writer is behind; a batch was dropped"
                );
            }
            Err(TrySendError::Full(WriterMsg::Sync(_))) | Err(TrySendError::Disconnected(_)) => {
                self.0.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until everything submitted before this call has been written
    /// (or its write has failed), at most `timeout`; false on timeout.
    /// Blocking: for shutdown, so the last second of flows is not lost.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut msg = WriterMsg::Sync(ack_tx);
        loop {
            match self.0.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return false,
            }
        }
        ack_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Flows matching `q` from the database. Blocking.
    pub fn query(&self, q: &FlowQuery) -> Result<Vec<Flow>, StoreError> {
        let mut r = self
            .0
            .reader
            .lock()
            .map_err(|_| StoreError::Unavailable("reader lock poisoned".into()))?;
        let generation = self.0.generation.load(Ordering::Relaxed);
        if r.generation != generation {
            r.store = None;
        }
        if r.store.is_none() {
            if r.failed_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
            {
                return Err(StoreError::Unavailable(
                    "the last attempt to open it failed; retrying in a few seconds".into(),
                ));
            }
            match Store::open_existing(&self.0.opts.path) {
                Ok(s) => {
                    r.store = Some(s);
                    r.generation = generation;
                    r.failed_at = None;
                }
                Err(e) => {
                    r.failed_at = Some(Instant::now());
                    if !matches!(e, StoreError::Missing { .. } | StoreError::Outdated { .. }) {
                        self.0.stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
        let res = r.store.as_ref().map(|s| s.query(q));
        match res {
            Some(Ok(flows)) => Ok(flows),
            Some(Err(e)) => {
                self.0.stats.errors.fetch_add(1, Ordering::Relaxed);
                r.store = None;
                Err(e)
            }
            None => Err(StoreError::Unavailable("not open".into())),
        }
    }
}
