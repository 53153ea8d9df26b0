//! Figures 2 and 3: real traffic over veth between network namespaces of
//! the benchmark's own.
//!
//! Topology: one server namespace S and client namespaces C0..Cn, each
//! joined to S by its own veth pair (Ck 10.232.k.1/24 <-> S 10.232.k.2/24).
//! S runs an iperf3 server and a UDP echo server for all of them. Senders
//! run in C0 in a child cgroup with the programs attached (enforce mode) or
//! in a sibling cgroup with nothing attached; the iptables and nftables
//! configurations each get a client namespace of their own, holding their
//! rules, so that every configuration stays set up and the runs of one
//! round can be interleaved in a shuffled order.

pub mod connrate;
mod figures;
mod rivals;

use self::{
    figures::{fig2_figures, fig3_figures, label, stats_passes},
    rivals::{install_iptables, install_nft, iptables_hits, nft_hits},
};

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use ipnet::{IpNet, Ipv4Net};
use sdm_agent::policy::{Direction, Policy, PortRange, Proto, Rule, Target};
use serde_json::Value;

use crate::{
    guards::{Cgroup, Netns},
    report::{Figure, Goal},
    stats::{median, ratios, summarize, Rng},
    sys::{self, Proc},
    verdict::{self, Instance, Kind},
    Params,
};

/// The UDP echo port (allowed) and a second echo port no filter allows,
/// to check that every filter is really in the path.
pub const ECHO_PORT: u16 = 7000;
pub const BLOCKED_PORT: u16 = 7001;
pub const IPERF_PORT: u16 = 5201;

/// The CPU every sender and server of figures 2 and 3 runs on: the same
/// one, so that a transaction costs CPU time only and never waits for a
/// cross-CPU wake-up (slow and noisy in a VM), and the filters' share of
/// the work is as large as it gets.
pub fn traffic_cpu() -> usize {
    // Not available_parallelism(): that shrinks once this thread is pinned.
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).saturating_sub(1)
}

pub fn client_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 232, k as u8, 1)
}

pub fn server_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 232, k as u8, 2)
}

pub struct Topology {
    pub clients: Vec<Netns>,
    pub server: Netns,
}

impl Topology {
    pub fn new(clients: usize) -> Result<Self> {
        let server = Netns::try_new("s")?;
        let mut v = Vec::with_capacity(clients);
        for k in 0..clients {
            let c = Netns::try_new(&format!("c{k}"))?;
            let (cdev, sdev) = (format!("c{k}"), format!("s{k}"));
            c.try_ip(&[
                "link",
                "add",
                &cdev,
                "type",
                "veth",
                "peer",
                "name",
                &sdev,
                "netns",
                &server.name,
            ])?;
            c.try_ip(&[
                "addr",
                "add",
                &format!("{}/24", client_addr(k)),
                "dev",
                &cdev,
            ])?;
            c.try_ip(&["link", "set", &cdev, "up"])?;
            server.try_ip(&[
                "addr",
                "add",
                &format!("{}/24", server_addr(k)),
                "dev",
                &sdev,
            ])?;
            server.try_ip(&["link", "set", &sdev, "up"])?;
            v.push(c);
        }
        Ok(Self { clients: v, server })
    }
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("find sdm-bench's own executable")
}

/// The UDP echo server in S, on the echo port and the blocked port.
pub fn start_echo(server: &Netns) -> Result<Proc> {
    let mut cmd = Command::new(exe()?);
    cmd.args(["udp-echo", "--max-secs", "3600"])
        .args(["--bind", &format!("0.0.0.0:{ECHO_PORT}")])
        .args(["--bind", &format!("0.0.0.0:{BLOCKED_PORT}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = sys::spawn_in(&mut cmd, Some(&server.path()), None, Some(traffic_cpu()))?;
    let rx = sys::line_channel(&mut child)?;
    let proc = Proc::new(child, "udp echo server");
    let line = sys::next_line(&rx, "udp echo server", Duration::from_secs(10))?;
    if line.trim() != "ready" {
        bail!("udp echo server: unexpected output {line:?}");
    }
    Ok(proc)
}

/// The iperf3 server in `server`, in `cgroup` if given (figure 10: the
/// cgroup with the programs attached).
pub(crate) fn start_iperf_server(server: &Netns, cgroup: Option<&Path>) -> Result<Proc> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-p", &IPERF_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut proc = Proc::new(
        sys::spawn_in(&mut cmd, Some(&server.path()), cgroup, Some(traffic_cpu()))?,
        "iperf3 server",
    );
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        proc.check_alive()?;
        let out = sys::sh(&[
            "ss",
            "-N",
            &server.name,
            "-Hltn",
            &format!("sport = :{IPERF_PORT}"),
        ])?;
        if !out.trim().is_empty() {
            return Ok(proc);
        }
        if Instant::now() > end {
            bail!("iperf3 server did not listen within 10 s");
        }
        sys::sleep(Duration::from_millis(20))?;
    }
}

