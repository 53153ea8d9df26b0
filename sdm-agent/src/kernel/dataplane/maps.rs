//! [`Maps`]: typed handles on every pinned map, opened from the pins. The
//! kernel config entry is here; the other families have their own files:
//! [`dns`] (names, resolvers, learned addresses), [`rules`] (rule ids,
//! names and counters), [`slots`] (the two policy slots and the flip).

mod dns;
mod ranges;
mod rules;
mod slots;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray};
use sdm_common::{
    Cidr4, Cidr6, Counter, DnsHost, HostPortKey, KernelConfig, Key4, Key6, Learned, PortSet,
    PortSetKey, ResolverKey, RuleName, RuleRef, RuleState, MAP_CIDR4, MAP_CIDR6, MAP_CONFIG,
    MAP_DENY_STATS, MAP_DNSQ_STATS, MAP_DNS_NAMES, MAP_DNS_RESOLVERS, MAP_DNS_STATS, MAP_EXACT4,
    MAP_EXACT6, MAP_HOST_PORTS, MAP_HOST_RANGES, MAP_LEARNED4, MAP_LEARNED6, MAP_PORT_SETS,
    MAP_RANGE4, MAP_RANGE6, MAP_RULES, MAP_RULE_NAMES, MAP_RULE_STATS,
};

use super::{io_err, map_err, DataplaneError, Layout};
use crate::kernel::{
    config_map::{ConfigField, ConfigMapping},
    entries::Entries,
};

/// Typed handles on the pinned maps.
pub struct Maps {
    root: PathBuf,
    config: Array<MapData, KernelConfig>,
    /// The same entry, mapped: every change is a store to one field.
    config_mem: ConfigMapping,
    exact4: [HashMap<MapData, Key4, RuleRef>; 2],
    exact6: [HashMap<MapData, Key6, RuleRef>; 2],
    cidr4: [LpmTrie<MapData, Cidr4, RuleRef>; 2],
    cidr6: [LpmTrie<MapData, Cidr6, RuleRef>; 2],
    rules: Array<MapData, RuleState>,
    rule_stats: PerCpuArray<MapData, Counter>,
    deny_stats: PerCpuArray<MapData, Counter>,
    rule_names: Array<MapData, RuleName>,
    host_ports: [HashMap<MapData, HostPortKey, u32>; 2],
    range4: [LpmTrie<MapData, Cidr4, PortSet>; 2],
    range6: [LpmTrie<MapData, Cidr6, PortSet>; 2],
    port_sets: [LpmTrie<MapData, PortSetKey, RuleRef>; 2],
    host_ranges: [HashMap<MapData, HostPortKey, PortSet>; 2],
    dns_names: HashMap<MapData, u64, DnsHost>,
    dns_resolvers: HashMap<MapData, ResolverKey, u32>,
    dns_stats: PerCpuArray<MapData, u64>,
    dnsq_stats: PerCpuArray<MapData, u64>,
    learned4: HashMap<MapData, [u8; 4], Learned>,
    learned6: HashMap<MapData, [u8; 16], Learned>,
    /// What each slot holds, once read or written by us.
    shadow: [Option<Entries>; 2],
}

fn open_map(layout: &Layout, name: &str) -> Result<aya::maps::Map, DataplaneError> {
    let path = layout.map_pin(name);
    if !path.exists() {
        return Err(DataplaneError::NotAttached(layout.pin_root.clone()));
    }
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    aya::maps::Map::from_map_data(data).map_err(map_err(name))
}

macro_rules! typed {
    ($layout:expr, $name:expr) => {
        open_map($layout, $name)?
            .try_into()
            .map_err(map_err($name))?
    };
}

