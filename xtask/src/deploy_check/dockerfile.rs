//! The image's Dockerfile and `.dockerignore`: hadolint (a broken copy must
//! fail), and what hadolint does not know: the final stage copies the agent
//! from an earlier stage and runs as a numeric non-root UID, and
//! `.dockerignore` keeps what the build needs.

use std::{fs, path::Path, process::Command};

use anyhow::{ensure, Context as _, Result};

use crate::context::{describe, Ctx};

use super::tools::{Tools, Validation};
use super::{BUILD_INPUTS, DOCKERFILE, DOCKERIGNORE};

/// hadolint, its control, and the image's own invariants.
pub(super) fn check_dockerfile(ctx: &Ctx, tools: &Tools, out: &Path) -> Result<()> {
    let path = ctx.root.join(DOCKERFILE);
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let lint = hadolint(tools, &path)?;
    ensure!(
        lint.success,
        "hadolint finds fault with {}:\n{}",
        path.display(),
        lint.output.trim()
    );
    let broken = break_dockerfile(&text).context("nothing to break in the Dockerfile")?;
    let broken_path = out.join("Dockerfile-broken");
    fs::write(&broken_path, broken)?;
    ensure!(
        !hadolint(tools, &broken_path)?.success,
        "hadolint accepted {} (FROM ...:latest, USER root): it proves nothing",
        broken_path.display()
    );
    let problems = image_problems(&text);
    ensure!(
        problems.is_empty(),
        "{}: {}",
        path.display(),
        problems.join("; ")
    );
    let ignore_path = ctx.root.join(DOCKERIGNORE);
    let ignore = fs::read_to_string(&ignore_path)
        .with_context(|| format!("cannot read {}", ignore_path.display()))?;
    let problems = dockerignore_problems(&ignore);
    ensure!(
        problems.is_empty(),
        "{}: {}",
        ignore_path.display(),
        problems.join("; ")
    );
    println!(
        "xtask: {} passes hadolint and the image checks",
        path.display()
    );
    Ok(())
}

pub(super) fn hadolint(tools: &Tools, file: &Path) -> Result<Validation> {
    let mut cmd = Command::new(&tools.hadolint);
    cmd.arg("--no-color").arg(file);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    Ok(Validation {
        success: out.status.success(),
        output: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// The Dockerfile with its last FROM on `:latest` and its last USER root.
pub(super) fn break_dockerfile(text: &str) -> Option<String> {
    let instructions = instructions(text);
    let from = instructions.iter().rev().find(|i| i.keyword == "FROM")?;
    let user = instructions.iter().rev().find(|i| i.keyword == "USER")?;
    let image = from.args.split_whitespace().next()?;
    let repo = image.split([':', '@']).next()?;
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[from.line] = lines[from.line].replacen(image, &format!("{repo}:latest"), 1);
    lines[user.line] = "USER root".into();
    Some(lines.join("\n") + "\n")
}

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug)]
pub(super) struct Instruction {
    /// Upper-cased.
    pub(super) keyword: String,
    pub(super) args: String,
    /// Index of its first line.
    pub(super) line: usize,
}

pub(super) fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<Instruction> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if current.is_none() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        // Comment lines inside a continued instruction are dropped by Docker.
        if current.is_some() && line.starts_with('#') {
            continue;
        }
        let (body, continued) = match line.strip_suffix('\\') {
            Some(body) => (body.trim_end(), true),
            None => (line, false),
        };
        match current.as_mut() {
            Some(instruction) => {
                instruction.args.push(' ');
                instruction.args.push_str(body);
            }
            None => {
                let (keyword, args) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
                current = Some(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.trim().to_owned(),
                    line: index,
                });
            }
        }
        if !continued {
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
}

/// What hadolint does not check about this image: the final stage must copy
/// the agent from an earlier stage and end on a numeric non-root USER
/// (numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd).
pub(super) fn image_problems(text: &str) -> Vec<String> {
    let instructions = instructions(text);
    let mut stages: Vec<String> = Vec::new();
    let mut final_stage: Vec<&Instruction> = Vec::new();
    for instruction in &instructions {
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [.., as_word, name] if as_word.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            stages.push(name);
            final_stage.clear();
        } else {
            final_stage.push(instruction);
        }
    }
    let mut problems = Vec::new();
    if stages.len() < 2 {
        problems.push("not a multi-stage build (a build stage, then the runtime stage)".into());
    }
    let earlier = &stages[..stages.len().saturating_sub(1)];
    let copies_build = final_stage.iter().any(|i| {
        i.keyword == "COPY"
            && i.args.split_whitespace().any(|arg| {
                arg.strip_prefix("--from=")
                    .is_some_and(|from| earlier.iter().any(|stage| stage == from))
            })
    });
    if !copies_build {
        problems.push("the final stage copies nothing from an earlier, named stage".into());
    }
    match final_stage.iter().rev().find(|i| i.keyword == "USER") {
        None => problems.push("the final stage sets no USER, so the image runs as root".into()),
        Some(user) => {
            let uid = user.args.split(':').next().unwrap_or_default();
            if !matches!(uid.parse::<u32>(), Ok(uid) if uid != 0) {
                problems.push(format!(
                    "the final USER is {:?}: it must be a numeric UID other than 0",
                    user.args
                ));
            }
        }
    }
    problems
}

/// Build inputs `.dockerignore` would leave out, and a missing `target/`
/// exclusion (the context would carry gigabytes of build output).
pub(super) fn dockerignore_problems(ignore: &str) -> Vec<String> {
    let mut problems: Vec<String> = BUILD_INPUTS
        .iter()
        .filter(|input| is_ignored(ignore, input))
        .map(|input| format!("{input} is left out of the build context"))
        .collect();
    if !is_ignored(ignore, "target/release/sdm-agent") {
        problems.push("target/ is not left out of the build context".into());
    }
    problems
}

/// Whether `.dockerignore` leaves `path` out: the last matching pattern
/// decides (`!` re-includes), and a pattern matching a parent folder
/// matches everything under it, as Docker does.
pub(super) fn is_ignored(ignore: &str, path: &str) -> bool {
    let mut ignored = false;
    for line in ignore.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (include, pattern) = match line.strip_prefix('!') {
            Some(pattern) => (true, pattern),
            None => (false, line),
        };
        let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
        let parts: Vec<&str> = path.split('/').collect();
        let matched = (1..=parts.len()).any(|n| glob(pattern, &parts[..n].join("/")));
        if matched {
            ignored = !include;
        }
    }
    ignored
}

/// Docker's pattern match: `*` and `?` within one path segment, `**` across
/// any number of them.
pub(super) fn glob(pattern: &str, path: &str) -> bool {
    fn segments(pattern: &[&str], path: &[&str]) -> bool {
        match (pattern.first(), path.first()) {
            (None, None) => true,
            (Some(&"**"), _) => {
                segments(&pattern[1..], path) || (!path.is_empty() && segments(pattern, &path[1..]))
            }
            (Some(p), Some(s)) => {
                segment(p.as_bytes(), s.as_bytes()) && segments(&pattern[1..], &path[1..])
            }
            _ => false,
        }
    }
    fn segment(pattern: &[u8], name: &[u8]) -> bool {
        match (pattern.first(), name.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                segment(&pattern[1..], name) || (!name.is_empty() && segment(pattern, &name[1..]))
            }
            (Some(b'?'), Some(_)) => segment(&pattern[1..], &name[1..]),
            (Some(p), Some(n)) => p == n && segment(&pattern[1..], &name[1..]),
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    segments(&pattern, &path)
}
