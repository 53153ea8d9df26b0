//! Runs a command (`ip`, `nft`, ...) and returns its standard output.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
    thread,
};

use crate::{must, Error, Result};

/// Runs `args[0]` with the rest as arguments (standard input empty); its
/// standard output, or an error with both outputs when it fails.
pub fn try_sh(args: &[&str]) -> Result<String> {
    let out = command(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| spawn_error(args, source))?;
    checked(args, out)
}

/// Like [`try_sh`], feeding `input` on standard input.
pub fn try_sh_input(args: &[&str], input: &str) -> Result<String> {
    let mut child = command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| spawn_error(args, source))?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let text = input.to_owned();
    // Written from a thread: a command that answers before it has read all
    // its input would otherwise block both sides on full pipes.
    let writer = thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|source| spawn_error(args, source))?;
    let _ = writer.join();
    checked(args, out)
}

/// [`try_sh`] for a test: panics with the command's output when it fails.
pub fn sh(args: &[&str]) -> String {
    must(try_sh(args))
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(args[0]);
    c.args(&args[1..]);
    c
}

fn spawn_error(args: &[&str], source: std::io::Error) -> Error {
    Error::Spawn {
        command: args.join(" "),
        source,
    }
}

fn checked(args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        return Err(Error::Failed {
            command: args.join(" "),
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
