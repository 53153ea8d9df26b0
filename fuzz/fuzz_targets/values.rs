//! The value parsers of the config and command line: durations, CIDRs,
//! port lists, hostnames, names, gateway addresses and cgroup targets.
//! The first byte picks the parser, the rest is the input. Nothing may
//! panic, and what parses renders to text that parses back to the same
//! value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdm_agent::{
    kernel::cgroup::CgroupTarget,
    policy::config::{
        format_duration, normalize_hostname, parse_cidr, parse_duration, parse_port_spec,
        valid_name, HostPort,
    },
    policy::Proto,
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 7 {
        0 => {
            if let Ok(d) = parse_duration(s) {
                let text = format_duration(d);
                assert_eq!(parse_duration(&text), Ok(d), "{s:?} -> {text:?}");
            }
        }
        1 => {
            if let Ok(net) = parse_cidr(s) {
                let text = net.to_string();
                assert_eq!(parse_cidr(&text), Ok(net), "{s:?} -> {text:?}");
                assert_eq!(net, net.trunc(), "host bits left in {net} from {s:?}");
            }
        }
        2 => {
            for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
                if let Ok(ranges) = parse_port_spec(s, proto) {
                    assert!(!ranges.is_empty(), "{s:?}: no ranges");
                    for w in ranges.windows(2) {
                        assert!(
                            u32::from(w[0].hi) + 1 < u32::from(w[1].lo),
                            "{s:?}: ranges not sorted and merged: {ranges:?}"
                        );
                    }
                    let text: Vec<String> = ranges.iter().map(|r| r.to_string()).collect();
                    let text = text.join(",");
                    assert_eq!(
                        parse_port_spec(&text, proto),
                        Ok(ranges),
                        "{s:?} -> {text:?}"
                    );
                }
            }
        }
        3 => {
            for wildcard in [false, true] {
                if let Ok(name) = normalize_hostname(s, wildcard) {
                    assert_eq!(
                        normalize_hostname(&name, wildcard),
                        Ok(name.clone()),
                        "{s:?} -> {name:?} is not normal"
                    );
                    assert!(name.len() <= 253, "{name:?}");
                }
            }
        }
        4 => {
            if valid_name(s).is_ok() {
                assert!(!s.is_empty() && s.is_ascii(), "{s:?}");
            }
        }
        5 => {
            if let Ok(hp) = s.parse::<HostPort>() {
                let text = hp.to_string();
                assert_eq!(text.parse::<HostPort>(), Ok(hp), "{s:?} -> {text:?}");
            }
        }
        _ => {
            if let Ok(t) = s.parse::<CgroupTarget>() {
                let text = t.to_string();
                assert_eq!(text.parse::<CgroupTarget>(), Ok(t), "{s:?} -> {text:?}");
            }
        }
    }
});
