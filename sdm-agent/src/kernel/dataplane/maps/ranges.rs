//! The port range maps of the two policy slots (see `entries::ranges`):
//! read back and written like the exact and CIDR maps.

use aya::maps::lpm_trie::Key as LpmKey;
use sdm_common::{PortSet, RuleRef, MAP_HOST_RANGES, MAP_PORT_SETS, MAP_RANGE4, MAP_RANGE6};

use super::Maps;
use crate::kernel::{
    dataplane::{map_err, DataplaneError},
    entries::{diff, Entries},
};

impl Maps {
    /// Adds what slot `slot`'s range maps hold to `e`.
    pub(super) fn read_ranges(&self, slot: usize, e: &mut Entries) -> Result<(), DataplaneError> {
        for kv in self.range4[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_RANGE4[slot]))?;
            e.range4.insert((k.prefix_len(), k.data()), v.set);
        }
        for kv in self.range6[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_RANGE6[slot]))?;
            e.range6.insert((k.prefix_len(), k.data()), v.set);
        }
        for kv in self.port_sets[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_PORT_SETS[slot]))?;
            e.port_sets.insert((k.prefix_len(), k.data()), v.rule);
        }
        for kv in self.host_ranges[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_HOST_RANGES[slot]))?;
            e.host_ranges.insert(k, v.set);
        }
        Ok(())
    }

    /// The range maps of slot `idle`, from `have` to `want`, removals
    /// first (as for the other maps). Returns the writes.
    pub(super) fn write_ranges(
        &mut self,
        idle: usize,
        have: &Entries,
        want: &Entries,
    ) -> Result<usize, DataplaneError> {
        let r4 = diff(&have.range4, &want.range4);
        let r6 = diff(&have.range6, &want.range6);
        let ps = diff(&have.port_sets, &want.port_sets);
        let hr = diff(&have.host_ranges, &want.host_ranges);
        for (plen, k) in &r4.remove {
            self.range4[idle]
                .remove(&LpmKey::new(*plen, *k))
                .map_err(map_err(MAP_RANGE4[idle]))?;
        }
        for (plen, k) in &r6.remove {
            self.range6[idle]
                .remove(&LpmKey::new(*plen, *k))
                .map_err(map_err(MAP_RANGE6[idle]))?;
        }
        for (plen, k) in &ps.remove {
            self.port_sets[idle]
                .remove(&LpmKey::new(*plen, *k))
                .map_err(map_err(MAP_PORT_SETS[idle]))?;
        }
        for k in &hr.remove {
            self.host_ranges[idle]
                .remove(k)
                .map_err(map_err(MAP_HOST_RANGES[idle]))?;
        }
        for ((plen, k), set) in &r4.upsert {
            self.range4[idle]
                .insert(&LpmKey::new(*plen, *k), PortSet { set: *set }, 0)
                .map_err(map_err(MAP_RANGE4[idle]))?;
        }
        for ((plen, k), set) in &r6.upsert {
            self.range6[idle]
                .insert(&LpmKey::new(*plen, *k), PortSet { set: *set }, 0)
                .map_err(map_err(MAP_RANGE6[idle]))?;
        }
        for ((plen, k), rule) in &ps.upsert {
            self.port_sets[idle]
                .insert(&LpmKey::new(*plen, *k), RuleRef { rule: *rule }, 0)
                .map_err(map_err(MAP_PORT_SETS[idle]))?;
        }
        for (k, set) in &hr.upsert {
            self.host_ranges[idle]
                .insert(k, PortSet { set: *set }, 0)
                .map_err(map_err(MAP_HOST_RANGES[idle]))?;
        }
        Ok(r4.upsert.len()
            + r4.remove.len()
            + r6.upsert.len()
            + r6.remove.len()
            + ps.upsert.len()
            + ps.remove.len()
            + hr.upsert.len()
            + hr.remove.len())
    }
}
