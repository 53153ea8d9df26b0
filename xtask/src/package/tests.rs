use super::{control::*, deb::*, *};

const UNIT_FILE: &str = include_str!("../../../deploy/debian/sdm-agent.service");
const PROXY_DROP_IN: &str = include_str!("../../../deploy/debian/sdm-proxy-sdm-agent.conf");
const CONTROL: &str = include_str!("../../../deploy/debian/control");
const CONFFILES: &str = include_str!("../../../deploy/debian/conffiles");

/// The values of `key` in `[section]` of a unit file, in order.
fn directive<'a>(unit: &'a str, section: &str, key: &str) -> Vec<&'a str> {
    let mut current = "";
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name;
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if current == section && k == key {
                values.push(v);
            }
        }
    }
    values
}

fn one<'a>(unit: &'a str, section: &str, key: &str) -> &'a str {
    match directive(unit, section, key).as_slice() {
        [value] => value,
        other => panic!("[{section}] {key}= should be set once, found {other:?}"),
    }
}

/// A `pub const NAME: &str = "...";` of the agent's source, wherever
/// under `sdm-agent/src` it is defined (files move as the agent is
/// reorganised; the constant must exist exactly once).
fn agent_const(name: &str) -> String {
    let prefix = format!("pub const {name}: &str = \"");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdm-agent/src");
    let mut found = Vec::new();
    for file in rust_files(&src) {
        let text =
            fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for l in text.lines() {
            if let Some(rest) = l.trim().strip_prefix(&prefix) {
                let value = rest.split('"').next().unwrap_or_default().to_owned();
                found.push((file.clone(), value));
            }
        }
    }
    match found.as_slice() {
        [(_, value)] => value.clone(),
        other => panic!("`{prefix}` should be in the agent's source once, found {other:?}"),
    }
}

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn unit_is_hardened_with_exactly_the_needed_capabilities() {
    let caps = |key| {
        let mut caps: Vec<&str> = one(UNIT_FILE, "Service", key).split_whitespace().collect();
        caps.sort_unstable();
        caps
    };
    let needed = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];
    assert_eq!(caps("CapabilityBoundingSet"), needed);
    assert_eq!(caps("AmbientCapabilities"), needed);
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("Restart", "on-failure"),
        ("Type", "notify"),
        ("StateDirectory", "sdm-agent"),
        ("RuntimeDirectory", "sdm-agent"),
    ] {
        assert_eq!(one(UNIT_FILE, "Service", key), value, "{key}=");
    }
    let filter = directive(UNIT_FILE, "Service", "SystemCallFilter").join(" ");
    assert!(
        filter.split_whitespace().any(|s| s == "bpf"),
        "bpf(2) is outside @system-service: {filter}"
    );
}

#[test]
fn unit_runs_the_packaged_binary_on_the_shipped_config() {
    assert_eq!(
        one(UNIT_FILE, "Service", "ExecStart"),
        format!("{BINARY} run --config {CONFIG}")
    );
    assert!(FILES.iter().any(|entry| entry.path == UNIT));
}

#[test]
fn unit_reloads_the_agent_with_sighup() {
    assert_eq!(
        one(UNIT_FILE, "Service", "ExecReload"),
        "/bin/kill -HUP $MAINPID"
    );
    // The agent reports the reload's start and end (RELOADING=1, READY=1)
    // to a notify service.
    assert_eq!(one(UNIT_FILE, "Service", "Type"), "notify");
    // And handles SIGHUP from its first moment (start-up registers it):
    // unhandled, it would end the agent. What a reload does is the
    // privileged test `reload::` and the Debian VM's `reload` scenario.
    let startup = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdm-agent/src/app/startup.rs");
    let text =
        fs::read_to_string(&startup).unwrap_or_else(|e| panic!("read {}: {e}", startup.display()));
    assert!(
        text.lines()
            .any(|l| !l.trim_start().starts_with("//") && l.contains("SignalKind::hangup()")),
        "no SIGHUP handler registered in {}",
        startup.display()
    );
}

#[test]
fn unit_orders_itself_before_sdm_proxy_and_is_wanted_at_boot() {
    assert!(directive(UNIT_FILE, "Unit", "Before").contains(&"sdm-proxy.service"));
    assert_eq!(one(UNIT_FILE, "Install", "WantedBy"), "multi-user.target");
}

