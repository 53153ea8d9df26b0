//! bpf-linker, built against the nightly toolchain's own libLLVM.
//!
//! These machines have no LLVM development package, but every nightly
//! toolchain ships `lib/libLLVM.so.<MAJOR>.<MINOR>-rust-<version>-nightly`.
//! bpf-linker's build script links `$LLVM_PREFIX/lib/libLLVM.so` and bakes
//! `$LLVM_PREFIX/lib` into the binary's RUNPATH, so the prefix must be a
//! lasting folder (not the build's temp dir) holding two links to that
//! library: `libLLVM.so` for the link step, and the library's soname for the
//! loader each time bpf-linker starts. Linking with the same LLVM as rustc
//! also means bpf-linker reads the bitcode that rustc writes.

use std::{
    ffi::{OsStr, OsString},
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    context::{home_dir, output, Ctx},
    toolchain::NIGHTLY,
};

/// The file name prefix of the nightly's LLVM library (followed by its version).
const LLVM_LIB_PREFIX: &str = "libLLVM.so.";
/// The name bpf-linker's build script links against.
const LLVM_LINK_NAME: &str = "libLLVM.so";

/// The nightly toolchain's LLVM library.
struct NightlyLlvm {
    /// Full path of the library inside the toolchain's sysroot.
    library: PathBuf,
    /// Its file name, which is also its soname.
    file_name: OsString,
    /// LLVM's major version, which picks bpf-linker's `llvm-<MAJOR>` feature.
    major: u32,
}

/// Makes sure a working bpf-linker for the nightly's LLVM is in `$CARGO_HOME/bin`.
pub fn ensure(ctx: &Ctx) -> Result<()> {
    let llvm = nightly_llvm(ctx)?;
    let prefix = ensure_llvm_prefix(ctx, &llvm)?;
    ensure_linker(ctx, &llvm, &prefix)
}

