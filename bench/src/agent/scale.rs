//! Figure 6: a gateway of a large organization (issue 14). The gateway
//! role in enforce mode with N `[[resource]]` hostnames on port 5432, each
//! answered at once by the benchmark's own resolver: start-up to "policy
//! applied", resident memory, the `/metrics` page, the resolver's load in
//! steady state and the time a SIGHUP reload takes.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash as _, Hasher as _},
    io::Read as _,
    net::TcpStream,
    sync::atomic::{AtomicU64, Ordering},
};

use super::*;

/// Answers every A question with an address of 10.240.0.0/12 derived from
/// the name (never contacted), and counts the questions.
struct CountingResponder {
    queries: Arc<AtomicU64>,
    ttl: u32,
}

impl Responder for CountingResponder {
    fn answer(&mut self, name: &str, qtype: u16) -> Answer {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if qtype != TYPE_A {
            return Answer::NoData;
        }
        let mut h = DefaultHasher::new();
        name.hash(&mut h);
        let low = (h.finish() as u32) & 0x000f_ffff;
        Answer::A(
            vec![Ipv4Addr::from(u32::from_be_bytes([10, 240, 0, 0]) | low)],
            self.ttl,
        )
    }
}

/// One agent run at one size.
#[derive(Debug, Default)]
struct Sample {
    startup: f64,
    rss_mb: f64,
    metrics_bytes: f64,
    series: f64,
    /// Mean queries per second at the resolver over the steady window.
    qps: f64,
    /// The most queries the resolver saw in one second of the window.
    peak_qps: f64,
    /// SIGHUP -> new generation applied, when the agent handles SIGHUP.
    reload: Option<f64>,
}

/// What the agent under test offers, read once from `default-config`.
struct Features {
    sections: Vec<&'static str>,
    /// `[dns] max_qps`'s default, when the agent has the key.
    max_qps: Option<f64>,
    /// The names' TTL and the agent's ttl_min/ttl_max (`Params`).
    ttl_secs: u32,
}

fn features(agent_bin: &Path, ttl_secs: u32) -> Result<Features> {
    let text = sys::sh(&[&agent_bin.to_string_lossy(), "default-config"])?;
    let max_qps = text.lines().find_map(|l| {
        let (k, v) = l.trim_start_matches('#').split_once('=')?;
        (k.trim() == "max_qps")
            .then(|| v.split('#').next()?.trim().parse::<f64>().ok())
            .flatten()
    });
    Ok(Features {
        sections: supported_sections(agent_bin)?,
        max_qps,
        ttl_secs,
    })
}

/// Figure 6 at every size of `p.scale_sizes`, `p.scale_rounds` agent runs
/// each. A size the agent refuses or fails at is reported as such and the
/// next size is measured.
pub fn run_scale(
    p: &Params,
    agent_bin: &Path,
    parent: &Cgroup,
    figs: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let topo = Topology::new(1)?;
    let ns = &topo.clients[0];
    let queries = Arc::new(AtomicU64::new(0));
    let _dns = DnsServer::start(
        ns.path(),
        SocketAddr::from(([127, 0, 0, 1], 53)),
        CountingResponder {
            queries: queries.clone(),
            ttl: p.scale_ttl_secs,
        },
    )?;
    let feat = features(agent_bin, p.scale_ttl_secs)?;
    for &n in &p.scale_sizes {
        let mut samples = Vec::new();
        let mut failure = None;
        for round in 0..p.scale_rounds {
            sys::check_interrupted()?;
            let tag = format!("sc{n}r{round}");
            match one_run(p, agent_bin, ns, parent, &feat, &queries, n, &tag) {
                Ok(s) => {
                    println!(
                        "sdm-bench: [6] {} resources, round {}/{}: applied after {:.2} s, {:.1} MB, /metrics {:.0} KB in {} series, {:.0} queries/s (peak {:.0}), reload {}",
                        crate::group(n),
                        round + 1,
                        p.scale_rounds,
                        s.startup,
                        s.rss_mb,
                        s.metrics_bytes / 1024.0,
                        s.series,
                        s.qps,
                        s.peak_qps,
                        s.reload.map_or("not supported".into(), |r| format!("{r:.2} s"))
                    );
                    samples.push(s);
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    println!("sdm-bench: [6] {} resources: {why}", crate::group(n));
                    failure = Some(why);
                    break;
                }
            }
        }
        scale_figures(n, &samples, failure.as_deref(), &feat, figs);
    }
    notes.push(format!(
        "Figure 6: the gateway role in enforce mode with N `[[resource]]` hostnames on tcp/5432; the benchmark's resolver answers every name at once with TTL {} s and the agent's `[dns] ttl_min`/`ttl_max` are {} s, so every name is refreshed about every {} s; the queries are counted at that resolver over {} s starting {} s after the policy was applied (A and AAAA questions both count). {}",
        p.scale_ttl_secs,
        p.scale_ttl_secs,
        p.scale_ttl_secs,
        p.scale_window_secs,
        p.scale_settle_secs,
        match feat.max_qps {
            Some(q) => format!("The agent's default `[dns] max_qps` is {q}."),
            None => "This agent has no `[dns] max_qps`.".into(),
        }
    ));
    Ok(())
}

