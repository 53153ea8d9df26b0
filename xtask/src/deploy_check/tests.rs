use super::{dockerfile::*, kubernetes::*, tools::*};

const DOCKERFILE_TEXT: &str = include_str!("../../../deploy/container/Dockerfile");
const DOCKERIGNORE_TEXT: &str = include_str!("../../../.dockerignore");

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
    let shipped = include_str!("../../../deploy/kubernetes/sidecar/deployment.yaml");
    assert_eq!(workload_cap_problems(shipped), Vec::<String>::new());
    let unfixed = shipped.replace("                - NET_RAW\n", "");
    assert_eq!(workload_cap_problems(&unfixed).len(), 1);
    let daemonset = include_str!("../../../deploy/kubernetes/daemonset/daemonset.yaml");
    assert_eq!(workload_cap_problems(daemonset), Vec::<String>::new());
}

#[test]
fn the_control_breaks_capabilities() {
    let broken = break_manifest("a:\n  capabilities:\n    add: [BPF]\n").unwrap();
    assert!(broken.contains("capabilites:"));
    assert!(break_manifest("kind: Namespace\n").is_none());
}
