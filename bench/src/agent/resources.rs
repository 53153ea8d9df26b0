//! Figure 5: the agent's memory and CPU at idle and under a flood of
//! denied packets.

use super::*;

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
    let dir = TempDir::try_new("agent")?;
    let target = parent.try_child("agent")?;
    let _dns = DnsServer::start(
        ns.path(),
        SocketAddr::from(([127, 0, 0, 1], 53)),
        FixedResponder,
    )?;
    let per_rule = p.agent_entries.div_ceil(p.agent_rules);
    let allow = allowlist(p, per_rule);
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

        let (cpu, rss, sent_rate, denied_per_s) = flood_window(p, &mut agent, ns, &target)?;
        flood_cpu.push(cpu);
        flood_rss.push(rss);
        flood_rate.push(sent_rate);
        denied_rate.push(denied_per_s);
        println!(
            "sdm-bench: [5] round {}/{}: idle {:.2}% CPU {:.1} MB; flood of {:.0} denied/s: {:.1}% CPU {:.1} MB",
            round + 1,
            p.agent_rounds,
            idle_cpu[round],
            idle_rss[round],
            sent_rate,
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

    let stats = Windows {
        idle_cpu,
        idle_rss,
        flood_cpu,
        flood_rss,
        flood_rate,
        denied_rate,
        events: ev1 - ev0,
        lost: lost1 - lost0,
    };
    resource_figures(
        p,
        &stats,
        hwm,
        startup,
        cfg.allow.len(),
        per_rule,
        figs,
        notes,
    );
    Ok(())
}

/// Figure 5's allowlist: `p.agent_entries` addresses from 10.128.0.0 on,
/// in rules of `per_rule` addresses (tcp/443).
fn allowlist(p: &Params, per_rule: usize) -> Vec<(String, &'static str, u16, Vec<String>)> {
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
    allow
}

/// Figure 5's samples, one per round.
struct Windows {
    idle_cpu: Vec<f64>,
    idle_rss: Vec<f64>,
    flood_cpu: Vec<f64>,
    flood_rss: Vec<f64>,
    flood_rate: Vec<f64>,
    denied_rate: Vec<f64>,
    /// Events the kernel sent and lost over the rounds.
    events: u64,
    lost: u64,
}

/// Figure 5's rows and note.
#[allow(clippy::too_many_arguments, reason = "the figure's inputs, each named")]
fn resource_figures(
    p: &Params,
    w: &Windows,
    hwm: f64,
    startup: f64,
    rules: usize,
    per_rule: usize,
    figs: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) {
    figs.push(
        Figure::measured(
            5,
            "agent.idle.rss_mb",
            &format!(
                "Agent resident memory, idle, {} allowlist entries",
                crate::group(p.agent_entries)
            ),
            "MB",
            summarize(&w.idle_rss),
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
            summarize(&w.idle_cpu),
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
            summarize(&w.flood_rss),
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
            summarize(&w.flood_cpu),
        )
        .detail(format!(
            "flood {:.0} packets/s, {:.0} denied/s counted by the kernel; {} events sent, {} lost",
            median(&w.flood_rate),
            median(&w.denied_rate),
            w.events,
            w.lost
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
        "Figure 5: the {} allowlist entries are {rules} `[[allow]]` rules of up to {per_rule} addresses each (tcp/443), on top of the client role's catalogue rules; the agent's DNS is a responder of the benchmark's own that answers every control-plane name at once.",
        crate::group(p.agent_entries)
    ));
}

/// One flood window: a flood of denied packets from a process in the
/// enforced cgroup while the agent's CPU and memory are sampled. Returns
/// (CPU %, RSS MB, packets sent per s, denied per s as the kernel counted).
fn flood_window(
    p: &Params,
    agent: &mut Agent,
    ns: &Netns,
    target: &Cgroup,
) -> Result<(f64, f64, f64, f64)> {
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
    let (cpu, rss) = window(agent, p.flood_secs)?;
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
    Ok((cpu, rss, sent / secs, denied as f64 / secs))
}
