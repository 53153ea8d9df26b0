//! Tests of reading, validating and resolving the config: the whole file
//! here, each section in its own file, and the helpers they share.

use std::path::PathBuf;

use ipnet::IpNet;

use super::{errors::*, values::*, *};
use crate::policy::{Direction, PortRange, Proto, Target};

mod agent;
mod dns;
mod entries;
mod errors;
mod top;
mod values;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new("my.toml"))
}

fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Asserts that `text` fails on `line` about `key`, and that the
/// message contains every one of `words`.
fn fails(text: &str, line: usize, key: &str, words: &[&str]) -> String {
    let err = match parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.starts_with("config my.toml: "), "{msg}");
    assert_eq!(err.line(), Some(line), "wrong line in: {msg}");
    assert!(
        msg.contains(&format!("line {line}:")) || msg.contains(&format!("line {line},")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("`{key}`")),
        "key `{key}` not named in: {msg}"
    );
    for w in words {
        assert!(msg.contains(w), "{w:?} not in: {msg}");
    }
    msg
}

fn cidr(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn empty_file_is_the_default() {
    let c = ok("");
    assert_eq!(c, Config::default());
    assert_eq!(c.roles, vec![Role::Gateway]);
    assert_eq!(c.region, Region::Us);
    assert_eq!(c.mode, Mode::Audit);
    assert_eq!(c.cgroup, None);
    assert!(c.optional);
    assert_eq!(c.loopback, LoopbackMode::Pass);
    assert!(c.gateways.is_empty());
    assert_eq!(c.hosts.app, "app.strongdm.com");
    assert_eq!(c.hosts.login, "login.strongdm.com");
    assert_eq!(c.hosts.downloads, "downloads.strongdm.com");
    assert_eq!(c.hosts.checkip, "checkip.amazonaws.com");
    assert_eq!(c.gateway.advertised_port, 5000);
    assert_eq!(c.gateway.sources, vec![cidr("0.0.0.0/0"), cidr("::/0")]);
    assert!(c.client.loopback_ports.is_empty());
    assert!(c.resources.is_empty() && c.secret_stores.is_empty() && c.allow.is_empty());
    assert!(c.dns.servers.is_empty());
    assert_eq!(c.dns.fallback, Some("1.1.1.1".parse().unwrap()));
    assert_eq!(c.dns.ttl_min, Duration::from_secs(30));
    assert_eq!(c.dns.ttl_max, Duration::from_secs(3600));
    assert_eq!(c.dns.grace, Duration::from_secs(600));
    assert_eq!(c.http.listen, "127.0.0.1:9850".parse().unwrap());
    assert_eq!(c.http.token, None);
    assert_eq!(c.state.dir, PathBuf::from("/var/lib/sdm-agent"));
    assert_eq!(c.state.retention, Duration::from_secs(7 * 86400));
    assert_eq!(c.audit.log, None);
}

#[test]
fn default_toml_parses_to_default() {
    assert_eq!(ok(Config::default_toml()), Config::default());
}

#[test]
fn default_toml_commented_examples_parse() {
    // Uncomment the example lines (`# key = value` and `# [table]`);
    // of alternatives for one key (`cgroup`), the first.
    let mut table = String::new();
    let mut seen = std::collections::HashSet::new();
    let text: String = Config::default_toml()
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') => {
                table = rest.to_string();
                seen.clear();
                rest.to_string()
            }
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        && seen.insert((table.clone(), k.to_string()))
                }) =>
            {
                rest.to_string()
            }
            _ => {
                if l.starts_with('[') {
                    table = l.to_string();
                    seen.clear();
                }
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let c = ok(&text);
    assert_eq!(
        c.cgroup,
        Some(CgroupTarget::Path(PathBuf::from("/sys/fs/cgroup")))
    );
    assert_eq!(c.resources.len(), 1);
    assert_eq!(c.secret_stores.len(), 1);
    assert_eq!(c.allow.len(), 1);
    assert_eq!(c.hosts, ControlPlaneHosts::for_region(Region::Us));
    assert_eq!(c.http.token.as_deref(), Some("a-long-random-string"));
    assert_eq!(
        c.audit.log.as_deref(),
        Some(Path::new("/var/log/sdm-agent/flows.jsonl"))
    );
    let names: Vec<&str> = c
        .backstop
        .interfaces
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(names, ["eth0"]);
}

