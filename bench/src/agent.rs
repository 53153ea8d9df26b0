//! Figures 4 and 5: the real `sdm-agent run`, with a pin root, run folder,
//! target cgroup, network namespace and DNS responder of the benchmark's
//! own.
//!
//! The agent runs inside a client namespace: its resolver (`[dns] servers =
//! ["127.0.0.1"]`) and metrics listener are that namespace's loopback, where
//! the benchmark's DNS responder answers. It enforces on a child cgroup
//! holding only the benchmark's probe or flood process.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use sdm_common::{Counter, KernelConfig, MAP_CONFIG, MAP_DENY_STATS, MAP_EVENT_STATS};
use serde_json::Value;

use crate::{
    dns::{Answer, DnsServer, Responder, TYPE_A},
    guards::{Cgroup, Netns, Pins, TempDir},
    report::{Figure, Goal, Status},
    stats::{median, percentile, summarize},
    sys::{self, Proc},
    traffic::{client_addr, Topology},
    Params,
};

/// The name whose answers change in figure 4.
const PROBE_NAME: &str = "probe.bench.test";
const PROBE_PORT: u16 = 7001;
/// Probe addresses 10.232.128.1 and on, routed to the server namespace.
const PROBE_BASE: u32 = u32::from_be_bytes([10, 232, 128, 0]);
const PROBE_ROUTE: &str = "10.232.128.0/17";

/// Figure 4's in-kernel path: a name a client resolves itself; every answer
/// is a new address, 10.232.160.1 and on (inside PROBE_ROUTE).
const KERNEL_NAME: &str = "learn.bench.test";
const KERNEL_BASE: u32 = u32::from_be_bytes([10, 232, 160, 0]);

/// Answers every other name the agent asks (the role's control-plane hosts)
/// with one fixed address, as a healthy resolver would.
const OTHER_ANSWER: Ipv4Addr = Ipv4Addr::new(10, 232, 200, 1);

/// The agent's [state]/[audit] sections exist only in some versions: use
/// them (pointed into the benchmark's folder) when `default-config` has them.
fn supported_sections(agent: &Path) -> Result<Vec<&'static str>> {
    let text = sys::sh(&[&agent.to_string_lossy(), "default-config"])?;
    Ok(["state", "audit"]
        .into_iter()
        .filter(|s| {
            text.lines()
                .any(|l| l.trim_start_matches('#').trim() == format!("[{s}]"))
        })
        .collect())
}

struct AgentConfig<'a> {
    cgroup: &'a Path,
    listen_port: u16,
    /// [[allow]] rules: (name, proto, port, targets).
    allow: Vec<(String, &'static str, u16, Vec<String>)>,
    dns_timing: Option<(&'static str, &'static str, &'static str)>,
}

fn config_text(c: &AgentConfig, dir: &Path, sections: &[&str]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by sdm-bench; removed when the benchmark ends."
    );
    let _ = writeln!(t, "role = [\"client\"]");
    let _ = writeln!(t, "mode = \"enforce\"");
    let _ = writeln!(t, "cgroup = \"{}\"", c.cgroup.display());
    let _ = writeln!(t, "optional = false");
    let _ = writeln!(t, "\n[dns]\nservers = [\"127.0.0.1\"]\nfallback = \"none\"");
    if let Some((min, max, grace)) = c.dns_timing {
        let _ = writeln!(
            t,
            "ttl_min = \"{min}\"\nttl_max = \"{max}\"\ngrace = \"{grace}\""
        );
    }
    let _ = writeln!(t, "\n[http]\nlisten = \"127.0.0.1:{}\"", c.listen_port);
    if sections.contains(&"state") {
        let _ = writeln!(t, "\n[state]\ndir = \"{}\"", dir.join("state").display());
    }
    if sections.contains(&"audit") {
        let _ = writeln!(
            t,
            "\n[audit]\nlog = \"{}\"",
            dir.join("flows.jsonl").display()
        );
    }
    for (name, proto, port, to) in &c.allow {
        let list: Vec<String> = to.iter().map(|a| format!("\"{a}\"")).collect();
        let _ = writeln!(
            t,
            "\n[[allow]]\nname = \"{name}\"\ndirection = \"egress\"\nproto = \"{proto}\"\nport = {port}\nto = [{}]",
            list.join(", ")
        );
    }
    t
}

