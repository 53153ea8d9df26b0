use std::path::Path;

use super::*;

fn config(text: &str) -> Config {
    Config::from_toml_str(text, Path::new("agent.toml")).expect("valid config")
}

const XDP: &str = "mode = \"enforce\"\n[xdp]\ninterfaces = [\"eth0\"]\n";

#[test]
fn root_cgroup_target_is_accepted() {
    let mount = Path::new("/sys/fs/cgroup");
    // Unset: the root of the mount.
    check_target(&config(XDP), mount, "agent.toml").expect("unset cgroup is the root");
    let c = config(&format!("cgroup = \"/sys/fs/cgroup/\"\n{XDP}"));
    check_target(&c, mount, "agent.toml").expect("the mount, with a trailing slash");
    // Without [xdp], any target is fine.
    let c = config("cgroup = \"unit:sdm-proxy.service\"\n");
    check_target(&c, mount, "agent.toml").expect("no shield");
}

#[test]
fn other_targets_are_refused_with_the_reason() {
    let mount = Path::new("/sys/fs/cgroup");
    for target in [
        "/sys/fs/cgroup/system.slice",
        "unit:sdm-proxy.service",
        "pid:1234",
    ] {
        let c = config(&format!("cgroup = \"{target}\"\n{XDP}"));
        let e = check_target(&c, mount, "agent.toml")
            .expect_err(target)
            .to_string();
        for want in [
            "config agent.toml: line 4: [xdp] `interfaces`",
            "root cgroup",
            target,
            "lose its replies",
            "/sys/fs/cgroup",
        ] {
            assert!(e.contains(want), "{target}: {want:?} missing from {e}");
        }
    }
}

#[test]
fn pin_names_round_trip_with_dots_in_the_interface() {
    for (mode, name) in [
        (AttachMode::Native, "eth0"),
        (AttachMode::Generic, "eth0.100"),
        (AttachMode::Native, "veth_a-b"),
    ] {
        let pin = attach::pin_name(mode, name);
        assert!(!pin.contains('.'), "{pin}");
        assert_eq!(
            attach::parse_pin_name(&pin),
            Some(Shielded {
                interface: name.to_owned(),
                mode
            })
        );
    }
    assert_eq!(attach::parse_pin_name("egress"), None);
    assert_eq!(attach::parse_pin_name("xdp_turbo_6574"), None);
}

#[test]
fn seeds_connections_not_listeners_and_unmaps_ipv4() {
    use sdm_common::{PROTO_TCP, PROTO_UDP};
    // Captured from a host: a listener, an established connection to
    // 10.0.0.2:443 from port 40000, a TIME_WAIT one.
    let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n\
   1: 0100000A:9C40 0200000A:01BB 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1\n\
   2: 0100000A:9C41 0300000A:0050 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000\n";
    let keys = seed::flows(tcp, PROTO_TCP, false);
    let got: Vec<([u8; 4], u16, u16)> = keys
        .iter()
        .map(|k| {
            (
                [k.remote[0], k.remote[1], k.remote[2], k.remote[3]],
                k.remote_port,
                k.local_port,
            )
        })
        .collect();
    assert_eq!(
        got,
        [([10, 0, 0, 2], 443, 40000), ([10, 0, 0, 3], 80, 40001)]
    );
    assert!(keys
        .iter()
        .all(|k| k.proto == PROTO_TCP && k.v6 == 0 && k.remote[4..] == [0; 12]));

    // udp6: an unconnected socket (skipped), one connected to
    // [2001:db8::1]:53, one to ::ffff:192.0.2.7:123 (an IPv4 flow).
    let udp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  1: 00000000000000000000000000000000:0044 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0\n\
  2: 00000000000000000000000000000000:A000 B80D0120000000000000000001000000:0035 01 00000000:00000000 00:00000000 00000000     0        0 2 2 0000000000000000 0\n\
  3: 00000000000000000000000000000000:A001 0000000000000000FFFF0000070200C0:007B 01 00000000:00000000 00:00000000 00000000     0        0 3 2 0000000000000000 0\n";
    let keys = seed::flows(udp6, PROTO_UDP, true);
    assert_eq!(keys.len(), 2);
    let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    assert_eq!(
        (
            keys[0].remote,
            keys[0].v6,
            keys[0].remote_port,
            keys[0].local_port
        ),
        (v6.octets(), 1, 53, 0xa000)
    );
    assert_eq!(keys[1].remote[..4], [192, 0, 2, 7]);
    assert_eq!(
        (keys[1].v6, keys[1].remote_port, keys[1].proto),
        (0, 123, PROTO_UDP)
    );
}

#[test]
fn interfaces_the_host_lacks_are_config_errors_at_their_line() {
    let c = config("[xdp]\ninterfaces = [\n  \"lo\",\n  \"nosuchif0\",\n]\n");
    let e = check_interfaces(&c, Some(Path::new("agent.toml")))
        .expect_err("nosuchif0 is no interface")
        .to_string();
    for want in [
        "agent.toml",
        "line 4",
        "[xdp]",
        "`interfaces`",
        "no interface named \"nosuchif0\"",
    ] {
        assert!(e.contains(want), "{want:?} missing from {e}");
    }
    check_interfaces(&config("[xdp]\ninterfaces = [\"lo\"]\n"), None).expect("lo exists");
}