#[test]
fn full_example() {
    let c = ok(r#"
role = ["relay", "gateway", "relay"]
region = "eu"
mode = "enforce"
cgroup = "/sys/fs/cgroup/sdm.slice"
optional = false
loopback = "enforce"
gateways = ["GW2.Example.com.:5001", "gw3.example.com", "1.2.3.4:5000", "[2001:db8::1]:6000", "2001:db8::2"]

[hosts]
login = "Login.Example.Com."

[gateway]
advertised_port = 5100
sources = ["10.0.0.0/8", "192.168.1.7"]

[client]
loopback_ports = [13306, "15000-15002"]

[[resource]]
name = "prod-db"
host = "db.internal"
port = 5432

[[resource]]
name = "web"
cidr = "10.0.0.1/24"
ports = "8000-8100, 80,443"
proto = "udp"

[[secret_store]]
name = "vault"
host = "*.vault.internal"
ports = [8200, 8201]

[[allow]]
name = "ssh-in"
direction = "ingress"
port = 22
from = "10.0.0.0/8"

[[allow]]
name = "ping"
direction = "egress"
proto = "icmp"
port = 8
to = ["1.1.1.1", "example.com", "10.0.0.0/8"]

[dns]
servers = ["10.0.0.2", "fd00::53"]
fallback = "none"
ttl_min = 5
ttl_max = "2h30m"
grace = "500ms"

[http]
listen = "[::1]:9000"

[state]
dir = "/srv/sdm"
retention = "36h"

[audit]
log = "/var/log/sdm/flows.jsonl"
"#);
    assert_eq!(c.roles, vec![Role::Relay, Role::Gateway]);
    assert_eq!(c.region, Region::Eu);
    assert_eq!(c.mode, Mode::Enforce);
    assert_eq!(
        c.cgroup,
        Some(CgroupTarget::Path("/sys/fs/cgroup/sdm.slice".into()))
    );
    assert!(!c.optional);
    assert_eq!(c.loopback, LoopbackMode::Enforce);
    let gws: Vec<String> = c.gateways.iter().map(|g| g.to_string()).collect();
    assert_eq!(
        gws,
        vec![
            "gw2.example.com:5001",
            "gw3.example.com:5000",
            "1.2.3.4:5000",
            "[2001:db8::1]:6000",
            "[2001:db8::2]:5000"
        ]
    );
    assert_eq!(c.hosts.app, "app.eu.strongdm.com");
    assert_eq!(c.hosts.login, "login.example.com");
    assert_eq!(c.gateway.advertised_port, 5100);
    assert_eq!(
        c.gateway.sources,
        vec![cidr("10.0.0.0/8"), cidr("192.168.1.7/32")]
    );
    assert_eq!(
        c.client.loopback_ports,
        vec![
            PortRange::single(13306),
            PortRange {
                lo: 15000,
                hi: 15002
            }
        ]
    );
    assert_eq!(
        c.resources[0],
        ResourceConfig {
            name: "prod-db".into(),
            target: Target::Host("db.internal".into()),
            proto: Proto::Tcp,
            ports: vec![PortRange::single(5432)],
        }
    );
    assert_eq!(c.resources[1].target, Target::Cidr(cidr("10.0.0.0/24")));
    assert_eq!(c.resources[1].proto, Proto::Udp);
    assert_eq!(
        c.resources[1].ports,
        vec![
            PortRange::single(80),
            PortRange::single(443),
            PortRange { lo: 8000, hi: 8100 }
        ]
    );
    assert_eq!(
        c.secret_stores[0].target,
        Target::Host("*.vault.internal".into())
    );
    assert_eq!(
        c.secret_stores[0].ports,
        vec![PortRange { lo: 8200, hi: 8201 }]
    );
    assert_eq!(
        c.allow[0],
        AllowConfig {
            name: "ssh-in".into(),
            direction: Direction::Ingress,
            proto: Proto::Tcp,
            ports: vec![PortRange::single(22)],
            targets: vec![Target::Cidr(cidr("10.0.0.0/8"))],
        }
    );
    assert_eq!(c.allow[1].proto, Proto::Icmp);
    assert_eq!(
        c.allow[1].targets,
        vec![
            Target::Cidr(cidr("1.1.1.1/32")),
            Target::Host("example.com".into()),
            Target::Cidr(cidr("10.0.0.0/8"))
        ]
    );
    assert_eq!(
        c.dns.servers,
        vec![
            "10.0.0.2".parse::<IpAddr>().unwrap(),
            "fd00::53".parse().unwrap()
        ]
    );
    assert_eq!(c.dns.fallback, None);
    assert_eq!(c.dns.ttl_min, Duration::from_secs(5));
    assert_eq!(c.dns.ttl_max, Duration::from_secs(9000));
    assert_eq!(c.dns.grace, Duration::from_millis(500));
    assert_eq!(c.http.listen, "[::1]:9000".parse().unwrap());
    assert_eq!(c.http.token, None);
    assert_eq!(c.state.dir, PathBuf::from("/srv/sdm"));
    assert_eq!(c.state.retention, Duration::from_secs(36 * 3600));
    assert_eq!(c.audit.log, Some(PathBuf::from("/var/log/sdm/flows.jsonl")));
}

#[test]
fn load_reads_files_and_reports_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sdm.toml");
    std::fs::write(&path, "mode = \"enforce\"\n").unwrap();
    assert_eq!(Config::load(&path).unwrap().mode, Mode::Enforce);

    std::fs::write(&path, "mode = \"enforce\"\nrolez = 1\n").unwrap();
    let msg = Config::load(&path).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("config {}: line 2, column 1:", path.display())),
        "{msg}"
    );

    let missing = dir.path().join("nope.toml");
    let err = Config::load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Io { op: "read", .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains("read"),
        "{msg}"
    );
}
