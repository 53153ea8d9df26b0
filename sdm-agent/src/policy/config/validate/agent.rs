//! The agent's own sections: `[http]`, `[state]`, `[audit]`, `[backstop]`,
//! `[metrics]`.

use toml::Spanned;

use super::super::{
    errors::{line_col, ConfigError},
    raw::{items, DurationValue, OneOrMany, RawAudit, RawHttp, RawMetrics, RawState},
    valid_interface_name,
    values::{is_loopback, parse_size},
    AuditConfig, BackstopInterface, HttpConfig, MetricsConfig, StateConfig, DEFAULT_RETENTION,
    MIN_STORE_MAX_BYTES,
};
use super::{Here, Validator};

impl Validator<'_> {
    /// `[http]`: the listen address, the token, and a token required off
    /// loopback.
    pub(super) fn http(&self, h: &RawHttp, http: &mut HttpConfig) -> Result<(), ConfigError> {
        let here = Here::table("http");
        if let Some(v) = &h.listen {
            http.listen = v.get_ref().parse().map_err(|_| {
                self.err(
                    v.span(),
                    &here,
                    "listen",
                    format!(
                        "invalid socket address {:?}, expected e.g. \"127.0.0.1:9850\"",
                        v.get_ref()
                    ),
                )
            })?;
        }
        if let Some(v) = &h.token {
            http.token = Some(self.token(v, &here)?);
        }
        if let Some(v) = &h.listen {
            if http.token.is_none() && !is_loopback(http.listen.ip()) {
                return Err(self.err(
                    v.span(),
                    &here,
                    "listen",
                    format!(
                        "{} is not a loopback address: set [http] token to serve the dashboard and metrics on it",
                        http.listen
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A bearer token: printable ASCII without spaces.
    fn token(&self, v: &Spanned<String>, here: &Here) -> Result<String, ConfigError> {
        let t = v.get_ref();
        if t.is_empty() {
            return Err(self.err(v.span(), here, "token", "empty token"));
        }
        if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(self.err(
                v.span(),
                here,
                "token",
                format!("character {c:?} is not allowed (use printable ASCII without spaces)"),
            ));
        }
        Ok(t.clone())
    }

    /// `[state]`.
    pub(super) fn state(&self, st: &RawState, state: &mut StateConfig) -> Result<(), ConfigError> {
        let here = Here::table("state");
        if let Some(v) = &st.dir {
            state.dir = self.absolute(v, &here, "dir")?;
        }
        state.retention =
            self.duration(st.retention.as_ref(), DEFAULT_RETENTION, &here, "retention")?;
        if state.retention.is_zero() {
            let span = st.retention.as_ref().map_or(0..0, |v| v.span());
            return Err(self.err(span, &here, "retention", "must be greater than zero"));
        }
        if let Some(v) = &st.max_bytes {
            state.max_bytes = self.max_bytes(v, &here)?;
        }
        Ok(())
    }

    /// `[state] max_bytes`: a number or a string, read like a duration's
    /// value; at least [`MIN_STORE_MAX_BYTES`].
    fn max_bytes(&self, v: &Spanned<DurationValue>, here: &Here) -> Result<u64, ConfigError> {
        let n = match v.get_ref() {
            DurationValue::Seconds(n) => {
                u64::try_from(*n).map_err(|_| format!("negative size {n}"))
            }
            DurationValue::Text(t) => parse_size(t),
        }
        .map_err(|m| self.err(v.span(), here, "max_bytes", m))?;
        if n < MIN_STORE_MAX_BYTES {
            return Err(self.err(
                v.span(),
                here,
                "max_bytes",
                format!("{n} bytes is too small: at least 1MiB ({MIN_STORE_MAX_BYTES})"),
            ));
        }
        Ok(n)
    }

    /// `[audit]`.
    pub(super) fn audit(&self, a: &RawAudit, audit: &mut AuditConfig) -> Result<(), ConfigError> {
        if let Some(v) = &a.log {
            audit.log = Some(self.absolute(v, &Here::table("audit"), "log")?);
        }
        Ok(())
    }

    /// `[backstop] interfaces` or `[xdp] interfaces` (`table`): valid
    /// names, each listed once.
    pub(super) fn interfaces(
        &self,
        table: &str,
        v: &Spanned<OneOrMany>,
    ) -> Result<Vec<BackstopInterface>, ConfigError> {
        let here = Here::table(table);
        let mut out: Vec<BackstopInterface> = Vec::new();
        for (name, span) in items(v) {
            valid_interface_name(name)
                .map_err(|m| self.err(span.clone(), &here, "interfaces", m))?;
            if out.iter().any(|i| i.name == name) {
                return Err(self.err(
                    span,
                    &here,
                    "interfaces",
                    format!("{name:?} is listed twice"),
                ));
            }
            let (line, _) = line_col(self.src, span.start);
            out.push(BackstopInterface {
                name: name.to_owned(),
                line,
            });
        }
        Ok(out)
    }

    /// `[metrics]`: a boolean, which the file's types already checked
    /// (a string there is an error at its line).
    pub(super) fn metrics(m: &RawMetrics) -> MetricsConfig {
        MetricsConfig {
            per_resource: m.per_resource.unwrap_or(false),
        }
    }
}
