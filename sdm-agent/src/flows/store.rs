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

mod handle;
mod queries;
mod retention;
mod schema;
mod writer;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::flows::flow::now_ms;

pub use handle::StoreHandle;
pub use schema::{MIGRATIONS, SCHEMA_VERSION};
pub use writer::{StoreOptions, StoreStats};

/// The database file in the state directory.
pub const DB_FILE: &str = "flows.db";

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

/// Maps a SQLite error to a [`StoreError`] naming the operation and the file.
fn sqlite_error<'p>(
    op: &'static str,
    path: &'p Path,
) -> impl Fn(rusqlite::Error) -> StoreError + Copy + 'p {
    move |source| StoreError::Sqlite {
        op,
        path: path.to_path_buf(),
        source,
    }
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
    fn sql(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
        sqlite_error(op, &self.path)
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

#[cfg(test)]
mod tests;
