//! The lockout warnings of an enforced config.

use super::*;

fn warnings(text: &str, resolvers: &[IpAddr]) -> Vec<String> {
    let c = cfg(text);
    let p = compile(&c, resolvers).unwrap();
    lockout_warnings(&c, &p)
}

/// The one warning `text` gets.
fn one_warning(text: &str, resolvers: &[IpAddr]) -> String {
    let mut w = warnings(text, resolvers);
    assert_eq!(w.len(), 1, "{w:?}");
    w.remove(0)
}

const SSH: &str =
    "[[allow]]\nname = \"ssh\"\ndirection = \"ingress\"\nport = 22\nfrom = \"10.0.0.0/8\"\n";

#[test]
fn no_warnings_in_audit_mode() {
    let r = [ip("10.0.0.2")];
    assert!(warnings("", &r).is_empty());
    assert!(warnings(
        "role = []\nloopback = \"enforce\"\n[gateway]\nsources = []\n",
        &[]
    )
    .is_empty());
}

#[test]
fn sane_enforced_config_has_no_warnings() {
    let r = [ip("10.0.0.2")];
    assert_eq!(
        warnings(&format!("mode = \"enforce\"\n{SSH}"), &r),
        Vec::<String>::new()
    );
    assert_eq!(
        warnings(
            &format!(
                "mode = \"enforce\"\nrole = [\"client\", \"relay\"]\ngateways = [\"gw\"]\n{SSH}"
            ),
            &r
        ),
        Vec::<String>::new()
    );
}

#[test]
fn ssh_warning() {
    let r = [ip("10.0.0.2")];
    let w = one_warning("mode = \"enforce\"\n", &r);
    assert!(w.contains("tcp/22"), "{w}");
    // A range covering 22 counts; udp or egress does not.
    let w = warnings(
        "mode = \"enforce\"\n[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nports = \"20-30\"\nfrom = \"::/0\"\n",
        &r,
    );
    assert!(w.is_empty(), "{w:?}");
    let w = warnings(
        "mode = \"enforce\"\n[[allow]]\nname = \"a\"\ndirection = \"ingress\"\nport = 22\nproto = \"udp\"\nfrom = \"::/0\"\n",
        &r,
    );
    assert!(w.iter().any(|w| w.contains("tcp/22")), "{w:?}");
    let w = warnings(
        "mode = \"enforce\"\n[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 22\nto = \"h.example\"\n",
        &r,
    );
    assert!(w.iter().any(|w| w.contains("tcp/22")), "{w:?}");
}

#[test]
fn control_plane_warning() {
    let r = [ip("10.0.0.2")];
    let w = one_warning(&format!("mode = \"enforce\"\nrole = []\n{SSH}"), &r);
    assert!(
        w.contains("app.strongdm.com") && w.contains("tcp/443"),
        "{w}"
    );
    // An [[allow]] to the app host (or a wildcard covering it) is enough.
    let w = warnings(
        &format!(
            "mode = \"enforce\"\nrole = []\n{SSH}[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 443\nto = \"*.strongdm.com\"\n"
        ),
        &r,
    );
    assert!(w.is_empty(), "{w:?}");
    // The region's name is the one checked.
    let w = warnings(
        &format!(
            "mode = \"enforce\"\nrole = []\nregion = \"eu\"\n{SSH}[[allow]]\nname = \"a\"\ndirection = \"egress\"\nport = 443\nto = \"app.strongdm.com\"\n"
        ),
        &r,
    );
    assert!(w.iter().any(|w| w.contains("app.eu.strongdm.com")), "{w:?}");
}

#[test]
fn loopback_warnings() {
    let r = [ip("10.0.0.2")];
    let w = one_warning(
        &format!("mode = \"enforce\"\nloopback = \"enforce\"\n{SSH}"),
        &r,
    );
    assert!(w.contains("loopback") && w.contains("client role"), "{w}");
    // With the client role, loopback has rules, but not the agent's port.
    let w = one_warning(
        &format!("mode = \"enforce\"\nloopback = \"enforce\"\nrole = [\"client\", \"gateway\"]\ngateways = [\"gw\"]\n{SSH}"),
        &r,
    );
    assert!(w.contains("127.0.0.1:9850"), "{w}");
    let w = warnings(
        &format!(
            "mode = \"enforce\"\nloopback = \"enforce\"\nrole = [\"client\"]\ngateways = [\"gw\"]\n{SSH}\
             [client]\nloopback_ports = [9850]\n"
        ),
        &r,
    );
    assert!(w.is_empty(), "{w:?}");
    // An [[allow]] for loopback sources instead of the client role (a
    // range of ports: every port of a CIDR would not fit the trie).
    let w = warnings(
        &format!(
            "mode = \"enforce\"\nloopback = \"enforce\"\n{SSH}\
             [[allow]]\nname = \"local\"\ndirection = \"ingress\"\nports = \"9000-9999\"\nfrom = \"127.0.0.0/8\"\n"
        ),
        &r,
    );
    assert!(w.is_empty(), "{w:?}");
    // loopback = "pass": nothing to say.
    let w = warnings(&format!("mode = \"enforce\"\n{SSH}"), &r);
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn gateway_and_dns_warnings() {
    let r = [ip("10.0.0.2")];
    let w = one_warning(
        &format!("mode = \"enforce\"\n{SSH}[gateway]\nsources = []\n"),
        &r,
    );
    assert!(w.contains("sources") && w.contains("5000"), "{w}");
    let w = warnings(
        &format!("mode = \"enforce\"\nrole = [\"client\", \"relay\"]\n{SSH}"),
        &r,
    );
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("client role") && w[1].starts_with("relay role"),
        "{w:?}"
    );
    let w = one_warning(
        &format!("mode = \"enforce\"\n{SSH}[dns]\nfallback = \"none\"\n"),
        &[],
    );
    assert!(w.contains("DNS"), "{w}");
    // The guide's fallback alone still resolves.
    let w = warnings(&format!("mode = \"enforce\"\n{SSH}"), &[]);
    assert!(w.is_empty(), "{w:?}");
}
