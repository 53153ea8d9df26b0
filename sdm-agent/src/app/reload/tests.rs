//! Which config changes a reload applies live and which need a restart.

use std::path::Path;

use super::restart_needed;
use crate::policy::config::Config;

/// A config of `top` keys and `tables` after a base that sets every start-up-only key.
fn config(top: &str, tables: &str) -> Config {
    let text = format!(
        "cgroup = \"/sys/fs/cgroup/app\"\n{top}\n\
         [http]\nlisten = \"127.0.0.1:9850\"\n\
         [state]\ndir = \"/var/lib/sdm-agent\"\n\
         {tables}\n"
    );
    Config::from_toml_str(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn policy_mode_and_dns_changes_apply_live() {
    let base = config("mode = \"audit\"", "");
    assert_eq!(restart_needed(&base, &base), Vec::<&str>::new());
    let live = config(
        "mode = \"enforce\"\nloopback = \"enforce\"\noptional = false\n\
         role = [\"gateway\", \"relay\"]\nregion = \"eu\"\nfail = \"open\"\n\
         gateways = [\"gw.example:5000\"]",
        "[dns]\nservers = [\"192.0.2.53\"]\nttl_min = \"5s\"\nttl_max = \"10m\"\n\
         grace = \"1m\"\nqueries = \"policy\"\nfallback = \"none\"\n\
         [gateway]\nadvertised_port = 5001\n\
         [[resource]]\nname = \"db\"\nhost = \"db.example\"\nport = 5432\n\
         [[allow]]\nname = \"ssh\"\ndirection = \"egress\"\nport = 22\nproto = \"tcp\"\n\
         to = [\"10.0.0.0/8\"]",
    );
    assert_ne!(base, live, "the configs differ");
    assert_eq!(restart_needed(&base, &live), Vec::<&str>::new());
}

#[test]
fn start_up_settings_need_a_restart_and_are_named() {
    let base = config("", "");
    let cases = [
        (config("", "").with_cgroup("/sys/fs/cgroup/other"), "cgroup"),
        (
            config("", "").with(|c| c.http.listen = "127.0.0.1:9851".parse().unwrap()),
            "[http] listen",
        ),
        (
            config("", "").with(|c| c.http.token = Some("a-long-random-token".into())),
            "[http] token",
        ),
        (
            config("", "").with(|c| c.state.dir = "/var/lib/elsewhere".into()),
            "[state] dir",
        ),
        (
            config("", "").with(|c| c.state.retention = std::time::Duration::from_secs(86400)),
            "[state] retention",
        ),
        (
            config("", "").with(|c| c.state.max_bytes = 2 << 20),
            "[state] max_bytes",
        ),
        (
            config("", "[audit]\nlog = \"/var/log/sdm-agent/flows.jsonl\""),
            "[audit] log",
        ),
        (
            config("", "[backstop]\ninterfaces = [\"eth0\"]"),
            "[backstop] interfaces",
        ),
        (
            config("", "[xdp]\ninterfaces = [\"eth0\"]"),
            "[xdp] interfaces",
        ),
    ];
    for (changed, key) in cases {
        assert_eq!(restart_needed(&base, &changed), [key], "{key}");
    }
    // Several at once, all named; a live change beside them is not.
    let both = config("mode = \"enforce\"", "[audit]\nlog = \"/tmp/a.jsonl\"")
        .with_cgroup("/sys/fs/cgroup/other");
    assert_eq!(restart_needed(&base, &both), ["cgroup", "[audit] log"]);
}

#[test]
fn a_backstop_interface_moved_to_another_line_is_no_change() {
    let one = config("", "[backstop]\ninterfaces = [\"eth0\"]");
    let other_line = config("\n\n", "[backstop]\ninterfaces = [\n  \"eth0\",\n]");
    assert_ne!(
        one.backstop.interfaces[0].line,
        other_line.backstop.interfaces[0].line
    );
    assert_eq!(restart_needed(&one, &other_line), Vec::<&str>::new());
}

trait With: Sized {
    fn with(self, f: impl FnOnce(&mut Self)) -> Self;
    fn with_cgroup(self, path: &str) -> Self;
}

impl With for Config {
    fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
    fn with_cgroup(self, path: &str) -> Self {
        self.with(|c| c.cgroup = Some(path.parse().unwrap()))
    }
}
