//! The array entries: `[[resource]]`, `[[secret_store]]` and `[[allow]]`,
//! and the rule names they share.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use crate::policy::{Direction, Proto, Target};

use super::super::{
    errors::{line_col, ConfigError},
    raw::{items, RawAllow, RawConfig, RawResource},
    values::{parse_cidr, parse_target, valid_name},
    AllowConfig, ResourceConfig,
};
use super::{Here, Validator};

impl Validator<'_> {
    /// Rule names are unique across `[[resource]]`, `[[secret_store]]` and
    /// `[[allow]]`; the later of two entries (in file order) is reported.
    pub(super) fn unique_names(&self, raw: &RawConfig) -> Result<(), ConfigError> {
        let mut all_names: Vec<(&Spanned<String>, &'static str)> = Vec::new();
        all_names.extend(
            raw.resource
                .iter()
                .map(|r| (&r.get_ref().name, "[[resource]]")),
        );
        all_names.extend(
            raw.secret_store
                .iter()
                .map(|r| (&r.get_ref().name, "[[secret_store]]")),
        );
        all_names.extend(raw.allow.iter().map(|a| (&a.get_ref().name, "[[allow]]")));
        all_names.sort_by_key(|(n, _)| n.span().start);
        let mut seen: HashMap<&str, (&'static str, usize)> = HashMap::new();
        for (name, kind) in all_names {
            let (line, _) = line_col(self.src, name.span().start);
            if let Some((other, other_line)) = seen.get(name.get_ref().as_str()) {
                return Err(self.err(
                    name.span(),
                    &self.entry_here(kind, name),
                    "name",
                    format!(
                        "duplicate name {:?} (already used by {other} on line {other_line})",
                        name.get_ref()
                    ),
                ));
            }
            seen.insert(name.get_ref(), (kind, line));
        }
        Ok(())
    }

    /// The `[[resource]]` (or `[[secret_store]]`, as `kind` says) entries.
    pub(super) fn resources(
        &self,
        kind: &str,
        list: &[Spanned<RawResource>],
    ) -> Result<Vec<ResourceConfig>, ConfigError> {
        list.iter()
            .map(|r| self.resource(r, &self.entry_here(kind, &r.get_ref().name)))
            .collect()
    }

    /// The `[[allow]]` entries.
    pub(super) fn allows(
        &self,
        list: &[Spanned<RawAllow>],
    ) -> Result<Vec<AllowConfig>, ConfigError> {
        list.iter()
            .map(|a| self.allow(a, &self.entry_here("[[allow]]", &a.get_ref().name)))
            .collect()
    }

    fn resource(
        &self,
        r: &Spanned<RawResource>,
        here: &Here,
    ) -> Result<ResourceConfig, ConfigError> {
        let raw = r.get_ref();
        valid_name(raw.name.get_ref()).map_err(|m| self.err(raw.name.span(), here, "name", m))?;
        let proto = self.proto(raw.proto.as_ref(), &[Proto::Tcp, Proto::Udp], here)?;
        let target = match (&raw.host, &raw.cidr) {
            (Some(h), None) => {
                parse_target(h.get_ref(), false).map_err(|m| self.err(h.span(), here, "host", m))?
            }
            (None, Some(c)) => Target::Cidr(
                parse_cidr(c.get_ref()).map_err(|m| self.err(c.span(), here, "cidr", m))?,
            ),
            (Some(_), Some(c)) => {
                return Err(self.err(
                    c.span(),
                    here,
                    "cidr",
                    "give either `host` or `cidr`, not both",
                ))
            }
            (None, None) => {
                return Err(self.err(
                    r.span(),
                    here,
                    "host",
                    "one of `host` or `cidr` is required",
                ))
            }
        };
        let ports =
            self.port_or_ports(raw.port.as_ref(), raw.ports.as_ref(), proto, here, r.span())?;
        Ok(ResourceConfig {
            name: raw.name.get_ref().clone(),
            target,
            proto,
            ports,
        })
    }

    fn allow(&self, a: &Spanned<RawAllow>, here: &Here) -> Result<AllowConfig, ConfigError> {
        let raw = a.get_ref();
        valid_name(raw.name.get_ref()).map_err(|m| self.err(raw.name.span(), here, "name", m))?;
        let direction = match raw.direction.get_ref().as_str() {
            "egress" => Direction::Egress,
            "ingress" => Direction::Ingress,
            other => {
                return Err(self.err(
                    raw.direction.span(),
                    here,
                    "direction",
                    format!("unknown direction {other:?}, expected one of: egress, ingress"),
                ))
            }
        };
        let proto = self.proto(
            raw.proto.as_ref(),
            &[Proto::Tcp, Proto::Udp, Proto::Icmp],
            here,
        )?;
        let ports =
            self.port_or_ports(raw.port.as_ref(), raw.ports.as_ref(), proto, here, a.span())?;
        let targets = match direction {
            Direction::Egress => self.egress_targets(raw, a.span(), here)?,
            Direction::Ingress => self.ingress_targets(raw, a.span(), here)?,
        };
        Ok(AllowConfig {
            name: raw.name.get_ref().clone(),
            direction,
            proto,
            ports,
            targets,
        })
    }

    /// An egress rule's `to`: hosts or CIDRs, at least one; no `from`.
    fn egress_targets(
        &self,
        raw: &RawAllow,
        table_span: Range<usize>,
        here: &Here,
    ) -> Result<Vec<Target>, ConfigError> {
        if let Some(f) = &raw.from {
            return Err(self.err(
                f.span(),
                here,
                "from",
                "an egress rule takes `to`, not `from`",
            ));
        }
        let Some(to) = &raw.to else {
            return Err(self.err(
                table_span,
                here,
                "to",
                "an egress rule needs `to` (hosts or CIDRs)",
            ));
        };
        let mut out = Vec::new();
        for (s, span) in items(to) {
            let t = parse_target(s, true).map_err(|m| self.err(span, here, "to", m))?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        if out.is_empty() {
            return Err(self.err(to.span(), here, "to", "empty list"));
        }
        Ok(out)
    }

    /// An ingress rule's `from`: CIDRs, at least one; no `to`.
    fn ingress_targets(
        &self,
        raw: &RawAllow,
        table_span: Range<usize>,
        here: &Here,
    ) -> Result<Vec<Target>, ConfigError> {
        if let Some(t) = &raw.to {
            return Err(self.err(
                t.span(),
                here,
                "to",
                "an ingress rule takes `from`, not `to`",
            ));
        }
        let Some(from) = &raw.from else {
            return Err(self.err(
                table_span,
                here,
                "from",
                "an ingress rule needs `from` (CIDRs)",
            ));
        };
        let nets = self.cidrs(from, here, "from")?;
        if nets.is_empty() {
            return Err(self.err(from.span(), here, "from", "empty list"));
        }
        Ok(nets.into_iter().map(Target::Cidr).collect())
    }
}
