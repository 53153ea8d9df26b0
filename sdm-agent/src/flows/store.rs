//! The denied flows database: SQLite (bundled) at `<[state] dir>/flows.db`,
//! WAL mode, a busy timeout, a versioned schema (`meta` table; migrations
//! in [`MIGRATIONS`]), upserts in batches, retention.
//!
//! The agent writes from one thread ([`StoreHandle::spawn`]) that owns its
//! connection; readers (the HTTP API, `sdm-agent flows`) use their own. A
//! store that cannot be opened or written (corrupted, locked, full disk,
//! schema from a newer agent) is reported (`tracing` error and
//! `sdm_store_errors_total`) and retried later; it never stops the agent or
//! enforcement: flows keep being aggregated in memory meanwhile, and the
//! changes are kept (bounded) and written once the store is back. A file
//! that is not a database or is corrupted is moved aside
//! (`flows.db.corrupt-<unix seconds>`) so that recording can resume.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::flows::flow::{now_ms, Flow, FlowKey, FlowQuery};

/// The database file in the state directory.
pub const DB_FILE: &str = "flows.db";

/// The schema, one migration per version: `MIGRATIONS[i]` takes a database
/// from version `i` to `i + 1`. Append only; never edit a released one.
pub const MIGRATIONS: &[&str] = &[
    // 1: flows aggregated by (direction, proto, remote, port, comm, verdict).
    "CREATE TABLE IF NOT EXISTS meta (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );
     CREATE TABLE flows (
         id INTEGER PRIMARY KEY,
         direction TEXT NOT NULL,
         proto TEXT NOT NULL,
         remote TEXT NOT NULL,
         port INTEGER NOT NULL,
         comm TEXT NOT NULL,
         verdict TEXT NOT NULL,
         hostname TEXT,
         reason TEXT NOT NULL,
         local TEXT,
         pid INTEGER NOT NULL,
         uid INTEGER NOT NULL,
         cgroup_id INTEGER NOT NULL,
         first_seen INTEGER NOT NULL,
         last_seen INTEGER NOT NULL,
         count INTEGER NOT NULL,
         UNIQUE (direction, proto, remote, port, comm, verdict)
     );
     CREATE INDEX flows_last_seen ON flows (last_seen);",
];

