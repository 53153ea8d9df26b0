//! Figures 4, 5 and 6: the real `sdm-agent run`, with a pin root, run folder,
//! target cgroup, network namespace and DNS responder of the benchmark's
//! own.
//!
//! The agent runs inside a client namespace: its resolver (`[dns] servers =
//! ["127.0.0.1"]`) and metrics listener are that namespace's loopback, where
//! the benchmark's DNS responder answers. It enforces on a child cgroup
//! holding only the benchmark's probe or flood process.

mod dns_latency;
mod resources;
mod scale;

pub use self::{dns_latency::run_dns, resources::run_resources, scale::run_scale};

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

/// The agent's `[state]`/`[audit]` sections exist only in some versions: use
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
    /// `[[allow]]` rules: (name, proto, port, targets).
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
        let pins = Pins::try_new(tag)?;
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

/// utime + stime of `pid`, in /proc/stat ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
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

/// Clock ticks per second of `/proc/<pid>/stat`.
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
