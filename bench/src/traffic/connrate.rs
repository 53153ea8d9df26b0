//! Figure 7: the connection rate. Short TCP connections (connect, one
//! 64-byte request, its response, close: what a gateway does per proxied
//! session) from the enforced child cgroup vs a sibling cgroup without
//! programs, and connect()s to a port the policy does not allow (refused
//! with EPERM by the sock_addr hook) vs the same port refused by the
//! server's RST when detached. One client process, interleaved rounds, as
//! figure 2's small packets; the same CPU for client and server.

use super::*;
use crate::{
    bpfstats,
    helpers::tcp::{CrrArm, Mode},
};

/// The server's port (allowed), and a port nothing listens on (denied).
pub const CRR_PORT: u16 = 7100;
pub const CLOSED_PORT: u16 = 7101;

/// The arms, in the order of the rows of `tcp_crr_multi`.
const DETACHED: usize = 0;
const ATTACHED: usize = 1;
const EPERM: usize = 2;
const REFUSED: usize = 3;

fn start_tcp_server(server: &Netns) -> Result<Proc> {
    let mut cmd = Command::new(exe()?);
    cmd.args(["tcp-serve", "--max-secs", "3600"])
        .args(["--bind", &format!("0.0.0.0:{CRR_PORT}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = sys::spawn_in(&mut cmd, Some(&server.path()), None, Some(traffic_cpu()))?;
    let rx = sys::line_channel(&mut child)?;
    let proc = Proc::new(child, "tcp server");
    let line = sys::next_line(&rx, "tcp server", Duration::from_secs(10))?;
    if line.trim() != "ready" {
        bail!("tcp server: unexpected output {line:?}");
    }
    Ok(proc)
}

/// Attempts per second of every arm, per round (see
/// `helpers::tcp::tcp_crr_multi`).
fn crr_multi(arms: &[CrrArm], rounds: usize, slice_ms: u64, seed: u64) -> Result<Vec<Vec<f64>>> {
    let mut cmd = Command::new(exe()?);
    cmd.arg("tcp-crr-multi")
        .args(["--rounds", &rounds.to_string()])
        .args(["--slice-ms", &slice_ms.to_string()])
        .args(["--seed", &seed.to_string()]);
    for arm in arms {
        cmd.arg("--arm").arg(arm.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = sys::spawn_in(&mut cmd, None, None, Some(traffic_cpu()))?;
    // Slices, plus joining a cgroup before each (a few ms at most).
    let total = (rounds + 1) as f64 * arms.len() as f64 * (slice_ms as f64 + 50.0) / 1000.0;
    let out = sys::finish(
        child,
        "tcp connection client",
        Duration::from_secs_f64(total + 30.0),
    )?;
    let v: Value = serde_json::from_str(out.trim())
        .with_context(|| format!("tcp-crr-multi printed {out:?}"))?;
    let rows: Vec<Vec<f64>> = v["rates"]
        .as_array()
        .context("no rates")?
        .iter()
        .map(|row| {
            row.as_array()
                .map(|r| r.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        })
        .collect();
    if rows.len() != rounds
        || rows
            .iter()
            .any(|r| r.len() != arms.len() || r.iter().any(|x| *x <= 0.0))
    {
        bail!("tcp-crr-multi measured nothing for some arm: {out}");
    }
    Ok(rows)
}

fn column(rows: &[Vec<f64>], i: usize) -> Vec<f64> {
    rows.iter().map(|r| r[i]).collect()
}

pub fn run(
    p: &Params,
    rng: &mut Rng,
    parent: &Cgroup,
    figs: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let topo = Topology::new(1)?;
    let _server = start_tcp_server(&topo.server)?;
    let server = server_addr(0);
    let plain = parent.try_child("crrplain")?;
    let attached = parent.try_child("crrattached")?;
    let mut inst = Instance::new(
        "tc",
        &Policy {
            rules: vec![rule("bench/crr", Proto::Tcp, CRR_PORT, server)],
        },
    )?;
    inst.attach(&attached.path)?;
    let netns = topo.clients[0].path();
    let arm = |cg: &Cgroup, port: u16, mode: Mode| CrrArm {
        netns: netns.clone(),
        cgroup: cg.path.clone(),
        to: std::net::SocketAddrV4::new(server, port),
        mode,
    };
    // In the order of DETACHED, ATTACHED, EPERM, REFUSED.
    let arms = [
        arm(&plain, CRR_PORT, Mode::Connect),
        arm(&attached, CRR_PORT, Mode::Connect),
        arm(&attached, CLOSED_PORT, Mode::Eperm),
        arm(&plain, CLOSED_PORT, Mode::Refused),
    ];
    // The benchmark itself stays off the CPU the traffic runs on.
    let _pinned = if traffic_cpu() > 0 {
        Some(sys::pin_self(0)?)
    } else {
        None
    };
    let rows = crr_multi(&arms, p.crr_rounds, p.crr_slice_ms, rng.next())?;
    println!(
        "sdm-bench: [7] short TCP connections: {} rounds; detached {:.0}/s, attached {:.0}/s (medians)",
        rows.len(),
        median(&column(&rows, DETACHED)),
        median(&column(&rows, ATTACHED))
    );
    // The allowed connections went through the program's allowing rule.
    let counted: u64 = inst
        .maps
        .rule_names()?
        .keys()
        .filter_map(|rid| {
            inst.maps
                .rule_counter(*rid, sdm_common::TrafficDir::Egress)
                .ok()
        })
        .map(|c| c.packets)
        .sum();
    if counted == 0 {
        bail!("the program's allowing rule saw no packet of the attached connections");
    }
    notes.push(format!(
        "Figure 7: the allowing rule counted {counted} egress packets of the attached connections."
    ));
    crr_figures(&rows, figs);
    stats_passes(p, rng, &inst, &arms, figs)?;
    Ok(())
}

/// Figure 7's rows: the allowed connections' ratio (with its target) and
/// the denied connect()'s, both within rounds.
fn crr_figures(rows: &[Vec<f64>], figs: &mut Vec<Figure>) {
    let (det, att) = (column(rows, DETACHED), column(rows, ATTACHED));
    figs.push(
        Figure::measured(
            7,
            "connrate.ratio",
            "Short TCP connections (connect, 64 B request, 64 B response, close; one CPU): attached / detached",
            "",
            summarize(&ratios(&att, &det)),
        )
        .detail(format!(
            "{:.0} vs {:.0} connections/s; {:+.0} ns per connection",
            median(&att),
            median(&det),
            median(&extra_ns(&att, &det))
        ))
        .target("≥ 0.95", Goal::AtLeast(0.95)),
    );
    let (eperm, refused) = (column(rows, EPERM), column(rows, REFUSED));
    figs.push(
        Figure::measured(
            7,
            "connrate.denied.ratio",
            "Denied connect(): refused at connect() by the program (EPERM) / refused by the server's RST, detached (ECONNREFUSED)",
            "",
            summarize(&ratios(&eperm, &refused)),
        )
        .detail(format!(
            "{:.0} vs {:.0} connect()s/s; {:.1} vs {:.1} µs per connect()",
            median(&eperm),
            median(&refused),
            1e6 / median(&eperm),
            1e6 / median(&refused)
        ))
        .note_target("none (for comparison)"),
    );
}

/// Per round, the time one attempt takes longer `with` than `without`.
fn extra_ns(with: &[f64], without: &[f64]) -> Vec<f64> {
    with.iter()
        .zip(without)
        .map(|(a, b)| (1.0 / a - 1.0 / b) * 1e9)
        .collect()
}

/// Figure 8 for figure 7's workloads: the allowed connections and the
/// denied connect()s, each alone in passes of its own (both run the same
/// programs), with the kernel's accounting on.
fn stats_passes(
    p: &Params,
    rng: &mut Rng,
    inst: &Instance,
    arms: &[CrrArm],
    figs: &mut Vec<Figure>,
) -> Result<()> {
    let workloads = [
        ("crr", "short TCP connections", &arms[ATTACHED]),
        ("denied_connect", "denied connect()", &arms[EPERM]),
    ];
    // One socket, and one connect(), per attempt.
    let unit = |key: &str| bpfstats::Unit {
        what: if key == "crr" {
            "connection"
        } else {
            "connect()"
        },
        counted_by: sdm_common::PROG_SOCK_CREATE,
    };
    let on = match bpfstats::StatsOn::try_new() {
        Ok(on) => on,
        Err(e) => {
            for (key, workload, _) in workloads {
                figs.push(bpfstats::missing(key, workload, &e));
            }
            return Ok(());
        }
    };
    for (key, workload, arm) in workloads {
        let one = std::slice::from_ref(arm);
        let seed = rng.next();
        let samples = bpfstats::measure(&on, &[&inst.ebpf], p.stats_passes, || {
            crr_multi(one, p.stats_rounds, p.crr_slice_ms, seed).map(drop)
        })
        .with_context(|| format!("figure 8, {workload}"))?;
        samples[0].figures(key, workload, unit(key), figs);
    }
    Ok(())
}
