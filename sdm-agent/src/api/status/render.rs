//! [`render`]: the human view of a [`Status`] (`sdm-agent status`).

use std::fmt::Write as _;

use super::{PageInfo, Status};

/// The human view of [`Status`].
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    header(&mut o, s);
    notes(&mut o, s);
    rules(&mut o, s);
    denied(&mut o, s);
    dns(&mut o, s);
    o
}

/// Mode, cgroup, backstop, DNS queries, pins, agent and generation.
fn header(o: &mut String, s: &Status) {
    let _ = writeln!(o, "mode:       {} (loopback: {})", s.mode, s.loopback);
    let cg = s
        .cgroup
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "unknown".into());
    let _ = writeln!(o, "cgroup:     {cg}");
    if !s.backstop.is_empty() {
        let _ = writeln!(
            o,
            "backstop:   {} (packet sockets' frames judged at tc egress)",
            s.backstop.join(", ")
        );
    }
    if let Some(x) = &s.xdp {
        let ifaces: Vec<String> = x
            .interfaces
            .iter()
            .map(|i| format!("{} ({})", i.interface, i.mode.name()))
            .collect();
        let drops: Vec<String> = x
            .packets
            .iter()
            .filter(|(k, n)| k.as_str() != "passed" && **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            o,
            "xdp shield: {}; {} passed, {} {}",
            ifaces.join(", "),
            x.packets.get("passed").copied().unwrap_or(0),
            if s.mode == "enforce" {
                "dropped:"
            } else {
                "would drop (audit):"
            },
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops.join(", ")
            }
        );
    }
    if s.dns_queries_mode == "policy" {
        let n = |k: &str| s.dns_queries.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "dns queries: policy names only ({} allowed, {} refused, {} would be refused in audit)",
            n("allowed"),
            n("refused"),
            n("would_refuse")
        );
    }
    let _ = writeln!(o, "pins:       {}", s.pin_root.display());
    let agent = match (s.agent_pid, s.agent_running) {
        (Some(p), true) => format!("running (pid {p})"),
        (Some(p), false) => {
            format!("not running (last pid {p}); enforcement continues from the pinned maps")
        }
        (None, _) => "unknown".into(),
    };
    let _ = writeln!(o, "agent:      {agent}");
    let _ = writeln!(o, "generation: {}", s.generation);
    if let Some(r) = &s.last_reload {
        let what = match &r.error {
            None => format!("applied (generation {})", r.generation),
            Some(e) => format!("REFUSED, the previous config runs on: {e}"),
        };
        let _ = writeln!(
            o,
            "reload:     {what}; at {} ({} applied, {} refused since start)",
            crate::flows::flow::rfc3339(r.at.saturating_mul(1000)),
            r.applied,
            r.refused
        );
    }
}

/// What needs a reader's attention, only when there is something: flow
/// store evictions, processes that can bypass the programs, a policy that
/// did not apply.
fn notes(o: &mut String, s: &Status) {
    if s.flow_store_evictions > 0 {
        let _ = writeln!(
            o,
            "flow store: {} flows evicted to stay within [state] max_bytes",
            s.flow_store_evictions
        );
    }
    if !s.bypass_capable.is_empty() {
        let _ = write!(o, "\n{}", crate::kernel::caps::render(&s.bypass_capable));
    }
    if let Some(e) = &s.policy_error {
        let _ = writeln!(
            o,
            "policy:     NOT UPDATED, the previous policy stays in force: {e}"
        );
    }
}

/// `1,234,567`: the counts of a large policy read at a glance.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// ` (20 of 10,000 by hits, matching "db")`: what a paged list shows, after
/// its title; nothing when it is whole.
fn page_title(page: Option<&PageInfo>, shown: usize) -> String {
    let Some(p) = page else {
        return String::new();
    };
    if shown == p.total && p.q.is_empty() && p.offset == 0 {
        return format!(
            " ({}, by {} {})",
            thousands(p.total),
            p.sort,
            p.order.name()
        );
    }
    let of = if p.q.is_empty() {
        thousands(p.total)
    } else {
        format!(
            "{} matching {:?} (of {})",
            thousands(p.matched),
            p.q,
            thousands(p.total)
        )
    };
    let from = if p.offset > 0 {
        format!(" from {}", thousands(p.offset + 1))
    } else {
        String::new()
    };
    format!(
        " ({} of {of}{from}, by {} {})",
        thousands(shown),
        p.sort,
        p.order.name()
    )
}

/// `  ... and 9,980 more: ...`, when the page leaves rows out.
fn page_rest(o: &mut String, page: Option<&PageInfo>, shown: usize, api: &str) {
    let Some(p) = page else { return };
    let rest = p.matched.saturating_sub(p.offset.min(p.matched) + shown);
    if rest > 0 {
        let _ = writeln!(
            o,
            "  ... and {} more: use --all, --filter, --offset, or the API ({api})",
            thousands(rest)
        );
    }
}

fn rules(o: &mut String, s: &Status) {
    let _ = writeln!(
        o,
        "\nRULES{}",
        page_title(s.rules_page.as_ref(), s.rules.len())
    );
    let _ = writeln!(
        o,
        "{:<44} {:<8} {:<10} {:>12} {:>12}  addresses",
        "name", "dir", "ports", "egress pkts", "ingress pkts"
    );
    for r in &s.rules {
        let _ = writeln!(
            o,
            "{:<44} {:<8} {:<10} {:>12} {:>12}  {}{}",
            r.name,
            r.direction.as_deref().unwrap_or("?"),
            format!("{}/{}", r.protos.join("+"), r.ports.join(",")),
            r.egress.packets,
            r.ingress.packets,
            if r.addresses.is_empty() {
                "-".to_string()
            } else {
                r.addresses.join(" ")
            },
            if r.active {
                ""
            } else {
                "  (not in the live policy)"
            }
        );
    }
    if s.rules.is_empty() && s.rules_page.as_ref().is_some_and(|p| p.total > 0) {
        let _ = writeln!(o, "  no rule matches");
    }
    page_rest(o, s.rules_page.as_ref(), s.rules.len(), "/api/rules");
}

fn denied(o: &mut String, s: &Status) {
    let _ = writeln!(o, "\nDENIED (packets)");
    for d in s.denied.iter().filter(|d| d.packets > 0) {
        let _ = writeln!(
            o,
            "  {:<8} {:<8} {:<17} {:>12}",
            d.mode, d.direction, d.reason, d.packets
        );
    }
    if s.denied.iter().all(|d| d.packets == 0) {
        let _ = writeln!(o, "  none");
    }
}

fn dns(o: &mut String, s: &Status) {
    let _ = writeln!(o, "\nDNS{}", page_title(s.dns_page.as_ref(), s.dns.len()));
    for h in &s.dns {
        let addrs: Vec<String> = h.addresses.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            o,
            "  {:<40} {}  failures {}{}",
            h.hostname,
            if addrs.is_empty() {
                "-".into()
            } else {
                addrs.join(" ")
            },
            h.failures,
            h.last_error
                .as_ref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        );
    }
    page_rest(o, s.dns_page.as_ref(), s.dns.len(), "/api/dns");
    if s.dns.is_empty() {
        let none = match &s.dns_page {
            Some(p) if p.total > 0 => "no hostname matches",
            _ => "no state from the agent",
        };
        let _ = writeln!(o, "  {none}");
    }
}