#[test]
fn unit_directories_are_the_agents_defaults() {
    // The agent's run dir, state dir and pin root are where the unit
    // lets it write: RuntimeDirectory=, StateDirectory=, ReadWritePaths=.
    let run_dir = agent_const("DEFAULT_RUN_DIR");
    let state_dir = agent_const("DEFAULT_STATE_DIR");
    let pin_root = agent_const("DEFAULT_PIN_ROOT");
    assert_eq!(
        format!("/run/{}", one(UNIT_FILE, "Service", "RuntimeDirectory")),
        run_dir
    );
    assert_eq!(
        format!("/var/lib/{}", one(UNIT_FILE, "Service", "StateDirectory")),
        state_dir
    );
    assert_eq!(pin_root, PIN_ROOT);
    // Writable, and optional ("-"): systemd sets up the "+" mkdir's
    // mount namespace with the ReadWritePaths= too, and a missing path
    // there fails the mkdir that would create it (226/NAMESPACE on a
    // fresh host and after every reboot; issue 13).
    assert_eq!(
        directive(UNIT_FILE, "Service", "ReadWritePaths"),
        [format!("-{pin_root}").as_str()],
        "the pin root {pin_root} must be writable, and optional"
    );
    // The pin root is created first, outside the sandbox.
    assert_eq!(
        one(UNIT_FILE, "Service", "ExecStartPre"),
        format!("+/bin/mkdir -p {pin_root}")
    );
    // Nothing else of /sys/fs/bpf is writable.
    assert_eq!(one(UNIT_FILE, "Service", "ProtectKernelTunables"), "yes");
}

#[test]
fn sdm_proxy_drop_in_refuses_to_run_unpoliced_without_tying_restarts() {
    // sdm-proxy pulls the agent in and waits for it, but a restart of
    // the agent (an upgrade) must not restart sdm-proxy.
    assert_eq!(one(PROXY_DROP_IN, "Unit", "Wants"), "sdm-agent.service");
    assert_eq!(one(PROXY_DROP_IN, "Unit", "After"), "sdm-agent.service");
    for tie in ["Requires", "BindsTo", "PartOf", "Requisite"] {
        assert!(
            directive(PROXY_DROP_IN, "Unit", tie).is_empty(),
            "{tie}= ties sdm-proxy's restarts to the agent's"
        );
    }
    // Its own cgroup must be policed before it runs; as root ("+")
    // whatever user sdm-proxy runs as.
    assert_eq!(
        one(PROXY_DROP_IN, "Service", "ExecStartPre"),
        format!("+{BINARY} policed")
    );
    assert_eq!(one(PROXY_DROP_IN, "Service", "Slice"), "sdm-proxy.slice");
}

#[test]
fn conffiles_are_the_files_under_etc() {
    check_conffiles(CONFFILES).unwrap();
    assert!(CONFFILES.lines().any(|l| l == CONFIG));
    assert!(check_conffiles("").is_err());
    assert!(check_conffiles(&format!("{CONFIG}\n/etc/other.toml\n")).is_err());
}

fn sample_control() -> String {
    render_control(
        CONTROL,
        &[
            ("VERSION", "0.1.0".into()),
            ("ARCH", "amd64".into()),
            ("INSTALLED_SIZE", "9123".into()),
            ("DEPENDS", "libc6 (>= 2.34), libgcc-s1".into()),
        ],
    )
    .unwrap()
}

#[test]
fn control_template_renders_a_well_formed_control_file() {
    let control = sample_control();
    check_control(&control).unwrap();
    assert!(control.starts_with("Package: sdm-agent\n"), "{control}");
    assert!(control.contains("\nVersion: 0.1.0\n"));
    assert!(control.contains("\nDepends: libc6 (>= 2.34), libgcc-s1\n"));
}

#[test]
fn control_check_rejects_what_dpkg_would() {
    let control = sample_control();
    let broken = [
        control.replace("Version: 0.1.0", "Version: 0.1.0-rc.1"),
        control.replace("Package: sdm-agent", "Package: SDM"),
        control.replace("Installed-Size: 9123", "Installed-Size: lots"),
        control.replace("\nArchitecture: amd64", ""),
        control.replace(" .\n", "\n"),
        control.trim_end().to_owned(),
    ];
    for text in broken {
        assert!(check_control(&text).is_err(), "accepted:\n{text}");
    }
    let unfilled = render_control(CONTROL, &[("VERSION", "1".into())]);
    assert!(unfilled.is_err());
    // A placeholder after the Maintainer's address is found too.
    let late = "Maintainer: a <a@b.example>\nDepends: @DEPENDS@\n@EXTRA@\n";
    let err = render_control(late, &[("DEPENDS", "libc6".into())]).unwrap_err();
    assert!(err.to_string().contains("@EXTRA@"), "{err}");
}

