//! The DNS maps: the policy's names and trusted resolvers, the parser's
//! counters, and the addresses the kernel learned from answers.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{HashMap, MapData, PerCpuArray};
use sdm_common::{
    DnsHost, ResolverKey, DNS_STAT_LEARN_FULL, MAP_DNSQ_STATS, MAP_DNS_NAMES, MAP_DNS_RESOLVERS,
    MAP_DNS_STATS, MAP_LEARNED4, MAP_LEARNED6,
};

use super::Maps;
use crate::kernel::{
    dataplane::{map_err, DataplaneError},
    entries::diff,
};

/// The resolver map's key of `ip`: an IPv4-mapped IPv6 address is keyed as
/// the IPv4 address it maps (the kernel sees IPv4 packets from it).
pub(super) fn resolver_key(ip: IpAddr) -> ResolverKey {
    let mut addr = [0u8; 16];
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            ResolverKey { addr, v6: 0 }
        }
        IpAddr::V6(a) => ResolverKey {
            addr: a.octets(),
            v6: 1,
        },
    }
}

/// A per-CPU counter summed over CPUs, saturating.
pub(super) fn sum_cpus(values: &[u64]) -> u64 {
    values.iter().fold(0u64, |a, b| a.saturating_add(*b))
}

/// Whether a learned address that expires at `expires_ns` has been expired
/// for more than `grace_ns` at `now_ns` (all CLOCK_MONOTONIC ns).
pub(super) fn expired_beyond_grace(expires_ns: u64, grace_ns: u64, now_ns: u64) -> bool {
    expires_ns.saturating_add(grace_ns) < now_ns
}

/// The first `N` entries of the per-CPU counter array `map` (named
/// `name`), each summed over CPUs.
fn first_totals<const N: usize>(
    map: &PerCpuArray<MapData, u64>,
    name: &str,
) -> Result<[u64; N], DataplaneError> {
    let mut out = [0; N];
    for (i, slot) in (0u32..).zip(out.iter_mut()) {
        *slot = sum_cpus(&map.get(&i, 0).map_err(map_err(name))?);
    }
    Ok(out)
}

/// Makes the hash map `map` (named `name`) hold exactly `want`: new and
/// changed entries first, then removals. Returns the writes.
fn sync_upserts_first<K, V>(
    map: &mut HashMap<MapData, K, V>,
    name: &str,
    want: &BTreeMap<K, V>,
) -> Result<usize, DataplaneError>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    let mut have = BTreeMap::new();
    for kv in map.iter() {
        let (k, v) = kv.map_err(map_err(name))?;
        have.insert(k, v);
    }
    let d = diff(&have, want);
    for (k, v) in &d.upsert {
        map.insert(k, v, 0).map_err(map_err(name))?;
    }
    for k in &d.remove {
        map.remove(k).map_err(map_err(name))?;
    }
    Ok(d.upsert.len() + d.remove.len())
}

impl Maps {
    /// Makes `SDM_DNS_NAMES` hold exactly `names` (name key -> host id and
    /// name) and `SDM_DNS_RESOLV` exactly `resolvers`. Returns the writes.
    pub fn apply_dns(
        &mut self,
        names: &BTreeMap<u64, DnsHost>,
        resolvers: &[IpAddr],
    ) -> Result<usize, DataplaneError> {
        let writes = sync_upserts_first(&mut self.dns_names, MAP_DNS_NAMES, names)?;
        let want: BTreeMap<ResolverKey, u32> =
            resolvers.iter().map(|ip| (resolver_key(*ip), 1)).collect();
        Ok(writes + sync_upserts_first(&mut self.dns_resolvers, MAP_DNS_RESOLVERS, &want)?)
    }

    /// Answers the DNS parser counted, by `DNS_RESULT_*`, summed over CPUs.
    pub fn dns_stats(&self) -> Result<[u64; sdm_common::DnsResult::COUNT], DataplaneError> {
        first_totals(&self.dns_stats, MAP_DNS_STATS)
    }

    /// Addresses of allowed answers the kernel could not store because
    /// `SDM_LEARNED4/6` was full, summed over CPUs.
    pub fn learn_table_full(&self) -> Result<u64, DataplaneError> {
        let v = self
            .dns_stats
            .get(&DNS_STAT_LEARN_FULL, 0)
            .map_err(map_err(MAP_DNS_STATS))?;
        Ok(sum_cpus(&v))
    }

    /// Queries judged under `[dns] queries = "policy"`, by `DNSQ_*`,
    /// summed over CPUs.
    pub fn dns_query_stats(
        &self,
    ) -> Result<[u64; sdm_common::DnsQueryVerdict::COUNT], DataplaneError> {
        first_totals(&self.dnsq_stats, MAP_DNSQ_STATS)
    }

    /// Addresses learned from DNS answers: (address, host id, expiry in
    /// CLOCK_MONOTONIC ns).
    pub fn learned(&self) -> Result<Vec<(IpAddr, u32, u64)>, DataplaneError> {
        let mut out = Vec::new();
        for kv in self.learned4.iter() {
            let (k, v) = kv.map_err(map_err(MAP_LEARNED4))?;
            out.push((IpAddr::from(k), v.host, v.expires_ns));
        }
        for kv in self.learned6.iter() {
            let (k, v) = kv.map_err(map_err(MAP_LEARNED6))?;
            out.push((IpAddr::from(k), v.host, v.expires_ns));
        }
        Ok(out)
    }

    /// Removes learned addresses that expired more than `grace` ago. The
    /// kernel already ignores them for new flows; connections opened
    /// earlier keep their socket's cached verdict either way. Returns how
    /// many were removed.
    pub fn expire_learned(&mut self, now_ns: u64, grace_ns: u64) -> Result<usize, DataplaneError> {
        let mut removed = 0;
        for (addr, _, expires) in self.learned()? {
            if !expired_beyond_grace(expires, grace_ns, now_ns) {
                continue;
            }
            let r = match addr {
                IpAddr::V4(a) => self.learned4.remove(&a.octets()),
                IpAddr::V6(a) => self.learned6.remove(&a.octets()),
            };
            // Gone already (another agent's sweep) is fine.
            if r.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}
