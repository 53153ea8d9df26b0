//! The bounded in-memory flow table: decides which flows are new, and
//! serves the dashboard when the store is unavailable.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::flow::{Flow, FlowKey, FlowQuery};

/// Most flows kept in memory; the least recently seen go first.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// A flow not seen for this long is logged again when it comes back.
pub const DEFAULT_RELOG_AFTER: Duration = Duration::from_secs(3600);

/// The bounded in-memory flow table.
#[derive(Debug)]
pub struct FlowTable {
    map: HashMap<FlowKey, Flow>,
    cap: usize,
    relog_after_ms: u64,
    /// Flows dropped to stay within `cap`, in all.
    evicted: u64,
}

/// The table as the pipeline and the HTTP server share it.
pub type SharedTable = Arc<Mutex<FlowTable>>;

impl Default for FlowTable {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_RELOG_AFTER)
    }
}

impl FlowTable {
    pub fn new(cap: usize, relog_after: Duration) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(1),
            relog_after_ms: u64::try_from(relog_after.as_millis()).unwrap_or(u64::MAX),
            evicted: 0,
        }
    }

    /// A table to share between the pipeline and the HTTP server.
    pub fn shared(cap: usize) -> SharedTable {
        Arc::new(Mutex::new(Self::new(cap, DEFAULT_RELOG_AFTER)))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.map.get(key)
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Flows dropped so far to stay within the capacity.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Folds an observation into the table; true when the flow is new: not
    /// in the table (first seen since start, or evicted long ago), or not
    /// seen for longer than the relog interval.
    pub fn record(&mut self, obs: &Flow) -> bool {
        if let Some(f) = self.map.get_mut(&obs.key) {
            let stale = obs.first_seen.saturating_sub(f.last_seen) > self.relog_after_ms;
            f.merge(obs);
            return stale;
        }
        if self.map.len() >= self.cap {
            self.evict();
        }
        self.map.insert(obs.key.clone(), obs.clone());
        true
    }

    /// Drops the least recently seen tenth of the table (at least one), so
    /// that eviction costs O(log n) per insert on average.
    fn evict(&mut self) {
        let n = (self.cap / 10).max(1);
        let mut ages: Vec<(u64, FlowKey)> = self
            .map
            .iter()
            .map(|(k, f)| (f.last_seen, k.clone()))
            .collect();
        let n = n.min(ages.len());
        if n == 0 {
            return;
        }
        ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
        for (_, k) in ages.into_iter().take(n) {
            self.map.remove(&k);
        }
        self.evicted += n as u64;
    }

    /// Flows matching `q`, newest first.
    pub fn query(&self, q: &FlowQuery) -> Vec<Flow> {
        let mut out: Vec<Flow> = self
            .map
            .values()
            .filter(|f| f.matches(q))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            b.last_seen
                .cmp(&a.last_seen)
                .then_with(|| a.key.cmp(&b.key))
        });
        out.truncate(q.limit);
        out
    }
}