/// A running agent; stopped (SIGTERM) and its pins removed on drop.
struct Agent {
    proc: Proc,
    log: PathBuf,
    pins: Pins,
}

impl Agent {
    fn start(agent: &Path, netns: &Netns, dir: &Path, config: &str, tag: &str) -> Result<Self> {
        let pins = Pins::new(tag)?;
        let cfg = dir.join(format!("{tag}.toml"));
        fs::write(&cfg, config).with_context(|| format!("write {}", cfg.display()))?;
        let pin_root = pins.layout.pin_root.to_string_lossy().into_owned();
        let run_dir = pins.layout.run_dir.to_string_lossy().into_owned();
        let cfg_s = cfg.to_string_lossy().into_owned();
        let agent_s = agent.to_string_lossy().into_owned();
        sys::sh(&[
            &agent_s,
            "--pin-root",
            &pin_root,
            "--run-dir",
            &run_dir,
            "check",
            "--config",
            &cfg_s,
        ])
        .context("sdm-agent check of the generated config")?;
        let log = dir.join(format!("{tag}.log"));
        let mut cmd = Command::new(agent);
        cmd.args(["--pin-root", &pin_root, "--run-dir", &run_dir])
            .args(["run", "--config", &cfg_s])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join(format!("{tag}.out")))?)
            .stderr(fs::File::create(&log)?);
        let child = sys::spawn_in(&mut cmd, Some(&netns.path()), None, None)?;
        Ok(Self {
            proc: Proc::new(child, "sdm-agent"),
            log,
            pins,
        })
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn alive(&mut self) -> Result<()> {
        self.proc
            .check_alive()
            .with_context(|| format!("sdm-agent log:\n{}", self.log_tail()))
    }

    /// Waits until the agent has applied its policy and switched to enforce
    /// (its last start-up step). Returns the seconds it took.
    fn wait_enforcing(&mut self, timeout: Duration) -> Result<f64> {
        let start = Instant::now();
        loop {
            self.alive()?;
            if read_config(&self.pins.layout.map_pin(MAP_CONFIG))
                .is_ok_and(|c| c.mode == sdm_common::KernelMode::Enforce && c.generation > 0)
            {
                return Ok(start.elapsed().as_secs_f64());
            }
            if start.elapsed() > timeout {
                bail!(
                    "sdm-agent was not enforcing after {timeout:?}; log:\n{}",
                    self.log_tail()
                );
            }
            sys::sleep(Duration::from_millis(10))?;
        }
    }

    fn stop(mut self) {
        self.proc.stop(Duration::from_secs(5));
    }
}

fn read_config(pin: &Path) -> Result<KernelConfig> {
    let data = MapData::from_pin(pin)?;
    let arr: Array<MapData, KernelConfig> = Array::try_from(Map::Array(data))?;
    Ok(arr.get(&0, 0)?)
}

/// Denied packets (enforce and audit, all directions and reasons).
fn denied_total(pins: &Pins) -> Result<u64> {
    let data = MapData::from_pin(pins.layout.map_pin(MAP_DENY_STATS))?;
    let arr: PerCpuArray<MapData, Counter> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
    let mut total = 0;
    for i in 0..arr.len() {
        total += arr.get(&i, 0)?.iter().map(|c| c.packets).sum::<u64>();
    }
    Ok(total)
}

