//! The policy's two slots: what each holds, and [`Maps::apply`], which
//! writes the idle one and then flips the generation.

use aya::maps::lpm_trie::Key as LpmKey;
use sdm_common::{
    rule_slot_index, RuleRef, RuleState, MAP_CIDR4, MAP_CIDR6, MAP_EXACT4, MAP_EXACT6,
    MAP_HOST_PORTS, MAP_RULES,
};

use super::Maps;
use crate::kernel::{
    config_map::ConfigField,
    dataplane::{map_err, DataplaneError},
    entries::{diff, Entries},
};

/// The slot packets read under `generation`: its low bit. The other one is
/// idle, and the one [`Maps::apply`] writes.
pub(super) fn live_slot(generation: u32) -> usize {
    (generation & 1) as usize
}

impl Maps {
    /// Reads what a slot holds from the kernel.
    pub fn read_slot(&self, slot: usize) -> Result<Entries, DataplaneError> {
        let mut e = Entries::default();
        for kv in self.exact4[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_EXACT4[slot]))?;
            e.exact4.insert(k, v.rule);
        }
        for kv in self.exact6[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_EXACT6[slot]))?;
            e.exact6.insert(k, v.rule);
        }
        for kv in self.cidr4[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_CIDR4[slot]))?;
            e.cidr4.insert((k.prefix_len(), k.data()), v.rule);
        }
        for kv in self.cidr6[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_CIDR6[slot]))?;
            e.cidr6.insert((k.prefix_len(), k.data()), v.rule);
        }
        for kv in self.host_ports[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_HOST_PORTS[slot]))?;
            e.host_ports.insert(k, v);
        }
        self.read_ranges(slot, &mut e)?;
        for id in 0..self.rule_capacity() {
            let s = self
                .rules
                .get(&rule_slot_index(slot as u32, id), 0)
                .map_err(map_err(MAP_RULES))?;
            if s.active != 0 {
                e.rules.insert(id);
            }
        }
        Ok(e)
    }

    /// The live slot's contents.
    pub fn live(&mut self) -> Result<Entries, DataplaneError> {
        let slot = live_slot(self.config()?.generation);
        self.slot(slot).cloned()
    }

    fn slot(&mut self, slot: usize) -> Result<&Entries, DataplaneError> {
        if self.shadow[slot].is_none() {
            self.shadow[slot] = Some(self.read_slot(slot)?);
        }
        Ok(self.shadow[slot].get_or_insert_with(Entries::default))
    }

    /// Makes `want` the live policy. It is written into the idle slot (only
    /// the differences from what that slot held), then one write of the
    /// config flips the generation: packets see the old policy or the new
    /// one, never a mix. Returns the number of map writes, 0 when nothing
    /// changed (then nothing is flipped either). Contents that do not fit
    /// the maps are refused before anything is written; any error leaves
    /// the live slot, and so the enforced policy, as it was.
    pub fn apply(&mut self, want: &Entries) -> Result<usize, DataplaneError> {
        let cfg = self.config()?;
        let live = live_slot(cfg.generation);
        if self.slot(live)? == want {
            return Ok(0);
        }
        if let Some(o) = want.overflow() {
            return Err(DataplaneError::Capacity(o));
        }
        let idle = live ^ 1;
        let have = self.slot(idle)?.clone();
        // Mark a slot's contents unknown while it is being written, so an
        // error half way makes the next apply read it back from the kernel.
        self.shadow[idle] = None;
        let writes = self.write_addresses(idle, &have, want)?
            + self.write_host_ports(idle, &have, want)?
            + self.write_ranges(idle, &have, want)?
            + self.write_rule_states(idle, &have, want)?;
        self.shadow[idle] = Some(want.clone());

        // The agent is the generation's only writer: `cfg` was read above.
        self.set_config_field(ConfigField::Generation, cfg.generation.wrapping_add(1));
        Ok(writes + 1)
    }

    /// The exact and CIDR address maps of slot `idle`, from `have` to
    /// `want`. Returns the writes.
    fn write_addresses(
        &mut self,
        idle: usize,
        have: &Entries,
        want: &Entries,
    ) -> Result<usize, DataplaneError> {
        // Removals first: the idle slot may still hold an older policy,
        // and adding before removing could overflow a map that the wanted
        // contents fit in (a rotation of many addresses, say).
        let d4 = diff(&have.exact4, &want.exact4);
        for k in &d4.remove {
            self.exact4[idle]
                .remove(k)
                .map_err(map_err(MAP_EXACT4[idle]))?;
        }
        let d6 = diff(&have.exact6, &want.exact6);
        for k in &d6.remove {
            self.exact6[idle]
                .remove(k)
                .map_err(map_err(MAP_EXACT6[idle]))?;
        }
        let c4 = diff(&have.cidr4, &want.cidr4);
        for (plen, k) in &c4.remove {
            self.cidr4[idle]
                .remove(&LpmKey::new(*plen, *k))
                .map_err(map_err(MAP_CIDR4[idle]))?;
        }
        let c6 = diff(&have.cidr6, &want.cidr6);
        for (plen, k) in &c6.remove {
            self.cidr6[idle]
                .remove(&LpmKey::new(*plen, *k))
                .map_err(map_err(MAP_CIDR6[idle]))?;
        }
        for (k, v) in &d4.upsert {
            self.exact4[idle]
                .insert(k, RuleRef { rule: *v }, 0)
                .map_err(map_err(MAP_EXACT4[idle]))?;
        }
        for (k, v) in &d6.upsert {
            self.exact6[idle]
                .insert(k, RuleRef { rule: *v }, 0)
                .map_err(map_err(MAP_EXACT6[idle]))?;
        }
        for ((plen, k), v) in &c4.upsert {
            self.cidr4[idle]
                .insert(&LpmKey::new(*plen, *k), RuleRef { rule: *v }, 0)
                .map_err(map_err(MAP_CIDR4[idle]))?;
        }
        for ((plen, k), v) in &c6.upsert {
            self.cidr6[idle]
                .insert(&LpmKey::new(*plen, *k), RuleRef { rule: *v }, 0)
                .map_err(map_err(MAP_CIDR6[idle]))?;
        }
        Ok([
            d4.upsert.len() + d4.remove.len(),
            d6.upsert.len() + d6.remove.len(),
            c4.upsert.len() + c4.remove.len(),
            c6.upsert.len() + c6.remove.len(),
        ]
        .iter()
        .sum::<usize>())
    }

    /// The hostname-port map of slot `idle`. Returns the writes.
    fn write_host_ports(
        &mut self,
        idle: usize,
        have: &Entries,
        want: &Entries,
    ) -> Result<usize, DataplaneError> {
        // Removals first, as for the other maps: a full map must make room
        // before it takes the new entries.
        let d = diff(&have.host_ports, &want.host_ports);
        for k in &d.remove {
            self.host_ports[idle]
                .remove(k)
                .map_err(map_err(MAP_HOST_PORTS[idle]))?;
        }
        for (k, v) in &d.upsert {
            self.host_ports[idle]
                .insert(k, v, 0)
                .map_err(map_err(MAP_HOST_PORTS[idle]))?;
        }
        Ok(d.upsert.len() + d.remove.len())
    }

    /// Which rules are active in slot `idle`. Returns the writes.
    fn write_rule_states(
        &mut self,
        idle: usize,
        have: &Entries,
        want: &Entries,
    ) -> Result<usize, DataplaneError> {
        let mut writes = 0;
        for id in want.rules.symmetric_difference(&have.rules) {
            let active = u32::from(want.rules.contains(id));
            self.rules
                .set(rule_slot_index(idle as u32, *id), RuleState { active }, 0)
                .map_err(map_err(MAP_RULES))?;
            writes += 1;
        }
        Ok(writes)
    }
}
