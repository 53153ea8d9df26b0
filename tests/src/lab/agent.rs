//! The agent in the lab: its config, commands, start, readiness, stop,
//! and what it serves over HTTP.

use super::*;

impl Lab {
    /// Writes a config file into the lab's directory and returns its path.
    pub fn write_config(&self, name: &str, c: &AgentConfig) -> PathBuf {
        let text = self.config_text(c);
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// The text [`Lab::write_config`] writes.
    pub fn config_text(&self, c: &AgentConfig) -> String {
        let state = self.dir.path().join("state");
        let audit = self.dir.path().join("audit.jsonl");
        format!(
            "# sdm-egress lab {n}\n\
             cgroup = \"{cg}\"\n\
             {top}\n\
             \n\
             [dns]\n\
             servers = [\"{dns}\"]\n\
             {dns_extra}\n\
             \n\
             [http]\n\
             listen = \"{listen}\"\n\
             \n\
             [state]\n\
             dir = \"{state}\"\n\
             \n\
             [audit]\n\
             log = \"{audit}\"\n\
             \n\
             {tables}\n",
            n = self.n,
            cg = self.cgroup.path.display(),
            top = c.top.trim(),
            dns = self.dns_ip(),
            dns_extra = c.dns.trim(),
            listen = AGENT_LISTEN,
            state = state.display(),
            audit = audit.display(),
            tables = c.tables.trim(),
        )
    }

    /// `sdm-agent --pin-root .. --run-dir .. <args>`, run to completion
    /// (outside any namespace: these commands only touch pins and files).
    pub fn agent_cmd(&self, args: &[&str]) -> Output {
        self.agent_command()
            .arg("--pin-root")
            .arg(&self.pins.layout.pin_root)
            .arg("--run-dir")
            .arg(&self.pins.layout.run_dir)
            .args(self.unit_root_args())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.agent_bin.display()))
    }

    /// The agent binary, under [`Lab::agent_wrapper`] if there is one.
    fn agent_command(&self) -> Command {
        match self.agent_wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.agent_bin);
                cmd
            }
            None => Command::new(&self.agent_bin),
        }
    }

    fn unit_root_args(&self) -> Vec<std::ffi::OsString> {
        match &self.unit_root {
            Some(r) => vec!["--unit-root".into(), r.clone().into_os_string()],
            None => vec![],
        }
    }

    /// Like [`Lab::agent_cmd`], panicking (with the agent's log) unless it
    /// succeeds; returns stdout.
    pub fn agent_ok(&self, args: &[&str]) -> String {
        let out = self.agent_cmd(args);
        assert!(
            out.status.success(),
            "sdm-agent {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sdm-agent status --json`.
    pub fn status(&self) -> Value {
        let out = self.agent_ok(&["status", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
    }

    /// `sdm-agent <args>` run to completion in the lab's host namespace
    /// (commands that look at its interfaces: `check`, `detach`).
    pub fn agent_cmd_in_host(&self, args: &[&str]) -> Output {
        self.agent_in_host(args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.agent_bin.display()))
    }

    /// `sdm-agent --pin-root .. --run-dir .. <args>`, to be started in the
    /// lab's host namespace. Only the network namespace is entered (`ip
    /// netns exec` would also remount /sys and hide bpffs and cgroup2).
    fn agent_in_host(&self, args: &[&str]) -> Command {
        let netns = fs::File::open(self.host.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.host.path().display()));
        let mut cmd = self.agent_command();
        cmd.arg("--pin-root")
            .arg(&self.pins.layout.pin_root)
            .arg("--run-dir")
            .arg(&self.pins.layout.run_dir)
            .args(self.unit_root_args())
            .args(args)
            .stdin(Stdio::null());
        // SAFETY: setns is async-signal-safe; the closure owns the file, so
        // its fd stays open until the Command is dropped (it is CLOEXEC:
        // the agent does not inherit it).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Starts `sdm-agent <args>` in the host namespace with stdout and
    /// stderr piped, for commands expected to exit on their own (a `run`
    /// with a bad config); the caller waits.
    pub fn spawn_agent_oneshot(&self, args: &[&str]) -> Proc {
        let child = self
            .agent_in_host(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.agent_bin.display()));
        Proc(child)
    }

    /// Starts `sdm-agent run --config <config>` in the host namespace and
    /// waits until its status shows a policy (generation > 0), `mode`, and
    /// addresses for every name in `hosts`.
    pub fn start_agent(&mut self, config: &Path, mode: &str, hosts: &[&str]) {
        self.spawn_agent(config, mode, hosts);
        self.wait_ready(mode, hosts);
    }

    /// Starts `sdm-agent run --config <config>` like [`Lab::start_agent`],
    /// without waiting for it to be ready (it may be waiting for its target
    /// cgroup); [`Lab::wait_ready`] waits.
    pub fn spawn_agent(&mut self, config: &Path, mode: &str, hosts: &[&str]) {
        self.spawn_agent_with(config, &[], mode, hosts);
    }

    /// [`Lab::start_agent`] with `extra` arguments after `run --config
    /// <config>` (e.g. `--object <path>`); [`Lab::restart_agent`] repeats
    /// them.
    pub fn start_agent_with(&mut self, config: &Path, extra: &[&str], mode: &str, hosts: &[&str]) {
        self.spawn_agent_with(config, extra, mode, hosts);
        self.wait_ready(mode, hosts);
    }

    /// [`Lab::spawn_agent`] with `extra` arguments after `run --config
    /// <config>`.
    pub fn spawn_agent_with(&mut self, config: &Path, extra: &[&str], mode: &str, hosts: &[&str]) {
        assert!(self.agent.is_none(), "the agent is already running");
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let _ = writeln!(
            log,
            "==== lab: sdm-agent run --config {} {} ====",
            config.display(),
            extra.join(" ")
        );
        let config_arg = config.display().to_string();
        let mut args = vec!["run", "--config", &config_arg];
        args.extend_from_slice(extra);
        let child = self
            .agent_in_host(&args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("clone the log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.agent_bin.display()));
        self.agent = Some(Proc(child));
        self.last_run = Some(AgentRun {
            config: config.to_owned(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            mode: mode.to_owned(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        });
    }

    /// Waits until the agent's status shows a policy (generation > 0),
    /// `mode`, and addresses for every name in `hosts`.
    pub fn wait_ready(&mut self, mode: &str, hosts: &[&str]) {
        let start = Instant::now();
        loop {
            if let Some(p) = self.agent.as_mut() {
                if let Ok(Some(st)) = p.0.try_wait() {
                    panic!("the agent exited ({st}) before it was ready (its log follows)");
                }
            }
            let out = self.agent_cmd(&["status", "--json"]);
            let last = if out.status.success() {
                match serde_json::from_slice::<Value>(&out.stdout) {
                    Ok(s) => {
                        let missing: Vec<&str> = hosts
                            .iter()
                            .copied()
                            .filter(|h| dns_addresses(&s, h).is_empty())
                            .collect();
                        // This agent, not the pins a previous one left
                        // (which already show a policy and the mode).
                        let ours = s["agent_pid"].as_u64().map(|p| p as u32) == self.agent_pid();
                        if s["generation"].as_u64().unwrap_or(0) > 0
                            && s["mode"] == mode
                            && missing.is_empty()
                            && ours
                        {
                            return;
                        }
                        format!(
                            "generation {}, mode {}, agent pid {} (ours: {ours}), unresolved {missing:?}{}",
                            s["generation"],
                            s["mode"],
                            s["agent_pid"],
                            if s["cgroup"].is_null() {
                                " (no attach record yet: the programs are not attached)"
                            } else {
                                ""
                            }
                        )
                    }
                    Err(e) => format!("bad status json: {e}"),
                }
            } else {
                String::from_utf8_lossy(&out.stderr).into_owned()
            };
            let ready_timeout = ready_timeout();
            if start.elapsed() > ready_timeout {
                // Give a stuck agent a while to exit with its error (a
                // verifier rejection can take long), so the log says why.
                let exited = self.agent.as_mut().and_then(|p| {
                    let until = Instant::now() + EXIT_GRACE;
                    while Instant::now() < until {
                        if let Ok(Some(st)) = p.0.try_wait() {
                            return Some(st);
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    None
                });
                panic!(
                    "the agent was not ready (mode {mode}, hosts {hosts:?}) within \
                     {ready_timeout:?}: {last}; {} (its log follows)",
                    match exited {
                        Some(st) => format!("it exited ({st}) later"),
                        None => format!("still running {EXIT_GRACE:?} later"),
                    },
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's pid, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|p| p.0.id())
    }

    /// kill -9 the agent and reap it.
    pub fn kill_agent(&mut self) {
        let mut p = self.agent.take().expect("no agent is running");
        p.0.kill().expect("kill -9 the agent");
        let st = p.0.wait().expect("reap the agent");
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .and_then(|mut f| writeln!(f, "==== lab: killed the agent (SIGKILL): {st} ===="));
    }

    /// Starts the agent again with the config, arguments, mode and hosts of
    /// the last start.
    pub fn restart_agent(&mut self) {
        let run = self.last_run.take().expect("the agent never ran");
        let hosts: Vec<&str> = run.hosts.iter().map(String::as_str).collect();
        let extra: Vec<&str> = run.extra.iter().map(String::as_str).collect();
        self.start_agent_with(&run.config, &extra, &run.mode, &hosts);
    }

    /// Everything the agent wrote, across restarts.
    pub fn agent_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Stops the agent with SIGTERM (a clean shutdown) and reaps it.
    pub fn stop_agent(&mut self) {
        let mut p = self.agent.take().expect("no agent is running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(15);
        let st = loop {
            match p.0.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
                other => panic!("the agent did not exit within 15 s of SIGTERM: {other:?}"),
            }
        };
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .and_then(|mut f| writeln!(f, "==== lab: stopped the agent (SIGTERM): {st} ===="));
        assert!(st.success(), "the agent exited with {st} on SIGTERM");
    }

    /// CPU time the running agent has used so far (user + system).
    pub fn agent_cpu(&self) -> Duration {
        let pid = self.agent_pid().expect("no agent is running");
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
        // Fields after the command name, which is in parentheses and may
        // hold spaces: utime and stime are fields 14 and 15 (1-based).
        let rest = &stat[stat.rfind(')').expect("comm in /proc/pid/stat") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// The running agent's resident memory in bytes.
    pub fn agent_rss(&self) -> u64 {
        let pid = self.agent_pid().expect("no agent is running");
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
        kb * 1024
    }

    /// GET `path` from the agent's HTTP server, over loopback inside the
    /// host namespace, with optional extra header lines; returns the status
    /// code and the body.
    pub fn http_get_with(&self, path: &str, headers: &[&str]) -> (u16, String) {
        let addr: SocketAddr = AGENT_LISTEN.parse().expect("listen address");
        let mut conn = {
            let _in = self.host.enter();
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connect to the agent's {addr}: {e}"))
        };
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        conn.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("send GET {path}: {e}"));
        let mut resp = String::new();
        conn.read_to_string(&mut resp)
            .unwrap_or_else(|e| panic!("read GET {path}: {e}"));
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP header end in {resp:?}"));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {head:?}"));
        (code, body.to_owned())
    }

    /// GET `path`, which must answer 200; returns the body.
    pub fn http_get(&self, path: &str) -> String {
        let (code, body) = self.http_get_with(path, &[]);
        assert_eq!(code, 200, "GET {path}: {body}");
        body
    }

    /// GET /metrics from the agent, over loopback inside the host namespace.
    pub fn metrics(&self) -> String {
        self.http_get("/metrics")
    }
}
