//! The agent's start-up pieces that run without a kernel: the previous
//! run's DNS answers, and the systemd notification.

use std::os::{linux::net::SocketAddrExt as _, unix::net::UnixDatagram};

use std::{net::IpAddr, time::Instant};

use super::{agent::seed_from_previous, systemd::sd_notify};
use crate::{
    api::status::StateFile,
    dns::resolver::DnsTiming,
    dns::resolver::Resolver,
    kernel::dataplane::{self, Layout},
    policy::config::DnsConfig,
};

/// The default `[dns]` timing (30 s floor, 1 h ceiling, 10 min grace).
fn timing() -> DnsTiming {
    DnsTiming::from(&DnsConfig::default())
}

/// Issue 16: a state file left by a run with other resolvers (or
/// names) seeded the next run's "last good" answers. Only answers
/// recorded under the same fingerprint are adopted; `detach` removes
/// the file altogether.
#[test]
fn previous_dns_answers_are_adopted_only_for_the_same_resolvers_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout {
        pin_root: dir.path().join("pins"),
        run_dir: dir.path().join("run"),
    };
    let old_resolvers: Vec<IpAddr> = vec!["192.0.2.53".parse().unwrap()];
    let names = vec!["db.example".to_string()];
    let recorded = crate::api::status::dns_fingerprint(&old_resolvers, &names);
    let answer: IpAddr = "203.0.113.7".parse().unwrap();
    StateFile {
        dns: vec![crate::dns::resolver::HostReport {
            hostname: "db.example".into(),
            addresses: vec![answer],
            failures: 0,
            last_error: None,
            next_refresh_secs: 10,
            resolved: true,
        }],
        dns_fingerprint: Some(recorded.clone()),
        ..Default::default()
    }
    .write(&layout)
    .unwrap();
    let seeded = |resolvers: &[IpAddr], names: &[String]| {
        let mut r = Resolver::new(resolvers, timing()).unwrap();
        r.set_names(names.iter().map(String::as_str), Instant::now());
        let fp = crate::api::status::dns_fingerprint(resolvers, names);
        seed_from_previous(&mut r, &layout, &fp);
        r.addresses("db.example").to_vec()
    };
    // The same resolvers (in another order, duplicated) and names.
    let same: Vec<IpAddr> = vec![old_resolvers[0], old_resolvers[0]];
    assert_eq!(seeded(&same, &names), [answer]);
    // Another resolver: not adopted.
    let other: Vec<IpAddr> = vec!["198.51.100.53".parse().unwrap()];
    assert_eq!(seeded(&other, &names), Vec::<IpAddr>::new());
    // Other names (another config): not adopted either.
    let more = vec!["db.example".to_string(), "api.example".to_string()];
    assert_eq!(seeded(&old_resolvers, &more), Vec::<IpAddr>::new());
    // A file without a fingerprint (an older agent's): not adopted.
    let mut legacy = StateFile::read(&layout).unwrap();
    legacy.dns_fingerprint = None;
    legacy.write(&layout).unwrap();
    assert_eq!(seeded(&old_resolvers, &names), Vec::<IpAddr>::new());

    // detach clears the run state with the pins.
    let removed = dataplane::detach(&layout).unwrap();
    assert_eq!(removed, [StateFile::path(&layout)]);
    assert!(StateFile::read(&layout).is_none());
    assert!(dataplane::detach(&layout).unwrap().is_empty());
}

#[test]
fn dns_fingerprints_ignore_order_and_tell_sets_apart() {
    use crate::api::status::dns_fingerprint as fp;
    let a: IpAddr = "10.0.0.53".parse().unwrap();
    let b: IpAddr = "::ffff:10.0.0.54".parse().unwrap();
    let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(fp(&[a, b], &n(&["x", "y"])), fp(&[b, a], &n(&["y", "x"])));
    // A mapped address is its IPv4 address.
    assert_eq!(
        fp(&[a, "10.0.0.54".parse().unwrap()], &n(&["x"])),
        fp(&[a, b], &n(&["x"]))
    );
    assert_ne!(fp(&[a], &n(&["x"])), fp(&[b], &n(&["x"])));
    assert_ne!(fp(&[a], &n(&["x"])), fp(&[a], &n(&["x", "y"])));
}

#[test]
fn sd_notify_sends_one_datagram_to_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let server = UnixDatagram::bind(&path).unwrap();
    sd_notify(path.as_os_str(), "READY=1").unwrap();
    let mut buf = [0u8; 64];
    let n = server.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
}

#[test]
fn sd_notify_reaches_an_abstract_socket() {
    let name = format!("sdm-agent-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let server = UnixDatagram::bind_addr(&addr).unwrap();
    sd_notify(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
    let mut buf = [0u8; 64];
    let n = server.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn sd_notify_fails_without_a_listener() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody");
    assert!(sd_notify(missing.as_os_str(), "READY=1").is_err());
}
