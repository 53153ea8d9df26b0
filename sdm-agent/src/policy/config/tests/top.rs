//! The top-level keys and `[hosts]`, `[gateway]`, `[client]`.

use super::*;

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
