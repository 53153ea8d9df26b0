//! Figures 2 and 3 from the samples.

use super::*;

/// Figure 2's figures: TCP, and UDP request/response on one and two CPUs.
pub(super) fn fig2_figures(
    tcp_att: &[f64],
    tcp_det: &[f64],
    arms: &[RrArm],
    split: Option<&[Vec<f64>]>,
    figs: &mut Vec<Figure>,
) {
    figs.push(
        Figure::measured(
            2,
            "traffic.tcp.ratio",
            "TCP stream (iperf3): attached / detached",
            "",
            summarize(&ratios(tcp_att, tcp_det)),
        )
        .detail(format!(
            "{:.2} vs {:.2} Gbit/s",
            median(tcp_att),
            median(tcp_det)
        ))
        .target("≥ 0.97", Goal::AtLeast(0.97)),
    );
    let none = arms[0].samples.clone();
    let att = arms[1].samples.clone();
    figs.push(
        Figure::measured(
            2,
            "traffic.udp_rr.ratio",
            "UDP request/response (64 B, one CPU): attached / detached",
            "",
            summarize(&ratios(&att, &none)),
        )
        .detail(rr_detail(&att, &none))
        .target("≥ 0.97", Goal::AtLeast(0.97)),
    );
    if let Some(rows) = split {
        let none2: Vec<f64> = rows.iter().map(|r| r[0]).collect();
        let att2: Vec<f64> = rows.iter().map(|r| r[1]).collect();
        figs.push(
            Figure::measured(
                2,
                "traffic.udp_rr_2cpu.ratio",
                "UDP request/response (64 B, client and server on two CPUs): attached / detached",
                "",
                summarize(&ratios(&att2, &none2)),
            )
            .detail(rr_detail(&att2, &none2))
            .target("≥ 0.97", Goal::AtLeast(0.97)),
        );
    }
}

/// Figure 3's figures: each filter and size against no filter.
pub(super) fn fig3_figures(sizes: &[usize], arms: &[RrArm], figs: &mut Vec<Figure>) -> Result<()> {
    let none = &arms[0].samples;
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let med_ratio = |f: Filter| {
        arms.iter()
            .find(|a| a.filter == f)
            .map(|a| median(&ratios(&a.samples, none)))
            .unwrap_or(f64::NAN)
    };
    let ebpf_large = med_ratio(Filter::Ebpf(largest));
    for &n in sizes {
        for f in [Filter::Iptables(n), Filter::Nft(n), Filter::Ebpf(n)] {
            let arm = arms.iter().find(|a| a.filter == f).context("arm")?;
            let (key, name) = match f {
                Filter::Iptables(_) => (
                    "iptables",
                    format!("iptables chain of {} rules / no filter", crate::group(n)),
                ),
                Filter::Nft(_) => (
                    "nftables",
                    format!("nftables set of {} elements / no filter", crate::group(n)),
                ),
                _ => (
                    "ebpf",
                    format!("this program, {} addresses / no filter", crate::group(n)),
                ),
            };
            let mut fig = Figure::measured(
                3,
                &format!("filters.{key}.{n}"),
                &name,
                "",
                summarize(&ratios(&arm.samples, none)),
            )
            .detail(rr_detail(&arm.samples, none));
            if n == largest {
                fig = match f {
                    Filter::Ebpf(_) => {
                        fig.target("≥ 0.97 (within 3% of no filter)", Goal::AtLeast(0.97))
                    }
                    Filter::Iptables(_) => {
                        let r = median(&ratios(&arm.samples, none));
                        fig.target(
                            "below this program's ratio (the chain falls behind)",
                            Goal::Holds(r < ebpf_large),
                        )
                    }
                    _ => fig.note_target("none (for comparison)"),
                };
            }
            figs.push(fig);
        }
        figs.push(against_nftables(n, arms)?);
    }
    Ok(())
}

