//! The package's `control` file: rendered from its template with the
//! version, size and the `Depends` read off the binary (its libraries and
//! the newest glibc symbol it needs), then checked as dpkg would.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{bail, ensure, Context as _, Result};

use crate::context::{self, Ctx};

use super::deb::FILES;

/// Fills the @NAME@ placeholders of deploy/debian/control.
pub(super) fn render_control(template: &str, values: &[(&str, String)]) -> Result<String> {
    let mut text = template.to_owned();
    for (name, value) in values {
        let placeholder = format!("@{name}@");
        ensure!(
            text.contains(&placeholder),
            "deploy/debian/control has no {placeholder}"
        );
        text = text.replace(&placeholder, value);
    }
    // Any @NAME@ left (the Maintainer's e-mail address has an '@' too).
    for (at, _) in text.match_indices('@') {
        let rest = &text[at + 1..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(rest.len());
        if name_len > 0 && rest[name_len..].starts_with('@') {
            bail!(
                "deploy/debian/control: nothing fills @{}@",
                &rest[..name_len]
            );
        }
    }
    Ok(text)
}

/// Checks a binary package's control file the way dpkg-deb reads it (one
/// stanza of `Field: value` lines and space-led continuation lines), with
/// the fields dpkg needs and values it accepts.
pub(super) fn check_control(control: &str) -> Result<()> {
    ensure!(control.ends_with('\n'), "control: must end with a newline");
    let mut fields: BTreeMap<&str, String> = BTreeMap::new();
    let mut last: Option<&str> = None;
    for (i, line) in control.lines().enumerate() {
        let n = i + 1;
        ensure!(
            !line.trim().is_empty(),
            "control: line {n} is blank (one stanza only)"
        );
        if line.starts_with(' ') || line.starts_with('\t') {
            let field = last.with_context(|| format!("control: line {n} continues nothing"))?;
            let value = fields.entry(field).or_default();
            value.push('\n');
            value.push_str(line);
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("control: line {n} is not `Field: value`"))?;
        ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "control: line {n}: bad field name {name:?}"
        );
        ensure!(
            fields.insert(name, value.trim().to_owned()).is_none(),
            "control: field {name} appears twice"
        );
        last = Some(name);
    }
    for required in [
        "Package",
        "Version",
        "Architecture",
        "Maintainer",
        "Description",
        "Installed-Size",
        "Depends",
    ] {
        let value = fields.get(required).map(String::as_str).unwrap_or("");
        ensure!(!value.is_empty(), "control: {required} is missing or empty");
    }
    let package = &fields["Package"];
    ensure!(
        package.len() >= 2
            && package.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && package
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c)),
        "control: bad package name {package:?}"
    );
    let version = &fields["Version"];
    ensure!(
        version.starts_with(|c: char| c.is_ascii_digit())
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~".contains(c)),
        "control: bad native version {version:?}"
    );
    ensure!(
        fields["Installed-Size"].parse::<u64>().is_ok(),
        "control: Installed-Size must be a number of KiB"
    );
    let description = &fields["Description"];
    ensure!(
        !description.starts_with('\n') && description.contains('\n'),
        "control: Description needs a synopsis and an extended description"
    );
    Ok(())
}

/// Installed-Size: the staged files in KiB, each rounded up, as
/// dpkg-gencontrol counts them (DEBIAN/ excluded).
pub(super) fn installed_size_kib(stage: &Path) -> Result<u64> {
    let mut kib = 0;
    for entry in FILES {
        let path = stage.join(entry.path.trim_start_matches('/'));
        let len = fs::metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        kib += len.div_ceil(1024);
    }
    Ok(kib)
}

/// The Depends field for `binary`: the Debian packages of the shared
/// libraries it links, with the glibc version its symbols need (what
/// dpkg-shlibdeps would say, without needing dpkg-dev).
pub(super) fn depends_of(ctx: &Ctx, binary: &Path) -> Result<String> {
    let dynamic = context::output(ctx.command("readelf").args(["-d", "-W"]).arg(binary))?;
    let versions = context::output(ctx.command("readelf").args(["-V", "-W"]).arg(binary))?;
    depends(&needed_libraries(&dynamic), max_glibc(&versions).as_deref())
        .with_context(|| format!("cannot work out the dependencies of {}", binary.display()))
}

/// The NEEDED entries of `readelf -d` output.
pub(super) fn needed_libraries(readelf_dynamic: &str) -> Vec<String> {
    readelf_dynamic
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| {
            let start = line.find('[')?;
            let end = line.rfind(']')?;
            Some(line[start + 1..end].to_owned())
        })
        .collect()
}

/// The highest GLIBC_x.y symbol version in `readelf -V` output.
pub(super) fn max_glibc(readelf_versions: &str) -> Option<String> {
    readelf_versions
        .split(|c: char| c.is_whitespace())
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|version| {
            let parts: Option<Vec<u32>> = version.split('.').map(|p| p.parse().ok()).collect();
            parts.map(|parts| (parts, version))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, version)| version.to_owned())
}

/// Maps sonames to Debian packages. Only what a Rust binary links is known;
/// anything else is an error rather than a package that installs and fails.
pub(super) fn depends(needed: &[String], glibc: Option<&str>) -> Result<String> {
    let mut packages = BTreeMap::new();
    for library in needed {
        let package = match library.as_str() {
            "libc.so.6" | "libm.so.6" | "libpthread.so.0" | "libdl.so.2" | "librt.so.1"
            | "libutil.so.1" => "libc6",
            ld if ld.starts_with("ld-linux") => "libc6",
            // The package of libgcc_s.so.1 since gcc 10; it has every
            // GCC_x symbol version a toolchain of today links against.
            "libgcc_s.so.1" => "libgcc-s1",
            other => bail!(
                "it links {other}, whose Debian package xtask does not know: add it to \
                 `depends` in xtask/src/package/control.rs"
            ),
        };
        let version = match (package, glibc) {
            ("libc6", Some(v)) => Some(v.to_owned()),
            _ => None,
        };
        packages.insert(package, version);
    }
    ensure!(
        !packages.is_empty(),
        "it links no shared library (readelf found no NEEDED entry)"
    );
    Ok(packages
        .into_iter()
        .map(|(package, version)| match version {
            Some(v) => format!("{package} (>= {v})"),
            None => package.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", "))
}