/// The schema version this agent writes and reads.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long a statement waits for a lock held by another connection.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `<state dir>/flows.db`.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DB_FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("flow store {}: {op}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("flow store {}: {op}: {source}", path.display())]
    Sqlite {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("flow store {}: schema version {found} is newer than this sdm-agent's ({supported}); upgrade sdm-agent or move the file aside", path.display())]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("flow store {}: schema version {found}, this sdm-agent reads {supported}; the running agent upgrades it when it opens it", path.display())]
    Outdated {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("flow store {}: no such database (the agent creates it when it runs)", path.display())]
    Missing { path: PathBuf },
    #[error("flow store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    fn code(&self) -> Option<ErrorCode> {
        match self {
            StoreError::Sqlite { source, .. } => source.sqlite_error_code(),
            _ => None,
        }
    }

    /// The file is not a database, or is damaged.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self.code(),
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
        )
    }

    /// Another connection holds a lock (past the busy timeout).
    pub fn is_busy(&self) -> bool {
        matches!(
            self.code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        )
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One open database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

impl Store {
    fn sql<'a>(&'a self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
        move |source| StoreError::Sqlite {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Opens (creating the directory and the file if needed) and migrates
    /// to [`SCHEMA_VERSION`]: what the agent does.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, DEFAULT_BUSY_TIMEOUT)
    }

    pub fn open_with(path: &Path, busy_timeout: Duration) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|source| StoreError::Io {
                    op: "create the directory",
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let existed = path.exists();
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            op: "open",
            path: path.to_path_buf(),
            source,
        })?;
        if !existed {
            use std::os::unix::fs::PermissionsExt as _;
            // Process names and destinations: not for every local user.
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640));
        }
        let mut s = Self {
            conn,
            path: path.to_path_buf(),
        };
        s.setup(busy_timeout)?;
        s.migrate()?;
        Ok(s)
    }

    /// Opens an existing database without creating or migrating it: what
    /// the `flows` and `suggest` commands and the HTTP API do.
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .or_else(|_| {
                Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
            })
            .map_err(|source| StoreError::Sqlite {
                op: "open",
                path: path.to_path_buf(),
                source,
            })?;
        let s = Self {
            conn,
            path: path.to_path_buf(),
        };
        s.conn
            .busy_timeout(DEFAULT_BUSY_TIMEOUT)
            .map_err(s.sql("set the busy timeout"))?;
        let found = s.schema_version()?;
        if found == 0 && s.is_blank()? {
            // Created by the agent a moment ago, its schema not written
            // yet: as good as missing, not an old store.
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: s.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            return Err(StoreError::Outdated {
                path: s.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn setup(&mut self, busy_timeout: Duration) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(busy_timeout)
            .map_err(self.sql("set the busy timeout"))?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(self.sql("switch to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %self.path.display(), mode, "the flow store is not in WAL mode");
        }
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(self.sql("set synchronous"))?;
        Ok(())
    }

    /// The schema version recorded in `meta` (0 for an empty database).
    /// Whether the database has no tables at all.
    fn is_blank(&self) -> Result<bool, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(self.sql("read the schema"))?;
        Ok(n == 0)
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let has_meta: Option<String> = self
            .conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read the schema"))?;
        if has_meta.is_none() {
            return Ok(0);
        }
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read the schema version"))?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let path = self.path.clone();
            let err = |source| StoreError::Sqlite {
                op: "migrate the schema",
                path: path.clone(),
                source,
            };
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![(i + 1).to_string()],
            )
            .map_err(err)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('written_by', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![concat!("sdm-agent ", env!("CARGO_PKG_VERSION"))],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            if found > 0 {
                tracing::info!(path = %self.path.display(), from = i, to = i + 1, "flow store schema upgraded");
            }
        }
        Ok(())
    }

    /// Adds flows in one transaction: a flow already stored gets the
    /// counts added, the seen times widened, and the latest process,
    /// reason and hostname (a known hostname is never replaced by none).
    pub fn upsert<'a>(
        &mut self,
        flows: impl IntoIterator<Item = &'a Flow>,
    ) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            op: "write flows",
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut n = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO flows (direction, proto, remote, port, comm, verdict, hostname, reason, local,
                                        pid, uid, cgroup_id, first_seen, last_seen, count)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                     ON CONFLICT (direction, proto, remote, port, comm, verdict) DO UPDATE SET
                         hostname = coalesce(excluded.hostname, flows.hostname),
                         reason = CASE WHEN excluded.last_seen >= flows.last_seen THEN excluded.reason ELSE flows.reason END,
                         local = CASE WHEN excluded.last_seen >= flows.last_seen THEN coalesce(excluded.local, flows.local) ELSE flows.local END,
                         pid = CASE WHEN excluded.last_seen >= flows.last_seen THEN excluded.pid ELSE flows.pid END,
                         uid = CASE WHEN excluded.last_seen >= flows.last_seen THEN excluded.uid ELSE flows.uid END,
                         cgroup_id = CASE WHEN excluded.last_seen >= flows.last_seen THEN excluded.cgroup_id ELSE flows.cgroup_id END,
                         first_seen = min(flows.first_seen, excluded.first_seen),
                         last_seen = max(flows.last_seen, excluded.last_seen),
                         count = flows.count + excluded.count",
                )
                .map_err(err)?;
            for f in flows {
                stmt.execute(params![
                    f.key.direction,
                    f.key.proto,
                    f.key.remote.to_string(),
                    f.key.port,
                    f.key.comm,
                    f.key.verdict,
                    f.hostname,
                    f.reason,
                    f.local.map(|a| a.to_string()),
                    f.pid,
                    f.uid,
                    f.cgroup_id as i64,
                    to_i64(f.first_seen),
                    to_i64(f.last_seen),
                    to_i64(f.count),
                ])
                .map_err(err)?;
                n += 1;
            }
        }
        tx.commit().map_err(err)?;
        Ok(n)
    }

    /// Flows matching `q`, most recently seen first.
    pub fn query(&self, q: &FlowQuery) -> Result<Vec<Flow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT direction, proto, remote, port, comm, verdict, hostname, reason, local,
                        pid, uid, cgroup_id, first_seen, last_seen, count
                 FROM flows
                 WHERE last_seen >= ?1 AND (?2 IS NULL OR direction = ?2) AND (?3 IS NULL OR verdict = ?3)
                 ORDER BY last_seen DESC, id
                 LIMIT ?4",
            )
            .map_err(self.sql("query flows"))?;
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(
                params![to_i64(q.since_ms), q.direction, q.verdict, limit],
                |r| {
                    let remote: String = r.get(2)?;
                    let local: Option<String> = r.get(8)?;
                    let cgroup_id: i64 = r.get(11)?;
                    let first: i64 = r.get(12)?;
                    let last: i64 = r.get(13)?;
                    let count: i64 = r.get(14)?;
                    Ok(Flow {
                        key: FlowKey {
                            direction: r.get(0)?,
                            proto: r.get(1)?,
                            remote: remote.parse().map_err(|e| {
                                rusqlite::Error::FromSqlConversionFailure(
                                    2,
                                    rusqlite::types::Type::Text,
                                    Box::new(e),
                                )
                            })?,
                            port: r.get(3)?,
                            comm: r.get(4)?,
                            verdict: r.get(5)?,
                        },
                        hostname: r.get(6)?,
                        reason: r.get(7)?,
                        local: local.and_then(|l| l.parse().ok()),
                        pid: r.get(9)?,
                        uid: r.get(10)?,
                        cgroup_id: cgroup_id as u64,
                        first_seen: u64::try_from(first).unwrap_or(0),
                        last_seen: u64::try_from(last).unwrap_or(0),
                        count: u64::try_from(count).unwrap_or(0),
                    })
                },
            )
            .map_err(self.sql("query flows"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.sql("read flows"))
    }

    /// Deletes the flows last seen before `cutoff_ms`; how many.
    pub fn retain(&mut self, cutoff_ms: u64) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM flows WHERE last_seen < ?1",
                params![to_i64(cutoff_ms)],
            )
            .map_err(self.sql("apply the retention"))
    }

    /// Bytes the database uses: its pages less the free ones. Free pages
    /// are reused by the next writes, so the file stays near this size.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let get = |pragma: &str| -> Result<i64, StoreError> {
            self.conn
                .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
                .map_err(self.sql("measure the database"))
        };
        let pages = get("page_count")? - get("freelist_count")?;
        Ok(
            u64::try_from(pages.max(0)).unwrap_or(0)
                * u64::try_from(get("page_size")?).unwrap_or(0),
        )
    }

    /// Evicts the least recently seen flows until the database uses at
    /// most `max_bytes` (down to 90% of it, so one more flow does not evict
    /// again at once). Returns how many flows were evicted.
    pub fn evict_to(&mut self, max_bytes: u64) -> Result<u64, StoreError> {
        let mut evicted = 0u64;
        // Each round deletes what the average row size says is too much;
        // pages freed by a delete are not exactly proportional to rows
        // deleted, hence a few rounds.
        for _ in 0..32 {
            let used = self.used_bytes()?;
            if used <= max_bytes {
                break;
            }
            let rows = self.count()?;
            if rows == 0 {
                break; // nothing left to evict: the schema alone is that big
            }
            let target = max_bytes / 10 * 9;
            let per_row = (used / rows).max(1);
            let n = (used.saturating_sub(target) / per_row).clamp(1, rows);
            let deleted = self
                .conn
                .execute(
                    "DELETE FROM flows WHERE rowid IN
                       (SELECT rowid FROM flows ORDER BY last_seen, first_seen LIMIT ?1)",
                    params![to_i64(n)],
                )
                .map_err(self.sql("evict the oldest flows"))?;
            evicted += deleted as u64;
        }
        Ok(evicted)
    }

    /// How many flows are stored.
    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
            .map_err(self.sql("count flows"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Moves a corrupted database (and its WAL and shared-memory files) aside.
pub fn quarantine(path: &Path) -> std::io::Result<Option<PathBuf>> {
    if !path.exists() {
        return Ok(None);
    }
    let secs = now_ms() / 1000;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| DB_FILE.into());
    let aside = path.with_file_name(format!("{name}.corrupt-{secs}"));
    std::fs::rename(path, &aside)?;
    for ext in ["-wal", "-shm"] {
        let side = path.with_file_name(format!("{name}{ext}"));
        if side.exists() {
            let _ = std::fs::rename(
                &side,
                aside.with_file_name(format!("{name}.corrupt-{secs}{ext}")),
            );
        }
    }
    Ok(Some(aside))
}

// ---------------------------------------------------------------------------
// The agent's store: a writer thread and a reader connection

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

struct Reader {
    store: Option<Store>,
    generation: u64,
    failed_at: Option<Instant>,
}

/// What the writer thread is sent.
enum WriterMsg {
    Batch(Vec<Flow>),
    /// Write what is pending now, then answer (used at shutdown).
    Sync(mpsc::Sender<()>),
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

fn writer_loop(
    opts: StoreOptions,
    stats: StoreStats,
    generation: Arc<AtomicU64>,
    rx: mpsc::Receiver<WriterMsg>,
) {
    let mut store: Option<Store> = None;
    let mut retry_at = Instant::now();
    let mut retain_at = Instant::now();
    let mut pending: HashMap<FlowKey, Flow> = HashMap::new();
    let mut report = Reporter::default();
    let mut evict_log = EvictionLog::default();
    let mut running = true;
    let mut waiting: Vec<mpsc::Sender<()>> = Vec::new();
    let fail = |e: &StoreError, report: &mut Reporter| {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        report.error(e);
    };
    while running {
        // Whoever asked for a sync is answered after this round's write,
        // whatever its outcome (a broken store must not hang a shutdown).
        for ack in waiting.drain(..) {
            let _ = ack.send(());
        }
        let mut take = |msg: WriterMsg, pending: &mut HashMap<FlowKey, Flow>| match msg {
            WriterMsg::Batch(batch) => merge_into(pending, batch),
            WriterMsg::Sync(ack) => waiting.push(ack),
        };
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(msg) => take(msg, &mut pending),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => running = false,
        }
        while let Ok(msg) = rx.try_recv() {
            take(msg, &mut pending);
        }
        let dropped = cap_pending(&mut pending, opts.max_pending);
        if dropped > 0 {
            let total = stats.dropped.fetch_add(dropped as u64, Ordering::Relaxed) + dropped as u64;
            tracing::warn!(dropped, total, max_pending = opts.max_pending, "flow store unavailable for long: the oldest pending flows were dropped (the audit log has them)");
        }
        let now = Instant::now();
        if store.is_none() && now >= retry_at {
            match Store::open_with(&opts.path, opts.busy_timeout) {
                Ok(s) => {
                    report.ok(&opts.path);
                    tracing::info!(path = %s.path().display(), schema = SCHEMA_VERSION, "flow store open");
                    generation.fetch_add(1, Ordering::Relaxed);
                    stats.available.store(true, Ordering::Relaxed);
                    if let Ok(n) = s.count() {
                        stats.stored.store(n, Ordering::Relaxed);
                    }
                    retain_at = now;
                    store = Some(s);
                }
                Err(e) => {
                    stats.available.store(false, Ordering::Relaxed);
                    fail(&e, &mut report);
                    retry_at = now + opts.retry;
                    if e.is_corrupt() {
                        match quarantine(&opts.path) {
                            Ok(Some(aside)) => {
                                tracing::error!(path = %opts.path.display(), moved_to = %aside.display(), "the flow store was not a readable database; moved it aside and starting a new one");
                                retry_at = now;
                            }
                            Ok(None) => {}
                            Err(qe) => {
                                tracing::error!(path = %opts.path.display(), error = %qe, "cannot move the corrupted flow store aside")
                            }
                        }
                    }
                }
            }
        }
        let Some(s) = store.as_mut() else { continue };
        let mut result = Ok(());
        let mut wrote = false;
        if !pending.is_empty() {
            match s.upsert(pending.values()) {
                Ok(_) => {
                    pending.clear();
                    wrote = true;
                }
                Err(e) => result = Err(e),
            }
        }
        if result.is_ok() && now >= retain_at {
            let cutoff = now_ms()
                .saturating_sub(u64::try_from(opts.retention.as_millis()).unwrap_or(u64::MAX));
            match s.retain(cutoff) {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(deleted = n, "flow store retention applied");
                    }
                    wrote = true;
                    retain_at = now + opts.retention_every;
                }
                Err(e) => result = Err(e),
            }
        }
        if result.is_ok() && wrote {
            // The cap is checked after every write, so the database exceeds
            // it by one batch at most, and only until this runs.
            match s.evict_to(opts.max_bytes) {
                Ok(0) => {}
                Ok(n) => {
                    let total = stats.evictions.fetch_add(n, Ordering::Relaxed) + n;
                    evict_log.note(n, total, opts.max_bytes);
                }
                Err(e) => result = Err(e),
            }
        }
        if result.is_ok() && wrote {
            match s.count() {
                Ok(n) => stats.stored.store(n, Ordering::Relaxed),
                Err(e) => result = Err(e),
            }
        }
        match result {
            Ok(()) => report.ok(&opts.path),
            Err(e) => {
                fail(&e, &mut report);
                if !e.is_busy() {
                    // Reopen (and move a corrupted file aside) on the next round.
                    store = None;
                    stats.available.store(false, Ordering::Relaxed);
                    retry_at = now + opts.retry;
                    if e.is_corrupt() {
                        if let Ok(Some(aside)) = quarantine(&opts.path) {
                            retry_at = now;
                            tracing::error!(moved_to = %aside.display(), "the flow store is corrupted; moved it aside and starting a new one");
                        }
                    }
                }
            }
        }
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

#[cfg(test)]
mod blank_tests {
    use super::*;

    #[test]
    fn a_store_being_created_reads_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        // An empty SQLite file: what the writer has made before its schema.
        drop(Connection::open(&path).unwrap());
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(
            Store::open_existing(&path),
            Err(StoreError::Missing { .. })
        ));
        // A database with someone else's tables is not mistaken for one.
        let other = dir.path().join("other.db");
        let c = Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE t (x INTEGER);").unwrap();
        drop(c);
        assert!(matches!(
            Store::open_existing(&other),
            Err(StoreError::Outdated { .. })
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::flow::FlowKey;

    fn flow(remote: &str, port: u16, comm: &str, t: u64, count: u64) -> Flow {
        Flow {
            key: FlowKey {
                direction: "egress".into(),
                proto: "tcp".into(),
                remote: remote.parse().unwrap(),
                port,
                comm: comm.into(),
                verdict: "dropped".into(),
            },
            hostname: None,
            reason: "no_rule".into(),
            local: Some("10.0.0.1".parse().unwrap()),
            pid: 10,
            uid: 0,
            cgroup_id: u64::MAX - 1,
            first_seen: t,
            last_seen: t,
            count,
        }
    }

    fn all() -> FlowQuery {
        FlowQuery {
            since_ms: 0,
            direction: None,
            verdict: None,
            limit: usize::MAX,
        }
    }

    #[test]
    fn round_trip_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/sub/flows.db");
        let mut a = flow("192.0.2.1", 443, "curl", 1_000, 2);
        a.hostname = Some("api.example.com".into());
        let b = flow("2001:db8::1", 22, "ssh", 2_000, 1);
        {
            let mut s = Store::open(&path).unwrap();
            assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
            assert_eq!(s.upsert([&a, &b]).unwrap(), 2);
            // The same flow again: counts add up, times widen, the name stays.
            let mut later = flow("192.0.2.1", 443, "curl", 5_000, 3);
            later.pid = 11;
            s.upsert([&later]).unwrap();
            let mut earlier = flow("192.0.2.1", 443, "curl", 500, 1);
            earlier.pid = 9;
            s.upsert([&earlier]).unwrap();
        }
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let s = Store::open(&path).unwrap();
        let got = s.query(&all()).unwrap();
        assert_eq!(got.len(), 2);
        let ga = got.iter().find(|f| f.key.comm == "curl").unwrap();
        assert_eq!(
            (ga.first_seen, ga.last_seen, ga.count, ga.pid),
            (500, 5_000, 6, 11)
        );
        assert_eq!(ga.hostname.as_deref(), Some("api.example.com"));
        assert_eq!(ga.cgroup_id, u64::MAX - 1);
        assert_eq!(ga.local, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(got[0].key.comm, "curl", "most recent first");
        assert_eq!(got[1], b);
        assert_eq!(s.count().unwrap(), 2);
        // Readers see the same.
        let r = Store::open_existing(&path).unwrap();
        assert_eq!(r.query(&all()).unwrap().len(), 2);
        let mode: String = r
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn query_filters() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("flows.db")).unwrap();
        let mut fl = Vec::new();
        for i in 0..10u64 {
            let mut f = flow("192.0.2.1", 1000 + i as u16, "x", i * 100, 1);
            if i % 2 == 0 {
                f.key.verdict = "audit".into();
            }
            if i % 3 == 0 {
                f.key.direction = "ingress".into();
            }
            fl.push(f);
        }
        s.upsert(&fl).unwrap();
        let q = |since, d: Option<&str>, v: Option<&str>, limit| FlowQuery {
            since_ms: since,
            direction: d.map(String::from),
            verdict: v.map(String::from),
            limit,
        };
        assert_eq!(s.query(&q(500, None, None, 100)).unwrap().len(), 5);
        assert_eq!(s.query(&q(0, Some("ingress"), None, 100)).unwrap().len(), 4);
        assert_eq!(s.query(&q(0, None, Some("audit"), 100)).unwrap().len(), 5);
        let both = s
            .query(&q(0, Some("egress"), Some("dropped"), 100))
            .unwrap();
        assert!(both
            .iter()
            .all(|f| f.key.direction == "egress" && f.key.verdict == "dropped"));
        assert_eq!(both.len(), 3); // i = 1, 5, 7
        assert_eq!(
            s.query(&q(0, None, None, 3))
                .unwrap()
                .iter()
                .map(|f| f.last_seen)
                .collect::<Vec<_>>(),
            vec![900, 800, 700]
        );
        // Same answers as the in-memory table.
        let mut t = crate::flows::table::FlowTable::new(100, Duration::from_secs(3600));
        for f in &fl {
            t.record(f);
        }
        for query in [
            q(500, None, None, 100),
            q(0, Some("egress"), Some("dropped"), 100),
            q(0, None, None, 3),
        ] {
            assert_eq!(s.query(&query).unwrap(), t.query(&query));
        }
    }

    #[test]
    fn retention_deletes_old_flows() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("flows.db")).unwrap();
        s.upsert([
            &flow("192.0.2.1", 1, "a", 1_000, 1),
            &flow("192.0.2.2", 1, "b", 5_000, 1),
        ])
        .unwrap();
        assert_eq!(s.retain(2_000).unwrap(), 1);
        let left = s.query(&all()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].key.comm, "b");
        assert_eq!(s.retain(2_000).unwrap(), 0);
    }

    /// Issue 16: the store had no size cap; a flood of new flows grew it
    /// until the disk was full. Fed far more flows than fit, it stays under
    /// the cap, the oldest gone first.
    #[test]
    fn the_store_stays_under_max_bytes_evicting_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        let mut s = Store::open(&path).unwrap();
        let cap: u64 = 256 << 10;
        let mut evicted = 0;
        let mut t = 1_000u64;
        for batch in 0..40u32 {
            let flows: Vec<Flow> = (0..500u32)
                .map(|i| {
                    t += 1;
                    let n = batch * 500 + i;
                    let remote = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
                    flow(&remote, 443, "flooder", t, 1)
                })
                .collect();
            s.upsert(&flows).unwrap();
            evicted += s.evict_to(cap).unwrap();
            assert!(
                s.used_bytes().unwrap() <= cap,
                "batch {batch}: over the cap"
            );
        }
        let left = s.count().unwrap();
        assert!(evicted > 0 && left > 0, "evicted {evicted}, left {left}");
        assert_eq!(evicted + left, 20_000);
        // The newest flow is kept, the oldest is gone.
        let kept = s.query(&all()).unwrap();
        assert_eq!(kept[0].last_seen, t);
        assert!(kept.iter().all(|f| f.last_seen > 1_000 + evicted));
        // Freed pages are reused: the file stays near the cap.
        drop(s);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 2 * cap, "flows.db is {size} bytes");
    }

    #[test]
    fn the_service_counts_evictions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        let stats = StoreStats::default();
        let h = StoreHandle::spawn(
            StoreOptions {
                max_bytes: 128 << 10,
                ..StoreOptions::new(&path, Duration::from_secs(86400))
            },
            stats.clone(),
        );
        let now = now_ms();
        for batch in 0..10u32 {
            h.submit(
                (0..500u32)
                    .map(|i| {
                        let n = batch * 500 + i;
                        // Recent: retention must not be what removes them.
                        let t = now + u64::from(n);
                        flow(&format!("10.9.{}.{}", n >> 8, n & 255), 22, "x", t, 1)
                    })
                    .collect(),
            );
            assert!(h.sync(Duration::from_secs(10)));
        }
        let evictions = stats.evictions.load(Ordering::Relaxed);
        assert!(evictions > 0);
        assert_eq!(
            evictions + stats.stored.load(Ordering::Relaxed),
            5_000,
            "every flow is stored or counted as evicted"
        );
        assert!(Store::open(&path).unwrap().used_bytes().unwrap() <= 128 << 10);
    }

    #[test]
    fn garbage_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let e = Store::open(&path).unwrap_err();
        assert!(e.is_corrupt(), "{e}");
        assert!(e.to_string().contains("flows.db"), "{e}");
        let e = Store::open_existing(&path).unwrap_err();
        assert!(e.is_corrupt(), "{e}");
        // Moved aside, a fresh store opens.
        let aside = quarantine(&path).unwrap().unwrap();
        assert_eq!(std::fs::read(&aside).unwrap(), vec![0x5a; 8192]);
        Store::open(&path).unwrap();
    }

    #[test]
    fn schema_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        // A database from a newer agent: refused, untouched.
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('schema_version', '99'); CREATE TABLE flows_v99 (x);").unwrap();
        }
        let e = Store::open(&path).unwrap_err();
        assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
        assert!(e.to_string().contains("newer"), "{e}");
        assert!(matches!(
            Store::open_existing(&path).unwrap_err(),
            StoreError::TooNew { .. }
        ));
        std::fs::remove_file(&path).unwrap();
        // An empty database (version 0) is migrated; a reader refuses to.
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE unrelated (x);")
            .unwrap();
        assert!(matches!(
            Store::open_existing(&path).unwrap_err(),
            StoreError::Outdated { found: 0, .. }
        ));
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        drop(s);
        // Reopening a current one migrates nothing.
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let by: String = s
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'written_by'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(by.starts_with("sdm-agent "), "{by}");
        assert!(matches!(
            Store::open_existing(&dir.path().join("nope.db")).unwrap_err(),
            StoreError::Missing { .. }
        ));
    }

    #[test]
    fn locked_database_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        drop(Store::open(&path).unwrap());
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let mut s = Store::open_with(&path, Duration::from_millis(50)).unwrap();
        let e = s.upsert([&flow("192.0.2.1", 1, "a", 1, 1)]).unwrap_err();
        assert!(e.is_busy(), "{e}");
        holder.execute_batch("COMMIT").unwrap();
        s.upsert([&flow("192.0.2.1", 1, "a", 1, 1)]).unwrap();
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn service_recovers_from_a_corrupted_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        std::fs::write(&path, b"this is not a database, just garbage, long enough to have a header........................................").unwrap();
        let stats = StoreStats::default();
        let h = StoreHandle::spawn(
            StoreOptions::new(&path, Duration::from_secs(86400)),
            stats.clone(),
        );
        let now = now_ms();
        h.submit(vec![flow("192.0.2.1", 443, "curl", now, 1)]);
        wait_for("the flow to be stored", || {
            h.query(&all()).map(|f| f.len() == 1).unwrap_or(false)
        });
        assert!(
            stats.errors.load(Ordering::Relaxed) >= 1,
            "the corruption was counted"
        );
        assert!(stats.available.load(Ordering::Relaxed));
        assert_eq!(stats.stored.load(Ordering::Relaxed), 1);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("flows.db.corrupt-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
    }

    #[test]
    fn service_keeps_flows_while_the_store_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        // The state "directory" is a file: opening fails until it is fixed.
        let state = dir.path().join("state");
        std::fs::write(&state, "").unwrap();
        let path = state.join("flows.db");
        let stats = StoreStats::default();
        let mut opts = StoreOptions::new(&path, Duration::from_secs(86400));
        opts.retry = Duration::from_millis(100);
        let h = StoreHandle::spawn(opts, stats.clone());
        let now = now_ms();
        h.submit(vec![flow("192.0.2.1", 443, "curl", now, 2)]);
        wait_for("an error to be counted", || {
            stats.errors.load(Ordering::Relaxed) >= 1
        });
        assert!(!stats.available.load(Ordering::Relaxed));
        assert!(h.query(&all()).is_err());
        h.submit(vec![flow("192.0.2.1", 443, "curl", now + 1, 3)]);
        std::fs::remove_file(&state).unwrap();
        wait_for("the pending flow to be written", || {
            h.query(&all())
                .map(|f| f.len() == 1 && f[0].count == 5)
                .unwrap_or(false)
        });
        assert!(stats.available.load(Ordering::Relaxed));
    }

    /// A store down for long with more pending flows than it may keep:
    /// the oldest are dropped, counted (`sdm_store_dropped_flows_total`)
    /// and logged; the newest are written once the store is back.
    #[test]
    fn pending_flows_over_the_cap_are_counted_and_the_newest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::write(&state, "").unwrap();
        let stats = StoreStats::default();
        let mut opts = StoreOptions::new(state.join("flows.db"), Duration::from_secs(86400));
        opts.retry = Duration::from_millis(100);
        opts.max_pending = 5;
        let h = StoreHandle::spawn(opts, stats.clone());
        let now = now_ms();
        h.submit(
            (0..12u16)
                .map(|i| flow("192.0.2.1", 1000 + i, "x", now + u64::from(i), 1))
                .collect(),
        );
        wait_for("the dropped flows to be counted", || {
            stats.dropped.load(Ordering::Relaxed) == 7
        });
        std::fs::remove_file(&state).unwrap();
        wait_for("the kept flows to be written", || {
            h.query(&all()).map(|f| f.len() == 5).unwrap_or(false)
        });
        let mut ports: Vec<u16> = h
            .query(&all())
            .unwrap()
            .iter()
            .map(|f| f.key.port)
            .collect();
        ports.sort();
        assert_eq!(ports, [1007, 1008, 1009, 1010, 1011], "the newest are kept");
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn service_applies_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.upsert([&flow("192.0.2.1", 1, "old", 1_000, 1)]).unwrap();
        }
        let stats = StoreStats::default();
        let h = StoreHandle::spawn(
            StoreOptions::new(&path, Duration::from_secs(3600)),
            stats.clone(),
        );
        h.submit(vec![flow("192.0.2.2", 1, "new", now_ms(), 1)]);
        wait_for("retention and the write", || {
            h.query(&all())
                .map(|f| f.len() == 1 && f[0].key.comm == "new")
                .unwrap_or(false)
        });
        assert_eq!(stats.stored.load(Ordering::Relaxed), 1);
    }
}
