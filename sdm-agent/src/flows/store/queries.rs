//! Writing and reading flows.

use rusqlite::params;

use super::{sqlite_error, to_i64, Store, StoreError};
use crate::flows::flow::{Flow, FlowKey, FlowQuery};

impl Store {
    /// Adds flows in one transaction: a flow already stored gets the
    /// counts added, the seen times widened, and the latest process,
    /// reason and hostname (a known hostname is never replaced by none).
    pub fn upsert<'a>(
        &mut self,
        flows: impl IntoIterator<Item = &'a Flow>,
    ) -> Result<usize, StoreError> {
        let err = sqlite_error("write flows", &self.path);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut n = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO flows (direction, proto, remote, port, comm, verdict, hostname, reason, local,
                                        pid, uid, cgroup_id, first_seen, last_seen, count, remote_port)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                     ON CONFLICT (direction, proto, remote, port, comm, verdict) DO UPDATE SET
                         hostname = coalesce(excluded.hostname, flows.hostname),
                         reason = CASE WHEN excluded.last_seen >= flows.last_seen THEN excluded.reason ELSE flows.reason END,
                         local = CASE WHEN excluded.last_seen >= flows.last_seen THEN coalesce(excluded.local, flows.local) ELSE flows.local END,
                         remote_port = CASE WHEN excluded.last_seen >= flows.last_seen THEN coalesce(excluded.remote_port, flows.remote_port) ELSE flows.remote_port END,
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
                    f.remote_port,
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
                        pid, uid, cgroup_id, first_seen, last_seen, count, remote_port
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
                        remote_port: r.get(15)?,
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
    /// How many flows are stored.
    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
            .map_err(self.sql("count flows"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
