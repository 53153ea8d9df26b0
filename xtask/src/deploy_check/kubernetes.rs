//! The Kubernetes manifests: each kustomization rendered with `kubectl
//! kustomize`, validated for every supported version (a broken copy must
//! fail), with no file it does not list; the policed workload containers
//! drop CAP_NET_RAW and CAP_NET_ADMIN; the agent accepts the config the
//! pods assemble.

use std::{fs, path::Path};

use anyhow::{bail, ensure, Context as _, Result};

use crate::context::{self, Ctx};

use super::tools::{validate, Tools};
use super::{check_config, KUBERNETES_DIR, KUBERNETES_VERSIONS};

/// Renders and validates every kustomization, and checks its agent config.
pub(super) fn check_kubernetes(ctx: &Ctx, tools: &Tools, agent: &Path, out: &Path) -> Result<()> {
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
pub(super) fn unlisted_files(dir: &Path, kustomization: &str) -> Result<Vec<String>> {
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
pub(super) fn names_file(kustomization: &str, file: &str) -> bool {
    kustomization.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default().trim();
        line.strip_prefix("- ")
            .map(|item| item.trim().trim_matches(['"', '\'']))
            .is_some_and(|item| item == file || item.strip_prefix("./") == Some(file))
    })
}

/// The agent's own container: the one container that needs NET_ADMIN.
pub(super) const AGENT_CONTAINER: &str = "sdm-agent";

/// Containers of a manifest (every one but the agent's own: the policed
/// workload) that keep CAP_NET_RAW or CAP_NET_ADMIN, which would let them
/// bypass the cgroup programs (raw and packet sockets, tunnels). Each must
/// drop both, or ALL. Reads the YAML as text: kustomize's output style
/// (list items at their key's indent) and the hand-written one.
pub(super) fn workload_cap_problems(manifest: &str) -> Vec<String> {
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
pub(super) fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The items of the YAML list whose items start at `item_indent`, from line
/// `from` on, each as its lines; and the first line after the list.
pub(super) fn list_items<'a>(
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
pub(super) fn container_name(item: &[&str], item_indent: usize) -> String {
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
pub(super) fn dropped_capabilities(item: &[&str]) -> Vec<String> {
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
pub(super) fn break_manifest(rendered: &str) -> Option<String> {
    rendered
        .contains("capabilities:")
        .then(|| rendered.replacen("capabilities:", "capabilites:", 1))
}
