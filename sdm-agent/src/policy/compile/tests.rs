use std::path::Path;

use super::expand::Candidate;
use super::warnings::host_matches;
use super::*;
use crate::policy::config::{AllowConfig, ResourceConfig};

fn cfg(text: &str) -> Config {
    match Config::from_toml_str(text, Path::new("test.toml")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> Target {
    Target::Cidr(s.parse().unwrap())
}

fn host(s: &str) -> Target {
    Target::Host(s.to_string())
}

fn names(p: &Policy) -> Vec<&str> {
    p.rules.iter().map(|r| r.name.as_str()).collect()
}

fn rule<'a>(p: &'a Policy, name: &str) -> &'a Rule {
    p.rule(name)
        .unwrap_or_else(|| panic!("no rule {name} in {:?}", names(p)))
}

/// Asserts that each named rule targets exactly the one host given.
fn assert_host_targets(p: &Policy, expected: &[(&str, &str)]) {
    for (name, h) in expected {
        assert_eq!(rule(p, name).targets, [host(h)], "{name}");
    }
}

fn compiled(text: &str) -> Policy {
    compile(&cfg(text), &[ip("10.0.0.2")]).unwrap()
}

#[test]
fn default_config() {
    let p = compile(&Config::default(), &[ip("192.0.2.53")]).unwrap();
    assert_eq!(
        names(&p),
        [
            "gateway/egress/app",
            "gateway/egress/downloads",
            "gateway/egress/checkip",
            "gateway/egress/dns-fallback",
            "gateway/ingress/advertised-port",
            "dns/egress/resolvers",
        ]
    );
    let app = rule(&p, "gateway/egress/app");
    assert_eq!(app.direction, Direction::Egress);
    assert_eq!(app.protos, [Proto::Tcp]);
    assert_eq!(app.ports, [PortRange::single(443)]);
    assert_eq!(app.targets, [host("app.strongdm.com")]);
    assert!(app.required);
    assert_eq!(app.roles, ["gateway"]);
    assert!(
        app.origin.contains("Gateways and Workers"),
        "{}",
        app.origin
    );
    assert!(app.origin.contains("routing information"), "{}", app.origin);
    assert_eq!(
        rule(&p, "gateway/egress/downloads").targets,
        [host("downloads.strongdm.com")]
    );
    let checkip = rule(&p, "gateway/egress/checkip");
    assert_eq!(checkip.targets, [host("checkip.amazonaws.com")]);
    assert!(!checkip.required);
    let fallback = rule(&p, "gateway/egress/dns-fallback");
    assert_eq!(fallback.protos, [Proto::Udp]);
    assert_eq!(fallback.ports, [PortRange::single(53)]);
    assert_eq!(fallback.targets, [net("1.1.1.1/32")]);
    assert!(!fallback.required);
    let adv = rule(&p, "gateway/ingress/advertised-port");
    assert_eq!(adv.direction, Direction::Ingress);
    assert_eq!(adv.protos, [Proto::Tcp]);
    assert_eq!(adv.ports, [PortRange::single(5000)]);
    assert_eq!(adv.targets, [net("0.0.0.0/0"), net("::/0")]);
    let dns = rule(&p, "dns/egress/resolvers");
    assert_eq!(dns.protos, [Proto::Udp, Proto::Tcp]);
    assert_eq!(dns.ports, [PortRange::single(53)]);
    assert_eq!(dns.targets, [net("192.0.2.53/32")]);
    assert!(dns.required);
    assert!(dns.roles.is_empty());
    assert_eq!(dns.origin, "resolv.conf");
    // Deterministic.
    assert_eq!(compile(&Config::default(), &[ip("192.0.2.53")]).unwrap(), p);
}

