//! No race with DNS, end to end: a hostname whose address changes on every
//! answer, resolved through the trusted resolver and connected to at once,
//! a thousand times, in enforce mode: every first SYN passes (no EPERM, no
//! retransmission), with the agent running and after it was killed with
//! kill -9. Only the kernel's learning from the answers can allow these
//! addresses in time: the agent never saw them.

use std::net::Ipv6Addr;

use sdm_tests::{gateway::start_rotating_gateway_with, lab::Lab};
use serde_json::Value;

const CYCLES: u64 = 1000;
const PORT: u16 = 8443;
const NAME: &str = "rot.lab.test";

fn new_lab() -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_lab-probe"))
}

#[track_caller]
fn expect_no_first_packet_drop(what: &str, v: &Value) {
    assert_eq!(v["count"], CYCLES, "{what}: {v}");
    assert_eq!(v["ok"], CYCLES, "{what}: every connect should succeed: {v}");
    assert_eq!(
        v["distinct"], CYCLES,
        "{what}: every answer should be a new address: {v}"
    );
    // A dropped SYN is retransmitted after one second; an EPERM is a failure.
    assert_eq!(v["slow"], 0, "{what}: a connect took 500 ms or more: {v}");
}

fn learned(lab: &Lab) -> u64 {
    lab.status()["dns_answers"]["learned"]
        .as_u64()
        .unwrap_or_else(|| panic!("no dns_answers.learned in status"))
}

/// A gateway lab in enforce mode whose fake DNS answers NAME with a new
/// address on every answer (this TTL; `dns` adds to the agent's [dns]
/// table), allowed on PORT by an `[[allow]]`; returns it with the IPv6
/// prefix the addresses come from.
fn rotating_lab(ttl: u32, dns: &str) -> (Lab, Ipv6Addr) {
    let mut lab = new_lab();
    let (_, v6) = start_rotating_gateway_with(&mut lab, NAME, PORT, ttl, dns);
    (lab, v6)
}

#[test]
fn fresh_answers_connect_at_once_with_the_agent_alive_and_dead() {
    let (mut lab, v6) = rotating_lab(3600, "");

    // Warm up the lab's IPv6 path (neighbour discovery between the
    // namespaces) with a connection the gateway policy allows anyway, so
    // that the first measured connect does not pay for it.
    let v = lab.probe(&["tcp", &format!("[{}]:443", lab.net_ip6(3)), "3000"]);
    assert_eq!(
        v["result"], "ok",
        "warm-up to app.strongdm.com over IPv6: {v}"
    );
    let dns = lab.dns_ip().to_string();
    let run = |lab: &Lab| {
        lab.probe(&[
            "resolve-connect",
            &dns,
            NAME,
            "AAAA",
            &PORT.to_string(),
            &CYCLES.to_string(),
            "2000",
        ])
    };
    let before = learned(&lab);
    let v = run(&lab);
    expect_no_first_packet_drop("agent running", &v);
    assert!(
        learned(&lab) >= before + CYCLES,
        "the kernel learned each answer"
    );

    lab.kill_agent();
    let before = learned(&lab);
    let v = run(&lab);
    expect_no_first_packet_drop("agent killed with kill -9", &v);
    assert!(learned(&lab) >= before + CYCLES);

    // The same over IPv4 (254 addresses, each new while they last).
    let v = lab.probe(&[
        "resolve-connect",
        &dns,
        NAME,
        "A",
        &PORT.to_string(),
        "200",
        "2000",
    ]);
    assert_eq!(v["ok"], 200, "{v}");
    assert_eq!(v["slow"], 0, "{v}");

    // An address of the same prefix that no answer gave is refused at once.
    let v = lab.probe(&["tcp", &format!("[{v6}ffff]:{PORT}"), "2000"]);
    assert_eq!(v["result"], "eperm", "an address never answered: {v}");
}

/// A learned address expires for new connections after max(TTL, ttl_min);
/// a connection opened before keeps working through the expiry.
#[test]
fn learned_addresses_expire_for_new_connections_only() {
    let (lab, _) = rotating_lab(1, "ttl_min = \"2s\"");

    let answer = lab.probe(&["resolve", &lab.dns_ip().to_string(), NAME, "A"]);
    let addr = answer["addresses"][0]
        .as_str()
        .unwrap_or_else(|| panic!("resolve {NAME}: {answer}"))
        .to_string();
    let to = format!("{addr}:{PORT}");
    let mut hold = lab.spawn_probe(&["tcp-hold", &to, "5", "200"], false);
    let first = hold.line(std::time::Duration::from_secs(5));
    assert_eq!(first["result"], "connected", "{first}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let v = lab.probe(&["tcp", &to, "2000"]);
    assert_eq!(
        v["result"], "eperm",
        "a new connection after the learned address expired: {v}"
    );
    let end = hold.line(std::time::Duration::from_secs(10));
    assert_eq!(
        end["result"], "ok",
        "the connection opened before the expiry kept working: {end}"
    );
}
