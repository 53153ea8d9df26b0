//! Where things are (workspace, cargo's bin folder, PATH) and how xtask runs
//! child commands, so that every failure names the command and its status.

use std::{
    env,
    ffi::{OsStr, OsString},
    iter,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{bail, Context as _, Result};

/// What every task needs to know about the machine it runs on.
pub struct Ctx {
    /// The workspace root, where cargo commands run.
    pub root: PathBuf,
    /// `$CARGO_HOME`, where `cargo install` puts bpf-linker (under `bin/`).
    pub cargo_home: PathBuf,
    /// PATH for children, with `$CARGO_HOME/bin` on it: rustc finds
    /// bpf-linker and aya-build finds rustup through PATH alone.
    path: OsString,
    /// Print the commands that would change the machine instead of running them.
    pub dry_run: bool,
}

impl Ctx {
    pub fn new(dry_run: bool) -> Result<Self> {
        let cargo_home = cargo_home()?;
        let path = path_with(&cargo_home.join("bin"));
        Ok(Self {
            root: workspace_root()?,
            cargo_home,
            path,
            dry_run,
        })
    }

    /// A command that sees xtask's PATH and otherwise inherits the environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("PATH", &self.path);
        cmd
    }

    /// `cargo <args>` run from the workspace root.
    pub fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command("cargo");
        cmd.args(args).current_dir(&self.root);
        cmd
    }

    /// Where `cargo build` puts its output, honouring CARGO_TARGET_DIR
    /// (which cargo reads relative to its working directory, the root).
    pub fn target_dir(&self) -> PathBuf {
        match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => self.root.join(dir),
            _ => self.root.join("target"),
        }
    }

    /// The first executable called `name` on xtask's PATH, like `command -v`.
    pub fn find_program(&self, name: &str) -> Option<PathBuf> {
        env::split_paths(&self.path)
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    }

    /// Runs `cmd`, or in a dry run only prints it.
    pub fn run_or_show(&self, cmd: &mut Command) -> Result<()> {
        if self.dry_run {
            println!("xtask: [dry run] would run: {}", describe(cmd));
            return Ok(());
        }
        run(cmd)
    }
}

/// Runs `cmd` with inherited stdio; an error unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio and returns its exit status, whatever it is.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("could not start `{}`", describe(cmd)))
}

/// Runs `cmd` and returns its stdout; an error (with its stderr) unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{}` printed output that is not UTF-8", describe(cmd)))
}

/// A shell-like rendering of `cmd` for messages: the variables it sets
/// (but PATH, which every command gets), the program and its arguments.
pub fn describe(cmd: &Command) -> String {
    let vars = cmd
        .get_envs()
        .filter(|(key, _)| *key != "PATH")
        .filter_map(|(key, value)| {
            value.map(|value| format!("{}={}", key.to_string_lossy(), quote(value)))
        });
    let words = iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote);
    vars.chain(words).collect::<Vec<_>>().join(" ")
}

/// Quotes `word` for a shell when it would otherwise be split or expanded.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `$HOME`, which the lasting LLVM link folder and the default CARGO_HOME hang off.
pub fn home_dir() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set; xtask needs it to find ~/.cargo and ~/.local/share")
}

/// `$CARGO_HOME`, or cargo's default `~/.cargo`.
fn cargo_home() -> Result<PathBuf> {
    match env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home)),
        _ => Ok(home_dir()?.join(".cargo")),
    }
}

/// The workspace root: xtask lives in `<root>/xtask`.
fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest folder has no parent folder")
}

/// The current PATH with `dir` prepended unless it is already on it: a fresh
/// shell may not have sourced rustup's env file, yet `cargo install` puts
/// bpf-linker there and rustc looks it up on PATH.
fn path_with(dir: &Path) -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = env::split_paths(&current)
        .filter(|entry| !entry.as_os_str().is_empty())
        .collect();
    if dirs.iter().any(|entry| entry == dir) {
        return current;
    }
    // join_paths only fails on a ':' inside an entry; such a cargo home
    // could not be put on any PATH, so keep PATH as it is.
    env::join_paths(iter::once(dir.to_path_buf()).chain(dirs)).unwrap_or(current)
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_shows_vars_and_quotes_odd_words() {
        let mut cmd = Command::new("cargo");
        cmd.args(["install", "bpf-linker", "a b", ""])
            .env("LLVM_PREFIX", "/x/llvm-22")
            .env("PATH", "/ignored");
        assert_eq!(
            describe(&cmd),
            "LLVM_PREFIX=/x/llvm-22 cargo install bpf-linker 'a b' ''"
        );
    }

    #[test]
    fn quote_escapes_single_quotes() {
        assert_eq!(quote(OsStr::new("it's")), r"'it'\''s'");
    }
}
