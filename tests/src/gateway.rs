//! The gateway fixture shared by the lab tests: a gateway's DNS names,
//! servers and config, and small helpers for judging probe results.
//!
//! Addresses (N is the lab's number): the host side is 10.231.N.1; on the
//! net side .2 is the DNS server and the names point at .3 to .9.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::lab::{denied, result, AgentConfig, Lab, Sniffer};

/// Timeout of a connection that should work.
pub const OK_MS: u64 = 2000;
/// Timeout of a connection that should be denied (dropped SYNs time out).
pub const DENY_MS: u64 = 600;

pub const APP: u8 = 3;
pub const DOWNLOADS: u8 = 4;
pub const CHECKIP: u8 = 5;
pub const DB: u8 = 6;
pub const VAULT: u8 = 7;
pub const GW2: u8 = 8;
pub const OTHER: u8 = 9;

pub const GATEWAY_HOSTS: [&str; 5] = [
    "app.strongdm.com",
    "downloads.strongdm.com",
    "checkip.amazonaws.com",
    "db.lab.test",
    "gw2.lab.test",
];

pub fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

pub fn any(port: u16) -> SocketAddr {
    SocketAddr::new("::".parse().unwrap(), port)
}

#[track_caller]
pub fn expect_ok(what: &str, v: &Value) {
    assert_eq!(result(v), "ok", "{what}: expected ok, got {v}");
}

#[track_caller]
pub fn expect_denied(what: &str, v: &Value) {
    assert!(
        denied(v),
        "{what}: expected denied (timeout or eperm), got {v}"
    );
}