/// The gateway's config: enforce mode on `cgroup`, `n` resources.
fn gateway_config(cgroup: &Path, dir: &Path, sections: &[&str], ttl: u32, n: usize) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by sdm-bench; removed when the benchmark ends."
    );
    let _ = writeln!(t, "role = [\"gateway\"]\nmode = \"enforce\"");
    let _ = writeln!(t, "cgroup = \"{}\"\noptional = false", cgroup.display());
    let _ = writeln!(
        t,
        "\n[dns]\nservers = [\"127.0.0.1\"]\nfallback = \"none\"\nttl_min = \"{ttl}s\"\nttl_max = \"{ttl}s\""
    );
    let _ = writeln!(t, "\n[http]\nlisten = \"127.0.0.1:{SCALE_PORT}\"");
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
    let _ = writeln!(t, "\n[gateway]\nadvertised_port = 5000");
    for i in 0..n {
        let _ = writeln!(
            t,
            "\n[[resource]]\nname = \"db{i:05}\"\nhost = \"db{i:05}.bench.test\"\nport = 5432"
        );
    }
    t
}

/// Where figure 6's agent serves /metrics, on its namespace's loopback.
const SCALE_PORT: u16 = 9852;

#[allow(clippy::too_many_arguments, reason = "the run's inputs, each named")]
fn one_run(
    p: &Params,
    agent_bin: &Path,
    ns: &Netns,
    parent: &Cgroup,
    feat: &Features,
    queries: &AtomicU64,
    n: usize,
    tag: &str,
) -> Result<Sample> {
    let dir = TempDir::try_new("scale")?;
    let target = parent.try_child(tag)?;
    let text = gateway_config(
        &target.path,
        dir.path(),
        &feat.sections,
        p.scale_ttl_secs,
        n,
    );
    let mut agent = Agent::start(agent_bin, ns, dir.path(), &text, tag)?;
    let startup = agent.wait_enforcing(Duration::from_secs(p.scale_start_limit_secs))?;
    sys::sleep(Duration::from_secs_f64(p.scale_settle_secs))?;
    let (rss_mb, qps, peak_qps) = steady_window(&mut agent, queries, p.scale_window_secs)?;
    let page = http_get(ns, SCALE_PORT, "/metrics")?;
    let series = page
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let reload = if catches_sighup(agent.proc.pid())? {
        let more = gateway_config(
            &target.path,
            dir.path(),
            &feat.sections,
            p.scale_ttl_secs,
            n + 1,
        );
        Some(reload_secs(&mut agent, dir.path(), tag, &more)?)
    } else {
        None
    };
    agent.alive()?;
    agent.stop();
    Ok(Sample {
        startup,
        rss_mb,
        metrics_bytes: page.len() as f64,
        series: series as f64,
        qps,
        peak_qps,
        reload,
    })
}

