//! Value parsers (durations, sizes, hostnames, CIDRs, ports, names),
//! public where useful elsewhere.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serializer;

use crate::policy::{PortRange, Proto, Target};

use super::MAX_NAME_LEN;

/// Parses a size: bytes (`"1048576"`), or a number with `KiB`, `MiB`,
/// `GiB` (or `K`, `M`, `G`, `KB`, `MB`, `GB`: taken as powers of 1024 too,
/// so no unit means less than it seems).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size {s:?}: expected bytes or e.g. \"512KiB\", \"64MiB\", \"1GiB\"");
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let shift = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Parses a duration: `"500ms"`, `"30s"`, `"10m"`, `"1h"`, `"2d"`,
/// compounds such as `"1h30m"`, or a plain number of seconds (`"30"`).
/// `"us"` and `"ns"` are read too, so [`format_duration`] round-trips.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {s:?}: expected e.g. \"500ms\", \"30s\", \"10m\", \"1h\" or seconds"
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    // Nothing in a config means more than a century; the bound also keeps
    // every duration printable in milliseconds (`format_duration`) and
    // readable back.
    const MAX: Duration = Duration::from_secs(100 * 365 * 86_400);
    let too_long = || format!("duration {s:?} is too long (at most 100 years)");
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| too_long())?;
        let d = Duration::from_secs(secs);
        return if d > MAX { Err(too_long()) } else { Ok(d) };
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ns" => Some(Duration::from_nanos(n)),
            "us" => Some(Duration::from_micros(n)),
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86400).map(Duration::from_secs),
            _ => return Err(bad()),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .filter(|t| *t <= MAX)
            .ok_or_else(too_long)?;
    }
    Ok(total)
}

/// The shortest exact rendering of a duration in the units
/// [`parse_duration`] reads: "7d", "1h", "10m", "30s", "500ms".
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}ns", d.as_nanos());
    }
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    if s != 0 && s.is_multiple_of(86400) {
        format!("{}d", s / 86400)
    } else if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

pub(super) fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Validates and normalises a DNS name: lower-cased, one trailing dot
/// removed, labels of 1 to 63 characters of `[a-z0-9_-]` not starting or
/// ending with `-`, at most 253 characters in all, and a last label that is
/// not all digits (so a mistyped address is not taken for a name). With
/// `allow_wildcard`, a leading `*.` label is accepted.
pub fn normalize_hostname(s: &str, allow_wildcard: bool) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let invalid = |why: &str| format!("invalid hostname {s:?}: {why}");
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    let body = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        Some(_) => return Err(invalid("a wildcard is not allowed here")),
        None => name,
    };
    let labels: Vec<&str> = body.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(invalid("empty label"));
        }
        if label.len() > 63 {
            return Err(invalid("a label is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(invalid(&format!("character {c:?} is not allowed")));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label starts or ends with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid(
            "not a name (all-numeric last label) nor an IP address",
        ));
    }
    if name.starts_with("*.") && is_public_suffix(body) {
        // `*.com` would allow every registrable domain under `.com`: any
        // attacker can register one and point it anywhere.
        return Err(invalid(&format!(
            "the wildcard covers every domain under the public suffix {body:?} \
             (Public Suffix List); name a domain below a registrable one, e.g. *.example.{body}"
        )));
    }
    Ok(name.to_string())
}

/// Whether `name` (lower-case, validated) is itself a public suffix by the
/// Public Suffix List (ICANN and private sections, e.g. `com`, `co.uk`,
/// `s3.amazonaws.com`), or a single label, which the list's default rule
/// makes one (`internal`, `corp`: a whole top-level domain).
pub(super) fn is_public_suffix(name: &str) -> bool {
    !name.contains('.')
        || psl::suffix(name.as_bytes()).is_some_and(|s| s.as_bytes() == name.as_bytes())
}

