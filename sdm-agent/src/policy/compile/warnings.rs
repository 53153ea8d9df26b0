//! Warnings for a config that would lock the operator (or the StrongDM
//! components) out once enforced.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::config::{Config, LoopbackMode, Mode, Role};
use crate::policy::{Direction, Policy, Proto, Rule, Target};

/// Whether a target name (possibly a `*.` wildcard) covers `name`.
pub(super) fn host_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == name,
    }
}

fn covers_everything(t: &Target) -> bool {
    matches!(t, Target::Cidr(net) if net.prefix_len() == 0)
}

/// A target that names loopback sources specifically (inside 127.0.0.0/8
/// or ::1), as opposed to a catch-all such as 0.0.0.0/0.
fn is_loopback_target(t: &Target) -> bool {
    match t {
        Target::Cidr(IpNet::V4(net)) => net.prefix_len() >= 8 && net.network().is_loopback(),
        Target::Cidr(IpNet::V6(net)) => net.prefix_len() == 128 && net.network().is_loopback(),
        Target::Host(_) => false,
    }
}

fn target_contains(t: &Target, ip: IpAddr) -> bool {
    matches!(t, Target::Cidr(net) if net.contains(&ip))
}

/// Warnings for a config that would lock the operator (or the StrongDM
/// components) out once enforced. All of them are about `mode = "enforce"`:
/// in audit mode nothing is dropped, so the list is empty.
///
/// In enforce mode, a warning is given when:
/// - no ingress rule allows tcp/22 (SSH to the host would be dropped);
/// - no egress rule allows tcp/443 to the control plane's `app` host (e.g.
///   `role = []`);
/// - `loopback = "enforce"` without the client role and with no rule for
///   loopback sources, so loopback traffic is dropped;
/// - `loopback = "enforce"` and the agent's own `[http] listen` address is
///   on loopback and no rule allows it;
/// - the gateway role has an advertised port with no allowed `sources`;
/// - the client or relay role has no `gateways` to dial;
/// - no rule allows DNS (udp/53) at all, so no name can be resolved.
pub fn lockout_warnings(config: &Config, policy: &Policy) -> Vec<String> {
    if config.mode != Mode::Enforce {
        return Vec::new();
    }
    let rules = &policy.rules;
    let mut out = Vec::new();
    out.extend(ssh_warning(rules));
    out.extend(control_plane_warning(config, rules));
    if config.loopback == LoopbackMode::Enforce {
        out.extend(loopback_warning(config, rules));
    }
    out.extend(role_warnings(config));
    out.extend(dns_warning(rules));
    out
}

/// No ingress rule allows tcp/22.
fn ssh_warning(rules: &[Rule]) -> Option<String> {
    let ssh = rules.iter().any(|r| {
        r.direction == Direction::Ingress && r.allows(Proto::Tcp, 22) && !r.targets.is_empty()
    });
    (!ssh).then(|| {
        "enforce mode: no ingress rule allows tcp/22, so SSH to this host will be dropped; \
         add e.g. [[allow]] name = \"ssh-in\", direction = \"ingress\", port = 22, from = \"<admin network>\""
            .to_string()
    })
}

/// No egress rule allows tcp/443 to the control plane's `app` host.
fn control_plane_warning(config: &Config, rules: &[Rule]) -> Option<String> {
    let app = &config.hosts.app;
    let control_plane = rules.iter().any(|r| {
        r.direction == Direction::Egress
            && r.allows(Proto::Tcp, 443)
            && r.targets.iter().any(|t| match t {
                Target::Host(h) => host_matches(h, app),
                Target::Cidr(_) => covers_everything(t),
            })
    });
    (!control_plane).then(|| {
        let roles: Vec<&str> = config.roles.iter().map(|r| r.as_str()).collect();
        format!(
            "enforce mode: no rule allows tcp/443 to {app}, so nothing on this host can reach the \
             StrongDM control plane (roles: [{}])",
            roles.join(", ")
        )
    })
}

/// `loopback = "enforce"`: loopback traffic with no rule at all, or the
/// agent's own HTTP endpoint on loopback with no rule for it.
fn loopback_warning(config: &Config, rules: &[Rule]) -> Option<String> {
    let loopback_rule = rules
        .iter()
        .any(|r| r.direction == Direction::Ingress && r.targets.iter().any(is_loopback_target));
    let listen = config.http.listen;
    if !config.roles.contains(&Role::Client) && !loopback_rule {
        Some(
            "loopback = \"enforce\" without the client role and with no rule for loopback \
             sources: loopback traffic (local services, this agent's HTTP endpoint) will be dropped"
                .to_string(),
        )
    } else if listen.ip().is_loopback()
        && !rules.iter().any(|r| {
            r.direction == Direction::Ingress
                && r.allows(Proto::Tcp, listen.port())
                && r.targets.iter().any(|t| target_contains(t, listen.ip()))
        })
    {
        Some(format!(
            "loopback = \"enforce\": no rule allows the agent's own HTTP endpoint {listen} \
             (tcp/{} from loopback)",
            listen.port()
        ))
    } else {
        None
    }
}

/// A gateway nobody may reach; a client or relay with no gateway to dial.
fn role_warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.roles.contains(&Role::Gateway) && config.gateway.sources.is_empty() {
        out.push(format!(
            "gateway role with empty [gateway] sources: no client, relay or gateway can reach the advertised port {}",
            config.gateway.advertised_port
        ));
    }
    for role in [Role::Client, Role::Relay] {
        if config.roles.contains(&role) && config.gateways.is_empty() {
            out.push(format!(
                "{role} role with no `gateways`: connections to StrongDM gateways will be dropped"
            ));
        }
    }
    out
}

/// No rule allows DNS (udp/53) at all.
fn dns_warning(rules: &[Rule]) -> Option<String> {
    let dns = rules
        .iter()
        .any(|r| r.direction == Direction::Egress && r.allows(Proto::Udp, 53));
    (!dns).then(|| {
        "enforce mode: no rule allows DNS (udp/53): no resolver is known ([dns] servers and \
         /etc/resolv.conf are empty), so names cannot be resolved"
            .to_string()
    })
}
