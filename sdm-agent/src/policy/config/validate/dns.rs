//! `[dns]`.

use std::net::IpAddr;

use toml::Spanned;

use super::super::{
    errors::ConfigError,
    raw::{items, OneOrMany, RawDns},
    values::{format_duration, normalize_hostname},
    DnsConfig, DEFAULT_GRACE, DEFAULT_TTL_MAX, DEFAULT_TTL_MIN, MAX_DNS_CONCURRENCY, MAX_MAX_QPS,
};
use super::{Here, Validator};

impl Validator<'_> {
    /// `[dns]`: resolvers, fallback, refresh bounds, queries and search
    /// suffixes, then the bounds checked against each other.
    pub(super) fn dns(&self, d: &RawDns, dns: &mut DnsConfig) -> Result<(), ConfigError> {
        let here = Here::table("dns");
        if let Some(v) = &d.servers {
            self.dns_servers(v, &here, &mut dns.servers)?;
        }
        if let Some(v) = &d.fallback {
            dns.fallback = self.dns_fallback(v, &here)?;
        }
        dns.ttl_min = self.duration(d.ttl_min.as_ref(), DEFAULT_TTL_MIN, &here, "ttl_min")?;
        dns.ttl_max = self.duration(d.ttl_max.as_ref(), DEFAULT_TTL_MAX, &here, "ttl_max")?;
        dns.grace = self.duration(d.grace.as_ref(), DEFAULT_GRACE, &here, "grace")?;
        if let Some(v) = &d.max_qps {
            dns.max_qps = self.bounded(v, 1, MAX_MAX_QPS, &here, "max_qps")?;
        }
        if let Some(v) = &d.concurrency {
            dns.concurrency = self.bounded(v, 1, MAX_DNS_CONCURRENCY, &here, "concurrency")?;
        }
        if let Some(v) = &d.queries {
            dns.queries = self.named(v, &here, "queries")?;
        }
        if let Some(v) = &d.search {
            self.dns_search(v, &here, &mut dns.search)?;
        }
        self.check_ttls(d, dns, &here)
    }

    fn dns_servers(
        &self,
        v: &Spanned<OneOrMany>,
        here: &Here,
        servers: &mut Vec<IpAddr>,
    ) -> Result<(), ConfigError> {
        for (s, span) in items(v) {
            let ip: IpAddr = s.parse().map_err(|_| {
                self.err(span, here, "servers", format!("invalid IP address {s:?}"))
            })?;
            if !servers.contains(&ip) {
                servers.push(ip);
            }
        }
        Ok(())
    }

    /// `""` or `"none"` disables the fallback.
    fn dns_fallback(
        &self,
        v: &Spanned<String>,
        here: &Here,
    ) -> Result<Option<IpAddr>, ConfigError> {
        let s = v.get_ref();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        Ok(Some(s.parse().map_err(|_| {
            self.err(
                v.span(),
                here,
                "fallback",
                format!("invalid IP address {s:?} (\"\" or \"none\" disables the fallback)"),
            )
        })?))
    }

    fn dns_search(
        &self,
        v: &Spanned<OneOrMany>,
        here: &Here,
        search: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        for (s, span) in items(v) {
            // A suffix lets every name under it be queried: as wide
            // as the wildcard `*.suffix`, and refused as it is.
            let wildcard = format!("*.{}", s.trim_start_matches('.'));
            let name = normalize_hostname(&wildcard, true)
                .map_err(|e| self.err(span, here, "search", e))?;
            let suffix = name.trim_start_matches("*.").to_string();
            if !search.contains(&suffix) {
                search.push(suffix);
            }
        }
        Ok(())
    }

    /// A whole number in `[min, max]`.
    fn bounded(
        &self,
        v: &Spanned<i64>,
        min: u32,
        max: u32,
        here: &Here,
        key: &str,
    ) -> Result<u32, ConfigError> {
        let n = *v.get_ref();
        u32::try_from(n)
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                self.err(
                    v.span(),
                    here,
                    key,
                    format!("{n} is out of range: from {min} to {max}"),
                )
            })
    }

    /// `ttl_min` above zero and not above `ttl_max`.
    fn check_ttls(&self, d: &RawDns, dns: &DnsConfig, here: &Here) -> Result<(), ConfigError> {
        if dns.ttl_min.is_zero() {
            let span = d.ttl_min.as_ref().map_or(0..0, |v| v.span());
            return Err(self.err(span, here, "ttl_min", "must be greater than zero"));
        }
        if dns.ttl_min > dns.ttl_max {
            let (key, span) = match (&d.ttl_max, &d.ttl_min) {
                (Some(v), _) => ("ttl_max", v.span()),
                (None, Some(v)) => ("ttl_min", v.span()),
                (None, None) => ("ttl_max", 0..0),
            };
            return Err(self.err(
                span,
                here,
                key,
                format!(
                    "ttl_min ({}) is greater than ttl_max ({})",
                    format_duration(dns.ttl_min),
                    format_duration(dns.ttl_max)
                ),
            ));
        }
        Ok(())
    }
}
