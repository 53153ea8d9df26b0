//! Figure 10's rows: 10a per core, 10b the allowed flow, 10c the scan.

use super::Arm;
use crate::{
    report::{Figure, Goal, Status},
    stats::{median, ratios, summarize},
    Params,
};

/// Every row of figure 10, from both arms' samples; `rate` is 10b's paced
/// flood.
pub(super) fn figures(p: &Params, rate: f64, off: &Arm, on: &Arm, figs: &mut Vec<Figure>) {
    flood_figures(off, on, figs);
    flow_figures(rate, off, on, figs);
    scan_figures(p, off, on, figs);
}

/// 10a: packets per CPU-second, per arm and the ratio.
fn flood_figures(off: &Arm, on: &Arm, figs: &mut Vec<Figure>) {
    for (arm, key, what) in [
        (off, "off", "without the shield (the stack answers each)"),
        (
            on,
            "on",
            "with sdm_xdp native on the veth, enforce (dropped at the driver)",
        ),
    ] {
        let name = format!("10a flood of SYNs and UDP to closed ports, receiver's packets per softirq CPU-second, {what}");
        let key = format!("xdp.flood.softirq.{key}");
        figs.push(if arm.softirq.is_empty() {
            Figure::missing(10, &key, &name, Status::Measured, "no softirq tick fell in the floods")
        } else {
            Figure::measured(10, &key, &name, "packets/s", summarize(&arm.softirq))
                .detail(format!(
                    "one core sending and disposing: {:.0} packets per CPU-second ({:.0} packets/s)",
                    median(&arm.per_core),
                    median(&arm.one_cpu)
                ))
                .decimals(0)
        });
    }
    if !off.softirq.is_empty() && off.softirq.len() == on.softirq.len() {
        figs.push(
            Figure::measured(
                10,
                "xdp.flood.softirq.ratio",
                "10a receiver's packets per softirq CPU-second: with the shield / without",
                "×",
                summarize(&ratios(&on.softirq, &off.softirq)),
            )
            .decimals(2)
            .note_target("none (the issue asks for the figure)"),
        );
    }
    figs.push(
        Figure::measured(
            10,
            "xdp.flood.per_core.ratio",
            "10a one core sending and disposing, packets per CPU-second: with the shield / without",
            "×",
            summarize(&ratios(&on.per_core, &off.per_core)),
        )
        .decimals(2)
        .note_target("none (the sender's own cost is in both arms)"),
    );
}

/// 10b: the allowed flow during the flood, and the TCP stream without one.
fn flow_figures(rate: f64, off: &Arm, on: &Arm, figs: &mut Vec<Figure>) {
    for (arm, key, what) in [
        (off, "off", "without the shield"),
        (on, "on", "with the shield"),
    ] {
        figs.push(
            Figure::measured(
                10,
                &format!("xdp.allowed.{key}"),
                &format!("10b allowed flow (UDP request/response to the advertised port) during the flood, {what}"),
                "transactions/s",
                summarize(&arm.flood_rr),
            )
            .detail(format!(
                "{:.0}/s without a flood; flood at {:.0} of {rate:.0} packets/s asked; {} packets dropped by the veth (its receive queue full) over all rounds",
                median(&arm.quiet_rr),
                median(&arm.paced_rate),
                arm.veth_drops
            ))
            .decimals(0),
        );
    }
    figs.push(
        Figure::measured(
            10,
            "xdp.allowed.ratio",
            "10b allowed flow during the flood: with the shield / without",
            "×",
            summarize(&ratios(&on.flood_rr, &off.flood_rr)),
        )
        .decimals(2)
        .note_target("none (the issue asks for the figure)"),
    );
    figs.push(
        Figure::measured(
            10,
            "xdp.stream.ratio",
            "10b TCP stream to the advertised port, no flood: with the shield / without",
            "×",
            summarize(&ratios(&on.stream_gbps, &off.stream_gbps)),
        )
        .detail(format!(
            "{:.2} vs {:.2} Gbit/s: native XDP on a veth takes GSO from its peer",
            median(&on.stream_gbps),
            median(&off.stream_gbps)
        ))
        .decimals(2)
        .note_target("none (diagnostic: a veth artefact, not the shield's cost on a NIC)"),
    );
}

/// 10c: the replies each arm's scans got, over all rounds.
fn scan_figures(p: &Params, off: &Arm, on: &Arm, figs: &mut Vec<Figure>) {
    let scanned = p.xdp_scan * p.xdp_rounds as u64;
    let replies = |a: &Arm| (a.rst + a.unreachable) as f64;
    let detail = |a: &Arm| {
        format!(
            "{} RST, {} ICMP unreachable for {scanned} SYNs and {scanned} datagrams",
            a.rst, a.unreachable
        )
    };
    figs.push(
        Figure::measured(
            10,
            "xdp.scan.replies.on",
            "10c RST and ICMP unreachable replies to a scan of closed ports, with the shield",
            "replies",
            summarize(&[replies(on)]),
        )
        .detail(detail(on))
        .decimals(0)
        .target("0", Goal::AtMost(0.0)),
    );
    figs.push(
        Figure::measured(
            10,
            "xdp.scan.replies.off",
            "10c the same scan without the shield",
            "replies",
            summarize(&[replies(off)]),
        )
        .detail(detail(off))
        .decimals(0)
        .target("> 0 (shows the capture sees replies)", Goal::AtLeast(1.0)),
    );
}
