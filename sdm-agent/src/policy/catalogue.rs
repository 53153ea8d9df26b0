//! The StrongDM Ports Guide as data: one [`CatalogueRow`] per row of the
//! guide, for each of its five sections (one per [`Role`]).
//!
//! The source of truth is the guide's text, kept in `shared/ports-guide.txt`
//! beside the repository. A test parses that text and checks that the
//! catalogue holds exactly its rows, no more, no fewer: when the guide
//! changes, the test fails until this table follows.

use crate::policy::config::{ControlPlaneHost, Role};
use crate::policy::{Direction, Proto};

/// Who a row's flow talks to; resolved against the config by the compiler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowTarget {
    /// One of the region's control-plane names (`[hosts]`).
    ControlPlane(ControlPlaneHost),
    /// The guide's fallback resolver (`[dns] fallback`).
    DnsFallback,
    /// The gateways this host dials (`gateways`).
    Gateways,
    /// Loopback: the source of a client's loopback ingress.
    Loopback,
    /// The `[[resource]]` entries.
    Resources,
    /// The `[[secret_store]]` entries.
    SecretStores,
    /// Any source allowed by `[gateway] sources` (the advertised port).
    AnySource,
}

/// A row's port: fixed by the guide, or "Custom" (from the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowPort {
    Fixed(Proto, u16),
    Custom,
}

/// One row of the Ports Guide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogueRow {
    pub role: Role,
    /// Stable short name, unique within a role; part of rule names
    /// (`gateway/egress/app`), so never rename one.
    pub key: &'static str,
    pub target: RowTarget,
    pub port: RowPort,
    pub direction: Direction,
    /// "Required" (true) or "Optional" in the guide.
    pub required: bool,
    /// The guide's target text, e.g. "app.strongdm.com" (the US name),
    /// "1.1.1.1", "Gateway", "Client (loopback)", "Advertised Port".
    pub guide_target: &'static str,
    /// The guide's port text, e.g. "443", "53 (UDP)", "Custom".
    pub guide_port: &'static str,
    /// The guide's description of the row.
    pub description: &'static str,
}

/// The heading of a role's section in the Ports Guide.
pub const fn guide_section(role: Role) -> &'static str {
    match role {
        Role::Client => "Client",
        Role::Relay => "Relays and Workers",
        Role::Gateway => "Gateways and Workers",
        Role::Api => "Scripts That Use the API",
        Role::AdDc => "Active Directory Domain Controllers for RDP Certificate Auth",
    }
}

use ControlPlaneHost::{App, Checkip, Downloads, Login};
use Direction::{Egress, Ingress};
use Proto::{Tcp, Udp};
use RowPort::{Custom, Fixed};
use RowTarget::{
    AnySource, ControlPlane, DnsFallback, Gateways, Loopback, Resources, SecretStores,
};

#[allow(
    clippy::too_many_arguments,
    reason = "one per column of the Ports Guide table"
)]
const fn row(
    role: Role,
    key: &'static str,
    target: RowTarget,
    port: RowPort,
    direction: Direction,
    required: bool,
    guide_target: &'static str,
    guide_port: &'static str,
    description: &'static str,
) -> CatalogueRow {
    CatalogueRow {
        role,
        key,
        target,
        port,
        direction,
        required,
        guide_target,
        guide_port,
        description,
    }
}

const REQUIRED: bool = true;
const OPTIONAL: bool = false;
const HTTPS: RowPort = Fixed(Tcp, 443);
const DNS: RowPort = Fixed(Udp, 53);

