//! `sdm-bench`: the benchmark behind `cargo xtask bench` (a tool, not a
//! test). It measures the real kernel programs and the real agent against
//! no filter, iptables and nftables, prints medians and ratios, and writes
//! BENCHMARKS.md and target/bench/results.json.
//!
//! Safety: programs are attached only to child cgroups the benchmark
//! creates; traffic only flows between network namespaces it creates
//! (10.232.x.y over veth) or on their loopback; iptables and nftables rules
//! live only inside those namespaces. Everything is removed when the run
//! ends, fails or is interrupted (RAII guards; Ctrl-C only sets a flag), and
//! leftovers of a killed run are swept at the next start. Every measurement
//! is bounded in time.

mod agent;
mod bpfstats;
mod dns;
mod guards;
mod helpers;
mod report;
mod stats;
mod summary;
mod sys;
mod traffic;
mod verdict;
mod verifier;
mod xdp;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::{
    guards::Cgroup,
    report::{Figure, Machine, Results},
    stats::Rng,
};

#[derive(Parser)]
#[command(
    name = "sdm-bench",
    about = "Benchmarks of sdm-egress (run through `cargo xtask bench`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark (as root).
    Run {
        /// Every measurement for a tiny duration: checks that each stage
        /// works end to end; asserts nothing about timings.
        #[arg(long)]
        smoke: bool,
        /// Where results.json goes (and BENCHMARKS.md for --smoke or --only).
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Where BENCHMARKS.md goes. Default: ./BENCHMARKS.md for a full run,
        /// OUT/BENCHMARKS.md for --smoke or --only.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The sdm-agent binary to measure (default: next to sdm-bench).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// DNS answers measured for figure 4 (0 skips it).
        #[arg(long)]
        dns_answers: Option<usize>,
        /// Only these figures, e.g. `1,3` (figures 2 and 3 always run
        /// together; figure 8 comes from the runs of 2, 3 and 7).
        #[arg(long, value_delimiter = ',')]
        only: Vec<u8>,
        /// Seed of the order of runs within a round (default: the time).
        #[arg(long)]
        seed: Option<u64>,
        /// What was measured, if not this checkout (a line for BENCHMARKS.md).
        #[arg(long)]
        source: Option<String>,
    },
    #[command(hide = true)]
    UdpEcho {
        #[arg(long = "bind")]
        binds: Vec<SocketAddr>,
        #[arg(long, default_value_t = 600)]
        max_secs: u64,
    },
    #[command(hide = true)]
    UdpRr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long)]
        probe: bool,
    },
    #[command(hide = true)]
    UdpRrMulti {
        /// `<netns file>,<cgroup dir>,<ip:port>`, repeated.
        #[arg(long = "arm")]
        arms: Vec<helpers::RrArm>,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        #[arg(long, default_value_t = 100)]
        slice_ms: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    #[command(hide = true)]
    TcpServe {
        #[arg(long = "bind")]
        binds: Vec<SocketAddr>,
        #[arg(long, default_value_t = 600)]
        max_secs: u64,
    },
    #[command(hide = true)]
    TcpCrrMulti {
        /// `<netns file>,<cgroup dir>,<ip:port>,<connect|eperm|refused>`, repeated.
        #[arg(long = "arm")]
        arms: Vec<helpers::tcp::CrrArm>,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        #[arg(long, default_value_t = 100)]
        slice_ms: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    #[command(hide = true)]
    Flood {
        /// Any address of the /24 to flood (hosts .100 to .249).
        #[arg(long)]
        net: Ipv4Addr,
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
    },
    /// Figure 10's flood: SYNs and datagrams to closed ports.
    #[command(hide = true)]
    XdpFlood {
        #[arg(long)]
        to: Ipv4Addr,
        #[arg(long)]
        from: Ipv4Addr,
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
        /// Packets per second; 0: as fast as one CPU goes.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 600)]
        max_secs: u64,
    },
    /// Figure 4's in-kernel path: resolve, then send at once, COUNT times.
    #[command(hide = true)]
    ResolveKnock {
        #[arg(long)]
        server: std::net::SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

/// How long and how often everything is measured.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub smoke: bool,
    pub seed: u64,
    pub verdict_rounds: usize,
    pub new_flow_calls: usize,
    pub est_calls: usize,
    pub est_repeat: u32,
    pub exact_sizes: Vec<usize>,
    pub cidr_sizes: Vec<usize>,
    pub tcp_rounds: usize,
    pub tcp_secs: u32,
    pub tcp_omit: u32,
    pub rr_rounds: usize,
    pub rr_slice_ms: u64,
    pub filter_sizes: Vec<usize>,
    /// Figure 7: rounds and slice of the short TCP connections.
    pub crr_rounds: usize,
    pub crr_slice_ms: u64,
    /// Figure 8: passes with the kernel's accounting on, and the rounds
    /// of each (slices as in figures 2, 3 and 7).
    pub stats_passes: usize,
    pub stats_rounds: usize,
    pub dns_answers: usize,
    pub dns_max_secs: u64,
    pub agent_entries: usize,
    pub agent_rules: usize,
    pub agent_rounds: usize,
    pub agent_settle: f64,
    pub idle_secs: f64,
    pub flood_secs: f64,
    /// Figure 6: `[[resource]]` hostnames per gateway, runs per size, the
    /// names' TTL, the wait after "applied" and the steady window.
    pub scale_sizes: Vec<usize>,
    pub scale_rounds: usize,
    pub scale_ttl_secs: u32,
    pub scale_settle_secs: f64,
    pub scale_window_secs: f64,
    pub scale_start_limit_secs: u64,
    /// Figure 10: rounds (each arm once), seconds of each flat-out flood,
    /// and the SYNs (and as many datagrams) of each arm's scan.
    pub xdp_rounds: usize,
    pub xdp_secs: f64,
    pub xdp_scan: u64,
}

impl Params {
    fn new(smoke: bool, seed: u64) -> Self {
        let full = !smoke;
        let pick = |full_v: f64, smoke_v: f64| if full { full_v } else { smoke_v };
        Self {
            smoke,
            seed,
            verdict_rounds: if full { 21 } else { 2 },
            new_flow_calls: if full { 5000 } else { 50 },
            est_calls: if full { 16 } else { 4 },
            est_repeat: if full { 10_000 } else { 100 },
            exact_sizes: vec![10, 1_000, 100_000],
            cidr_sizes: vec![10, 1_000, 100_000],
            tcp_rounds: if full { 30 } else { 1 },
            tcp_secs: 1,
            tcp_omit: 0,
            rr_rounds: if full { 100 } else { 3 },
            rr_slice_ms: if full { 100 } else { 20 },
            filter_sizes: vec![10, 1_000, 10_000],
            crr_rounds: if full { 60 } else { 2 },
            crr_slice_ms: if full { 100 } else { 20 },
            stats_passes: if full { 5 } else { 1 },
            stats_rounds: if full { 5 } else { 1 },
            dns_answers: if full { 1000 } else { 5 },
            dns_max_secs: if full { 420 } else { 30 },
            agent_entries: 10_000,
            agent_rules: 500,
            agent_rounds: if full { 4 } else { 1 },
            agent_settle: pick(2.0, 0.2),
            idle_secs: pick(8.0, 0.5),
            flood_secs: pick(3.0, 0.5),
            scale_sizes: if full {
                vec![100, 1_000, 10_000]
            } else {
                vec![100]
            },
            scale_rounds: if full { 3 } else { 1 },
            scale_ttl_secs: if full { 5 } else { 2 },
            // Past the first refresh of every name, then eight refresh
            // periods (two in smoke runs): a window that starts mid-wave
            // misses at most one wave of bursts, an eighth of the count.
            scale_settle_secs: pick(6.0, 2.5),
            scale_window_secs: pick(40.0, 4.0),
            scale_start_limit_secs: 300,
            xdp_rounds: if full { 7 } else { 1 },
            xdp_secs: pick(2.0, 0.3),
            xdp_scan: if full { 200 } else { 50 },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run {
            smoke,
            out,
            report,
            agent,
            dns_answers,
            only,
            seed,
            source,
        } => run(smoke, &out, report, agent, dns_answers, &only, seed, source),
        Cmd::UdpEcho { binds, max_secs } => helpers::udp_echo(&binds, max_secs),
        Cmd::UdpRr {
            to,
            secs,
            size,
            probe,
        } => helpers::udp_rr(to, secs, size, probe),
        Cmd::UdpRrMulti {
            arms,
            rounds,
            slice_ms,
            seed,
        } => helpers::udp_rr_multi(&arms, rounds, slice_ms, seed),
        Cmd::TcpServe { binds, max_secs } => helpers::tcp::tcp_serve(&binds, max_secs),
        Cmd::TcpCrrMulti {
            arms,
            rounds,
            slice_ms,
            seed,
        } => helpers::tcp::tcp_crr_multi(&arms, rounds, slice_ms, seed),
        Cmd::Flood { net, secs } => helpers::flood(net, secs),
        Cmd::XdpFlood {
            to,
            from,
            secs,
            rate,
        } => xdp::xdp_flood(to, from, secs, rate),
        Cmd::Probe {
            port,
            timeout_ms,
            max_secs,
        } => helpers::probe(port, timeout_ms, max_secs),
        Cmd::ResolveKnock {
            server,
            name,
            port,
            count,
            timeout_ms,
        } => helpers::resolve_knock(server, &name, port, count, timeout_ms),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sdm-bench: error: {}", shorten(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Keeps an error readable when it carries a whole verifier log: its
/// start and its end, which say what failed and why.
fn shorten(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= 40 {
        return text.to_owned();
    }
    format!(
        "{}\n[... {} lines ...]\n{}",
        lines[..10].join("\n"),
        lines.len() - 30,
        lines[lines.len() - 20..].join("\n")
    )
}

fn require_tools() -> Result<()> {
    let missing: Vec<&str> = ["ip", "ss", "iperf3", "iptables-restore", "iptables", "nft"]
        .into_iter()
        .filter(|t| sys::sh(&["sh", "-c", &format!("command -v {t}")]).is_err())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (`cargo xtask bench` installs the Debian packages iperf3, iptables and nftables)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The checkout being measured: `git rev-parse --short HEAD`, and whether
/// the working tree has changes.
fn git_source() -> String {
    let Ok(rev) = sys::sh(&["git", "rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let dirty = sys::sh(&["git", "status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
    format!(
        "commit {}{}",
        rev.trim(),
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    )
}

#[allow(clippy::too_many_arguments, reason = "one per `sdm-bench run` option")]
fn run(
    smoke: bool,
    out: &Path,
    report: Option<PathBuf>,
    agent: Option<PathBuf>,
    dns_answers: Option<usize>,
    only: &[u8],
    seed: Option<u64>,
    source: Option<String>,
) -> Result<()> {
    guards::require_root()?;
    guards::use_bench_names()?;
    sys::install_signal_handlers();
    require_tools()?;
    let agent_bin = match agent {
        Some(a) => a,
        None => std::env::current_exe()?
            .parent()
            .context("sdm-bench's folder")?
            .join("sdm-agent"),
    };
    let wants = |fig: u8| only.is_empty() || only.contains(&fig);
    if (wants(4) || wants(5) || wants(6)) && !agent_bin.exists() {
        bail!(
            "{} not found: build it first (`cargo build --release -p sdm-agent`) or pass --agent",
            agent_bin.display()
        );
    }
    let swept = guards::sweep_stale()?;
    if swept > 0 {
        println!("sdm-bench: removed {swept} leftovers of earlier, killed runs");
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut p = Params::new(smoke, seed);
    if let Some(n) = dns_answers {
        p.dns_answers = n;
    }
    let started = Instant::now();
    let date = report::utc_now();
    let machine = Machine::probe();
    println!(
        "sdm-bench: {} run on {} ({} CPUs), kernel {}",
        if smoke { "smoke" } else { "full" },
        machine.cpu_model,
        machine.cpus,
        machine.kernel
    );
    let (figs, notes, verifier_md) = measure(&p, seed, &agent_bin, &wants)?;
    let results = Results {
        source: source.unwrap_or_else(git_source),
        smoke,
        started: date,
        duration_secs: started.elapsed().as_secs_f64(),
        machine,
        params: serde_json::to_value(&p)?,
        figures: figs,
        notes,
    };
    summary::print_summary(&results);
    let json = out.join("results.json");
    results.write_json(&json)?;
    let md = report.unwrap_or_else(|| {
        if smoke || !only.is_empty() {
            out.join("BENCHMARKS.md")
        } else {
            PathBuf::from("BENCHMARKS.md")
        }
    });
    // Figure 11's table when it was measured, else the matrix's report.
    let kernels = verifier_md.unwrap_or_else(summary::kernel_matrix_section);
    results.write_markdown(&md, &format!("{kernels}{}", method(&p)))?;
    println!(
        "sdm-bench: wrote {} and {} ({:.0} s)",
        json.display(),
        md.display(),
        results.duration_secs
    );
    Ok(())
}

/// Measures the figures `wants` asks for, each in the benchmark's own
/// namespaces and below the benchmark's own cgroup (removed on return):
/// the figures, in section order, the notes for the report and figure
/// 11's section (if measured).
fn measure(
    p: &Params,
    seed: u64,
    agent_bin: &Path,
    wants: &dyn Fn(u8) -> bool,
) -> Result<(Vec<Figure>, Vec<String>, Option<String>)> {
    let mut rng = Rng::new(seed);
    let mut figs: Vec<Figure> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let parent = Cgroup::try_new("cg")?;
    if wants(1) {
        println!("sdm-bench: [1] cost per verdict (BPF_PROG_TEST_RUN)");
        verdict::run(p, &mut rng, &mut figs, &mut notes).context("figure 1")?;
    }
    if wants(9) {
        println!("sdm-bench: [9] port ranges: entries written and cost per verdict");
        verdict::ranges::run(p, &mut rng, &mut figs).context("figure 9")?;
    }
    if wants(2) || wants(3) || wants(8) {
        println!(
            "sdm-bench: [2,3] real traffic over veth: no filter, this program, iptables, nftables"
        );
        traffic::run(p, &mut rng, &parent, &mut figs, &mut notes).context("figures 2 and 3")?;
    }
    if wants(7) || wants(8) {
        println!("sdm-bench: [7] short TCP connections over veth: attached, detached, denied");
        traffic::connrate::run(p, &mut rng, &parent, &mut figs, &mut notes).context("figure 7")?;
    }
    if wants(5) {
        println!("sdm-bench: [5] the agent at idle and under a flood of denied packets");
        agent::run_resources(p, agent_bin, &parent, &mut figs, &mut notes).context("figure 5")?;
    }
    if wants(6) {
        println!(
            "sdm-bench: [6] a gateway with {} hostname resources",
            join(&p.scale_sizes)
        );
        agent::run_scale(p, agent_bin, &parent, &mut figs, &mut notes).context("figure 6")?;
    }
    if wants(4) {
        println!(
            "sdm-bench: [4] DNS answer to first allowed packet ({} answers)",
            p.dns_answers
        );
        agent::run_dns(p, agent_bin, &parent, &mut figs, &mut notes).context("figure 4")?;
    }
    if wants(10) {
        println!("sdm-bench: [10] the XDP shield under a flood of SYNs and UDP to closed ports");
        xdp::run(p, &mut rng, &parent, &mut figs, &mut notes).context("figure 10")?;
    }
    let verifier_md = if wants(11) {
        println!("sdm-bench: [11] verifier statistics: this kernel, and the kernel matrix's");
        Some(verifier::run(&mut figs, &mut notes).context("figure 11")?)
    } else {
        None
    };
    figs.sort_by_key(|f| f.section);
    Ok((figs, notes, verifier_md))
}

/// The "How each figure is measured" and "Reproduce" sections of
/// BENCHMARKS.md: method.md with this run's parameters in its `{name}`s.
fn method(p: &Params) -> String {
    let values = [
        ("exact", join(&p.exact_sizes).to_string()),
        ("cidr", join(&p.cidr_sizes).to_string()),
        ("nf", group(p.new_flow_calls).to_string()),
        ("ec", p.est_calls.to_string()),
        ("er", group(p.est_repeat as usize).to_string()),
        ("vr", p.verdict_rounds.to_string()),
        ("ts", p.tcp_secs.to_string()),
        ("tr", p.tcp_rounds.to_string()),
        ("rs", p.rr_slice_ms.to_string()),
        ("rr", p.rr_rounds.to_string()),
        ("cr", p.crr_rounds.to_string()),
        ("cs", p.crr_slice_ms.to_string()),
        ("sp", p.stats_passes.to_string()),
        ("sro", p.stats_rounds.to_string()),
        ("ae", group(p.agent_entries).to_string()),
        ("ar", p.agent_rules.to_string()),
        ("arounds", p.agent_rounds.to_string()),
        ("is", p.idle_secs.to_string()),
        ("fs", p.flood_secs.to_string()),
        ("ss", join(&p.scale_sizes)),
        ("sr", p.scale_rounds.to_string()),
        ("st", p.scale_ttl_secs.to_string()),
        ("sse", p.scale_settle_secs.to_string()),
        ("sw", p.scale_window_secs.to_string()),
        ("xr", p.xdp_rounds.to_string()),
        ("xs", p.xdp_secs.to_string()),
        ("xn", p.xdp_scan.to_string()),
        ("seed", p.seed.to_string()),
    ];
    values.iter().fold(
        include_str!("method.md").to_owned(),
        |text, (key, value)| text.replace(&format!("{{{key}}}"), value),
    )
}

fn join(v: &[usize]) -> String {
    let s: Vec<String> = v.iter().map(|n| group(*n)).collect();
    match s.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// 100000 -> "100,000".
pub(crate) fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(10), "10");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(100_000), "100,000");
        assert_eq!(join(&[10, 1000, 16384]), "10, 1,000 and 16,384");
    }

    #[test]
    fn smoke_is_short_and_full_is_not() {
        let s = Params::new(true, 1);
        let f = Params::new(false, 1);
        assert!(s.rr_slice_ms < f.rr_slice_ms && s.verdict_rounds < f.verdict_rounds);
        assert!(s.crr_rounds < f.crr_rounds && s.crr_slice_ms < f.crr_slice_ms);
        assert!(s.stats_passes < f.stats_passes && s.stats_passes >= 1);
        assert!(f.agent_entries == 10_000 && f.exact_sizes.contains(&100_000));
        assert_eq!(
            s.scale_sizes,
            [100],
            "the smoke run starts one small gateway"
        );
        assert_eq!(f.scale_sizes, [100, 1_000, 10_000]);
    }
}
