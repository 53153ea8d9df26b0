//! Upgrades, in the lab (README, "Pins, restarts, detach"): an agent with
//! another eBPF object than the pinned links run attaches its programs
//! before it unpins the old ones, so that both run for a moment and never
//! neither. The second object is a real second build of the programs
//! (tests/build.rs: sdm-ebpf's feature `upgrade-variant`), which the agent
//! loads with `run --object`.
//!
//! Addresses (N is the lab's number): the host side is 10.231.N.1, the net
//! side .2 to .9 (see sdm_tests::gateway); nothing else is ever a
//! destination.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use sdm_agent::kernel::dataplane::{pinned_rule_capacity, Maps};
use sdm_tests::{
    gateway::{self, sniffed_allowed_and_denied, wait_for, GATEWAY_HOSTS},
    lab::{BgProbe, Lab},
    programs::{is_loaded, pinned_programs, recorded_hash, variant_hash, variant_object, Program},
};

/// Object switches: 1 -> 2 -> 1 -> 2 -> 1.
const SWITCHES: usize = 4;

/// A `tcp-watch` probe (in the cgroup): a new connection to `addr` every
/// `interval_ms` until `stop` exists.
fn watch(lab: &Lab, addr: SocketAddr, interval_ms: u64, stop: &Path) -> BgProbe {
    lab.spawn_probe(
        &[
            "tcp-watch",
            &addr.to_string(),
            &interval_ms.to_string(),
            "1000",
            stop.to_str().expect("utf-8 path"),
        ],
        false,
    )
}

/// Replaces the running agent with one that runs `object` (None: the
/// embedded one, whose hash is `embedded`), as a package upgrade's restart
/// does, and checks the replacement: the log says so, attach.json names
/// the new object, every
/// pinned link runs a newly loaded program, and the old programs are gone
/// (the old links were detached, not left running beside the new ones).
/// Returns the programs the links run now.
fn switch_object(
    lab: &mut Lab,
    config: &Path,
    object: Option<&Path>,
    embedded: u64,
    before: &BTreeMap<&'static str, Program>,
) -> BTreeMap<&'static str, Program> {
    lab.stop_agent();
    let log_before = lab.agent_log().len();
    let extra: Vec<&str> = match object {
        Some(p) => vec!["--object", p.to_str().expect("utf-8 path")],
        None => vec![],
    };
    lab.start_agent_with(config, &extra, "enforce", &GATEWAY_HOSTS);
    let log = lab.agent_log();
    let log = &log[log_before..];
    assert!(
        log.contains("attached the egress and ingress programs") && log.contains("replaced=true"),
        "the agent with another object should replace the pinned programs:\n{log}"
    );
    let want = if object.is_some() {
        variant_hash()
    } else {
        embedded
    };
    assert_eq!(
        recorded_hash(&lab.pins.layout),
        want,
        "attach.json names the new object"
    );
    let after = pinned_programs(&lab.pins.layout);
    for (pin, old) in before {
        let new = after[pin];
        assert_ne!(
            new.id, old.id,
            "the {pin} link still runs program {}",
            old.id
        );
    }
    // The old links' last reference went with the rename over their pins;
    // the kernel frees them (and then their programs) shortly after.
    let gone = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        before.values().all(|p| !is_loaded(p.id)).then_some(())
    });
    let left: Vec<u32> = before
        .values()
        .map(|p| p.id)
        .filter(|id| is_loaded(*id))
        .collect();
    assert!(
        gone.is_some(),
        "programs of the old object are still loaded 5 s after the upgrade: {left:?}"
    );
    after
}