#[test]
fn client_role() {
    let p = compiled(
        "role = \"client\"\ngateways = [\"gw1.example.com\"]\n[client]\nloopback_ports = [13306, \"15000-15002\"]\n",
    );
    assert_eq!(
        names(&p),
        [
            "client/egress/app",
            "client/egress/login",
            "client/egress/downloads",
            "client/egress/checkip",
            "client/egress/dns-fallback",
            "client/egress/gateway/gw1.example.com",
            "client/ingress/cli-status",
            "client/ingress/web-proxy",
            "client/ingress/loopback-ports",
            "dns/egress/resolvers",
        ]
    );
    assert_eq!(
        rule(&p, "client/egress/login").targets,
        [host("login.strongdm.com")]
    );
    for (name, ports) in [
        ("client/ingress/cli-status", vec![PortRange::single(65220)]),
        ("client/ingress/web-proxy", vec![PortRange::single(65230)]),
        (
            "client/ingress/loopback-ports",
            vec![
                PortRange::single(13306),
                PortRange {
                    lo: 15000,
                    hi: 15002,
                },
            ],
        ),
    ] {
        let r = rule(&p, name);
        assert_eq!(r.direction, Direction::Ingress);
        assert_eq!(r.protos, [Proto::Tcp]);
        assert_eq!(r.ports, ports);
        assert_eq!(r.targets, [net("127.0.0.0/8"), net("::1/128")]);
        assert!(r.required);
    }
    // No custom loopback ports: no rule.
    let p = compiled("role = \"client\"\n");
    assert!(p.rule("client/ingress/loopback-ports").is_none());
    assert!(p.rule("client/ingress/cli-status").is_some());
}

#[test]
fn gateways_entries() {
    let p = compiled(
        "role = [\"client\"]\ngateways = [\"GW.example.com:5000\", \"gw2\", \"[::1]:5000\", \"1.2.3.4:5001\", \"gw.example.com:5002\"]\n",
    );
    let gw: Vec<&Rule> = p
        .rules
        .iter()
        .filter(|r| r.name.starts_with("client/egress/gateway/"))
        .collect();
    let gw_names: Vec<&str> = gw.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        gw_names,
        [
            "client/egress/gateway/gw.example.com",
            "client/egress/gateway/gw2",
            "client/egress/gateway/::1",
            "client/egress/gateway/1.2.3.4",
        ]
    );
    assert_eq!(gw[0].targets, [host("gw.example.com")]);
    assert_eq!(
        gw[0].ports,
        [PortRange::single(5000), PortRange::single(5002)]
    );
    assert_eq!(gw[1].targets, [host("gw2")]);
    assert_eq!(gw[1].ports, [PortRange::single(5000)]);
    assert_eq!(gw[2].targets, [net("::1/128")]);
    assert_eq!(gw[3].targets, [net("1.2.3.4/32")]);
    assert_eq!(gw[3].ports, [PortRange::single(5001)]);
    for r in &gw {
        assert_eq!(r.protos, [Proto::Tcp]);
        assert_eq!(r.direction, Direction::Egress);
        assert!(r.required);
    }
    // No gateways: no rule.
    let p = compiled("role = \"relay\"\n");
    assert!(
        !p.rules.iter().any(|r| r.name.contains("/gateway")),
        "{:?}",
        names(&p)
    );
}

#[test]
fn multi_role_dedup() {
    let p = compiled(
        "role = [\"relay\", \"gateway\"]\ngateways = [\"gw:5000\"]\n\
         [[resource]]\nname = \"db\"\nhost = \"db.internal\"\nport = 5432\n",
    );
    // Asked for by both roles, named by the first.
    let shared = [
        "relay/egress/app",
        "relay/egress/downloads",
        "relay/egress/checkip",
        "relay/egress/dns-fallback",
        "relay/egress/gateway/gw",
        "relay/egress/resource/db",
    ];
    let mut expected = shared.to_vec();
    expected.extend(["gateway/ingress/advertised-port", "dns/egress/resolvers"]);
    assert_eq!(names(&p), expected);
    for name in shared {
        assert_eq!(rule(&p, name).roles, ["relay", "gateway"], "{name}");
    }
    assert_eq!(
        rule(&p, "gateway/ingress/advertised-port").roles,
        ["gateway"]
    );
    assert!(p.rule("gateway/egress/app").is_none());

    // Named by the first role in config order.
    let p = compiled("role = [\"gateway\", \"relay\", \"api\", \"ad-dc\", \"client\"]\n");
    let app = rule(&p, "gateway/egress/app");
    assert_eq!(app.roles, ["gateway", "relay", "api", "ad-dc", "client"]);
    assert!(p.rule("relay/egress/app").is_none() && p.rule("client/egress/app").is_none());
    // Only the client needs login.
    assert_eq!(rule(&p, "client/egress/login").roles, ["client"]);
    let mut seen = HashSet::new();
    assert!(p.rules.iter().all(|r| seen.insert(&r.name)));
}