/// Issue 12's goal at `n` entries: this program's rate over the nftables
/// set's, round by round (both against the same no-filter arm, so ≥ 1 means
/// its ratio to no filter is at least the set's and the time it adds per
/// transaction at most the set's).
fn against_nftables(n: usize, arms: &[RrArm]) -> Result<Figure> {
    let none = &arms[0].samples;
    let ours = &arms
        .iter()
        .find(|a| a.filter == Filter::Ebpf(n))
        .context("arm")?
        .samples;
    let nft = &arms
        .iter()
        .find(|a| a.filter == Filter::Nft(n))
        .context("arm")?
        .samples;
    let added = |with: &[f64]| {
        median(
            &with
                .iter()
                .zip(none)
                .map(|(a, b)| (1.0 / a - 1.0 / b) * 1e9)
                .collect::<Vec<_>>(),
        )
    };
    Ok(Figure::measured(
        3,
        &format!("filters.ebpf_vs_nft.{n}"),
        &format!(
            "this program / nftables set, {} entries (rates in the same round)",
            crate::group(n)
        ),
        "",
        summarize(&ratios(ours, nft)),
    )
    .detail(format!(
        "{:+.0} vs {:+.0} ns per transaction over no filter",
        added(ours),
        added(nft)
    ))
    .target(
        "≥ 1.00 (ratio to no filter ≥ the set's, added ns ≤ the set's)",
        Goal::AtLeast(1.0),
    ))
}

/// Rates, and the filter's cost per transaction (two packets, each judged
/// on egress and on ingress) from the per-round difference of 1/rate.
pub(super) fn rr_detail(with: &[f64], without: &[f64]) -> String {
    let extra: Vec<f64> = with
        .iter()
        .zip(without)
        .map(|(a, b)| (1.0 / a - 1.0 / b) * 1e9)
        .collect();
    format!(
        "{:.0} vs {:.0} transactions/s; {:+.0} ns per transaction",
        median(with),
        median(without),
        median(&extra)
    )
}

pub(super) fn label(f: Filter) -> String {
    match f {
        Filter::None => "no filter".into(),
        Filter::Attached => "attached program".into(),
        Filter::Ebpf(n) => format!("program with {n} addresses"),
        Filter::Iptables(n) => format!("iptables chain of {n}"),
        Filter::Nft(n) => format!("nftables set of {n}"),
    }
}

/// Figure 8 for figures 2 and 3: passes of the same UDP request/response
/// rounds over figure 2's program and each of figure 3's, with the
/// kernel's accounting on (after the timed rounds, so the clock reads it
/// adds never weigh on figures 2 and 3).
pub(super) fn stats_passes(
    p: &Params,
    rng: &mut Rng,
    topo: &Topology,
    programs: &[(Filter, &Instance)],
    arms: &[RrArm],
    figs: &mut Vec<Figure>,
) -> Result<()> {
    let workload = |f: Filter| match f {
        Filter::Ebpf(n) => (
            format!("udp_rr.{n}"),
            format!("UDP request/response, {} entries", crate::group(n)),
        ),
        _ => (
            "udp_rr.fig2".to_owned(),
            "UDP request/response, figure 2's program".to_owned(),
        ),
    };
    let on = match crate::bpfstats::StatsOn::try_new() {
        Ok(on) => on,
        Err(e) => {
            for (f, _) in programs {
                let (key, name) = workload(*f);
                figs.push(crate::bpfstats::missing(&key, &name, &e));
            }
            return Ok(());
        }
    };
    let sub: Vec<RrArm> = programs
        .iter()
        .map(|(f, _)| {
            let arm = arms.iter().find(|a| a.filter == *f).context("arm")?;
            Ok(RrArm {
                filter: arm.filter,
                netns: arm.netns,
                cgroup: arm.cgroup.clone(),
                samples: vec![],
            })
        })
        .collect::<Result<_>>()?;
    let sp = Params {
        rr_rounds: p.stats_rounds,
        ..p.clone()
    };
    let ebpfs: Vec<&aya::Ebpf> = programs.iter().map(|(_, i)| &i.ebpf).collect();
    let samples = crate::bpfstats::measure(&on, &ebpfs, p.stats_passes, || {
        udp_rr_multi(topo, &sub, &sp, rng.next(), traffic_cpu()).map(drop)
    })
    .context("figure 8, UDP request/response")?;
    // The client sends one request per transaction: one egress run each.
    let unit = crate::bpfstats::Unit {
        what: "transaction",
        counted_by: sdm_common::PROG_EGRESS,
    };
    for ((f, _), s) in programs.iter().zip(&samples) {
        let (key, name) = workload(*f);
        s.figures(&key, &name, unit, figs);
    }
    Ok(())
}
