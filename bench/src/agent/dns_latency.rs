//! Figure 4: from a DNS answer that carries a new address to the first
//! packet to it the kernel lets through, by the agent's resolution path and
//! by the kernel's own learning.

use super::*;

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
        skipped_dns_figures(figs);
        return Ok(());
    }
    let topo = Topology::new(1)?;
    let ns = &topo.clients[0];
    ns.try_ip(&["route", "add", PROBE_ROUTE, "via", "10.232.0.2"])?;
    let dir = TempDir::try_new("dns")?;
    let target = parent.try_child("probe")?;

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
    let cfg = dns_config(&target.path);
    let text = config_text(&cfg, dir.path(), &sections);
    let mut agent = Agent::start(agent_bin, ns, dir.path(), &text, "dns")?;
    agent.wait_enforcing(Duration::from_secs(60))?;
    state
        .lock()
        .map_err(|_| anyhow::anyhow!("lock poisoned"))?
        .armed = true;

    kernel_path(p, ns, &target, &state, figs)?;

    let (lat_ms, timeouts, elapsed) = measure_agent_path(p, &mut agent, &rx, &state, notes)?;
    agent.alive()?;
    agent.stop();
    if lat_ms.is_empty() {
        bail!("figure 4: no answer was measured");
    }
    agent_path_figures(&lat_ms, timeouts, elapsed, figs, notes);
    Ok(())
}

/// Figure 4's first answers, not counted (caches and the agent's first
/// refreshes warm up).
const WARMUP: usize = 2;

/// Figure 4's rows when it is not measured.
fn skipped_dns_figures(figs: &mut Vec<Figure>) {
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
}

/// Figure 4's agent: the probe's and the learning client's names allowed.
fn dns_config(cgroup: &Path) -> AgentConfig<'_> {
    AgentConfig {
        cgroup,
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
    }
}

/// The agent's resolution path, answer after answer, until `p.dns_answers`
/// were measured (or the time limit): the latencies in ms after the
/// warm-up, how many timed out, and the seconds it took.
fn measure_agent_path(
    p: &Params,
    agent: &mut Agent,
    rx: &std::sync::mpsc::Receiver<String>,
    state: &Arc<Mutex<ProbeState>>,
    notes: &mut Vec<String>,
) -> Result<(Vec<f64>, u32, f64)> {
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
        let line = match sys::next_line(rx, "probe", Duration::from_secs(10)) {
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
    Ok((lat_ms, timeouts, started.elapsed().as_secs_f64()))
}

/// Figure 4's rows for the agent's resolution path.
fn agent_path_figures(
    lat_ms: &[f64],
    timeouts: u32,
    elapsed: f64,
    figs: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) {
    let s = summarize(lat_ms);
    let p99 = percentile(lat_ms, 99.0);
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
}
