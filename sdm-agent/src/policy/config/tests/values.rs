//! The value parsers: durations, sizes, port specs, hostnames.

use super::*;

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