/// Small-packet request/response rates (transactions per second) of every
/// arm, per round, from one process pinned to `cpu` (see
/// `helpers::udp_rr_multi`).
fn udp_rr_multi(
    topo: &Topology,
    arms: &[RrArm],
    p: &Params,
    seed: u64,
    cpu: usize,
) -> Result<Vec<Vec<f64>>> {
    let mut cmd = Command::new(exe()?);
    cmd.arg("udp-rr-multi")
        .args(["--rounds", &p.rr_rounds.to_string()])
        .args(["--slice-ms", &p.rr_slice_ms.to_string()])
        .args(["--seed", &seed.to_string()]);
    for arm in arms {
        cmd.arg("--arm").arg(format!(
            "{},{},{}:{ECHO_PORT}",
            topo.clients[arm.netns].path().display(),
            arm.cgroup.display(),
            server_addr(arm.netns)
        ));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = sys::spawn_in(&mut cmd, None, None, Some(cpu))?;
    let total = (p.rr_rounds + 1) as f64 * arms.len() as f64 * p.rr_slice_ms as f64 / 1000.0;
    let out = sys::finish(
        child,
        "udp request/response client",
        Duration::from_secs_f64(total + 30.0),
    )?;
    let v: Value = serde_json::from_str(out.trim())
        .with_context(|| format!("udp-rr-multi printed {out:?}"))?;
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
    if rows.len() != p.rr_rounds
        || rows
            .iter()
            .any(|r| r.len() != arms.len() || r.iter().any(|x| *x <= 0.0))
    {
        bail!("udp-rr-multi measured nothing for some arm: {out}");
    }
    Ok(rows)
}

/// Whether a datagram to the blocked port gets no answer (or is refused).
fn blocked(netns: &Netns, cgroup: &Path, to: Ipv4Addr) -> Result<bool> {
    let mut cmd = Command::new(exe()?);
    cmd.args(["udp-rr", "--to", &format!("{to}:{BLOCKED_PORT}"), "--probe"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = sys::spawn_in(
        &mut cmd,
        Some(&netns.path()),
        Some(cgroup),
        Some(traffic_cpu()),
    )?;
    let out = sys::finish(child, "udp probe", Duration::from_secs(10))?;
    let v: Value = serde_json::from_str(out.trim())
        .with_context(|| format!("udp-rr --probe printed {out:?}"))?;
    Ok(v["blocked"].as_bool().unwrap_or(false))
}

/// TCP stream throughput in Gbit/s with iperf3.
pub(crate) fn iperf(netns: &Netns, cgroup: &Path, to: Ipv4Addr, p: &Params) -> Result<f64> {
    let mut last = String::new();
    for _attempt in 0..10 {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-c", &to.to_string(), "-p", &IPERF_PORT.to_string(), "-J"])
            .args(["-t", &p.tcp_secs.to_string(), "-O", &p.tcp_omit.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = sys::spawn_in(
            &mut cmd,
            Some(&netns.path()),
            Some(cgroup),
            Some(traffic_cpu()),
        )?;
        let timeout = Duration::from_secs(u64::from(p.tcp_secs + p.tcp_omit) + 20);
        // iperf3 -J exits non-zero on errors but still prints JSON.
        let out = match sys::finish(child, "iperf3 client", timeout) {
            Ok(out) => out,
            Err(e) => {
                sys::check_interrupted()?;
                last = format!("{e:#}");
                if last.contains("busy") {
                    sys::sleep(Duration::from_millis(300))?;
                    continue;
                }
                bail!("{last}");
            }
        };
        let v: Value =
            serde_json::from_str(&out).with_context(|| format!("iperf3 printed {out:?}"))?;
        if let Some(err) = v["error"].as_str() {
            last = err.to_owned();
            if err.contains("busy") {
                sys::sleep(Duration::from_millis(300))?;
                continue;
            }
            bail!("iperf3: {err}");
        }
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 JSON without end.sum_received.bits_per_second")?;
        return Ok(bps / 1e9);
    }
    bail!("iperf3 kept failing: {last}")
}

fn rule(name: &str, proto: Proto, port: u16, to: Ipv4Addr) -> Rule {
    Rule {
        name: name.into(),
        direction: Direction::Egress,
        protos: vec![proto],
        ports: vec![PortRange::single(port)],
        targets: vec![Target::Cidr(IpNet::V4(
            Ipv4Net::new(to, 32).expect("a /32"),
        ))],
        required: true,
        roles: vec![],
        origin: "sdm-bench".into(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Filter {
    None,
    Attached,
    Ebpf(usize),
    Iptables(usize),
    Nft(usize),
}

struct RrArm {
    filter: Filter,
    netns: usize,
    cgroup: PathBuf,
    samples: Vec<f64>,
}

pub fn run(
    p: &Params,
    rng: &mut Rng,
    parent: &Cgroup,
    figs: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let sizes = &p.filter_sizes;
    let topo = Topology::new(1 + 2 * sizes.len())?;
    let _echo = start_echo(&topo.server)?;
    let _iperf = start_iperf_server(&topo.server, None)?;
    let server0 = server_addr(0);

    let plain = parent.try_child("plain")?;
    let attached = parent.try_child("attached")?;
    let fig2 = attach_fig2(&attached, server0)?;
    let mut arms = vec![
        RrArm {
            filter: Filter::None,
            netns: 0,
            cgroup: plain.path.clone(),
            samples: vec![],
        },
        RrArm {
            filter: Filter::Attached,
            netns: 0,
            cgroup: attached.path.clone(),
            samples: vec![],
        },
    ];
    let (ebpf_cgroups, ebpf_instances) = install_filters(sizes, parent, &topo, &plain, &mut arms)?;
    check_filters_block(&topo, &arms)?;
    // The benchmark itself stays off the CPU the traffic runs on.
    let _pinned = if traffic_cpu() > 0 {
        Some(sys::pin_self(0)?)
    } else {
        None
    };
    let (tcp_att, tcp_det) = measure_tcp(p, &topo, &attached, &plain)?;
    let split = measure_rr(p, rng, &topo, &mut arms)?;
    check_counters(sizes, &topo, &ebpf_instances, notes)?;
    fig2_figures(&tcp_att, &tcp_det, &arms, split.as_deref(), figs);
    fig3_figures(sizes, &arms, figs)?;
    let programs: Vec<(Filter, &Instance)> = std::iter::once((Filter::Attached, &fig2))
        .chain(sizes.iter().map(|&n| Filter::Ebpf(n)).zip(&ebpf_instances))
        .collect();
    stats_passes(p, rng, &topo, &programs, &arms, figs)?;
    drop(ebpf_instances);
    drop(ebpf_cgroups);
    drop(fig2);
    Ok(())
}

/// Figure 2's program: the iperf and echo flows allowed, attached to
/// `attached`.
fn attach_fig2(attached: &Cgroup, server0: Ipv4Addr) -> Result<Instance> {
    let mut fig2 = Instance::new(
        "tr",
        &Policy {
            rules: vec![
                rule("bench/iperf", Proto::Tcp, IPERF_PORT, server0),
                rule("bench/echo", Proto::Udp, ECHO_PORT, server0),
            ],
        },
    )?;
    fig2.attach(&attached.path)?;

    Ok(fig2)
}

/// Figure 3's filters, for each size: this program in a cgroup of its own,
/// an iptables chain and an nftables set each in a client namespace of its
/// own; an arm for each. Returns the program's cgroups and instances
/// (alive as long as they are measured).
fn install_filters(
    sizes: &[usize],
    parent: &Cgroup,
    topo: &Topology,
    plain: &Cgroup,
    arms: &mut Vec<RrArm>,
) -> Result<(Vec<Cgroup>, Vec<Instance>)> {
    let server0 = server_addr(0);
    let mut ebpf_cgroups = Vec::new();
    let mut ebpf_instances = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        sys::check_interrupted()?;
        let cg = parent.try_child(&format!("ebpf{n}"))?;
        let server = IpNet::V4(Ipv4Net::new(server0, 32)?);
        let mut inst = Instance::new(
            &format!("te{n}"),
            &verdict::policy(Kind::Exact, n - 1, &[server], ECHO_PORT, Proto::Udp),
        )?;
        inst.attach(&cg.path)?;
        arms.push(RrArm {
            filter: Filter::Ebpf(n),
            netns: 0,
            cgroup: cg.path.clone(),
            samples: vec![],
        });
        let k = 1 + i;
        let started = Instant::now();
        install_iptables(&topo.clients[k], &format!("c{k}"), n, server_addr(k))?;
        println!(
            "sdm-bench: [3] iptables chain of {n} rules in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        arms.push(RrArm {
            filter: Filter::Iptables(n),
            netns: k,
            cgroup: plain.path.clone(),
            samples: vec![],
        });
        let k = 1 + sizes.len() + i;
        let started = Instant::now();
        install_nft(&topo.clients[k], &format!("c{k}"), n, server_addr(k))?;
        println!(
            "sdm-bench: [3] nftables set of {n} elements in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        arms.push(RrArm {
            filter: Filter::Nft(n),
            netns: k,
            cgroup: plain.path.clone(),
            samples: vec![],
        });
        ebpf_cgroups.push(cg);
        ebpf_instances.push(inst);
    }

    Ok((ebpf_cgroups, ebpf_instances))
}

fn check_filters_block(topo: &Topology, arms: &[RrArm]) -> Result<()> {
    // Every filter must be in the path: the second echo port is answered
    // without a filter and blocked by each of them.
    for arm in arms {
        let b = blocked(
            &topo.clients[arm.netns],
            &arm.cgroup,
            server_addr(arm.netns),
        )?;
        let want = arm.filter != Filter::None;
        if b != want {
            bail!(
                "sanity check: {} {} the blocked port",
                label(arm.filter),
                if b { "blocks" } else { "does not block" }
            );
        }
    }
    println!("sdm-bench: [2,3] every filter blocks what it should, the unfiltered path does not");

    Ok(())
}

/// Figure 2, TCP: iperf3 rates (attached, detached), in interleaved pairs.
fn measure_tcp(
    p: &Params,
    topo: &Topology,
    attached: &Cgroup,
    plain: &Cgroup,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let server0 = server_addr(0);
    // Figure 2, TCP: interleaved pairs, the order alternating.
    let (mut tcp_att, mut tcp_det) = (Vec::new(), Vec::new());
    for round in 0..p.tcp_rounds {
        sys::check_interrupted()?;
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_attached in order {
            let cg = if is_attached {
                &attached.path
            } else {
                &plain.path
            };
            let gbps = iperf(&topo.clients[0], cg, server0, p)?;
            if is_attached {
                tcp_att.push(gbps);
            } else {
                tcp_det.push(gbps);
            }
        }
        if round % 5 == 4 || round + 1 == p.tcp_rounds {
            println!(
                "sdm-bench: [2] TCP round {}/{}: attached {:.2} Gbit/s, detached {:.2} Gbit/s",
                round + 1,
                p.tcp_rounds,
                tcp_att[round],
                tcp_det[round]
            );
        }
    }

    Ok((tcp_att, tcp_det))
}

/// Figures 2 (UDP) and 3: the samples into each arm; returns the rounds of
/// the two-CPU comparison, if the machine has a CPU to spare.
fn measure_rr(
    p: &Params,
    rng: &mut Rng,
    topo: &Topology,
    arms: &mut [RrArm],
) -> Result<Option<Vec<Vec<f64>>>> {
    // Figures 2 (UDP) and 3: every configuration once per round, shuffled,
    // in slices of one process.
    let rows = udp_rr_multi(topo, arms, p, rng.next(), traffic_cpu())?;
    for row in &rows {
        for (arm, rate) in arms.iter_mut().zip(row) {
            arm.samples.push(*rate);
        }
    }
    println!(
        "sdm-bench: [2,3] UDP request/response: {} rounds; no filter {:.0}/s (median)",
        rows.len(),
        median(&arms[0].samples)
    );
    // Figure 2 again with the client on another CPU than the server: each
    // transaction then waits for cross-CPU wake-ups, which dwarf the
    // filters' work (and, in a VM, vary a lot).
    let split = if traffic_cpu() > 0 {
        Some(udp_rr_multi(topo, &arms[..2], p, rng.next(), 0)?)
    } else {
        None
    };

    Ok(split)
}

fn check_counters(
    sizes: &[usize],
    topo: &Topology,
    ebpf_instances: &[Instance],
    notes: &mut Vec<String>,
) -> Result<()> {
    // The traffic went through each filter's allowing rule.
    for (i, &n) in sizes.iter().enumerate() {
        let ipt = iptables_hits(&topo.clients[1 + i])?;
        let nft = nft_hits(&topo.clients[1 + sizes.len() + i])?;
        let id = ebpf_instances[i].maps.rule_names()?;
        let ebpf: u64 = id
            .keys()
            .map(|rid| {
                ebpf_instances[i]
                    .maps
                    .rule_counter(*rid, sdm_common::TrafficDir::Egress)
                    .map(|c| c.packets)
                    .unwrap_or(0)
            })
            .sum();
        if ipt == 0 || nft == 0 || ebpf == 0 {
            bail!("N={n}: a filter's allowing rule saw no packet (iptables {ipt}, nftables {nft}, eBPF {ebpf})");
        }
        if i + 1 == sizes.len() {
            notes.push(format!(
                "At N = {} the allowing rule counted {ipt} packets (iptables), {nft} (nftables) and {ebpf} (this program, egress).", crate::group(n)
            ));
        }
    }

    Ok(())
}
