//! How many rules the rule maps (`SDM_RULES`, `SDM_RULE_STATS`,
//! `SDM_RULE_NAMES`) hold, and growing them on a restart without a gap.
//!
//! The maps are sized at load time from the policy
//! ([`sdm_common::rule_capacity_for`]). Pinned maps cannot grow in place,
//! so when a restarted agent's policy has more rules than the pinned maps
//! hold, `load` creates larger ones pinned beside the old ones (suffix
//! [`GROWN_SUFFIX`]), copies the rule states, names and counters into them
//! and loads the programs with them. `attach` then attaches the new links
//! (the old programs still run on the old maps, whose contents are the
//! same) and only then [`commit`]s: the larger maps are renamed over the
//! old pins. With nothing attached the commit is immediate.

use std::{fs, path::Path};

use aya::maps::{Array, MapData, PerCpuArray};
use sdm_common::{
    rule_capacity_for, Counter, RuleName, RuleState, MAP_RULES, MAP_RULE_NAMES, MAP_RULE_STATS,
    RULE_CEILING,
};

use super::{io_err, map_err, DataplaneError, Layout};

/// Suffix of the pins of grown maps until they replace the old ones
/// (bpffs refuses dots in names).
pub(super) const GROWN_SUFFIX: &str = "_grown";

/// The maps whose size follows the rule capacity.
pub(super) const SIZED: [&str; 3] = [MAP_RULES, MAP_RULE_STATS, MAP_RULE_NAMES];

/// What `load` does with the rule maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sizing {
    /// None pinned: create them for this many rules.
    Create(u32),
    /// The pinned ones hold the policy: use them.
    Keep(u32),
    /// The pinned ones are too small: create larger ones and copy.
    Grow { from: u32, to: u32 },
}

impl Sizing {
    /// The capacity the loaded programs see.
    pub(super) fn capacity(self) -> u32 {
        match self {
            Sizing::Create(c) | Sizing::Keep(c) | Sizing::Grow { to: c, .. } => c,
        }
    }
}

/// The sizing for a policy of `rules` rules, given the capacity of the
/// pinned maps (`None`: nothing pinned).
pub(super) fn sizing(pinned: Option<u32>, rules: usize) -> Result<Sizing, DataplaneError> {
    let fits = u32::try_from(rules)
        .ok()
        .and_then(|n| Some((n, rule_capacity_for(n)?)));
    let Some((n, want)) = fits else {
        return Err(DataplaneError::RuleCeiling {
            rules,
            max: RULE_CEILING,
        });
    };
    Ok(match pinned {
        None => Sizing::Create(want),
        Some(have) if have >= n => Sizing::Keep(have),
        Some(have) => Sizing::Grow {
            from: have,
            to: want,
        },
    })
}

/// The rule capacity of the maps pinned under `layout`, `None` when no
/// rules map is pinned.
pub fn pinned_rule_capacity(layout: &Layout) -> Result<Option<u32>, DataplaneError> {
    let path = layout.map_pin(MAP_RULES);
    if !path.exists() {
        return Ok(None);
    }
    let rules: Array<MapData, RuleState> = open(&path, MAP_RULES)?;
    Ok(Some(rules.len() / 2))
}

/// Where a sized map is pinned while it waits for [`commit`].
pub(super) fn grown_pin(layout: &Layout, name: &str) -> std::path::PathBuf {
    layout.map_pin(&format!("{name}{GROWN_SUFFIX}"))
}

fn open<T>(path: &Path, name: &str) -> Result<T, DataplaneError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(path).map_err(map_err(name))?;
    aya::maps::Map::from_map_data(data)
        .map_err(map_err(name))?
        .try_into()
        .map_err(map_err(name))
}

/// Removes grown pins a failed start left behind.
pub(super) fn remove_stale(layout: &Layout) -> Result<(), DataplaneError> {
    for name in SIZED {
        let p = grown_pin(layout, name);
        if p.exists() {
            fs::remove_file(&p).map_err(io_err("remove the stale pin", &p))?;
        }
    }
    Ok(())
}

/// Fills the grown maps (`load` created the rules and counters maps, this
/// creates the names map) from the pinned ones of capacity `from`: rule
/// states of both slots, counters, names. Entries that are zero are
/// skipped: a new map is all zeros.
pub(super) fn copy_into_grown(layout: &Layout, from: u32, to: u32) -> Result<(), DataplaneError> {
    let old: Array<MapData, RuleState> = open(&layout.map_pin(MAP_RULES), MAP_RULES)?;
    let mut new: Array<MapData, RuleState> = open(&grown_pin(layout, MAP_RULES), MAP_RULES)?;
    for i in 0..from * 2 {
        let s = old.get(&i, 0).map_err(map_err(MAP_RULES))?;
        if s.active != 0 {
            new.set(i, s, 0).map_err(map_err(MAP_RULES))?;
        }
    }
    let old: PerCpuArray<MapData, Counter> = open(&layout.map_pin(MAP_RULE_STATS), MAP_RULE_STATS)?;
    let mut new: PerCpuArray<MapData, Counter> =
        open(&grown_pin(layout, MAP_RULE_STATS), MAP_RULE_STATS)?;
    for i in 0..from * 2 {
        let v = old.get(&i, 0).map_err(map_err(MAP_RULE_STATS))?;
        if v.iter().any(|c| *c != Counter::default()) {
            new.set(i, v, 0).map_err(map_err(MAP_RULE_STATS))?;
        }
    }
    let path = grown_pin(layout, MAP_RULE_NAMES);
    Array::<MapData, RuleName>::create(to, 0)
        .map_err(map_err(MAP_RULE_NAMES))?
        .pin(&path)
        .map_err(|e| DataplaneError::Pin {
            path: path.clone(),
            source: Box::new(e),
        })?;
    let old_path = layout.map_pin(MAP_RULE_NAMES);
    // The agent creates the names map after the first load: it may be missing.
    if old_path.exists() {
        let old: Array<MapData, RuleName> = open(&old_path, MAP_RULE_NAMES)?;
        let mut new: Array<MapData, RuleName> = open(&path, MAP_RULE_NAMES)?;
        for i in 0..old.len().min(to) {
            let n = old.get(&i, 0).map_err(map_err(MAP_RULE_NAMES))?;
            if n.name[0] != 0 {
                new.set(i, n, 0).map_err(map_err(MAP_RULE_NAMES))?;
            }
        }
    }
    Ok(())
}

/// Renames grown maps over the old pins. Returns whether there were any.
/// Programs loaded earlier keep the maps they were loaded with; the old
/// maps are freed with the last program that uses them.
pub(super) fn commit(layout: &Layout) -> Result<bool, DataplaneError> {
    let mut any = false;
    for name in SIZED {
        let grown = grown_pin(layout, name);
        if grown.exists() {
            let path = layout.map_pin(name);
            fs::rename(&grown, &path).map_err(io_err("rename", &path))?;
            any = true;
        }
    }
    Ok(any)
}
