//! [`listed_row`]: the rules of `[[resource]]` and `[[secret_store]]`
//! entries, and only those, read back to their guide row from the names
//! the compiler gives them.

use super::*;

#[test]
fn listed_rules_and_only_those_name_their_guide_row() {
    // Every role, entries of both kinds, a gateway this host dials and an
    // [[allow]]: each rule's origin, recorded by the compiler, says which
    // rules came from an entry.
    let p = compiled(
        "role = [\"relay\", \"gateway\", \"client\", \"api\", \"ad-dc\"]\n\
         gateways = [\"gw2.example:5000\"]\n\
         [[resource]]\nname = \"db\"\nhost = \"db.internal\"\nport = 5432\n\
         [[resource]]\nname = \"web\"\ncidr = \"10.0.0.0/24\"\nport = 443\n\
         [[secret_store]]\nname = \"vault\"\nhost = \"*.vault.example\"\nport = 8200\n\
         [[allow]]\nname = \"resource\"\ndirection = \"egress\"\nport = 1\nto = \"h.example\"\n",
    );
    let mut listed = Vec::new();
    for r in &p.rules {
        let from_entry = r.origin.contains("[[resource]]") || r.origin.contains("[[secret_store]]");
        assert_eq!(
            listed_row(&r.name).is_some(),
            from_entry,
            "{} ({})",
            r.name,
            r.origin
        );
        if let Some(row) = listed_row(&r.name) {
            listed.push((r.name.as_str(), row));
        }
    }
    // Relay and gateway share the entries' rules: named by the first role.
    assert_eq!(
        listed,
        [
            ("relay/egress/resource/db", "relay/egress/resource"),
            ("relay/egress/resource/web", "relay/egress/resource"),
            (
                "relay/egress/secret-store/vault",
                "relay/egress/secret-store"
            ),
        ]
    );
    for name in [
        "gateway/egress/resource",
        "gateway/egress/resource/",
        "gateway/egress/app",
        "gateway/egress/gateway/gw2.example",
        "gateway/ingress/resource/db",
        "nobody/egress/resource/db",
        "allow/db",
        "dns/egress/resolvers",
        "",
    ] {
        assert_eq!(listed_row(name), None, "{name:?}");
    }
    assert_eq!(
        listed_row("gateway/egress/secret-store/vault"),
        Some("gateway/egress/secret-store")
    );
}