/// Finds the LLVM library in `rustc +nightly --print sysroot`/lib.
fn nightly_llvm(ctx: &Ctx) -> Result<NightlyLlvm> {
    // `rustup run` rather than `rustc +nightly`: it works whichever rustc
    // comes first on PATH, and the `+toolchain` syntax needs rustup's proxy.
    let sysroot = output(
        ctx.command("rustup")
            .args(["run", NIGHTLY, "rustc", "--print", "sysroot"]),
    )?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let mut names = Vec::new();
    for entry in
        fs::read_dir(&lib_dir).with_context(|| format!("cannot list {}", lib_dir.display()))?
    {
        let name = entry
            .with_context(|| format!("cannot list {}", lib_dir.display()))?
            .file_name();
        if name.to_string_lossy().starts_with(LLVM_LIB_PREFIX) {
            names.push(name);
        }
    }
    let file_name = match names.as_slice() {
        [one] => one.clone(),
        [] => bail!(
            "no {LLVM_LIB_PREFIX}* in {}: the {NIGHTLY} toolchain does not ship the LLVM \
             library that bpf-linker is built against here",
            lib_dir.display()
        ),
        many => bail!(
            "several {LLVM_LIB_PREFIX}* in {} ({}); cannot tell which one rustc uses",
            lib_dir.display(),
            many.iter()
                .map(|name| name.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let major = llvm_major(&file_name.to_string_lossy())?;
    Ok(NightlyLlvm {
        library: lib_dir.join(&file_name),
        file_name,
        major,
    })
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` -> 22.
fn llvm_major(file_name: &str) -> Result<u32> {
    let version = file_name.strip_prefix(LLVM_LIB_PREFIX).unwrap_or(file_name);
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .with_context(|| format!("cannot read LLVM's major version from {file_name}"))
}

/// The lasting LLVM_PREFIX for `major`; its path ends up in bpf-linker's RUNPATH.
fn llvm_prefix(major: u32) -> Result<PathBuf> {
    Ok(home_dir()?
        .join(".local/share/sdm-egress")
        .join(format!("llvm-{major}")))
}

/// Makes `<prefix>/lib` hold exactly the two links to the nightly's library,
/// fixing links left by an older nightly. Returns the prefix.
fn ensure_llvm_prefix(ctx: &Ctx, llvm: &NightlyLlvm) -> Result<PathBuf> {
    let prefix = llvm_prefix(llvm.major)?;
    let lib = prefix.join("lib");
    let wanted = [OsStr::new(LLVM_LINK_NAME), llvm.file_name.as_os_str()];
    let stale = stale_links(&lib, &wanted)?;
    let wrong: Vec<PathBuf> = wanted
        .iter()
        .map(|name| lib.join(name))
        .filter(|link| !links_to(link, &llvm.library))
        .collect();
    if stale.is_empty() && wrong.is_empty() {
        println!("xtask: LLVM {} links in {} ok", llvm.major, lib.display());
        return Ok(prefix);
    }
    println!(
        "xtask: linking {} into {}",
        llvm.library.display(),
        lib.display()
    );
    if ctx.dry_run {
        for link in &stale {
            println!("xtask: [dry run] would remove {}", link.display());
        }
        for link in &wrong {
            println!(
                "xtask: [dry run] would link {} -> {}",
                link.display(),
                llvm.library.display()
            );
        }
        return Ok(prefix);
    }
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    // A link to an older nightly's library would let a stale bpf-linker
    // start with an LLVM that rustc no longer uses; without it, the
    // version check below fails and bpf-linker is rebuilt.
    for link in &stale {
        fs::remove_file(link).with_context(|| format!("cannot remove {}", link.display()))?;
    }
    for link in &wrong {
        replace_link(link, &llvm.library)?;
    }
    Ok(prefix)
}

/// Links in `lib` to some libLLVM other than the `wanted` names.
fn stale_links(lib: &Path, wanted: &[&OsStr]) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(lib) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("cannot list {}", lib.display())),
    };
    let mut stale = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", lib.display()))?;
        let name = entry.file_name();
        let is_link = entry.file_type().is_ok_and(|kind| kind.is_symlink());
        if is_link
            && name.to_string_lossy().starts_with(LLVM_LINK_NAME)
            && !wanted.contains(&name.as_os_str())
        {
            stale.push(entry.path());
        }
    }
    Ok(stale)
}

fn links_to(link: &Path, target: &Path) -> bool {
    fs::read_link(link).is_ok_and(|points_to| points_to == target)
}

/// Points `link` at `target`, replacing whatever file or link is there.
fn replace_link(link: &Path, target: &Path) -> Result<()> {
    match fs::symlink_metadata(link) {
        Ok(meta) if meta.is_dir() => bail!(
            "{} is a folder; remove it so xtask can link libLLVM there",
            link.display()
        ),
        Ok(_) => {
            fs::remove_file(link).with_context(|| format!("cannot remove {}", link.display()))?
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot inspect {}", link.display())),
    }
    symlink(target, link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))
}

/// Checks that bpf-linker runs, installing or rebuilding it (once) if not.
fn ensure_linker(ctx: &Ctx, llvm: &NightlyLlvm, prefix: &Path) -> Result<()> {
    let linker = ctx.cargo_home.join("bin/bpf-linker");
    let mut problem = match linker_version(ctx, &linker) {
        Ok(version) => return report_ok(ctx, &linker, &version),
        Err(err) => err,
    };
    // A binary that is there but does not start was built for another LLVM
    // (or its link folder went away): only `--force` makes cargo rebuild it.
    let mut force = linker.exists();
    loop {
        if force {
            println!("xtask: {} does not run: {problem:#}", linker.display());
        }
        install_linker(ctx, llvm.major, prefix, force)?;
        if ctx.dry_run {
            return Ok(());
        }
        problem = match linker_version(ctx, &linker) {
            Ok(version) => return report_ok(ctx, &linker, &version),
            Err(err) => err,
        };
        if force {
            return Err(problem).context(format!(
                "bpf-linker was rebuilt for LLVM {} (LLVM_PREFIX={}) but still does not run",
                llvm.major,
                prefix.display()
            ));
        }
        force = true;
    }
}

/// `bpf-linker --version`, run without LD_LIBRARY_PATH: the binary must find
/// libLLVM through its RUNPATH alone, as it will when rustc starts it.
fn linker_version(ctx: &Ctx, linker: &Path) -> Result<String> {
    let version = output(
        ctx.command(linker)
            .arg("--version")
            .env_remove("LD_LIBRARY_PATH"),
    )?;
    Ok(version.trim().to_owned())
}

fn install_linker(ctx: &Ctx, major: u32, prefix: &Path, force: bool) -> Result<()> {
    let verb = if force { "rebuilding" } else { "installing" };
    println!("xtask: {verb} bpf-linker for LLVM {major} (about 40-60 s)...");
    let feature = format!("llvm-{major}");
    let mut cmd = ctx.command("cargo");
    cmd.args(["install", "bpf-linker", "--no-default-features"]);
    cmd.args(["--features", &feature]);
    cmd.env("LLVM_PREFIX", prefix);
    // Outside the workspace, so its .cargo/config.toml cannot change how a
    // crates.io tool is built.
    cmd.current_dir(home_dir()?);
    if force {
        cmd.arg("--force");
    }
    ctx.run_or_show(&mut cmd)
}

fn report_ok(ctx: &Ctx, linker: &Path, version: &str) -> Result<()> {
    println!("xtask: {version} ok");
    // rustc runs the first bpf-linker on PATH, which should be this one.
    if let Some(first) = ctx.find_program("bpf-linker") {
        if first != linker {
            println!(
                "xtask: warning: {} comes before {} on PATH and is the one rustc will use",
                first.display(),
                linker.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_major_version() {
        assert_eq!(
            llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly").ok(),
            Some(22)
        );
        assert_eq!(
            llvm_major("libLLVM.so.19-rust-1.84.0-nightly").ok(),
            Some(19)
        );
        assert!(llvm_major("libLLVM.so.x").is_err());
    }
}
