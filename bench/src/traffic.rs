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
        let server = Netns::new("s")?;
        let mut v = Vec::with_capacity(clients);
        for k in 0..clients {
            let c = Netns::new(&format!("c{k}"))?;
            let (cdev, sdev) = (format!("c{k}"), format!("s{k}"));
            c.ip(&[
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
            c.ip(&[
                "addr",
                "add",
                &format!("{}/24", client_addr(k)),
                "dev",
                &cdev,
            ])?;
            c.ip(&["link", "set", &cdev, "up"])?;
            server.ip(&[
                "addr",
                "add",
                &format!("{}/24", server_addr(k)),
                "dev",
                &sdev,
            ])?;
            server.ip(&["link", "set", &sdev, "up"])?;
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

fn start_iperf_server(server: &Netns) -> Result<Proc> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-p", &IPERF_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut proc = Proc::new(
        sys::spawn_in(&mut cmd, Some(&server.path()), None, Some(traffic_cpu()))?,
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
fn iperf(netns: &Netns, cgroup: &Path, to: Ipv4Addr, p: &Params) -> Result<f64> {
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

/// An iptables chain of `n` rules in `ns`, the allowed flow in the last one
/// (every packet walks the whole chain, as a denied one would), then DROP.
fn install_iptables(ns: &Netns, dev: &str, n: usize, server: Ipv4Addr) -> Result<()> {
    let mut t = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:SDMB - [0:0]\n",
    );
    t.push_str(&format!("-A OUTPUT -o {dev} -j SDMB\n"));
    for a in filler(n.saturating_sub(1)) {
        t.push_str(&format!(
            "-A SDMB -d {a}/32 -p udp -m udp --dport {ECHO_PORT} -j ACCEPT\n"
        ));
    }
    t.push_str(&format!(
        "-A SDMB -d {server}/32 -p udp -m udp --dport {ECHO_PORT} -j ACCEPT\n-A SDMB -j DROP\nCOMMIT\n"
    ));
    ns.exec_input(&["iptables-restore"], &t)?;
    let listed = ns.exec(&["iptables", "-S", "SDMB"])?;
    let rules = listed.lines().filter(|l| l.starts_with("-A SDMB")).count();
    if rules != n + 1 {
        bail!("iptables in {}: {rules} rules, expected {}", ns.name, n + 1);
    }
    Ok(())
}

/// Packets that reached the chain's last ACCEPT rule.
fn iptables_hits(ns: &Netns) -> Result<u64> {
    let out = ns.exec(&["iptables", "-L", "SDMB", "-v", "-x", "-n"])?;
    // Header lines, then one line per rule; the allowed flow is second to last.
    let rules: Vec<&str> = out.lines().skip(2).collect();
    let line = rules
        .len()
        .checked_sub(2)
        .and_then(|i| rules.get(i))
        .context("iptables -L SDMB printed no rules")?;
    line.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .context("iptables counter")
}

/// One nftables set of `n` (address . port) elements and a rule that
/// accepts what is in it and drops the rest.
fn install_nft(ns: &Netns, dev: &str, n: usize, server: Ipv4Addr) -> Result<()> {
    let mut elems: Vec<String> = filler(n.saturating_sub(1))
        .map(|a| format!("{a} . {ECHO_PORT}"))
        .collect();
    elems.push(format!("{server} . {ECHO_PORT}"));
    let t = format!(
        "table ip sdmb {{\n  set allow {{\n    type ipv4_addr . inet_service\n    size {}\n    elements = {{ {} }}\n  }}\n  chain out {{\n    type filter hook output priority filter; policy accept;\n    oifname \"{dev}\" ip protocol udp ip daddr . udp dport @allow counter accept\n    oifname \"{dev}\" drop\n  }}\n}}\n",
        (n + 1).next_power_of_two().max(1024),
        elems.join(", ")
    );
    ns.exec_input(&["nft", "-f", "-"], &t)?;
    Ok(())
}

fn nft_hits(ns: &Netns) -> Result<u64> {
    let out = ns.exec(&["nft", "list", "chain", "ip", "sdmb", "out"])?;
    let line = out
        .lines()
        .find(|l| l.contains("@allow"))
        .context("nft rule not found")?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words
                .next()
                .and_then(|p| p.parse().ok())
                .context("nft counter");
        }
    }
    bail!("no counter in {line:?}")
}

/// Addresses that fill an allowlist without ever being sent to.
fn filler(n: usize) -> impl Iterator<Item = Ipv4Addr> {
    (0..n as u32).map(|i| Ipv4Addr::from(u32::from_be_bytes([10, 128, 0, 0]) + i))
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
    let _iperf = start_iperf_server(&topo.server)?;
    let server0 = server_addr(0);

    let plain = parent.child("plain")?;
    let attached = parent.child("attached")?;
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
    let mut ebpf_cgroups = Vec::new();
    let mut ebpf_instances = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        sys::check_interrupted()?;
        let cg = parent.child(&format!("ebpf{n}"))?;
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

    // Every filter must be in the path: the second echo port is answered
    // without a filter and blocked by each of them.
    for arm in &arms {
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

    // The benchmark itself stays off the CPU the traffic runs on.
    let _pinned = if traffic_cpu() > 0 {
        Some(sys::pin_self(0)?)
    } else {
        None
    };
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

    // Figures 2 (UDP) and 3: every configuration once per round, shuffled,
    // in slices of one process.
    let rows = udp_rr_multi(&topo, &arms, p, rng.next(), traffic_cpu())?;
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
        Some(udp_rr_multi(&topo, &arms[..2], p, rng.next(), 0)?)
    } else {
        None
    };

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

    figs.push(
        Figure::measured(
            2,
            "traffic.tcp.ratio",
            "TCP stream (iperf3): attached / detached",
            "",
            summarize(&ratios(&tcp_att, &tcp_det)),
        )
        .detail(format!(
            "{:.2} vs {:.2} Gbit/s",
            median(&tcp_att),
            median(&tcp_det)
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
    if let Some(rows) = &split {
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

    let largest = sizes.iter().copied().max().unwrap_or(0);
    let med_ratio = |f: Filter| {
        arms.iter()
            .find(|a| a.filter == f)
            .map(|a| median(&ratios(&a.samples, &none)))
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
                summarize(&ratios(&arm.samples, &none)),
            )
            .detail(rr_detail(&arm.samples, &none));
            if n == largest {
                fig = match f {
                    Filter::Ebpf(_) => {
                        fig.target("≥ 0.97 (within 3% of no filter)", Goal::AtLeast(0.97))
                    }
                    Filter::Iptables(_) => {
                        let r = median(&ratios(&arm.samples, &none));
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
    }
    drop(ebpf_instances);
    drop(ebpf_cgroups);
    drop(fig2);
    Ok(())
}

/// Rates, and the filter's cost per transaction (two packets, each judged
/// on egress and on ingress) from the per-round difference of 1/rate.
fn rr_detail(with: &[f64], without: &[f64]) -> String {
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

fn label(f: Filter) -> String {
    match f {
        Filter::None => "no filter".into(),
        Filter::Attached => "attached program".into(),
        Filter::Ebpf(n) => format!("program with {n} addresses"),
        Filter::Iptables(n) => format!("iptables chain of {n}"),
        Filter::Nft(n) => format!("nftables set of {n}"),
    }
}