/// Samples the agent's VmRSS and the resolver's query count every 100 ms
/// for `secs`: (largest VmRSS in MB, mean queries/s, largest count in any
/// one-second span of the samples).
fn steady_window(agent: &mut Agent, queries: &AtomicU64, secs: f64) -> Result<(f64, f64, f64)> {
    let pid = agent.proc.pid();
    let start = Instant::now();
    let mut counts = vec![(0.0, queries.load(Ordering::Relaxed))];
    let mut rss: f64 = memory_mb(pid)?.0;
    while start.elapsed().as_secs_f64() < secs {
        sys::sleep(Duration::from_millis(100))?;
        agent.alive()?;
        rss = rss.max(memory_mb(pid)?.0);
        counts.push((
            start.elapsed().as_secs_f64(),
            queries.load(Ordering::Relaxed),
        ));
    }
    let (t_end, q_end) = *counts.last().context("samples")?;
    let mean = (q_end - counts[0].1) as f64 / t_end;
    Ok((rss, mean, peak_per_second(&counts)))
}

/// The largest increase of a counter over any one second of its samples
/// (time in seconds, count), rounded to the samples' spacing.
fn peak_per_second(counts: &[(f64, u64)]) -> f64 {
    let mut peak = 0;
    let mut j = 0;
    for (i, &(t, c)) in counts.iter().enumerate() {
        while j < i && t - counts[j].0 > 1.0 {
            j += 1;
        }
        peak = peak.max(c - counts[j].1);
    }
    peak as f64
}

/// Whether the process catches SIGHUP (`SigCgt` of /proc/PID/status): an
/// agent without reload would die of it.
fn catches_sighup(pid: u32) -> Result<bool> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .context("SigCgt in /proc/PID/status")?;
    let mask = u64::from_str_radix(mask.trim(), 16)?;
    Ok(mask & (1 << (libc::SIGHUP - 1)) != 0)
}

/// Rewrites the config with `text` (one resource more), sends SIGHUP and
/// returns the seconds until the kernel config shows a new generation.
fn reload_secs(agent: &mut Agent, dir: &Path, tag: &str, text: &str) -> Result<f64> {
    let pin = agent.pins.layout.map_pin(MAP_CONFIG);
    let before = read_config(&pin)?.generation;
    let cfg = dir.join(format!("{tag}.toml"));
    fs::write(&cfg, text).with_context(|| format!("write {}", cfg.display()))?;
    let start = Instant::now();
    let pid = i32::try_from(agent.proc.pid())?;
    // SAFETY: kill(2) on the agent's own pid, which this benchmark started
    // and has not reaped.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error()).context("SIGHUP to the agent");
    }
    loop {
        agent.alive()?;
        if read_config(&pin).is_ok_and(|c| c.generation != before) {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "no new generation 60 s after SIGHUP; log:\n{}",
                agent.log_tail()
            );
        }
        sys::sleep(Duration::from_millis(5))?;
    }
}

/// GET `path` from the agent on `127.0.0.1:port` inside `ns`: the body.
fn http_get(ns: &Netns, port: u16, path: &str) -> Result<String> {
    let path = path.to_owned();
    let ns_path = ns.path();
    let handle = std::thread::spawn(move || -> Result<String> {
        let f = fs::File::open(&ns_path).with_context(|| format!("open {}", ns_path.display()))?;
        // SAFETY: setns on a valid namespace fd, for this thread only.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns for /metrics");
        }
        let mut s = TcpStream::connect(("127.0.0.1", port)).context("connect to the agent")?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8(raw).context("a UTF-8 response")?;
        let (head, body) = text.split_once("\r\n\r\n").context("an HTTP response")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_owned())
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the HTTP thread panicked"))?
}

