//! The nightly toolchain with rust-src: aya-build compiles the eBPF crate
//! with `rustup run nightly cargo build -Z build-std=core`, and build-std
//! needs the standard library's source.

use anyhow::Result;

use crate::context::{output, Ctx};

/// The toolchain aya-build uses for the eBPF crate (its default).
pub const NIGHTLY: &str = "nightly";

/// Makes sure the nightly toolchain and its rust-src are installed.
/// Returns whether the toolchain is there to query afterwards (it is not
/// in a dry run that would have had to install it).
pub fn ensure_nightly(ctx: &Ctx) -> Result<bool> {
    if !nightly_installed(ctx)? {
        println!("xtask: installing the {NIGHTLY} toolchain with rust-src (about 1 min)...");
        ctx.run_or_show(ctx.command("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        return Ok(!ctx.dry_run);
    }
    if has_rust_src(ctx)? {
        println!("xtask: {NIGHTLY} toolchain with rust-src ok");
        return Ok(true);
    }
    println!("xtask: adding rust-src to the {NIGHTLY} toolchain (about 15 s)...");
    ctx.run_or_show(ctx.command("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))?;
    Ok(true)
}

/// Asks rustup's toolchain list rather than running the toolchain, since
/// running a missing one may make rustup install it without rust-src.
fn nightly_installed(ctx: &Ctx) -> Result<bool> {
    let list = output(ctx.command("rustup").args(["toolchain", "list"]))?;
    Ok(list.lines().any(is_plain_nightly))
}

/// Whether a `rustup toolchain list` line is the undated nightly
/// (`nightly-<host>`), not a dated one such as `nightly-2025-01-01-<host>`.
fn is_plain_nightly(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or_default();
    match name.strip_prefix("nightly") {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('-')
            .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit())),
        None => false,
    }
}

fn has_rust_src(ctx: &Ctx) -> Result<bool> {
    let installed = output(ctx.command("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    Ok(installed.lines().any(|line| line.trim() == "rust-src"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_plain_nightly_only() {
        assert!(is_plain_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(is_plain_nightly(
            "nightly-x86_64-unknown-linux-gnu (active)"
        ));
        assert!(!is_plain_nightly(
            "nightly-2025-01-01-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_plain_nightly(
            "stable-x86_64-unknown-linux-gnu (default)"
        ));
        assert!(!is_plain_nightly("1.95.0-x86_64-unknown-linux-gnu"));
        assert!(!is_plain_nightly(""));
    }
}