impl Maps {
    /// Opens the pinned maps; creates and pins the agent-only rule names map
    /// if it is not there yet.
    pub fn open(layout: &Layout) -> Result<Self, DataplaneError> {
        let names_path = layout.map_pin(MAP_RULE_NAMES);
        let rule_names: Array<MapData, RuleName> = if names_path.exists() {
            typed!(layout, MAP_RULE_NAMES)
        } else {
            if !layout.map_pin(MAP_CONFIG).exists() {
                return Err(DataplaneError::NotAttached(layout.pin_root.clone()));
            }
            // As many names as the rules map has rules.
            let rules: Array<MapData, RuleState> = typed!(layout, MAP_RULES);
            let arr = Array::<MapData, RuleName>::create(rules.len() / 2, 0)
                .map_err(map_err(MAP_RULE_NAMES))?;
            // pin() consumes the handle; the map lives on in bpffs.
            arr.pin(&names_path).map_err(|e| DataplaneError::Pin {
                path: names_path.clone(),
                source: Box::new(e),
            })?;
            typed!(layout, MAP_RULE_NAMES)
        };
        let config_path = layout.map_pin(MAP_CONFIG);
        let config_mem = MapData::from_pin(&config_path)
            .map_err(map_err(MAP_CONFIG))
            .and_then(|data| {
                ConfigMapping::new(&data).map_err(io_err("mmap the kernel config", &config_path))
            })?;
        Ok(Self {
            root: layout.pin_root.clone(),
            config: typed!(layout, MAP_CONFIG),
            config_mem,
            exact4: [typed!(layout, MAP_EXACT4[0]), typed!(layout, MAP_EXACT4[1])],
            exact6: [typed!(layout, MAP_EXACT6[0]), typed!(layout, MAP_EXACT6[1])],
            cidr4: [typed!(layout, MAP_CIDR4[0]), typed!(layout, MAP_CIDR4[1])],
            cidr6: [typed!(layout, MAP_CIDR6[0]), typed!(layout, MAP_CIDR6[1])],
            rules: typed!(layout, MAP_RULES),
            rule_stats: typed!(layout, MAP_RULE_STATS),
            deny_stats: typed!(layout, MAP_DENY_STATS),
            rule_names,
            host_ports: [
                typed!(layout, MAP_HOST_PORTS[0]),
                typed!(layout, MAP_HOST_PORTS[1]),
            ],
            range4: [typed!(layout, MAP_RANGE4[0]), typed!(layout, MAP_RANGE4[1])],
            range6: [typed!(layout, MAP_RANGE6[0]), typed!(layout, MAP_RANGE6[1])],
            port_sets: [
                typed!(layout, MAP_PORT_SETS[0]),
                typed!(layout, MAP_PORT_SETS[1]),
            ],
            host_ranges: [
                typed!(layout, MAP_HOST_RANGES[0]),
                typed!(layout, MAP_HOST_RANGES[1]),
            ],
            dns_names: typed!(layout, MAP_DNS_NAMES),
            dns_resolvers: typed!(layout, MAP_DNS_RESOLVERS),
            dns_stats: typed!(layout, MAP_DNS_STATS),
            dnsq_stats: typed!(layout, MAP_DNSQ_STATS),
            learned4: typed!(layout, MAP_LEARNED4),
            learned6: typed!(layout, MAP_LEARNED6),
            shadow: [None, None],
        })
    }

    pub fn pin_root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> Result<KernelConfig, DataplaneError> {
        self.config.get(&0, 0).map_err(map_err(MAP_CONFIG))
    }

    /// Stores one field of the kernel config (see `config_map`): never a
    /// whole-entry write, which could undo another writer's field.
    pub fn set_config_field(&mut self, field: ConfigField, value: u32) {
        self.config_mem.store(field, value);
    }

    /// Switches the mode in place: the programs read it on every packet.
    pub fn set_mode(&mut self, mode: sdm_common::KernelMode) -> Result<(), DataplaneError> {
        self.set_config_field(ConfigField::Mode, mode.into());
        Ok(())
    }

    pub fn set_loopback(&mut self, loopback: u32) -> Result<(), DataplaneError> {
        self.set_config_field(ConfigField::Loopback, loopback);
        Ok(())
    }

    /// The floor of a learned address's lifetime, in seconds.
    pub fn set_learn_ttl_min(&mut self, secs: u32) -> Result<(), DataplaneError> {
        self.set_config_field(ConfigField::LearnTtlMin, secs);
        Ok(())
    }

    /// Whether a trusted resolver is on loopback (see `KernelConfig::loopback_dns`).
    pub fn set_loopback_dns(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.set_config_field(ConfigField::LoopbackDns, u32::from(on));
        Ok(())
    }

    /// `[dns] queries = "policy"` on or off (see `KernelConfig::dns_queries`).
    pub fn set_dns_queries(&mut self, policy: bool) {
        let v = if policy {
            sdm_common::DNS_QUERIES_POLICY
        } else {
            sdm_common::DNS_QUERIES_ANY
        };
        self.set_config_field(ConfigField::DnsQueries, v);
    }

    /// Verdict tracing through aya-log on or off.
    pub fn set_log_verdicts(&mut self, on: bool) {
        self.set_config_field(ConfigField::LogVerdicts, u32::from(on));
    }

    /// Records the fingerprint of the object the attached links run.
    pub(super) fn store_object_hash(&self, hash: u64) {
        self.config_mem.store_object_hash(hash);
    }
}
