//! The rule maps: ids given to rule names (kept across restarts, so
//! counters continue), and the allowed and denied counters.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::PerCpuValues;
use sdm_common::{
    deny_index, rule_stats_index, Counter, RuleName, MAP_DENY_STATS, MAP_RULE_NAMES, MAP_RULE_STATS,
};

use super::Maps;
use crate::kernel::dataplane::{map_err, DataplaneError};

/// The names map's entry for `name`: its bytes, cut to leave room for the
/// NUL the entry ends with.
pub(super) fn rule_name_entry(name: &str) -> RuleName {
    let mut rn = RuleName::default();
    let b = name.as_bytes();
    let n = b.len().min(rn.name.len() - 1);
    rn.name[..n].copy_from_slice(&b[..n]);
    rn
}

/// The name an entry of the names map holds, `None` when it is empty.
pub(super) fn rule_name_text(entry: &RuleName) -> Option<String> {
    let len = entry
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(entry.name.len());
    (len > 0).then(|| String::from_utf8_lossy(&entry.name[..len]).into_owned())
}

/// Per-CPU counters summed.
pub(super) fn sum_counters(values: &[Counter]) -> Counter {
    values.iter().fold(Counter::default(), |a, c| Counter {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    })
}

/// Where a name's id comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IdSource {
    /// Recorded for this name already.
    Kept,
    /// Never given, or freed.
    Free,
    /// Recorded for a name no longer wanted: its counters must be cleared.
    Reused,
}

/// Hands out rule ids: a name keeps its recorded id; a new name takes the
/// lowest free id, and only when none is left the lowest id of a name no
/// longer wanted.
pub(super) struct IdAllocator<'a> {
    by_name: BTreeMap<&'a str, u32>,
    /// Free ids, highest first (popped from the end).
    free: Vec<u32>,
    /// Ids of unwanted names, highest first.
    stale: Vec<u32>,
}

impl<'a> IdAllocator<'a> {
    /// Ids below `capacity`, the rule maps' size.
    pub(super) fn new(known: &'a BTreeMap<u32, String>, names: &[&str], capacity: u32) -> Self {
        let by_name = known.iter().map(|(id, n)| (n.as_str(), *id)).collect();
        let wanted: BTreeSet<&str> = names.iter().copied().collect();
        let free = (0..capacity)
            .filter(|id| !known.contains_key(id))
            .rev()
            .collect();
        let stale = known
            .iter()
            .filter(|(_, n)| !wanted.contains(n.as_str()))
            .map(|(id, _)| *id)
            .rev()
            .collect();
        Self {
            by_name,
            free,
            stale,
        }
    }

    /// The id of `name`, `None` when every id is taken by a wanted name.
    pub(super) fn id_for(&mut self, name: &str) -> Option<(u32, IdSource)> {
        if let Some(id) = self.by_name.get(name) {
            return Some((*id, IdSource::Kept));
        }
        if let Some(id) = self.free.pop() {
            return Some((id, IdSource::Free));
        }
        self.stale.pop().map(|id| (id, IdSource::Reused))
    }
}

impl Maps {
    /// How many rules the rule maps hold (set when they were created, from
    /// that policy; a restart grows them, a reload cannot).
    pub fn rule_capacity(&self) -> u32 {
        // The names map may be a leftover of another size: the smaller wins.
        (self.rules.len() / 2)
            .min(self.rule_stats.len() / 2)
            .min(self.rule_names.len())
    }

    /// Rule ids and names recorded in the pinned names map.
    pub fn rule_names(&self) -> Result<BTreeMap<u32, String>, DataplaneError> {
        let mut out = BTreeMap::new();
        for id in 0..self.rule_capacity() {
            let n = self
                .rule_names
                .get(&id, 0)
                .map_err(map_err(MAP_RULE_NAMES))?;
            if let Some(name) = rule_name_text(&n) {
                out.insert(id, name);
            }
        }
        Ok(out)
    }

    /// Gives every name an id, keeping the ids already recorded (so counters
    /// continue across restarts). Ids of names no longer wanted are reused
    /// only when no free id is left, with their counters cleared.
    pub fn assign_rule_ids(
        &mut self,
        names: &[&str],
    ) -> Result<BTreeMap<String, u32>, DataplaneError> {
        let capacity = self.rule_capacity();
        // Checked first, so that nothing is written for a policy that
        // cannot fit (stale ids would otherwise be cleared for nothing).
        if names.len() > capacity as usize {
            return Err(DataplaneError::RuleCapacity {
                rules: names.len(),
                capacity,
            });
        }
        let known = self.rule_names()?;
        let mut ids = IdAllocator::new(&known, names, capacity);
        let mut out = BTreeMap::new();
        for name in names {
            let (id, source) = ids.id_for(name).ok_or(DataplaneError::RuleCapacity {
                rules: names.len(),
                capacity,
            })?;
            if source != IdSource::Kept {
                if source == IdSource::Reused {
                    self.clear_rule_stats(id)?;
                }
                self.rule_names
                    .set(id, rule_name_entry(name), 0)
                    .map_err(map_err(MAP_RULE_NAMES))?;
            }
            out.insert((*name).to_owned(), id);
        }
        Ok(out)
    }

    fn clear_rule_stats(&mut self, id: u32) -> Result<(), DataplaneError> {
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io {
            op: "count",
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        for dir in sdm_common::TrafficDir::ALL {
            let zeros = PerCpuValues::try_from(vec![Counter::default(); ncpus]).map_err(|e| {
                DataplaneError::Io {
                    op: "build per-CPU values for",
                    path: MAP_RULE_STATS.into(),
                    source: e,
                }
            })?;
            self.rule_stats
                .set(rule_stats_index(id, dir), zeros, 0)
                .map_err(map_err(MAP_RULE_STATS))?;
        }
        Ok(())
    }

    /// Allowed packets and bytes of a rule in one direction, summed over CPUs.
    pub fn rule_counter(
        &self,
        id: u32,
        dir: sdm_common::TrafficDir,
    ) -> Result<Counter, DataplaneError> {
        let v = self
            .rule_stats
            .get(&rule_stats_index(id, dir), 0)
            .map_err(map_err(MAP_RULE_STATS))?;
        Ok(sum_counters(&v))
    }

    /// Deny counter for (mode, direction, reason), summed over CPUs.
    pub fn deny_counter(
        &self,
        enforce: bool,
        dir: sdm_common::TrafficDir,
        reason: sdm_common::DenyReason,
    ) -> Result<Counter, DataplaneError> {
        let mode = if enforce {
            sdm_common::KernelMode::Enforce
        } else {
            sdm_common::KernelMode::Audit
        };
        let v = self
            .deny_stats
            .get(&deny_index(mode, dir, reason), 0)
            .map_err(map_err(MAP_DENY_STATS))?;
        Ok(sum_counters(&v))
    }
}