#[test]
fn merged_rule_is_required_if_any_role_requires_it() {
    let mk = |role: &str, required: bool| Candidate {
        suffix: "egress/x".into(),
        rule: Rule {
            name: format!("{role}/egress/x"),
            direction: Direction::Egress,
            protos: vec![Proto::Tcp],
            ports: vec![PortRange::single(1)],
            targets: vec![host("x.example")],
            required,
            roles: vec![role.into()],
            origin: String::new(),
        },
    };
    let mut rules = Vec::new();
    push_merged(&mut rules, mk("relay", false));
    push_merged(&mut rules, mk("gateway", true));
    push_merged(&mut rules, mk("gateway", true));
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].1.name, "relay/egress/x");
    assert_eq!(rules[0].1.roles, ["relay", "gateway"]);
    assert!(rules[0].1.required);
    // A different shape is a different rule.
    let mut other = mk("client", true);
    other.rule.ports = vec![PortRange::single(2)];
    push_merged(&mut rules, other);
    assert_eq!(rules.len(), 2);
}

#[test]
fn optional_false_drops_optional_rows() {
    let p = compiled("role = [\"client\", \"relay\", \"gateway\"]\noptional = false\n");
    assert!(
        !p.rules.iter().any(|r| r.name.ends_with("/checkip")),
        "{:?}",
        names(&p)
    );
    assert!(
        !p.rules.iter().any(|r| r.name.ends_with("/dns-fallback")),
        "{:?}",
        names(&p)
    );
    assert!(p.rules.iter().all(|r| r.required));
    assert!(p.rule("client/egress/app").is_some());
    let with = compiled("role = [\"client\", \"relay\", \"gateway\"]\n");
    assert!(with.rule("client/egress/checkip").is_some());
    assert!(with.rule("client/egress/dns-fallback").is_some());
    // The fallback can be disabled on its own.
    let p = compiled("[dns]\nfallback = \"none\"\n");
    assert!(p.rule("gateway/egress/dns-fallback").is_none());
    assert!(p.rule("gateway/egress/checkip").is_some());
    let p = compiled("[dns]\nfallback = \"2606:4700:4700::1111\"\n");
    assert_eq!(
        rule(&p, "gateway/egress/dns-fallback").targets,
        [net("2606:4700:4700::1111/128")]
    );
}

#[test]
fn region_and_host_overrides() {
    let p =
        compiled("role = \"client\"\nregion = \"uk\"\n[hosts]\ndownloads = \"dl.example.com\"\n");
    assert_host_targets(
        &p,
        &[
            ("client/egress/app", "app.uk.strongdm.com"),
            ("client/egress/login", "login.uk.strongdm.com"),
            ("client/egress/downloads", "dl.example.com"),
            ("client/egress/checkip", "checkip.amazonaws.com"),
        ],
    );
    let p = compiled("role = \"api\"\nregion = \"eu\"\n");
    assert_eq!(names(&p), ["api/egress/app", "dns/egress/resolvers"]);
    assert_host_targets(&p, &[("api/egress/app", "app.eu.strongdm.com")]);
    let p = compiled("role = \"ad-dc\"\n");
    assert_eq!(names(&p), ["ad-dc/egress/app", "dns/egress/resolvers"]);
}

