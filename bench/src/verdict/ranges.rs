//! Figure 9: port ranges without expansion. A rule allowing every UDP port
//! of one /16 used to write one entry per port (65,536); now a range of
//! more than 16 ports is an address-prefix entry and at most 30 port
//! prefixes. Figures: the entries written, and the verdict cost (new flow
//! and established, as figure 1, BPF_PROG_TEST_RUN) of a packet to a port
//! inside the range, as a ratio to the empty program, beside the same /16
//! with one port (the CIDR trie) for comparison.

use std::{net::Ipv4Addr, os::fd::AsRawFd as _};

use anyhow::Result;
use ipnet::{IpNet, Ipv4Net};
use sdm_agent::policy::{Direction, Policy, PortRange, Proto, Rule, Target};

use super::{udp_packet, Arm, Instance};
use crate::{
    guards::Netns,
    report::{Figure, Goal},
    stats::{median, ratios, summarize, Rng},
    sys, Params,
};

/// The /16 of every rule here (never sent to).
const NET: [u8; 4] = [10, 65, 0, 0];
/// Packets rotate over this many (address, port) pairs.
const KEYS: u32 = 1024;

/// One UDP egress rule on the /16 for `ports`.
fn policy(name: &str, ports: PortRange) -> Policy {
    let net = Ipv4Net::new(Ipv4Addr::from(NET), 16).expect("a /16");
    Policy {
        rules: vec![Rule {
            name: format!("bench/{name}"),
            direction: Direction::Egress,
            protos: vec![Proto::Udp],
            ports: vec![ports],
            targets: vec![Target::Cidr(IpNet::V4(net))],
            required: true,
            roles: vec![],
            origin: "sdm-bench".into(),
        }],
    }
}

/// Packets to addresses of the /16, each to a port of `ports`, spread over
/// the range from edge to edge.
fn packets(ports: PortRange) -> Vec<Vec<u8>> {
    let span = u64::from(ports.hi - ports.lo);
    (0..KEYS)
        .map(|i| {
            let dst = u32::from_be_bytes(NET) + (i * 61) % 65_536;
            let off = u64::from(i) * span / u64::from(KEYS - 1);
            let port = u16::try_from(u64::from(ports.lo) + off).unwrap_or(ports.hi);
            udp_packet(Ipv4Addr::from(dst), port)
        })
        .collect()
}

fn arm(label: &str, fd: std::os::fd::RawFd, ports: PortRange) -> Arm {
    Arm {
        label: label.into(),
        kind: None,
        syn_of: None,
        fd,
        packets: packets(ports),
        cursor: 0,
        new: vec![],
        est: vec![],
    }
}

/// The entries figures: what each range rule wrote, against one per port.
fn entry_figures(figs: &mut Vec<Figure>, rules: &[(&str, &str, usize, PortRange)]) {
    for &(slug, what, entries, range) in rules {
        let before = range.len() as usize;
        println!(
            "sdm-bench: [9] {what} of one /16: {entries} map entries (one per port: {before})"
        );
        figs.push(
            Figure::measured(
                9,
                &format!("ranges.entries.{slug}"),
                &format!(
                    "map entries for a rule on {what} of one /16 (one per port: {})",
                    crate::group(before)
                ),
                "entries",
                summarize(&[entries as f64]),
            )
            .decimals(0)
            .target("≤ 32", Goal::AtMost(32.0)),
        );
    }
}

pub fn run(p: &Params, rng: &mut Rng, figs: &mut Vec<Figure>) -> Result<()> {
    let ns = Netns::try_new("r")?;
    ns.try_ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"])?;
    ns.try_ip(&["link", "set", "va", "up"])?;
    let ifindex = ns.try_ifindex("va")?;
    let empty = sys::load_empty_skb_prog()?;
    let one = PortRange::single(443);
    let full = PortRange { lo: 0, hi: 65535 };
    // The worst case of the decomposition: 30 port prefixes.
    let worst = PortRange { lo: 1, hi: 65534 };
    let mut one_i = Instance::new("r1", &policy("one-port", one))?;
    let mut full_i = Instance::new("rf", &policy("full-range", full))?;
    let mut worst_i = Instance::new("rw", &policy("worst-range", worst))?;
    entry_figures(
        figs,
        &[
            ("full", "every port", full_i.entries, full),
            ("worst", "ports 1-65534", worst_i.entries, worst),
        ],
    );
    let mut arms = [
        arm("empty program", empty.as_raw_fd(), full),
        arm("one port", one_i.egress_fd()?, one),
        arm("every port", full_i.egress_fd()?, full),
        arm("ports 1-65534", worst_i.egress_fd()?, worst),
    ];
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
                    "sdm-bench: [9] round {}/{} done",
                    round + 1,
                    p.verdict_rounds
                );
            }
        }
    }
    let (empty_new, empty_est) = (arms[0].new.clone(), arms[0].est.clone());
    for arm in &arms[1..] {
        for (path, key, samples, base) in [
            ("new flow", "new", &arm.new, &empty_new),
            ("established", "established", &arm.est, &empty_est),
        ] {
            let slug = arm.label.replace([' ', '-'], "_");
            figs.push(
                Figure::measured(
                    9,
                    &format!("ranges.verdict.{slug}.{key}"),
                    &format!("{} of one /16, {path}: cost / empty program", arm.label),
                    "×",
                    summarize(&ratios(samples, base)),
                )
                .detail(format!(
                    "{:.0} ns per verdict; empty program {:.0} ns",
                    median(samples),
                    median(base)
                ))
                .decimals(2),
            );
        }
    }
    Ok(())
}