/// Polls `f` every `every` until it returns Some, for at most `within`.
pub fn wait_for<T>(
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= within {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// TCP servers on every port the tests use, UDP echo on 9000 and 9001.
pub fn serve_all(lab: &Lab) {
    lab.serve_tcp(&[any(443), any(5432), any(8200), any(5000), any(8443)]);
    lab.serve_udp_echo(&[any(9000), any(9001)]);
}

/// The gateway's names in the fake DNS, with this TTL.
pub fn gateway_dns(lab: &Lab, ttl: u32) {
    let d = lab.dns();
    d.set(
        "app.strongdm.com",
        &[lab.net_ip(APP), lab.net_ip6(APP)],
        ttl,
    );
    d.set("downloads.strongdm.com", &[lab.net_ip(DOWNLOADS)], ttl);
    d.set("checkip.amazonaws.com", &[lab.net_ip(CHECKIP)], ttl);
    d.set("db.lab.test", &[lab.net_ip(DB)], ttl);
    d.set("gw2.lab.test", &[lab.net_ip(GW2)], ttl);
}

pub fn gateway_config(lab: &Lab, mode: &str, dns: &str) -> AgentConfig {
    AgentConfig {
        top: format!(
            "role = [\"gateway\"]\n\
             region = \"us\"\n\
             mode = \"{mode}\"\n\
             optional = true\n\
             gateways = [\"gw2.lab.test:5000\"]"
        ),
        dns: dns.to_owned(),
        tables: format!(
            "[gateway]\n\
             advertised_port = 5000\n\
             sources = [\"10.231.0.0/16\"]\n\
             \n\
             [[resource]]\n\
             name = \"db\"\n\
             host = \"db.lab.test\"\n\
             port = 5432\n\
             \n\
             [[secret_store]]\n\
             name = \"vault\"\n\
             cidr = \"10.231.{n}.{VAULT}/32\"\n\
             port = 8200\n\
             \n\
             [[allow]]\n\
             name = \"udp-echo\"\n\
             direction = \"egress\"\n\
             proto = \"udp\"\n\
             port = 9000\n\
             to = \"10.231.{n}.{OTHER}/32\"\n",
            n = lab.n
        ),
    }
}

/// Starts servers, the gateway's DNS names and a gateway agent in `mode`
/// in `lab`; returns the config's path.
pub fn start(lab: &mut Lab, mode: &str, dns: &str) -> PathBuf {
    serve_all(lab);
    gateway_dns(lab, 300);
    let config = lab.write_config("gateway.toml", &gateway_config(lab, mode, dns));
    lab.start_agent(&config, mode, &GATEWAY_HOSTS);
    config
}

/// Like [`start`] in enforce mode, with `extra` TOML (rules, sections)
/// after the gateway's tables, written as `file`; returns the config's path.
pub fn start_enforcing_with(lab: &mut Lab, file: &str, extra: &str) -> PathBuf {
    serve_all(lab);
    gateway_dns(lab, 300);
    let mut config = gateway_config(lab, "enforce", "");
    config.tables.push_str(extra);
    let path = lab.write_config(file, &config);
    lab.start_agent(&path, "enforce", &GATEWAY_HOSTS);
    path
}

/// A gateway lab in enforce mode (servers, the gateway's names) where
/// `name` answers a new address on every query (10.233.N.x for A,
/// fd00:233:N::x for AAAA, with `ttl`), allowed on `port` by an `[[allow]]`:
/// only learning from each answer can let its address through in time.
/// `dns` adds lines to the agent's `[dns]` table. Returns the config's path
/// and the IPv6 prefix.
pub fn start_rotating_gateway_with(
    lab: &mut Lab,
    name: &str,
    port: u16,
    ttl: u32,
    dns: &str,
) -> (PathBuf, std::net::Ipv6Addr) {
    serve_all(lab);
    gateway_dns(lab, 300);
    let n = lab.n;
    let v4 = std::net::Ipv4Addr::new(10, 233, n, 0);
    let v6: std::net::Ipv6Addr = format!("fd00:233:{n:x}::").parse().expect("an IPv6 prefix");
    // Every address of the prefixes is local in the net namespace, where
    // the servers listen on the wildcard address.
    lab.net
        .ip(&["route", "add", "local", &format!("{v4}/24"), "dev", "lo"]);
    lab.net.ip(&[
        "-6",
        "route",
        "add",
        "local",
        &format!("{v6}/64"),
        "dev",
        "lo",
    ]);
    lab.dns().rotate(name, v4, v6, ttl);
    let mut config = gateway_config(lab, "enforce", dns);
    config.tables.push_str(&format!(
        "\n[[allow]]\n\
         name = \"rotating\"\n\
         direction = \"egress\"\n\
         to = \"{name}\"\n\
         port = {port}\n"
    ));
    let path = lab.write_config("rotating.toml", &config);
    let mut hosts = GATEWAY_HOSTS.to_vec();
    hosts.push(name);
    lab.start_agent(&path, "enforce", &hosts);
    (path, v6)
}

/// [`start_rotating_gateway_with`] with a TTL of an hour and the default
/// `[dns]` table; returns the config's path.
pub fn start_rotating_gateway(lab: &mut Lab, name: &str, port: u16) -> PathBuf {
    start_rotating_gateway_with(lab, name, port, 3600, "").0
}

/// The traffic of the restart scenarios: two allowed destinations
/// (app:443, db:5432) and two denied ones (an unlisted address, and an
/// allowed address on a port no rule opens), each denied one checked to
/// answer from outside the cgroup (its server answers), and a sniffer
/// counting every segment to the denied ones and to the first allowed one.
pub fn sniffed_allowed_and_denied(lab: &Lab) -> ([SocketAddr; 2], [SocketAddr; 2], Sniffer) {
    let allowed = [sa(lab.net_ip(APP), 443), sa(lab.net_ip(DB), 5432)];
    let denied = [sa(lab.net_ip(OTHER), 443), sa(lab.net_ip(APP), 8443)];
    for d in denied {
        expect_ok(
            &format!("{d} from outside the cgroup (its server answers)"),
            &lab.probe_outside(&["tcp", &d.to_string(), &OK_MS.to_string()]),
        );
    }
    // Let those connections' teardown (FIN, last ACK) finish first: the
    // sniffer counts every segment to the denied addresses.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sniffer = lab.sniff_tcp(&[denied[0], denied[1], allowed[0]]);
    (allowed, denied, sniffer)
}