#[test]
fn resources_and_secret_stores() {
    let p = compiled(
        "role = \"gateway\"\n\
         [[resource]]\nname = \"prod-db\"\nhost = \"DB.internal\"\nport = 5432\n\
         [[resource]]\nname = \"web\"\ncidr = \"10.0.0.0/24\"\nports = \"80,443,8000-8100\"\nproto = \"udp\"\n\
         [[secret_store]]\nname = \"vault\"\nhost = \"*.vault.example\"\nport = 8200\n",
    );
    let db = rule(&p, "gateway/egress/resource/prod-db");
    assert_eq!(db.targets, [host("db.internal")]);
    assert_eq!(db.protos, [Proto::Tcp]);
    assert_eq!(db.ports, [PortRange::single(5432)]);
    assert!(db.required);
    assert!(db.origin.contains("[[resource]] prod-db"), "{}", db.origin);
    let web = rule(&p, "gateway/egress/resource/web");
    assert_eq!(web.targets, [net("10.0.0.0/24")]);
    assert_eq!(web.protos, [Proto::Udp]);
    assert_eq!(
        web.ports,
        [
            PortRange::single(80),
            PortRange::single(443),
            PortRange { lo: 8000, hi: 8100 }
        ]
    );
    let vault = rule(&p, "gateway/egress/secret-store/vault");
    assert_eq!(vault.targets, [host("*.vault.example")]);
    assert!(
        vault.origin.contains("[[secret_store]] vault"),
        "{}",
        vault.origin
    );
    // Clients do not get resource rules.
    let p = compiled("role = \"client\"\n[[resource]]\nname = \"x\"\nhost = \"h\"\nport = 1\n");
    assert!(!p.rules.iter().any(|r| r.name.contains("/resource/")));
}

#[test]
fn advertised_port_and_sources() {
    let p =
        compiled("[gateway]\nadvertised_port = 5100\nsources = [\"10.0.0.0/8\", \"fd00::/8\"]\n");
    let adv = rule(&p, "gateway/ingress/advertised-port");
    assert_eq!(adv.ports, [PortRange::single(5100)]);
    assert_eq!(adv.targets, [net("10.0.0.0/8"), net("fd00::/8")]);
    let p = compiled("[gateway]\nsources = []\n");
    assert!(p.rule("gateway/ingress/advertised-port").is_none());
}

#[test]
fn resolvers_rule() {
    let c = Config::default();
    let p = compile(&c, &[ip("10.0.0.2"), ip("fe80::1"), ip("10.0.0.2")]).unwrap();
    let r = rule(&p, RESOLVERS_RULE);
    assert_eq!(r.targets, [net("10.0.0.2/32"), net("fe80::1/128")]);
    assert_eq!(r.origin, "resolv.conf");
    let c = cfg("[dns]\nservers = [\"9.9.9.9\"]\n");
    let p = compile(&c, &c.dns.servers).unwrap();
    assert_eq!(rule(&p, RESOLVERS_RULE).origin, "[dns] servers");
    assert_eq!(rule(&p, RESOLVERS_RULE).targets, [net("9.9.9.9/32")]);
    let p = compile(&Config::default(), &[]).unwrap();
    assert!(p.rule(RESOLVERS_RULE).is_none());
}