/// Upgrades under traffic: while processes in the cgroup connect every
/// 20 ms to two allowed destinations and every 2 ms to two denied ones
/// (each with a server), the agent is replaced four times by one with the
/// other object (1 -> 2 -> 1 -> 2 -> 1). Each replacement runs the replace
/// path (not adoption): the links run the other object's programs (another
/// tag for sdm_egress), the old ones are unloaded. Across all of it not one
/// allowed connection fails, not one denied connection succeeds, and a raw
/// socket on the net side sees not one packet to a denied destination.
#[test]
fn upgrade_replaces_the_programs_under_traffic_without_a_gap() {
    let mut lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    let config = gateway::start(&mut lab, "enforce", "");
    let variant = variant_object();
    // The agent's own object, as the first agent recorded it (the test's
    // copy of the agent library may come from another build of it).
    let embedded = recorded_hash(&lab.pins.layout);
    assert_ne!(
        variant_hash(),
        embedded,
        "the variant object is the embedded one"
    );
    let (allowed, denied, sniffer) = sniffed_allowed_and_denied(&lab);

    let stop = lab.dir.path().join("stop-watching");
    let mut probes: Vec<(SocketAddr, bool, BgProbe)> = allowed
        .iter()
        .map(|a| (*a, true, watch(&lab, *a, 20, &stop)))
        .chain(
            denied
                .iter()
                .map(|a| (*a, false, watch(&lab, *a, 2, &stop))),
        )
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let start = Instant::now();
    let first = pinned_programs(&lab.pins.layout);
    let mut now = first.clone();
    for i in 0..SWITCHES {
        let to_variant = i % 2 == 0;
        let next = switch_object(
            &mut lab,
            &config,
            to_variant.then_some(variant.as_path()),
            embedded,
            &now,
        );
        // The egress program is where the two objects differ.
        if to_variant {
            assert_ne!(
                next["egress"].tag, first["egress"].tag,
                "sdm_egress of the variant object has the original's tag"
            );
        } else {
            assert_eq!(
                next["egress"].tag, first["egress"].tag,
                "back on the embedded object, sdm_egress has its original tag again"
            );
        }
        now = next;
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = start.elapsed();
    fs::write(&stop, "").expect("write the stop file");

    sdm_tests::lab::assert_watches_held(&mut probes, &format!("{SWITCHES} upgrades"));
    for d in denied {
        assert_eq!(
            sniffer.count(d),
            0,
            "TCP segments to the denied {d} reached the net side"
        );
    }
    assert!(
        sniffer.count(allowed[0]) > 0,
        "the sniffer saw nothing of the allowed connections: it does not work"
    );
    eprintln!("{SWITCHES} upgrades in {took:?}");
}

/// `n` `[[allow]]` rules, tcp/443 to /32s of 198.18.0.0/15 (RFC 2544's
/// benchmark range): rules only, nothing is ever sent there.
fn many_allow_rules(n: u32) -> String {
    (0..n)
        .map(|i| {
            format!(
                "\n[[allow]]\nname = \"bulk-{i}\"\ndirection = \"egress\"\nproto = \"tcp\"\nport = 443\nto = \"198.18.{}.{}/32\"\n",
                i / 250,
                i % 250 + 1
            )
        })
        .collect()
}

/// A restart whose policy outgrows the pinned rule maps (README,
/// "Capacity"): the gateway starts with its few rules (maps for 1,024),
/// then, under the traffic of the upgrade test above, an agent with 1,500
/// more `[[allow]]` rules replaces it. The pinned links are replaced, not
/// adopted, and the larger maps take the pins: the log says both, the
/// pinned maps hold more than 1,024 rules and every rule has an id. Not one allowed
/// connection fails, not one denied one succeeds, and the sniffer sees
/// nothing reach a denied destination.
#[test]
fn a_restart_with_more_rules_than_the_pins_hold_grows_them_without_a_gap() {
    let mut lab = Lab::new(env!("CARGO_BIN_EXE_lab-probe"));
    gateway::start(&mut lab, "enforce", "");
    assert_eq!(
        pinned_rule_capacity(&lab.pins.layout).expect("capacity"),
        Some(1024)
    );
    let mut big = gateway::gateway_config(&lab, "enforce", "");
    big.tables.push_str(&many_allow_rules(1500));
    let big = lab.write_config("big.toml", &big);
    let (allowed, denied, sniffer) = sniffed_allowed_and_denied(&lab);
    let stop = lab.dir.path().join("stop-watching");
    let mut probes: Vec<(SocketAddr, bool, BgProbe)> = allowed
        .iter()
        .map(|a| (*a, true, watch(&lab, *a, 20, &stop)))
        .chain(
            denied
                .iter()
                .map(|a| (*a, false, watch(&lab, *a, 2, &stop))),
        )
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    lab.stop_agent();
    let log_before = lab.agent_log().len();
    lab.start_agent_with(&big, &[], "enforce", &GATEWAY_HOSTS);
    let log = lab.agent_log();
    let log = &log[log_before..];
    assert!(
        log.contains("the rule maps grow")
            && log.contains("the grown rule maps replaced the pinned ones")
            && log.contains("replaced=true"),
        "the agent with 1,500 more rules should grow the maps and replace the links:\n{log}"
    );
    let maps = Maps::open(&lab.pins.layout).expect("maps");
    let names = maps.rule_names().expect("rule names");
    let cap = maps.rule_capacity();
    assert!(
        cap > 1024 && cap as usize >= names.len(),
        "the pinned maps hold {cap} rules for {}",
        names.len()
    );
    assert!(
        names
            .values()
            .filter(|n| n.starts_with("allow/bulk-"))
            .count()
            == 1500
            && names.keys().any(|id| *id > 1024),
        "the 1,500 rules have ids, some past 1,024: {} names",
        names.len()
    );
    std::thread::sleep(Duration::from_millis(300));
    fs::write(&stop, "").expect("write the stop file");
    sdm_tests::lab::assert_watches_held(&mut probes, "a restart that grows the rule maps");
    for d in denied {
        assert_eq!(
            sniffer.count(d),
            0,
            "TCP segments to the denied {d} reached the net side"
        );
    }
    assert!(
        sniffer.count(allowed[0]) > 0,
        "the sniffer saw nothing of the allowed connections: it does not work"
    );
}
