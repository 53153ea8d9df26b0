//! Port ranges of more than [`RANGE_EXPAND_MAX`] ports, stored without one
//! entry per port (the kernel side is `sdm-ebpf/src/ranges.rs`):
//! - each range is [`decompose`]d into at most [`MAX_PREFIXES`] aligned
//!   port prefixes, written under a port set id in `SDM_PORTSET_*`;
//! - each (direction, protocol, address prefix) with ranges maps to one
//!   port set in `SDM_RANGE4/6_*`. The kernel finds the longest matching
//!   prefix only, so a prefix's set is the union of the ranges of every
//!   prefix covering it ([`Claims::finish`]: the closure);
//! - a hostname's ranges map (host, protocol, direction) to a set in
//!   `SDM_HOSTRNG_*`, for addresses the kernel learns from DNS answers.
//!
//! Sets with the same contents are written once. Within a set the ranges
//! do not overlap: a port keeps the first rule in policy order that claims
//! it, as for the other maps.

use std::collections::BTreeMap;

use ipnet::IpNet;
use sdm_common::{Cidr4, Cidr6, HostPortKey, PortSetKey, CIDR_HEADER_BITS, PORT_SET_HEADER_BITS};

use super::Entries;

pub use sdm_common::RANGE_EXPAND_MAX;

/// The most prefixes [`decompose`] returns: two per prefix length from 16
/// bits down to 2 (the left and right edge of the range), 2 x 16 - 2.
pub const MAX_PREFIXES: usize = 30;

/// The aligned prefixes that exactly cover `lo..=hi`, in order, as (first
/// port, prefix length in bits): each covers `2^(16 - bits)` ports starting
/// at a multiple of that. At most [`MAX_PREFIXES`] of them.
pub fn decompose(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    let mut out = Vec::new();
    while lo <= hi {
        // The largest block aligned at `lo` that ends within the range.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let bits = 16 - size.trailing_zeros() as u8;
        // lo < 2^16 here: the loop runs only while lo <= hi <= 65535.
        out.push((lo as u16, bits));
        lo += size;
    }
    out
}

/// One rule's claim on a range, `seq` its position in policy order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    seq: usize,
    rule: u32,
    lo: u16,
    hi: u16,
}

/// The large ranges of a policy, before they become entries.
#[derive(Debug, Default)]
pub struct Claims {
    seq: usize,
    /// (direction, protocol code, prefix) -> claims, in policy order.
    nets: BTreeMap<(u8, u8, IpNet), Vec<Claim>>,
    /// (host, port 0, protocol, direction) -> claims, in policy order.
    hosts: BTreeMap<HostPortKey, Vec<Claim>>,
}

impl Claims {
    fn next(&mut self, rule: u32, lo: u16, hi: u16) -> Claim {
        self.seq += 1;
        Claim {
            seq: self.seq,
            rule,
            lo,
            hi,
        }
    }

    /// `rule` allows ports `lo..=hi` of `net` (already truncated).
    pub fn add_net(&mut self, dir: u8, proto: u8, net: IpNet, rule: u32, lo: u16, hi: u16) {
        let c = self.next(rule, lo, hi);
        self.nets.entry((dir, proto, net)).or_default().push(c);
    }

    /// `rule` allows ports `lo..=hi` of hostname `host`'s learned addresses.
    pub fn add_host(&mut self, host: u32, dir: u8, proto: u8, rule: u32, lo: u16, hi: u16) {
        let c = self.next(rule, lo, hi);
        let key = HostPortKey {
            host,
            port: 0,
            proto,
            dir,
        };
        self.hosts.entry(key).or_default().push(c);
    }

    /// The claims on `net` and on every prefix covering it, in policy order.
    fn covering(&self, dir: u8, proto: u8, net: &IpNet) -> Vec<Claim> {
        let mut all = Vec::new();
        for len in 0..=net.prefix_len() {
            let Ok(sup) = IpNet::new(net.addr(), len) else {
                continue;
            };
            if let Some(c) = self.nets.get(&(dir, proto, sup.trunc())) {
                all.extend_from_slice(c);
            }
        }
        all.sort();
        all.dedup();
        all
    }

    /// Writes the range entries into `out`.
    pub fn finish(self, out: &mut Entries) {
        let mut sets = BTreeMap::new();
        for &(dir, proto, net) in self.nets.keys() {
            let set = intern(&mut sets, out, &self.covering(dir, proto, &net));
            let plen = CIDR_HEADER_BITS + u32::from(net.prefix_len());
            match net {
                IpNet::V4(n) => {
                    let addr = n.addr().octets();
                    let key = Cidr4 {
                        dir,
                        proto,
                        port: [0; 2],
                        addr,
                    };
                    out.range4.insert((plen, key), set);
                }
                IpNet::V6(n) => {
                    let addr = n.addr().octets();
                    let key = Cidr6 {
                        dir,
                        proto,
                        port: [0; 2],
                        addr,
                    };
                    out.range6.insert((plen, key), set);
                }
            }
        }
        for (key, claims) in &self.hosts {
            let set = intern(&mut sets, out, claims);
            out.host_ranges.insert(*key, set);
        }
    }
}

/// The id of the port set of `claims` (from 1), writing its prefixes the
/// first time these contents are seen.
fn intern(
    sets: &mut BTreeMap<Vec<(u32, u16, u16)>, u32>,
    out: &mut Entries,
    claims: &[Claim],
) -> u32 {
    // The same rule's range claimed again (on a covering prefix, say)
    // adds nothing: sets differing only so are one.
    let mut contents: Vec<(u32, u16, u16)> = Vec::with_capacity(claims.len());
    for c in claims {
        if !contents.contains(&(c.rule, c.lo, c.hi)) {
            contents.push((c.rule, c.lo, c.hi));
        }
    }
    if let Some(id) = sets.get(&contents) {
        return *id;
    }
    let id = u32::try_from(sets.len() + 1).unwrap_or(u32::MAX);
    let mut covered: Vec<(u16, u16)> = Vec::new();
    for &(rule, lo, hi) in &contents {
        for (lo, hi) in uncovered(lo, hi, &covered) {
            for (base, bits) in decompose(lo, hi) {
                let key = PortSetKey {
                    set: id.to_be_bytes(),
                    port: base.to_be_bytes(),
                    _pad: [0; 2],
                };
                out.port_sets
                    .entry((PORT_SET_HEADER_BITS + u32::from(bits), key))
                    .or_insert(rule);
            }
        }
        covered.push((lo, hi));
    }
    sets.insert(contents, id);
    id
}

/// The parts of `lo..=hi` outside every range of `covered`.
fn uncovered(lo: u16, hi: u16, covered: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut parts = vec![(u32::from(lo), u32::from(hi))];
    for &(clo, chi) in covered {
        let (clo, chi) = (u32::from(clo), u32::from(chi));
        parts = parts
            .into_iter()
            .flat_map(|(a, b)| {
                let mut keep = Vec::new();
                if a < clo {
                    keep.push((a, b.min(clo - 1)));
                }
                if b > chi {
                    keep.push((a.max(chi + 1), b));
                }
                keep
            })
            .filter(|(a, b)| a <= b)
            .collect();
    }
    // Every part lies within lo..=hi, so fits a port.
    parts
        .into_iter()
        .map(|(a, b)| (a as u16, b as u16))
        .collect()
}

#[cfg(test)]
mod tests;