#[test]
fn allow_rules() {
    let p = compiled(
        "[[allow]]\nname = \"ssh-in\"\ndirection = \"ingress\"\nport = 22\nfrom = [\"10.0.0.0/8\", \"192.168.0.0/16\"]\n\
         [[allow]]\nname = \"ping\"\ndirection = \"egress\"\nproto = \"icmp\"\nports = \"0,8\"\nto = [\"example.com\", \"10.0.0.1\"]\n",
    );
    let n = names(&p);
    assert_eq!(
        &n[n.len() - 3..],
        ["dns/egress/resolvers", "allow/ssh-in", "allow/ping"]
    );
    let ssh = rule(&p, "allow/ssh-in");
    assert_eq!(ssh.direction, Direction::Ingress);
    assert_eq!(ssh.protos, [Proto::Tcp]);
    assert_eq!(ssh.ports, [PortRange::single(22)]);
    assert_eq!(ssh.targets, [net("10.0.0.0/8"), net("192.168.0.0/16")]);
    assert!(ssh.required && ssh.roles.is_empty());
    assert_eq!(ssh.origin, "config [[allow]] ssh-in");
    let ping = rule(&p, "allow/ping");
    assert_eq!(ping.direction, Direction::Egress);
    assert_eq!(ping.protos, [Proto::Icmp]);
    assert_eq!(ping.ports, [PortRange::single(0), PortRange::single(8)]);
    assert_eq!(ping.targets, [host("example.com"), net("10.0.0.1/32")]);
}

#[test]
fn every_role_compiles_with_unique_names() {
    let c = cfg(
        "role = [\"client\", \"relay\", \"gateway\", \"api\", \"ad-dc\"]\n\
         gateways = [\"gw:5000\", \"10.0.0.9:5001\"]\n\
         [client]\nloopback_ports = [13306]\n\
         [[resource]]\nname = \"a\"\nhost = \"a.example\"\nport = 1\n\
         [[secret_store]]\nname = \"b\"\ncidr = \"10.1.0.0/16\"\nport = 2\n\
         [[allow]]\nname = \"c\"\ndirection = \"egress\"\nport = 3\nto = \"c.example\"\n",
    );
    let p = compile(&c, &[ip("10.0.0.2")]).unwrap();
    let mut seen = HashSet::new();
    for r in &p.rules {
        assert!(seen.insert(r.name.clone()), "duplicate {}", r.name);
        assert!(
            !r.protos.is_empty() && !r.ports.is_empty() && !r.targets.is_empty(),
            "{r:?}"
        );
    }
    // Every required guide row of every role is covered by some rule.
    for row in catalogue::catalogue() {
        let base = format!("{}/{}", row.direction, row.key);
        let covered = p.rules.iter().any(|r| {
            let suffix = r.name.split_once('/').map_or("", |(_, s)| s);
            r.roles.iter().any(|x| x == row.role.as_str())
                && (suffix == base || suffix.starts_with(&format!("{base}/")))
        });
        assert!(covered, "row {}/{} has no rule", row.role, row.key);
    }
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["rules"][0]["name"], "client/egress/app");
    assert_eq!(json["rules"][0]["direction"], "egress");
}

