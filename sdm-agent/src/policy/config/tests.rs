//! Tests of reading, validating and resolving the config.

use std::path::PathBuf;

use ipnet::IpNet;

use super::{errors::*, values::*, *};
use crate::policy::{Direction, PortRange, Proto, Target};

/// Found by the `values` fuzz target: a sum of huge parts that printed
/// as more milliseconds than a u64 holds, so it did not read back.
#[test]
fn absurd_durations_are_refused_and_the_rest_round_trips() {
    let e = parse_duration("9999999999900ms5999999999999009m9s").unwrap_err();
    assert!(e.contains("too long"), "{e}");
    assert!(parse_duration("99999999999999999999").is_err());
    let century = Duration::from_secs(100 * 365 * 86_400);
    assert_eq!(parse_duration(&format_duration(century)), Ok(century));
    assert!(parse_duration("36501d").is_err());
}

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
fn backstop_interfaces_are_checked_names_with_their_lines() {
    assert!(ok("").backstop.interfaces.is_empty());
    assert!(ok("[backstop]\n").backstop.interfaces.is_empty());
    let c = ok("[backstop]\ninterfaces = [\n  \"eth0\",\n  \"wg0\",\n]\n");
    let got: Vec<(&str, usize)> = c
        .backstop
        .interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.line))
        .collect();
    assert_eq!(got, [("eth0", 3), ("wg0", 4)]);
    // A single name is a list of one, as for `role`.
    assert_eq!(
        ok("[backstop]\ninterfaces = \"ens5\"\n")
            .backstop
            .interfaces
            .len(),
        1
    );

    fails(
        "[backstop]\ninterfaces = [\"eth0\",\n \"eth0\"]\n",
        3,
        "interfaces",
        &["[backstop]", "\"eth0\" is listed twice"],
    );
    fails(
        "[backstop]\ninterfaces = [\"a-very-long-interface\"]\n",
        2,
        "interfaces",
        &["longer than an interface name"],
    );
    fails(
        "[backstop]\ninterfaces = [\"eth0:1\"]\n",
        2,
        "interfaces",
        &["':' cannot appear"],
    );
    fails(
        "[backstop]\ninterfaces = [\"\"]\n",
        2,
        "interfaces",
        &["empty"],
    );
    fails(
        "[backstop]\ninterface = [\"eth0\"]\n",
        2,
        "interface",
        &["unknown field"],
    );
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
fn http_token_and_listen() {
    // Off loopback without a token: an error naming [http] listen.
    let msg = fails(
        "[http]

listen = \"0.0.0.0:9850\"\n",
        3,
        "listen",
        &["[http]", "loopback", "token"],
    );
    assert!(msg.contains("0.0.0.0:9850"), "{msg}");
    fails(
        "[http]
listen = \"[::]:9850\"\n",
        2,
        "listen",
        &["token"],
    );
    fails(
        "[http]
listen = \"10.1.2.3:80\"\n",
        2,
        "listen",
        &["token"],
    );
    // With a token, anywhere; the token is never serialized.
    let c = ok("[http]
listen = \"0.0.0.0:9850\"\ntoken = \"s3cret-token\"\n");
    assert_eq!(c.http.token.as_deref(), Some("s3cret-token"));
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("s3cret"), "{json}");
    // Loopback needs none, IPv4-mapped loopback included.
    assert_eq!(
        ok("[http]
listen = \"127.0.0.2:1\"\n")
        .http
        .token,
        None
    );
    ok("[http]
listen = \"[::ffff:127.0.0.1]:1\"\n");
    ok("[http]
listen = \"[::1]:1\"\ntoken = \"t\"\n");
    fails(
        "[http]
token = \"\"\n",
        2,
        "token",
        &["empty"],
    );
    fails(
        "[http]
token = \"a b\"\n",
        2,
        "token",
        &["not allowed"],
    );
    fails(
        "[http]
token = 5\n",
        2,
        "token",
        &["[http]"],
    );
}

