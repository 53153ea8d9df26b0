//! The schema: its migrations, the connection settings, and the version
//! recorded in the `meta` table.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use super::{sqlite_error, Store, StoreError};

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
    // 2: the remote's port of an ingress flow (the service a reply came
    // from); NULL in rows written before.
    "ALTER TABLE flows ADD COLUMN remote_port INTEGER;",
];

/// The schema version this agent writes and reads.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

impl Store {
    pub(super) fn setup(&mut self, busy_timeout: Duration) -> Result<(), StoreError> {
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

    /// Whether the database has no tables at all.
    pub(super) fn is_blank(&self) -> Result<bool, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(self.sql("read the schema"))?;
        Ok(n == 0)
    }

    /// The schema version recorded in `meta` (0 for an empty database).
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

    pub(super) fn migrate(&mut self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let err = sqlite_error("migrate the schema", &self.path);
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
}