/// Events sent to the agent and lost (ring buffer full).
fn event_stats(pins: &Pins) -> Result<(u64, u64)> {
    let data = MapData::from_pin(pins.layout.map_pin(MAP_EVENT_STATS))?;
    let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
    let sum = |stat: sdm_common::EventStat| -> Result<u64> {
        Ok(arr.get(&u32::from(stat), 0)?.iter().sum())
    };
    Ok((
        sum(sdm_common::EventStat::Sent)?,
        sum(sdm_common::EventStat::Lost)?,
    ))
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("/proc/pid/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted from the state (field 3).
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// VmRSS and VmHWM in MB.
fn memory_mb(pid: u32) -> Result<(f64, f64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?
            .parse()?;
        Ok(kb / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Clock ticks per second of /proc/<pid>/stat.
fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// CPU (% of one core) over a window, and the largest VmRSS sampled in it.
fn window(agent: &mut Agent, secs: f64) -> Result<(f64, f64)> {
    let tck = clk_tck();
    let pid = agent.proc.pid();
    let t0 = cpu_ticks(pid)?;
    let start = Instant::now();
    let mut rss_max: f64 = memory_mb(pid)?.0;
    while start.elapsed().as_secs_f64() < secs {
        sys::sleep(Duration::from_millis(100).min(Duration::from_secs_f64(secs)))?;
        agent.alive()?;
        rss_max = rss_max.max(memory_mb(pid)?.0);
    }
    let t1 = cpu_ticks(pid)?;
    let cpu = (t1 - t0) as f64 / tck / start.elapsed().as_secs_f64() * 100.0;
    Ok((cpu, rss_max))
}

struct FixedResponder;

impl Responder for FixedResponder {
    fn answer(&mut self, _name: &str, qtype: u16) -> Answer {
        if qtype == TYPE_A {
            Answer::A(vec![OTHER_ANSWER], 300)
        } else {
            Answer::NoData
        }
    }
}

/// Figure 5: memory and CPU of the agent with 10,000 allowlist entries, at
/// idle and during a flood of denied packets, in interleaved windows.
pub fn run_resources(
    p: &Params,
    agent_bin: &Path,
    parent: &Cgroup,
    figs: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let topo = Topology::new(1)?;
    let ns = &topo.clients[0];
    let dir = TempDir::new("agent")?;
    let target = parent.child("agent")?;
    let _dns = DnsServer::start(
        ns.path(),
        SocketAddr::from(([127, 0, 0, 1], 53)),
        FixedResponder,
    )?;
    let per_rule = p.agent_entries.div_ceil(p.agent_rules);
    let mut allow = Vec::new();
    let mut next = u32::from_be_bytes([10, 128, 0, 0]);
    let mut left = p.agent_entries;
    for r in 0..p.agent_rules {
        let n = per_rule.min(left);
        if n == 0 {
            break;
        }
        let to = (0..n)
            .map(|_| {
                let a = Ipv4Addr::from(next);
                next += 1;
                a.to_string()
            })
            .collect();
        allow.push((format!("bench-{r:04}"), "tcp", 443, to));
        left -= n;
    }
    let sections = supported_sections(agent_bin)?;
    let cfg = AgentConfig {
        cgroup: &target.path,
        listen_port: 9851,
        allow,
        dns_timing: None,
    };
    let text = config_text(&cfg, dir.path(), &sections);
    let mut agent = Agent::start(agent_bin, ns, dir.path(), &text, "res")?;
    let startup = agent.wait_enforcing(Duration::from_secs(120))?;
    println!(
        "sdm-bench: [5] sdm-agent enforcing with {} allowlist entries after {startup:.2} s",
        crate::group(p.agent_entries)
    );
    sys::sleep(Duration::from_secs_f64(p.agent_settle))?;

    let (mut idle_cpu, mut idle_rss) = (Vec::new(), Vec::new());
    let (mut flood_cpu, mut flood_rss) = (Vec::new(), Vec::new());
    let (mut flood_rate, mut denied_rate) = (Vec::new(), Vec::new());
    let (ev0, lost0) = event_stats(&agent.pins)?;
    for round in 0..p.agent_rounds {
        sys::check_interrupted()?;
        let (cpu, rss) = window(&mut agent, p.idle_secs)?;
        idle_cpu.push(cpu);
        idle_rss.push(rss);

        let denied0 = denied_total(&agent.pins)?;
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["flood", "--net", &client_addr(0).to_string()])
            .args(["--secs", &p.flood_secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = sys::spawn_in(&mut cmd, Some(&ns.path()), Some(&target.path), None)?;
        let out_handle =
            std::thread::spawn(move || sys::finish(child, "flood", Duration::from_secs(60)));
        let (cpu, rss) = window(&mut agent, p.flood_secs)?;
        let out = out_handle
            .join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        let v: Value = serde_json::from_str(out.trim())?;
        let secs = v["secs"].as_f64().unwrap_or(p.flood_secs);
        let sent = v["udp_sent"].as_f64().unwrap_or(0.0) + v["raw_sent"].as_f64().unwrap_or(0.0);
        let refused =
            v["udp_refused"].as_f64().unwrap_or(0.0) + v["raw_refused"].as_f64().unwrap_or(0.0);
        if sent == 0.0 || refused < sent {
            bail!("flood: {refused} of {sent} packets refused; every one should be denied: {out}");
        }
        let denied = denied_total(&agent.pins)? - denied0;
        flood_cpu.push(cpu);
        flood_rss.push(rss);
        flood_rate.push(sent / secs);
        denied_rate.push(denied as f64 / secs);
        println!(
            "sdm-bench: [5] round {}/{}: idle {:.2}% CPU {:.1} MB; flood of {:.0} denied/s: {:.1}% CPU {:.1} MB",
            round + 1,
            p.agent_rounds,
            idle_cpu[round],
            idle_rss[round],
            sent / secs,
            cpu,
            rss
        );
        // Let the agent drain what the flood left before the next idle window.
        sys::sleep(Duration::from_secs_f64(p.agent_settle))?;
    }
    let (ev1, lost1) = event_stats(&agent.pins)?;
    let hwm = memory_mb(agent.proc.pid())?.1;
    agent.alive()?;
    agent.stop();

    let rules = cfg.allow.len();
    figs.push(
        Figure::measured(
            5,
            "agent.idle.rss_mb",
            &format!(
                "Agent resident memory, idle, {} allowlist entries",
                crate::group(p.agent_entries)
            ),
            "MB",
            summarize(&idle_rss),
        )
        .detail(format!(
            "VmRSS; peak (VmHWM) over the whole run, start-up included: {hwm:.1} MB"
        ))
        .decimals(1)
        .target("< 30 MB", Goal::Below(30.0)),
    );
    figs.push(
        Figure::measured(
            5,
            "agent.idle.cpu_pct",
            "Agent CPU, idle",
            "% of a core",
            summarize(&idle_cpu),
        )
        .detail(format!(
            "utime+stime over {:.0} s windows (resolution {:.2}%)",
            p.idle_secs,
            100.0 / (clk_tck() * p.idle_secs)
        ))
        .decimals(2)
        .target("< 0.5%", Goal::Below(0.5)),
    );
    figs.push(
        Figure::measured(
            5,
            "agent.flood.rss_mb",
            "Agent resident memory during a flood of denied packets",
            "MB",
            summarize(&flood_rss),
        )
        .decimals(1)
        .note_target("none"),
    );
    figs.push(
        Figure::measured(
            5,
            "agent.flood.cpu_pct",
            "Agent CPU during a flood of denied packets",
            "% of a core",
            summarize(&flood_cpu),
        )
        .detail(format!(
            "flood {:.0} packets/s, {:.0} denied/s counted by the kernel; {} events sent, {} lost",
            median(&flood_rate),
            median(&denied_rate),
            ev1 - ev0,
            lost1 - lost0
        ))
        .decimals(1)
        .note_target("none"),
    );
    figs.push(
        Figure::measured(
            5,
            "agent.startup_secs",
            "Agent start-up to enforcing (attach, resolve, write the maps)",
            "s",
            summarize(&[startup]),
        )
        .decimals(2)
        .note_target("none"),
    );
    notes.push(format!(
        "Figure 5: MAX_RULES is 1,024 (sdm-common), so the {} allowlist entries are {rules} `[[allow]]` rules of up to {per_rule} addresses each (tcp/443), on top of the client role's catalogue rules; the agent's DNS is a responder of the benchmark's own that answers every control-plane name at once.",
        crate::group(p.agent_entries)
    ));
    Ok(())
}

/// State shared by the figure 4 DNS responder and the main thread.
struct ProbeState {
    /// Hand out new addresses only once the agent enforces.
    armed: bool,
    next: u32,
    /// The address being waited for and when its first answer was sent.
    awaiting: Option<(Ipv4Addr, u64)>,
    probe: ChildStdin,
    error: Option<String>,
    /// In-kernel path: addresses answered for KERNEL_NAME and when.
    kernel_next: u32,
    kernel_sent: HashMap<Ipv4Addr, u64>,
}

struct ProbeResponder(Arc<Mutex<ProbeState>>);

impl Responder for ProbeResponder {
    fn answer(&mut self, name: &str, qtype: u16) -> Answer {
        if qtype != TYPE_A {
            return Answer::NoData;
        }
        if name != PROBE_NAME && name != KERNEL_NAME {
            return Answer::A(vec![OTHER_ANSWER], 300);
        }
        let Ok(mut st) = self.0.lock() else {
            return Answer::NxDomain;
        };
        if name == KERNEL_NAME {
            // A new address on every answer, to the agent and the client
            // alike; stamped as it leaves. A long TTL: only the first
            // packet's latency is measured.
            st.kernel_next += 1;
            let a = Ipv4Addr::from(KERNEL_BASE + st.kernel_next);
            st.kernel_sent.insert(a, sys::mono_ns());
            return Answer::A(vec![a], 300);
        }
        if !st.armed {
            return Answer::A(vec![Ipv4Addr::from(PROBE_BASE)], 0);
        }
        let addr = match st.awaiting {
            Some((a, _)) => a,
            None => {
                st.next += 1;
                let a = Ipv4Addr::from(PROBE_BASE + st.next);
                // The probe starts knocking before the agent can see the answer.
                if let Err(e) = writeln!(st.probe, "{a}").and_then(|()| st.probe.flush()) {
                    st.error = Some(e.to_string());
                }
                st.awaiting = Some((a, sys::mono_ns()));
                a
            }
        };
        Answer::A(vec![addr], 0)
    }
}

/// Figure 4, in-kernel path: a client in the enforced cgroup resolves
/// KERNEL_NAME through the trusted resolver and sends to the answer at
/// once; the time from the answer leaving the responder to the first send
/// the kernel accepts.
fn kernel_path(
    p: &Params,
    ns: &crate::guards::Netns,
    target: &Cgroup,
    state: &Arc<Mutex<ProbeState>>,
    figs: &mut Vec<Figure>,
) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "resolve-knock",
        "--server",
        "127.0.0.1:53",
        "--name",
        KERNEL_NAME,
    ])
    .args(["--port", &PROBE_PORT.to_string()])
    .args([
        "--count",
        &p.dns_answers.to_string(),
        "--timeout-ms",
        "3000",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = sys::spawn_in(&mut cmd, Some(&ns.path()), Some(&target.path), None)?;
    let rx = sys::line_channel(&mut child)?;
    let _client = Proc::new(child, "resolve-knock");
    let started = Instant::now();
    let (mut lat_ms, mut timeouts) = (Vec::new(), 0usize);
    for _ in 0..p.dns_answers {
        let line = sys::next_line(&rx, "resolve-knock", Duration::from_secs(10))?;
        let mut words = line.split_whitespace();
        let addr: Ipv4Addr = words.next().unwrap_or_default().parse()?;
        let result = words.next().unwrap_or_default();
        if result == "timeout" {
            timeouts += 1;
            continue;
        }
        let t1: u64 = result.parse()?;
        let t0 = state
            .lock()
            .map_err(|_| anyhow::anyhow!("lock poisoned"))?
            .kernel_sent
            .get(&addr)
            .copied()
            .with_context(|| format!("{addr} was never answered"))?;
        lat_ms.push(t1.saturating_sub(t0) as f64 / 1e6);
    }
    if lat_ms.is_empty() {
        bail!("figure 4, in-kernel path: no first packet got through ({timeouts} timeouts)");
    }
    let s = summarize(&lat_ms);
    let p99 = percentile(&lat_ms, 99.0);
    let detail = format!(
        "{} answers in {:.1} s; {timeouts} never got through (3 s)",
        lat_ms.len(),
        started.elapsed().as_secs_f64()
    );
    figs.push(
        Figure::measured(
            4,
            "dns.kernel.p50_ms",
            "DNS answer → first allowed packet, in-kernel learning path: p50",
            "ms",
            s.clone(),
        )
        .detail(detail)
        .decimals(3)
        .note_target("none given (p50 and p99 over 1,000 answers)"),
    );
    figs.push(
        Figure::measured(
            4,
            "dns.kernel.p99_ms",
            "DNS answer → first allowed packet, in-kernel learning path: p99",
            "ms",
            crate::stats::Summary { median: p99, ..s },
        )
        .detail("spread column: of all the samples, as for p50")
        .decimals(3)
        .note_target("none given"),
    );
    Ok(())
}

/// Figure 4: from a DNS answer that carries a new address to the first
/// packet to that address the kernel lets through, for the agent's own
/// resolution path.
pub fn run_dns(
    p: &Params,
    agent_bin: &Path,
    parent: &Cgroup,
    figs: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<()> {
    if p.dns_answers == 0 {
        for (key, what) in [
            ("dns.kernel", "in-kernel learning path"),
            ("dns.agent", "agent's resolution path"),
        ] {
            figs.push(Figure::missing(
                4,
                key,
                &format!("DNS answer → first allowed packet, {what}"),
                Status::Skipped,
                "skipped (--dns-answers 0)",
            ));
        }
        return Ok(());
    }
    let topo = Topology::new(1)?;
    let ns = &topo.clients[0];
    ns.ip(&["route", "add", PROBE_ROUTE, "via", "10.232.0.2"])?;
    let dir = TempDir::new("dns")?;
    let target = parent.child("probe")?;

    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["probe", "--port", &PROBE_PORT.to_string()])
        .args(["--timeout-ms", "5000", "--max-secs", "1800"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = sys::spawn_in(&mut cmd, Some(&ns.path()), Some(&target.path), None)?;
    let stdin = child.stdin.take().context("probe stdin")?;
    let rx = sys::line_channel(&mut child)?;
    let _probe = Proc::new(child, "probe");
    let state = Arc::new(Mutex::new(ProbeState {
        armed: false,
        next: 0,
        awaiting: None,
        probe: stdin,
        error: None,
        kernel_next: 0,
        kernel_sent: HashMap::new(),
    }));
    let _dns = DnsServer::start(
        ns.path(),
        SocketAddr::from(([127, 0, 0, 1], 53)),
        ProbeResponder(state.clone()),
    )?;

    let sections = supported_sections(agent_bin)?;
    let cfg = AgentConfig {
        cgroup: &target.path,
        listen_port: 9852,
        allow: vec![
            (
                "probe".into(),
                "udp",
                PROBE_PORT,
                vec![PROBE_NAME.to_owned()],
            ),
            (
                "learn".into(),
                "udp",
                PROBE_PORT,
                vec![KERNEL_NAME.to_owned()],
            ),
        ],
        // ttl_min is the agent's refresh floor; it wakes at most every 200 ms.
        dns_timing: Some(("50ms", "1s", "2s")),
    };
    let text = config_text(&cfg, dir.path(), &sections);
    let mut agent = Agent::start(agent_bin, ns, dir.path(), &text, "dns")?;
    agent.wait_enforcing(Duration::from_secs(60))?;
    state
        .lock()
        .map_err(|_| anyhow::anyhow!("lock poisoned"))?
        .armed = true;

    kernel_path(p, ns, &target, &state, figs)?;

    const WARMUP: usize = 2;
    let mut lat_ms = Vec::new();
    let mut timeouts = 0;
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(p.dns_max_secs);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut by_addr: HashMap<Ipv4Addr, u64> = HashMap::new();
    while lat_ms.len() < p.dns_answers {
        if Instant::now() > deadline {
            notes.push(format!(
                "Figure 4 stopped at its time limit ({} s) after {} answers.",
                p.dns_max_secs,
                lat_ms.len()
            ));
            break;
        }
        agent.alive()?;
        let line = match sys::next_line(&rx, "probe", Duration::from_secs(10)) {
            Ok(l) => l,
            Err(e) => {
                sys::check_interrupted()?;
                bail!("{e:#}; sdm-agent log:\n{}", agent.log_tail());
            }
        };
        let mut words = line.split_whitespace();
        let addr: Ipv4Addr = words.next().unwrap_or_default().parse()?;
        let result = words.next().unwrap_or_default().to_owned();
        let mut st = state.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?;
        if let Some(e) = st.error.take() {
            bail!("writing to the probe: {e}");
        }
        let Some((want, t0)) = st.awaiting else {
            continue;
        };
        if want != addr {
            continue;
        }
        st.awaiting = None;
        drop(st);
        seen += 1;
        if result == "timeout" {
            timeouts += 1;
            if timeouts > 5 {
                bail!("the first packet to {timeouts} new addresses never got through; sdm-agent log:\n{}", agent.log_tail());
            }
            continue;
        }
        let t1: u64 = result.parse()?;
        by_addr.insert(addr, t1);
        if seen > WARMUP {
            lat_ms.push(t1.saturating_sub(t0) as f64 / 1e6);
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            println!(
                "sdm-bench: [4] {} of {} answers",
                lat_ms.len(),
                p.dns_answers
            );
            last_report = Instant::now();
        }
    }
    agent.alive()?;
    agent.stop();
    if lat_ms.is_empty() {
        bail!("figure 4: no answer was measured");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let s = summarize(&lat_ms);
    let p99 = percentile(&lat_ms, 99.0);
    figs.push(
        Figure::measured(
            4,
            "dns.agent.p50_ms",
            "DNS answer → first allowed packet, agent's resolution path: p50",
            "ms",
            s.clone(),
        )
        .detail(format!(
            "{} answers in {elapsed:.0} s; {timeouts} timed out",
            lat_ms.len()
        ))
        .decimals(2)
        .note_target("none given (p50 and p99 over 1,000 answers)"),
    );
    figs.push(
        Figure::measured(
            4,
            "dns.agent.p99_ms",
            "DNS answer → first allowed packet, agent's resolution path: p99",
            "ms",
            crate::stats::Summary { median: p99, ..s },
        )
        .detail("spread column: of all the samples, as for p50")
        .decimals(2)
        .note_target("none given"),
    );
    notes.push(format!(
        "Figure 4: the agent refreshes a name at most every 200 ms (its loop's floor) with ttl_min = 50ms; each answer carries one new address, which a probe process in the enforced cgroup starts sending to (UDP, every 20 µs) just before the answer leaves the responder. The time is from that answer to the probe's first sendto() the kernel accepts, both on CLOCK_MONOTONIC. {} answers measured, the first {WARMUP} discarded.",
        lat_ms.len()
    ));
    Ok(())
}