#[test]
fn debian_versions_sort_pre_releases_first() {
    assert_eq!(debian_version("0.1.0"), "0.1.0");
    assert_eq!(debian_version("1.0.0-rc.1"), "1.0.0~rc.1");
}

#[test]
fn depends_from_readelf() {
    let dynamic = " 0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]\n \
                   0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n \
                   0x0000000000000001 (NEEDED)             Shared library: [ld-linux-x86-64.so.2]\n \
                   0x000000000000000c (INIT)               0x1000\n";
    let versions = "  0x0070:   Name: GLIBC_2.29  Flags: none  Version: 8\n  \
                    0x0080:   Name: GLIBC_2.2.5  Flags: none  Version: 3\n  \
                    0x0090:   Name: GLIBC_2.34  Flags: none  Version: 21\n  \
                    0x00a0:   Name: GLIBC_2.4  Flags: none  Version: 14\n  \
                    0x00b0:   Name: GLIBC_PRIVATE  Flags: none  Version: 2\n";
    let needed = needed_libraries(dynamic);
    assert_eq!(
        needed,
        ["libgcc_s.so.1", "libc.so.6", "ld-linux-x86-64.so.2"]
    );
    assert_eq!(max_glibc(versions).as_deref(), Some("2.34"));
    assert_eq!(
        depends(&needed, Some("2.34")).unwrap(),
        "libc6 (>= 2.34), libgcc-s1"
    );
    assert!(depends(&["libssl.so.3".into()], None).is_err());
    assert!(depends(&[], None).is_err());
}

#[test]
fn finds_the_mode_of_a_config() {
    let config = "# mode = \"enforce\"\nrole = [\"gateway\"]\nmode = \"audit\" # audit first\n\
                  [x]\nmode = \"enforce\"\n";
    assert_eq!(
        top_level_value(config, "mode").as_deref(),
        Some("\"audit\"")
    );
    assert_eq!(top_level_value("[x]\nmode = \"audit\"\n", "mode"), None);
    assert_eq!(
        top_level_value("mode=\"enforce\"\n", "mode").as_deref(),
        Some("\"enforce\"")
    );
}

fn script(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DEPLOY_DIR)
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Lines of a maintainer script that act on services or the dataplane,
/// outside the guard `if [ -d /run/systemd/system ]`. Lines inside
/// function definitions are judged where the function is called.
fn unguarded_actions(text: &str) -> Vec<String> {
    let mut guards: Vec<bool> = Vec::new();
    let mut in_function = false;
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.ends_with("() {") {
            in_function = true;
            continue;
        }
        if in_function {
            in_function = line != "}";
            continue;
        }
        if line.starts_with("if ") {
            guards.push(line.contains("[ -d /run/systemd/system ]"));
        } else if line == "fi" {
            guards.pop();
        }
        let acts = line.starts_with("invoke ")
            || line.starts_with("systemctl ")
            || line.starts_with("/usr/bin/sdm-agent ");
        if acts && !guards.contains(&true) {
            found.push(line.to_owned());
        }
    }
    found
}

#[test]
fn maintainer_scripts_touch_services_only_when_systemd_runs() {
    for name in SCRIPTS {
        let text = script(name);
        assert!(
            text.starts_with("#!/bin/sh\n"),
            "{name}: not a /bin/sh script"
        );
        assert!(text.contains("\nset -e\n"), "{name}: no set -e");
        assert_eq!(unguarded_actions(&text), Vec::<String>::new(), "{name}");
    }
    assert!(script("postinst").contains("invoke start"));
    assert!(script("prerm").contains("invoke stop"));
    let unguarded = "#!/bin/sh\nset -e\ncase \"$1\" in\nremove)\n    invoke stop x\n    ;;\nesac\n";
    assert_eq!(unguarded_actions(unguarded), ["invoke stop x"]);
}

#[test]
fn maintainer_scripts_parse() {
    for name in SCRIPTS {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DEPLOY_DIR)
            .join(name);
        let status = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "sh -n {}: {status}", path.display());
    }
}