/// Figure 6's rows for one size.
fn scale_figures(
    n: usize,
    s: &[Sample],
    failure: Option<&str>,
    feat: &Features,
    figs: &mut Vec<Figure>,
) {
    let size = crate::group(n);
    if s.is_empty() {
        let why = failure.unwrap_or("no run");
        let first = why.lines().next().unwrap_or(why);
        figs.push(Figure::missing(
            6,
            &format!("gateway.{n}.startup_secs"),
            &format!("Gateway, {size} resources: start-up"),
            Status::Skipped,
            &format!("the agent failed: {first}"),
        ));
        return;
    }
    let col = |f: fn(&Sample) -> f64| -> Vec<f64> { s.iter().map(f).collect() };
    let mut start = Figure::measured(
        6,
        &format!("gateway.{n}.startup_secs"),
        &format!("Gateway, {size} resources: start → policy applied"),
        "s",
        summarize(&col(|x| x.startup)),
    )
    .decimals(2);
    start = if n >= 10_000 {
        start.target("≤ 5 s at 10,000", Goal::AtMost(5.0))
    } else {
        start.note_target("none (5 s at 10,000)")
    };
    figs.push(start);
    let mut rss = Figure::measured(
        6,
        &format!("gateway.{n}.rss_mb"),
        &format!("Gateway, {size} resources: agent resident memory"),
        "MB",
        summarize(&col(|x| x.rss_mb)),
    )
    .detail("largest VmRSS over the steady window")
    .decimals(1);
    rss = if n >= 10_000 {
        rss.target("≤ 60 MB at 10,000", Goal::AtMost(60.0))
    } else {
        rss.note_target("none (60 MB at 10,000)")
    };
    figs.push(rss);
    figs.push(
        Figure::measured(
            6,
            &format!("gateway.{n}.metrics_kb"),
            &format!("Gateway, {size} resources: /metrics size"),
            "KB",
            summarize(&col(|x| x.metrics_bytes / 1024.0)),
        )
        .detail(format!("{:.0} series", median(&col(|x| x.series))))
        .decimals(0)
        .note_target("none (the series bound is the README's)"),
    );
    dns_and_reload_figures(n, s, feat, figs);
}

/// Figure 6's resolver-load and reload rows for one size.
fn dns_and_reload_figures(n: usize, s: &[Sample], feat: &Features, figs: &mut Vec<Figure>) {
    let size = crate::group(n);
    let col = |f: fn(&Sample) -> f64| -> Vec<f64> { s.iter().map(f).collect() };
    let qps = Figure::measured(
        6,
        &format!("gateway.{n}.dns_qps"),
        &format!("Gateway, {size} resources: resolver queries per second, steady state"),
        "queries/s",
        summarize(&col(|x| x.qps)),
    )
    .detail(format!(
        "A and AAAA of every name once per TTL would be {:.0}/s",
        2.0 * n as f64 / f64::from(feat.ttl_secs)
    ))
    .decimals(0);
    // The ceiling is on every second, not on the mean: names answered
    // with the same TTL fall due together, and only the busiest second
    // shows whether the pacing held them to it (the mean stays far below
    // max_qps with or without pacing).
    let peak = Figure::measured(
        6,
        &format!("gateway.{n}.dns_peak_qps"),
        &format!("Gateway, {size} resources: resolver queries in the busiest second, steady state"),
        "queries",
        summarize(&col(|x| x.peak_qps)),
    )
    .decimals(0);
    figs.push(qps.note_target("none (the busiest second holds the target)"));
    figs.push(match feat.max_qps {
        Some(q) => peak.target(&format!("≤ {q} ([dns] max_qps)"), Goal::AtMost(q)),
        None => peak.note_target("none (this agent has no [dns] max_qps)"),
    });
    let reloads: Vec<f64> = s.iter().filter_map(|x| x.reload).collect();
    figs.push(if reloads.is_empty() {
        Figure::missing(
            6,
            &format!("gateway.{n}.reload_secs"),
            &format!("Gateway, {size} resources: SIGHUP → new policy applied"),
            Status::Skipped,
            "this agent does not handle SIGHUP",
        )
    } else {
        Figure::measured(
            6,
            &format!("gateway.{n}.reload_secs"),
            &format!("Gateway, {size} resources: SIGHUP → new policy applied"),
            "s",
            summarize(&reloads),
        )
        .detail("the config gains one resource")
        .decimals(2)
        .note_target("none")
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_the_busiest_second() {
        let c = [
            (0.0, 0),
            (0.5, 10),
            (1.0, 100),
            (1.5, 105),
            (2.0, 110),
            (2.6, 400),
        ];
        // 0.0..1.0: 100; 1.5..2.6 is more than a second; 2.0..2.6: 290.
        assert_eq!(peak_per_second(&c), 290.0);
        assert_eq!(peak_per_second(&[(0.0, 5)]), 0.0);
    }
}