#[test]
fn limits() {
    let mut c = Config::default();
    let allow = |i: usize| AllowConfig {
        name: format!("r{i}"),
        direction: Direction::Egress,
        proto: Proto::Tcp,
        ports: vec![PortRange::single(1)],
        targets: vec![host("h.example")],
    };
    // Far past the 1024 rules of a fixed-size dataplane.
    c.allow = (0..12_000).map(allow).collect();
    assert_eq!(compile(&c, &[ip("10.0.0.2")]).unwrap().rules.len(), 12_006);
    let ceiling = sdm_common::RULE_CEILING as usize;
    c.allow = (0..ceiling).map(allow).collect();
    match compile(&c, &[ip("10.0.0.2")]) {
        Err(CompileError::TooManyRules { count, max }) => {
            assert_eq!(max, ceiling);
            assert_eq!(count, ceiling + 6);
        }
        other => panic!("{other:?}"),
    }
    c.allow.truncate(ceiling - 6);
    assert_eq!(compile(&c, &[ip("10.0.0.2")]).unwrap().rules.len(), ceiling);

    // Every port in one rule is fine, on a CIDR or a hostname (a range
    // takes at most 30 entries); as ranges of 16 ports, expanded one entry
    // per port, a hostname's 65536 ports beside the role's own hostname
    // ports would not fit the hostname-port map, which is refused.
    let mut c = Config::default();
    c.allow.push(AllowConfig {
        name: "all".into(),
        direction: Direction::Egress,
        proto: Proto::Tcp,
        ports: vec![PortRange { lo: 1, hi: 65535 }],
        targets: vec![net("10.0.0.1/32")],
    });
    assert!(compile(&c, &[]).is_ok());
    let mut on_a_host = c.clone();
    on_a_host.allow[0].targets = vec![host("h.example")];
    assert!(compile(&on_a_host, &[]).is_ok());
    on_a_host.allow[0].ports = (0..4096u16)
        .map(|i| PortRange {
            lo: i * 16,
            hi: i * 16 + 15,
        })
        .collect();
    match compile(&on_a_host, &[]) {
        Err(e @ CompileError::TooManyEntries(_)) => {
            assert!(e.to_string().contains("hostname port"), "{e}");
        }
        other => panic!("a hostname on every port beside the role's: {other:?}"),
    }
    c.allow[0].ports.push(PortRange { lo: 1, hi: 100 });
    match compile(&c, &[]) {
        Err(CompileError::TooManyPorts { rule, count, max }) => {
            assert_eq!(rule, "allow/all");
            assert_eq!(count, 65635);
            assert_eq!(max, 65536);
        }
        other => panic!("{other:?}"),
    }
    let mut c = Config::default();
    c.resources.push(ResourceConfig {
        name: "big".into(),
        target: host("h.example"),
        proto: Proto::Udp,
        ports: vec![PortRange { lo: 1, hi: 65535 }, PortRange { lo: 2, hi: 3 }],
    });
    assert!(matches!(
        compile(&c, &[]),
        Err(CompileError::TooManyPorts { .. })
    ));

    // Almost every port of three fixed addresses, as ranges of 16 ports
    // (each expanded): 196560 exact entries, more than a map holds; `check`
    // says so rather than `run` failing later.
    let mut c = Config::default();
    c.allow.push(AllowConfig {
        name: "wide".into(),
        direction: Direction::Egress,
        proto: Proto::Tcp,
        ports: (0..4095u16)
            .map(|i| PortRange {
                lo: i * 16,
                hi: i * 16 + 15,
            })
            .collect(),
        targets: vec![net("10.0.0.1/32"), net("10.0.0.2/32")],
    });
    assert!(compile(&c, &[]).is_ok(), "2 x 65520 entries fit");
    c.allow[0].targets.push(net("10.0.0.3/32"));
    match compile(&c, &[]) {
        Err(e @ CompileError::TooManyEntries(_)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("exact IPv4") && msg.contains("131072"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn resolv_conf() {
    let text = "# generated\n\
                nameserver 10.0.0.2\n\
                ; comment\n\
                search example.com\n\
                nameserver   fe80::1%eth0   # link-local\n\
                nameserver 10.0.0.2\n\
                #nameserver 9.9.9.9\n\
                nameserver not-an-ip\n\
                nameserver\n\
                options ndots:2\n\
                \tnameserver 2001:db8::53\r\n\
                nameserver 1.1.1.1;trailing\n";
    assert_eq!(
        parse_resolv_conf(text),
        [
            ip("10.0.0.2"),
            ip("fe80::1"),
            ip("2001:db8::53"),
            ip("1.1.1.1")
        ]
    );
    assert!(parse_resolv_conf("").is_empty());
    assert!(parse_resolv_conf("search a\n").is_empty());
}

#[test]
fn host_matching() {
    assert!(host_matches("app.strongdm.com", "app.strongdm.com"));
    assert!(host_matches("*.strongdm.com", "app.strongdm.com"));
    assert!(!host_matches("*.strongdm.com", "strongdm.com"));
    assert!(!host_matches("*.strongdm.com", "appstrongdm.com"));
    assert!(!host_matches("app.strongdm.com", "app.uk.strongdm.com"));
}

mod listed;
mod warnings;
