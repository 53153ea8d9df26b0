//! Config errors, each naming the file, the line and the key.

use std::path::{Path, PathBuf};

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: {op}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A syntax error, a type error, an unknown or missing key, or a value
    /// that failed validation.
    #[error("{}", render_invalid(path, *line, *column, section.as_deref(), key.as_deref(), message))]
    Invalid {
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// 1-based, in characters; given for TOML (syntax and type) errors.
        column: Option<usize>,
        /// E.g. `[dns]` or `[[resource]] "prod-db"`; `None` at top level.
        section: Option<String>,
        /// The key the error is about, where known.
        key: Option<String>,
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error points to.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { line, .. } => Some(*line),
        }
    }

    /// The key the error is about, where known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { key, .. } => key.as_deref(),
        }
    }
}

pub(super) fn render_invalid(
    path: &Path,
    line: usize,
    column: Option<usize>,
    section: Option<&str>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut out = format!("config {}: line {line}", path.display());
    if let Some(c) = column {
        out.push_str(&format!(", column {c}"));
    }
    out.push_str(": ");
    let mut ctx = Vec::new();
    if let Some(s) = section {
        ctx.push(s.to_string());
    }
    if let Some(k) = key {
        ctx.push(format!("key `{k}`"));
    }
    if !ctx.is_empty() {
        out.push_str(&ctx.join(" "));
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The table header (`[dns]`, `[[resource]]`) in force at a line, and the
/// key of the `key = value` line at or above it, found from the text. Only
/// used to make TOML's own messages say which key they are about.
pub(super) fn locate(src: &str, line: usize) -> (Option<String>, Option<String>) {
    let lines: Vec<&str> = src.lines().collect();
    let mut key = None;
    let mut section = None;
    let mut looking_for_key = true;
    for i in (0..line.min(lines.len())).rev() {
        let l = lines[i].trim_start();
        if l.starts_with('[') {
            let end = l.find(']').map_or(l.len(), |e| {
                if l[e..].starts_with("]]") {
                    e + 2
                } else {
                    e + 1
                }
            });
            section = Some(l[..end].to_string());
            break;
        }
        if looking_for_key {
            if let Some((k, _)) = l.split_once('=') {
                let k = k.trim();
                let bare = k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c));
                if !k.is_empty() && bare {
                    key = Some(k.replace(['"', '\''], ""));
                    looking_for_key = false;
                }
            }
        }
    }
    (section, key)
}

pub(super) fn syntax_error(src: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let mut message = e
        .message()
        .trim_end()
        .replace("expected i64", "expected an integer");
    let (line, column) = match e.span() {
        Some(span) => line_col(src, span.start),
        None => (1, 1),
    };
    let (section, key) = if e.span().is_some() {
        locate(src, line)
    } else {
        (None, None)
    };
    // "unknown field `x`" already names its key.
    let key = key.filter(|k| !message.contains(&format!("`{k}`")));
    if let Some(table) = section
        .as_deref()
        .and_then(|s| s.strip_prefix('['))
        .and_then(|s| s.strip_suffix(']'))
        .filter(|t| ["resource", "secret_store", "allow"].contains(t))
    {
        if message.contains("expected a sequence") {
            message.push_str(&format!(" (write [[{table}]], with double brackets)"));
        }
    }
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        column: Some(column),
        section,
        key,
        message,
    }
}