/// A CIDR (`10.0.0.0/8`) or a single address (a `/32` or `/128`). Host
/// bits are cleared (`10.0.0.1/8` is `10.0.0.0/8`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        s.parse::<IpNet>()
            .map(|n| n.trunc())
            .map_err(|e| format!("invalid CIDR {s:?}: {e}"))
    } else {
        s.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|e| format!("invalid CIDR {s:?}: {e}"))
    }
}

/// A host as written in `host` or an egress `to`: an address, a CIDR (only
/// when `cidr_ok`), or a name (a `*.` wildcard allowed).
pub(super) fn parse_target(s: &str, cidr_ok: bool) -> Result<Target, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Target::Cidr(IpNet::from(ip)));
    }
    if s.contains('/') {
        if cidr_ok {
            return parse_cidr(s).map(Target::Cidr);
        }
        return Err(format!("{s:?} is a CIDR: use the `cidr` key"));
    }
    normalize_hostname(s, true).map(Target::Host)
}

/// Lowest and highest port (or ICMP type) for a protocol.
pub(super) fn port_bounds(proto: Proto) -> (u32, u32) {
    match proto {
        Proto::Icmp => (0, 255),
        Proto::Tcp | Proto::Udp => (1, 65535),
    }
}

pub(super) fn check_port(n: i64, proto: Proto) -> Result<u16, String> {
    let (lo, hi) = port_bounds(proto);
    let what = if proto == Proto::Icmp {
        "ICMP type"
    } else {
        "port"
    };
    match u32::try_from(n) {
        Ok(v) if v >= lo && v <= hi => {
            u16::try_from(v).map_err(|_| format!("{what} {n} is out of range"))
        }
        _ => Err(format!("{what} {n} is out of range {lo}-{hi}")),
    }
}

pub(super) fn parse_port_number(s: &str, proto: Proto) -> Result<u16, String> {
    let what = if proto == Proto::Icmp {
        "ICMP type"
    } else {
        "port"
    };
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid {what} {s:?}"));
    }
    let n: i64 = s.parse().unwrap_or(i64::MAX);
    check_port(n, proto)
}

/// Parses `"80"`, `"8000-8100"` or `"80,443,8000-8100"` into sorted,
/// merged ranges. For ICMP the values are types (0-255).
pub fn parse_port_spec(s: &str, proto: Proto) -> Result<Vec<PortRange>, String> {
    let mut out = Vec::new();
    for item in s.split(',') {
        out.push(parse_port_item(item.trim(), proto)?);
    }
    Ok(normalize_ports(out))
}

pub(super) fn parse_port_item(item: &str, proto: Proto) -> Result<PortRange, String> {
    if item.is_empty() {
        return Err("empty item in port list".to_string());
    }
    match item.split_once('-') {
        Some((a, b)) => {
            let lo = parse_port_number(a.trim(), proto)?;
            let hi = parse_port_number(b.trim(), proto)?;
            if lo > hi {
                return Err(format!("port range {item:?}: {lo} is greater than {hi}"));
            }
            Ok(PortRange { lo, hi })
        }
        None => Ok(PortRange::single(parse_port_number(item, proto)?)),
    }
}

/// Sorts ranges and merges the overlapping and adjacent ones.
pub fn normalize_ports(mut ports: Vec<PortRange>) -> Vec<PortRange> {
    ports.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(ports.len());
    for p in ports {
        match out.last_mut() {
            Some(last) if u32::from(p.lo) <= u32::from(last.hi) + 1 => {
                last.hi = last.hi.max(p.hi);
            }
            _ => out.push(p),
        }
    }
    out
}

/// Whether an address only reaches this host (127.0.0.0/8, ::1, and
/// IPv4-mapped loopback).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Checks a `[[resource]]`, `[[secret_store]]` or `[[allow]]` name.
pub fn valid_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !rest_ok {
        return Err(format!(
            "invalid name {s:?}: must match [a-z0-9][a-z0-9._-]*"
        ));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "name {s:?} is longer than {MAX_NAME_LEN} characters"
        ));
    }
    Ok(())
}