#[test]
fn state_and_audit() {
    let c = ok("[state]
dir = \"/tmp/x\"\n");
    assert_eq!(c.state.dir, PathBuf::from("/tmp/x"));
    assert_eq!(c.state.retention, DEFAULT_RETENTION);
    assert_eq!(
        ok("[state]
retention = 3600\n")
        .state
        .retention,
        Duration::from_secs(3600)
    );
    fails(
        "[state]
dir = \"var/lib\"\n",
        2,
        "dir",
        &["[state]", "absolute"],
    );
    fails(
        "[state]

retention = \"0s\"\n",
        3,
        "retention",
        &["[state]", "greater than zero"],
    );
    fails(
        "[state]
retention = \"7 days\"\n",
        2,
        "retention",
        &["invalid duration"],
    );
    fails(
        "[state]
dirs = \"/x\"\n",
        2,
        "dirs",
        &["unknown field"],
    );
    fails(
        "[audit]
log = \"flows.log\"\n",
        2,
        "log",
        &["[audit]", "absolute"],
    );
    fails(
        "[audit]
file = \"/x\"\n",
        2,
        "file",
        &["unknown field"],
    );
    let json = serde_json::to_value(Config::default()).unwrap();
    assert_eq!(json["state"]["retention"], "7d");
}

#[test]
fn store_max_bytes() {
    assert_eq!(ok("").state.max_bytes, DEFAULT_STORE_MAX_BYTES);
    assert_eq!(
        ok("[state]\nmax_bytes = \"8MiB\"\n").state.max_bytes,
        8 << 20
    );
    assert_eq!(
        ok("[state]\nmax_bytes = 2097152\n").state.max_bytes,
        2 << 20
    );
    assert_eq!(
        ok("[state]\nmax_bytes = \"1 GiB\"\n").state.max_bytes,
        1 << 30
    );
    fails(
        "[state]\n\nmax_bytes = \"64 furlongs\"\n",
        3,
        "max_bytes",
        &["[state]", "invalid size"],
    );
    fails(
        "[state]\nmax_bytes = 4096\n",
        2,
        "max_bytes",
        &["too small"],
    );
    fails("[state]\nmax_bytes = -1\n", 2, "max_bytes", &["negative"]);
    fails(
        "[state]\nmax_bytes = \"99999999999999GiB\"\n",
        2,
        "max_bytes",
        &["invalid size"],
    );
}

#[test]
fn role_as_single_string_and_empty_list() {
    assert_eq!(ok("role = \"ad-dc\"").roles, vec![Role::AdDc]);
    assert_eq!(ok("role = []").roles, Vec::<Role>::new());
    assert_eq!(
        ok("role = [\"client\", \"api\"]").roles,
        vec![Role::Client, Role::Api]
    );
}

#[test]
fn regions_and_host_overrides() {
    let uk = ok("region = \"uk\"");
    assert_eq!(uk.hosts.app, "app.uk.strongdm.com");
    assert_eq!(uk.hosts.login, "login.uk.strongdm.com");
    assert_eq!(uk.hosts.downloads, "downloads.strongdm.com");
    assert_eq!(uk.hosts.checkip, "checkip.amazonaws.com");
    let eu = ok("region = \"eu\"");
    assert_eq!(eu.hosts.app, "app.eu.strongdm.com");
    assert_eq!(eu.hosts.login, "login.eu.strongdm.com");
    assert_eq!(eu.hosts.downloads, "downloads.strongdm.com");
    // Overrides win over the region, whatever their order in the file.
    let c = ok(r#"
[hosts]
app = "APP.corp.example."
downloads = "mirror.example.com"
checkip = "ip.example.com"
login = "sso.example.com"
"#);
    assert_eq!(c.hosts.app, "app.corp.example");
    assert_eq!(c.hosts.login, "sso.example.com");
    assert_eq!(c.hosts.downloads, "mirror.example.com");
    assert_eq!(c.hosts.checkip, "ip.example.com");
    let c = ok("region = \"uk\"\n[hosts]\ndownloads = \"dl.uk.example\"\n");
    assert_eq!(c.hosts.app, "app.uk.strongdm.com");
    assert_eq!(c.hosts.downloads, "dl.uk.example");
    assert_eq!(
        ControlPlaneHosts::for_region(Region::Uk).get(ControlPlaneHost::App),
        "app.uk.strongdm.com"
    );
}

#[test]
fn gateway_entries() {
    let hp = |s: &str| s.parse::<HostPort>();
    assert_eq!(
        hp("gw:5000"),
        Ok(HostPort {
            host: "gw".into(),
            port: 5000
        })
    );
    assert_eq!(
        hp("gw"),
        Ok(HostPort {
            host: "gw".into(),
            port: 5000
        })
    );
    assert_eq!(
        hp("GW.example.COM.:7000"),
        Ok(HostPort {
            host: "gw.example.com".into(),
            port: 7000
        })
    );
    assert_eq!(
        hp("[::1]:5000"),
        Ok(HostPort {
            host: "::1".into(),
            port: 5000
        })
    );
    assert_eq!(
        hp("[::1]"),
        Ok(HostPort {
            host: "::1".into(),
            port: 5000
        })
    );
    assert_eq!(
        hp("2001:db8::1"),
        Ok(HostPort {
            host: "2001:db8::1".into(),
            port: 5000
        })
    );
    assert_eq!(
        hp("1.2.3.4:5001"),
        Ok(HostPort {
            host: "1.2.3.4".into(),
            port: 5001
        })
    );
    assert_eq!(
        hp("1.2.3.4:5000").unwrap().target(),
        Target::Cidr(cidr("1.2.3.4/32"))
    );
    assert_eq!(
        hp("[::1]:5000").unwrap().target(),
        Target::Cidr(cidr("::1/128"))
    );
    assert_eq!(hp("gw:5000").unwrap().target(), Target::Host("gw".into()));
    for bad in [
        "",
        "gw:",
        "gw:0",
        "gw:65536",
        "gw:x",
        "2001:db8::1:5000x",
        "[::1",
        "[::1]5000",
        "[1.2.3.4]:5",
        "*.gw.example",
        "bad host:5000",
        "1.2.3.400",
        "gw:-1",
    ] {
        assert!(hp(bad).is_err(), "{bad:?} should be rejected");
    }
    // In a file, with duplicates removed.
    let c = ok("gateways = [\"gw:5000\", \"gw\", \"gw:5001\"]");
    assert_eq!(
        c.gateways,
        vec![
            HostPort {
                host: "gw".into(),
                port: 5000
            },
            HostPort {
                host: "gw".into(),
                port: 5001
            }
        ]
    );
    assert_eq!(ok("gateways = \"gw\"").gateways.len(), 1);
    fails(
        "role = \"client\"\ngateways = [\"gw:5000\",\n  \"gw:99999\"]\n",
        3,
        "gateways",
        &["99999"],
    );
}

#[test]
fn port_specs() {
    let r = |lo, hi| PortRange { lo, hi };
    assert_eq!(parse_port_spec("80", Proto::Tcp), Ok(vec![r(80, 80)]));
    assert_eq!(
        parse_port_spec("8000-8100", Proto::Tcp),
        Ok(vec![r(8000, 8100)])
    );
    assert_eq!(
        parse_port_spec("443, 80,8000-8100", Proto::Udp),
        Ok(vec![r(80, 80), r(443, 443), r(8000, 8100)])
    );
    // Overlapping and adjacent ranges merge.
    assert_eq!(
        parse_port_spec("10-20,15-30,31,5", Proto::Tcp),
        Ok(vec![r(5, 5), r(10, 31)])
    );
    assert_eq!(
        parse_port_spec("1-65535", Proto::Tcp),
        Ok(vec![r(1, 65535)])
    );
    assert_eq!(
        parse_port_spec("0,8", Proto::Icmp),
        Ok(vec![r(0, 0), r(8, 8)])
    );
    for bad in [
        "",
        "0",
        "65536",
        "8100-8000",
        "80,,443",
        "a",
        "-5",
        "5-",
        "+5",
        "80 443",
        "1-2-3",
    ] {
        assert!(
            parse_port_spec(bad, Proto::Tcp).is_err(),
            "{bad:?} should be rejected"
        );
    }
    assert!(parse_port_spec("256", Proto::Icmp).is_err());
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
    assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
    assert_eq!(parse_duration("1h30m15s"), Ok(Duration::from_secs(5415)));
    for bad in [
        "",
        "s",
        "1x",
        "1.5h",
        "-1s",
        "1 s",
        "ms",
        "99999999999999999999h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
    }
    for d in [
        Duration::from_secs(30),
        Duration::from_secs(600),
        Duration::from_secs(3600),
        Duration::from_millis(500),
        Duration::from_secs(61),
        Duration::from_nanos(1_500),
        Duration::ZERO,
    ] {
        assert_eq!(
            parse_duration(&format_duration(d)),
            Ok(d),
            "{}",
            format_duration(d)
        );
    }
    assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    assert_eq!(format_duration(Duration::from_secs(2 * 86400)), "2d");
    assert_eq!(format_duration(Duration::from_secs(36 * 3600)), "36h");
}

#[test]
fn hostnames() {
    assert_eq!(
        normalize_hostname("Db.Internal.", false),
        Ok("db.internal".into())
    );
    assert_eq!(
        normalize_hostname("_srv.a-b.example", false),
        Ok("_srv.a-b.example".into())
    );
    assert_eq!(
        normalize_hostname("*.example.com", true),
        Ok("*.example.com".into())
    );
    assert!(normalize_hostname("*.example.com", false).is_err());
    let long_label = "a".repeat(64);
    let long_name = format!("{}.com", ["abcdefghi"; 26].join("."));
    for bad in [
        "",
        ".",
        "a..b",
        "-a.com",
        "a-.com",
        "a b.com",
        "a/b",
        "é.com",
        "1.2.3.4",
        "a.*.com",
        "*",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        assert!(
            normalize_hostname(bad, true).is_err(),
            "{bad:?} should be rejected"
        );
    }
    assert!(normalize_hostname(&"a".repeat(63), false).is_ok());
}

/// Issue 16: `*.com` passed `check`, allowing every domain anyone can
/// register. Wildcards at or directly under a public suffix are refused
/// with the file, line and key; below a registrable domain they stay.
#[test]
fn dns_queries_and_search_are_read_and_checked_with_their_lines() {
    let c = ok("[dns]\nqueries = \"policy\"\nsearch = [\"Corp.Example.\", \".lab.example\"]\n");
    assert_eq!(c.dns.queries, DnsQueries::Policy);
    assert_eq!(c.dns.search, vec!["corp.example", "lab.example"]);
    assert_eq!(Config::default().dns.queries, DnsQueries::Any);
    fails(
        "[dns]\nqueries = \"some\"\n",
        2,
        "queries",
        &["any", "policy"],
    );
    // A search suffix lets every name under it be asked: refused as
    // wide as a public suffix, like the wildcard it amounts to.
    fails(
        "[dns]\nsearch = [\"com\"]\n",
        2,
        "search",
        &["public suffix"],
    );
    fails(
        "[dns]\n\nsearch = \"bad name!\"\n",
        3,
        "search",
        &["not allowed"],
    );
}

#[test]
fn wildcards_as_wide_as_a_public_suffix_are_refused() {
    for wide in [
        "*.com",
        "*.COM.",
        "*.co.uk",
        "*.s3.amazonaws.com",
        "*.github.io",
        "*.internal",
    ] {
        let err = normalize_hostname(wide, true).unwrap_err();
        assert!(err.contains("public suffix"), "{wide}: {err}");
    }
    for fine in [
        "*.example.com",
        "*.corp.example.co.uk",
        "*.mybucket.s3.amazonaws.com",
        "*.vault.internal",
        "*.cdn.example",
    ] {
        assert!(normalize_hostname(fine, true).is_ok(), "{fine}");
    }
    // Plain names that are public suffixes are not wildcards: allowed.
    assert!(normalize_hostname("co.uk", false).is_ok());
    fails(
        "[[resource]]\nname = \"a\"\nport = 1\nhost = \"*.com\"\n",
        4,
        "host",
        &["public suffix", "\"com\""],
    );
    fails(
        "role = []\n[[allow]]\nname = \"w\"\ndirection = \"egress\"\nport = 443\n\nto = \"*.co.uk\"\n",
        7,
        "to",
        &["public suffix", "co.uk"],
    );
    fails(
        "[[secret_store]]\nname = \"s\"\nhost = \"*.s3.amazonaws.com\"\nport = 443\n",
        3,
        "host",
        &["public suffix"],
    );
}

#[test]
fn enum_names() {
    for r in Role::ALL {
        assert_eq!(r.as_str().parse::<Role>(), Ok(*r));
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
    assert_eq!(Role::AdDc.as_str(), "ad-dc");
    for r in Region::ALL {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
    for m in Mode::ALL {
        assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
    }
    for m in LoopbackMode::ALL {
        assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
    }
    let json = serde_json::to_value(Config::default()).unwrap();
    assert_eq!(json["roles"], serde_json::json!(["gateway"]));
    assert_eq!(json["dns"]["ttl_max"], "1h");
    assert_eq!(json["http"]["listen"], "127.0.0.1:9850");
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

// --- errors: each names the line and the key --------------------------

#[test]
fn unknown_keys() {
    let msg = fails(
        "region = \"us\"\n\nrolez = [\"gateway\"]\n",
        3,
        "rolez",
        &["column 1", "unknown field"],
    );
    assert!(
        msg.starts_with("config my.toml: line 3, column 1: unknown field `rolez`"),
        "{msg}"
    );
    fails(
        "[hosts]\napp = \"a.example\"\napx = \"b\"\n",
        3,
        "apx",
        &["[hosts]", "unknown field"],
    );
    fails(
        "[gateway]\nadvertised_port = 5000\nsource = []\n",
        3,
        "source",
        &["unknown field"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 1\nporz = 5\n",
        5,
        "porz",
        &["[[resource]]"],
    );
    fails("[dns]\nttl = \"1s\"\n", 2, "ttl", &["[dns]"]);
    fails("[http]\nport = 1\n", 2, "port", &["[http]"]);
    fails("[client]\nports = [1]\n", 2, "ports", &["[client]"]);
    fails(
        "\n[[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 1\nto = \"a.b\"\nform = \"x\"\n",
        7,
        "form",
        &[],
    );
    fails("[dnz]\n", 1, "dnz", &["unknown field"]);
}

#[test]
fn type_errors_name_the_key() {
    fails(
        "mode = \"audit\"\nregion = 5\n",
        2,
        "region",
        &["column 10", "invalid type"],
    );
    fails(
        "[gateway]\nadvertised_port = \"x\"\n",
        2,
        "advertised_port",
        &["[gateway]"],
    );
    fails(
        "[dns]\nservers = [\n  \"1.1.1.1\",\n  1,\n]\n",
        4,
        "servers",
        &["[dns]"],
    );
    fails("optional = \"yes\"\n", 1, "optional", &[]);
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = \"x\"\n",
        4,
        "port",
        &["expected an integer"],
    );
    let msg = parse("[resource]\nname = \"a\"\n").unwrap_err().to_string();
    assert!(
        msg.contains("line 1") && msg.contains("double brackets"),
        "{msg}"
    );
    // A syntax error.
    let msg = parse("region = \n").unwrap_err().to_string();
    assert!(
        msg.starts_with("config my.toml: line 1, column 10: "),
        "{msg}"
    );
}

#[test]
fn missing_keys() {
    let msg = parse("\n[[resource]]\nhost = \"h\"\nport = 5\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("line 2") && msg.contains("missing field `name`"),
        "{msg}"
    );
    let msg = parse("[[allow]]\nname = \"x\"\nport = 5\nto = \"h.example\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("line 1") && msg.contains("`direction`"),
        "{msg}"
    );
}

#[test]
fn bad_enums() {
    fails(
        "\nrole = [\"gateway\", \"relais\"]\n",
        2,
        "role",
        &["relais", "client, relay, gateway, api, ad-dc"],
    );
    fails("role = \"bogus\"\n", 1, "role", &["bogus"]);
    fails(
        "\n\nregion = \"us-east\"\n",
        3,
        "region",
        &["us-east", "us, uk, eu"],
    );
    fails(
        "mode = \"block\"\n",
        1,
        "mode",
        &["block", "audit, enforce"],
    );
    fails("loopback = \"drop\"\n", 1, "loopback", &["drop"]);
    fails("fail = \"maybe\"\n", 1, "fail", &["maybe"]);
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 1\nproto = \"icmp\"\n",
        5,
        "proto",
        &["icmp", "tcp, udp"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"out\"\nport = 1\nto = \"h.example\"\n",
        3,
        "direction",
        &["out"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\nproto = \"sctp\"\nto = \"h.example\"\n",
        5,
        "proto",
        &["sctp"],
    );
}

#[test]
fn bad_cidrs() {
    let text = "role = [\"gateway\"]\n\n[[resource]]\nname = \"prod-db\"\ncidr = \"10.0.0.0/33\"\nport = 5432\n";
    let msg = fails(text, 5, "cidr", &[]);
    assert!(
        msg.starts_with("config my.toml: line 5: [[resource]] \"prod-db\" key `cidr`: invalid CIDR \"10.0.0.0/33\": "),
        "{msg}"
    );
    fails(
        "[gateway]\nsources = [\"0.0.0.0/0\", \"::/129\"]\n",
        2,
        "sources",
        &["[gateway]", "::/129"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 22\nfrom = [\"10.0.0.0/8\",\n \"example.com\"]\n",
        6,
        "from",
        &["example.com"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 22\nto = \"10.0.0.0/99\"\n",
        5,
        "to",
        &["10.0.0.0/99"],
    );
    fails(
        "[[secret_store]]\nname = \"v\"\nhost = \"10.0.0.0/8\"\nport = 1\n",
        3,
        "host",
        &["cidr"],
    );
}

#[test]
fn bad_ports() {
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 0\n",
        4,
        "port",
        &["0"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 65536\n",
        4,
        "port",
        &["65536"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = -1\n",
        4,
        "port",
        &[],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nports = \"8100-8000\"\n",
        4,
        "ports",
        &["8100-8000"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nports = \"80,99999\"\n",
        4,
        "ports",
        &["99999"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nports = []\n",
        4,
        "ports",
        &["empty"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\nport = 1\nports = \"2\"\n",
        5,
        "ports",
        &["not both"],
    );
    fails(
        "\n[[resource]]\nname = \"a\"\nhost = \"h\"\n",
        2,
        "port",
        &["[[resource]] \"a\"", "`ports`"],
    );
    fails(
        "[gateway]\nadvertised_port = 0\n",
        2,
        "advertised_port",
        &[],
    );
    fails(
        "[client]\nloopback_ports = [13306, 70000]\n",
        2,
        "loopback_ports",
        &["70000"],
    );
    fails(
        "[[allow]]\nname = \"p\"\ndirection = \"egress\"\nproto = \"icmp\"\nport = 256\nto = \"h.example\"\n",
        5,
        "port",
        &["ICMP type"],
    );
    // ICMP type 0 (echo reply) is fine.
    assert_eq!(
        ok("[[allow]]\nname = \"p\"\ndirection = \"ingress\"\nproto = \"icmp\"\nport = 0\nfrom = \"::/0\"\n").allow[0].ports,
        vec![PortRange::single(0)]
    );
}

#[test]
fn host_and_cidr() {
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"h\"\ncidr = \"10.0.0.0/8\"\nport = 1\n",
        4,
        "cidr",
        &["not both"],
    );
    fails(
        "\n\n[[secret_store]]\nname = \"a\"\nport = 1\n",
        3,
        "host",
        &["[[secret_store]] \"a\"", "`cidr`"],
    );
    fails(
        "[[resource]]\nname = \"a\"\nhost = \"bad_host!\"\nport = 1\n",
        3,
        "host",
        &["invalid hostname"],
    );
    fails(
        "[hosts]\napp = \"*.strongdm.com\"\n",
        2,
        "app",
        &["wildcard"],
    );
    fails("[hosts]\n\nlogin = \"a..b\"\n", 3, "login", &["[hosts]"]);
    // An address in `host` is taken as a /32.
    assert_eq!(
        ok("[[resource]]\nname = \"a\"\nhost = \"10.1.2.3\"\nport = 1\n").resources[0].target,
        Target::Cidr(cidr("10.1.2.3/32"))
    );
}

#[test]
fn names() {
    fails(
        "[[resource]]\nname = \"Prod\"\nhost = \"h\"\nport = 1\n",
        2,
        "name",
        &["[a-z0-9][a-z0-9._-]*"],
    );
    fails(
        "[[resource]]\nname = \"-x\"\nhost = \"h\"\nport = 1\n",
        2,
        "name",
        &[],
    );
    fails(
        "[[resource]]\nname = \"\"\nhost = \"h\"\nport = 1\n",
        2,
        "name",
        &[],
    );
    fails(
        "[[allow]]\nname = \"a b\"\ndirection = \"egress\"\nport = 1\nto = \"h.example\"\n",
        2,
        "name",
        &[],
    );
    let long = "a".repeat(MAX_NAME_LEN + 1);
    fails(
        &format!("[[resource]]\nname = \"{long}\"\nhost = \"h\"\nport = 1\n"),
        2,
        "name",
        &["longer"],
    );
    assert_eq!(
        ok("[[resource]]\nname = \"db-1.prod_x\"\nhost = \"h\"\nport = 1\n").resources[0].name,
        "db-1.prod_x"
    );
}

#[test]
fn duplicate_names() {
    let text = r#"
[[resource]]
name = "db"
host = "h"
port = 1

[[secret_store]]
name = "db"
host = "v"
port = 2
"#;
    fails(
        text,
        8,
        "name",
        &[
            "duplicate",
            "[[secret_store]] \"db\"",
            "[[resource]] on line 3",
        ],
    );
    let text = "[[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 1\nto = \"a.example\"\n\
                [[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 2\nto = \"b.example\"\n";
    fails(text, 7, "name", &["duplicate", "[[allow]] on line 2"]);
    let text = "[[resource]]\nname = \"x\"\nhost = \"h\"\nport = 1\n\
                [[allow]]\nname = \"x\"\ndirection = \"egress\"\nport = 2\nto = \"b.example\"\n";
    fails(text, 6, "name", &["duplicate"]);
    // The later entry in the file is the one reported.
    let text = "[[secret_store]]\nname = \"db\"\nhost = \"h\"\nport = 1\n\
                [[resource]]\nname = \"db\"\nhost = \"h\"\nport = 1\n";
    fails(
        text,
        6,
        "name",
        &["[[resource]] \"db\"", "[[secret_store]] on line 2"],
    );
}

#[test]
fn allow_directions() {
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\n",
        1,
        "to",
        &["needs `to`"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 1\n",
        1,
        "from",
        &["needs `from`"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 1\nfrom = \"::/0\"\nto = \"h.example\"\n",
        6,
        "to",
        &[],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\nto = \"h.example\"\nfrom = \"::/0\"\n",
        6,
        "from",
        &[],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\nto = []\n",
        5,
        "to",
        &["empty"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 1\nfrom = []\n",
        5,
        "from",
        &["empty"],
    );
    fails(
        "[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\nto = \"bad..host\"\n",
        5,
        "to",
        &["invalid hostname"],
    );
    fails("[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 1\n\nto = [\"ok.example\", \"x y\"]\n", 6, "to", &[]);
}

#[test]
fn dns_and_http_errors() {
    fails(
        "[dns]\nservers = [\"1.1.1.1\", \"dns.google\"]\n",
        2,
        "servers",
        &["dns.google"],
    );
    fails(
        "[dns]\nfallback = \"one.one\"\n",
        2,
        "fallback",
        &["one.one"],
    );
    assert_eq!(ok("[dns]\nfallback = \"\"\n").dns.fallback, None);
    assert_eq!(ok("[dns]\nfallback = \"NONE\"\n").dns.fallback, None);
    assert_eq!(
        ok("[dns]\nfallback = \"9.9.9.9\"\n").dns.fallback,
        Some("9.9.9.9".parse().unwrap())
    );
    fails(
        "[dns]\n\nttl_min = \"30 s\"\n",
        3,
        "ttl_min",
        &["invalid duration"],
    );
    fails("[dns]\nttl_max = \"1y\"\n", 2, "ttl_max", &["1y"]);
    fails("[dns]\ngrace = -5\n", 2, "grace", &["negative"]);
    fails(
        "[dns]\nttl_min = \"0s\"\n",
        2,
        "ttl_min",
        &["greater than zero"],
    );
    fails(
        "[dns]\nttl_min = \"2h\"\nttl_max = \"1h\"\n",
        3,
        "ttl_max",
        &["ttl_min (2h)"],
    );
    fails("[dns]\nttl_min = \"2h\"\n", 2, "ttl_min", &[]);
    fails(
        "[http]\nlisten = \"localhost:9850\"\n",
        2,
        "listen",
        &["[http]"],
    );
    fails("\ncgroup = \"sys/fs/cgroup\"\n", 2, "cgroup", &["absolute"]);
    fails(
        "\ncgroup = \"unit:a/b\"\n",
        2,
        "cgroup",
        &["not a unit name"],
    );
    fails("\ncgroup = \"pid:0\"\n", 2, "cgroup", &["process id"]);
    assert_eq!(
        ok("cgroup = \"unit:sdm-proxy\"\n").cgroup,
        Some(CgroupTarget::Unit("sdm-proxy.service".into()))
    );
    assert_eq!(
        ok("cgroup = \"pid:77\"\n").cgroup,
        Some(CgroupTarget::Pid(77))
    );
}

#[test]
fn crlf_and_unicode_positions() {
    let text = "region = \"us\"\r\n# é comment\r\nmode = \"nope\"\r\n";
    fails(text, 3, "mode", &[]);
    assert_eq!(line_col("aé\nxyz", 7), (2, 4));
    assert_eq!(line_col("ab", 100), (1, 3));
}
