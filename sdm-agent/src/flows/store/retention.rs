//! Retention and the size cap: what keeps the database bounded.

use rusqlite::params;

use super::{to_i64, Store, StoreError};

impl Store {
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
}