// The relay and gateway sections repeat most rows (and their texts): the
// guide lists them per section, and the test compares row for row, so the
// table keeps the guide's shape instead of sharing rows between roles.
#[rustfmt::skip]
static CATALOGUE: [CatalogueRow; 26] = [
    // Client
    row(Role::Client, "app", ControlPlane(App), HTTPS, Egress, REQUIRED,
        "app.strongdm.com", "443",
        "Allows communication with StrongDM to authenticate users and obtain information such as available resources and routing information"),
    row(Role::Client, "login", ControlPlane(Login), HTTPS, Egress, REQUIRED,
        "login.strongdm.com", "443",
        "Allows the client to determine which control plane to connect to during login"),
    row(Role::Client, "downloads", ControlPlane(Downloads), HTTPS, Egress, REQUIRED,
        "downloads.strongdm.com", "443",
        "Allows updates to the software to be downloaded"),
    row(Role::Client, "checkip", ControlPlane(Checkip), HTTPS, Egress, OPTIONAL,
        "checkip.amazonaws.com", "443",
        "Allows information to be derived from public IP, such as for connection troubleshooting"),
    row(Role::Client, "dns-fallback", DnsFallback, DNS, Egress, OPTIONAL,
        "1.1.1.1", "53 (UDP)",
        "Cloudflare fallback for DNS resolution of StrongDM endpoints if default DNS fails"),
    row(Role::Client, "gateway", Gateways, Custom, Egress, REQUIRED,
        "Gateway", "Custom",
        "Clients egress to gateways (default 5000)"),
    row(Role::Client, "cli-status", Loopback, Fixed(Tcp, 65220), Ingress, REQUIRED,
        "Client (loopback)", "65220",
        "Required for the CLI to be able to report on state/status"),
    row(Role::Client, "web-proxy", Loopback, Fixed(Tcp, 65230), Ingress, REQUIRED,
        "Client (loopback)", "65230",
        "Required to allow proxy traffic for web resources"),
    row(Role::Client, "loopback-ports", Loopback, Custom, Ingress, REQUIRED,
        "Client (loopback)", "Custom",
        "Configured inbound port override for each resource to which the client has access"),
    // Relays and Workers
    row(Role::Relay, "app", ControlPlane(App), HTTPS, Egress, REQUIRED,
        "app.strongdm.com", "443",
        "Allows communication with StrongDM to authenticate and obtain information such as routing information and credential information for resources"),
    row(Role::Relay, "downloads", ControlPlane(Downloads), HTTPS, Egress, REQUIRED,
        "downloads.strongdm.com", "443",
        "Allows updates to the software to be downloaded"),
    row(Role::Relay, "checkip", ControlPlane(Checkip), HTTPS, Egress, OPTIONAL,
        "checkip.amazonaws.com", "443",
        "Allows information to be derived from public IP, such as the Admin UI \"Location\" field for gateways/relays"),
    row(Role::Relay, "dns-fallback", DnsFallback, DNS, Egress, OPTIONAL,
        "1.1.1.1", "53 (UDP)",
        "Cloudflare fallback for DNS resolution of StrongDM endpoints if default DNS fails"),
    row(Role::Relay, "gateway", Gateways, Custom, Egress, REQUIRED,
        "Gateway", "Custom",
        "Egress to gateways in order to securely establish connections through which to allow traffic (default 5000)"),
    row(Role::Relay, "resource", Resources, Custom, Egress, REQUIRED,
        "Resource", "Custom",
        "Egress to resources"),
    row(Role::Relay, "secret-store", SecretStores, Custom, Egress, REQUIRED,
        "Secret Stores", "Custom",
        "May reach out to the configured secret store (if any) and acquire credentials to connect to the target resource"),
    // Gateways and Workers
    row(Role::Gateway, "app", ControlPlane(App), HTTPS, Egress, REQUIRED,
        "app.strongdm.com", "443",
        "Allows communication with StrongDM to authenticate and obtain information such as routing information and credential information for resources"),
    row(Role::Gateway, "downloads", ControlPlane(Downloads), HTTPS, Egress, REQUIRED,
        "downloads.strongdm.com", "443",
        "Allows updates to the software to be downloaded"),
    row(Role::Gateway, "checkip", ControlPlane(Checkip), HTTPS, Egress, OPTIONAL,
        "checkip.amazonaws.com", "443",
        "Allows information to be derived from public IP, such as the Admin UI \"Location\" field for gateways/relays"),
    row(Role::Gateway, "dns-fallback", DnsFallback, DNS, Egress, OPTIONAL,
        "1.1.1.1", "53 (UDP)",
        "Cloudflare fallback for DNS resolution of StrongDM endpoints if default DNS fails"),
    row(Role::Gateway, "gateway", Gateways, Custom, Egress, REQUIRED,
        "Gateway", "Custom",
        "Egress to other gateways dependent upon your network topology (default 5000)"),
    row(Role::Gateway, "resource", Resources, Custom, Egress, REQUIRED,
        "Resource", "Custom",
        "Egress to resources"),
    row(Role::Gateway, "secret-store", SecretStores, Custom, Egress, REQUIRED,
        "Secret Stores", "Custom",
        "May reach out to the appropriate secret store (if any) and acquire credentials to connect to the target resource"),
    row(Role::Gateway, "advertised-port", AnySource, Custom, Ingress, REQUIRED,
        "Advertised Port", "Custom",
        "Ingress allowed from clients, gateways, and relays (default 5000)"),
    // Scripts That Use the API
    row(Role::Api, "app", ControlPlane(App), HTTPS, Egress, REQUIRED,
        "app.strongdm.com", "443",
        "Required for calling API endpoints"),
    // Active Directory Domain Controllers for RDP Certificate Auth
    row(Role::AdDc, "app", ControlPlane(App), HTTPS, Egress, REQUIRED,
        "app.strongdm.com", "443",
        "Allows communication with StrongDM to obtain information such as the Certificate Revocation List"),
];

/// Every row of the Ports Guide, in the guide's order.
pub fn catalogue() -> &'static [CatalogueRow] {
    &CATALOGUE
}

/// The rows of one role's section, in the guide's order.
pub fn rows_for(role: Role) -> impl Iterator<Item = &'static CatalogueRow> {
    CATALOGUE.iter().filter(move |r| r.role == role)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const GUIDE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/ports-guide.txt"
    ));

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct GuideRow {
        section: String,
        target: String,
        port: String,
        direction: Direction,
        required: bool,
        description: String,
    }

    fn section_role(heading: &str) -> Option<Role> {
        Role::ALL
            .iter()
            .copied()
            .find(|r| guide_section(*r) == heading)
    }

    /// Parses the guide's text: a section starts at a heading line; a row
    /// is a target line, a port line, an `Egress`/`Ingress` line, a
    /// `Required`/`Optional` line and a description line.
    fn parse_guide(text: &str) -> Vec<GuideRow> {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut section: Option<&str> = None;
        let mut rows = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if section_role(line).is_some() {
                section = Some(line);
                continue;
            }
            let direction = match *line {
                "Egress" => Direction::Egress,
                "Ingress" => Direction::Ingress,
                _ => continue,
            };
            let required = match lines.get(i + 1).copied() {
                Some("Required") => true,
                Some("Optional") => false,
                other => panic!("line {:?} after {line:?} is not Required/Optional", other),
            };
            assert!(i >= 2, "direction {line:?} without target and port lines");
            let Some(section) = section else {
                panic!("row {:?} before any section heading", lines[i - 2]);
            };
            let description = lines
                .get(i + 2)
                .copied()
                .unwrap_or_else(|| panic!("row {:?} has no description", lines[i - 2]));
            rows.push(GuideRow {
                section: section.to_string(),
                target: lines[i - 2].to_string(),
                port: lines[i - 1].to_string(),
                direction,
                required,
                description: description.to_string(),
            });
        }
        rows
    }

    fn matches(g: &GuideRow, c: &CatalogueRow) -> bool {
        g.section == guide_section(c.role)
            && g.target == c.guide_target
            && g.port == c.guide_port
            && g.direction == c.direction
            && g.required == c.required
    }

    #[test]
    fn catalogue_is_a_bijection_with_the_guide() {
        let guide = parse_guide(GUIDE);
        // Sanity of the parser: every section is present and non-empty.
        for role in Role::ALL {
            assert!(
                guide.iter().any(|g| g.section == guide_section(*role)),
                "no rows parsed for section {:?}",
                guide_section(*role)
            );
        }
        for g in &guide {
            let n = catalogue().iter().filter(|c| matches(g, c)).count();
            assert_eq!(
                n, 1,
                "guide row {g:?} has {n} catalogue rows (want exactly 1)"
            );
        }
        for c in catalogue() {
            let n = guide.iter().filter(|g| matches(g, c)).count();
            assert_eq!(
                n, 1,
                "catalogue row {c:?} has {n} guide rows (want exactly 1)"
            );
        }
        assert_eq!(guide.len(), catalogue().len());
    }

    #[test]
    fn descriptions_and_order_follow_the_guide() {
        let guide = parse_guide(GUIDE);
        assert_eq!(guide.len(), catalogue().len());
        for (g, c) in guide.iter().zip(catalogue()) {
            assert!(
                matches(g, c),
                "order differs: guide {g:?} vs catalogue {c:?}"
            );
            assert_eq!(
                g.description, c.description,
                "description of {}/{}",
                c.role, c.key
            );
        }
    }

    #[test]
    fn the_parser_sees_an_added_or_removed_row() {
        let base = parse_guide(GUIDE).len();
        let added = GUIDE.replacen(
            "Relays and Workers\n",
            "Relays and Workers\nexample.com\n8443\nEgress\nRequired\nA new row\n",
            1,
        );
        assert_eq!(parse_guide(&added).len(), base + 1);
        let removed = GUIDE.replacen(
            "downloads.strongdm.com\n443\nEgress\nRequired\nAllows updates to the software to be downloaded\n",
            "",
            1,
        );
        assert_eq!(parse_guide(&removed).len(), base - 1);
        // And either makes the bijection fail.
        let bijective = |text: &str| {
            let g = parse_guide(text);
            g.len() == catalogue().len()
                && g.iter()
                    .all(|g| catalogue().iter().filter(|c| matches(g, c)).count() == 1)
                && catalogue()
                    .iter()
                    .all(|c| g.iter().filter(|g| matches(g, c)).count() == 1)
        };
        assert!(bijective(GUIDE));
        assert!(!bijective(&added));
        assert!(!bijective(&removed));
        let flipped = GUIDE.replacen("443\nEgress\nOptional", "443\nEgress\nRequired", 1);
        assert!(!bijective(&flipped));
    }

    #[test]
    fn keys_are_unique_per_role_and_well_formed() {
        let mut seen = HashSet::new();
        for c in catalogue() {
            assert!(
                seen.insert((c.role, c.key)),
                "duplicate key {}/{}",
                c.role,
                c.key
            );
            assert!(
                !c.key.is_empty() && c.key.chars().all(|ch| ch.is_ascii_lowercase() || ch == '-'),
                "bad key {:?}",
                c.key
            );
        }
    }

    #[test]
    fn rows_are_consistent() {
        for c in catalogue() {
            match (c.target, c.port) {
                (ControlPlane(h), Fixed(Tcp, 443)) => {
                    assert_eq!(c.key, h.as_str());
                    assert_eq!(c.guide_port, "443");
                    assert_eq!(c.direction, Egress);
                }
                (DnsFallback, Fixed(Udp, 53)) => {
                    assert_eq!((c.guide_target, c.guide_port), ("1.1.1.1", "53 (UDP)"));
                }
                (Loopback, Fixed(Tcp, p)) => {
                    assert_eq!(c.guide_port, p.to_string());
                    assert_eq!(c.direction, Ingress);
                }
                (Gateways | Resources | SecretStores, Custom) => {
                    assert_eq!(c.direction, Egress)
                }
                (Loopback | AnySource, Custom) => assert_eq!(c.direction, Ingress),
                other => panic!("unexpected row shape {other:?} in {c:?}"),
            }
            if let Fixed(_, p) = c.port {
                assert!(c.guide_port.starts_with(&p.to_string()));
            } else {
                assert_eq!(c.guide_port, "Custom");
            }
        }
    }

    #[test]
    fn rows_for_selects_one_section() {
        let keys = |r: Role| rows_for(r).map(|c| c.key).collect::<Vec<_>>();
        assert_eq!(
            keys(Role::Client),
            [
                "app",
                "login",
                "downloads",
                "checkip",
                "dns-fallback",
                "gateway",
                "cli-status",
                "web-proxy",
                "loopback-ports"
            ]
        );
        assert_eq!(
            keys(Role::Relay),
            [
                "app",
                "downloads",
                "checkip",
                "dns-fallback",
                "gateway",
                "resource",
                "secret-store"
            ]
        );
        assert_eq!(
            keys(Role::Gateway),
            [
                "app",
                "downloads",
                "checkip",
                "dns-fallback",
                "gateway",
                "resource",
                "secret-store",
                "advertised-port"
            ]
        );
        assert_eq!(keys(Role::Api), ["app"]);
        assert_eq!(keys(Role::AdDc), ["app"]);
    }
}
