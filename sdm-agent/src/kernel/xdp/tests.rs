use std::path::Path;

use super::*;

fn config(text: &str) -> Config {
    Config::from_toml_str(text, Path::new("agent.toml")).expect("valid config")
}

const XDP: &str = "mode = \"enforce\"\n[xdp]\ninterfaces = [\"eth0\"]\n";

#[test]
fn root_cgroup_target_is_accepted() {
    let mount = Path::new("/sys/fs/cgroup");
    // Unset: the root of the mount.
    check_target(&config(XDP), mount, "agent.toml").expect("unset cgroup is the root");
    let c = config(&format!("cgroup = \"/sys/fs/cgroup/\"\n{XDP}"));
    check_target(&c, mount, "agent.toml").expect("the mount, with a trailing slash");
    // Without [xdp], any target is fine.
    let c = config("cgroup = \"unit:sdm-proxy.service\"\n");
    check_target(&c, mount, "agent.toml").expect("no shield");
}

#[test]
fn other_targets_are_refused_with_the_reason() {
    let mount = Path::new("/sys/fs/cgroup");
    for target in [
        "/sys/fs/cgroup/system.slice",
        "unit:sdm-proxy.service",
        "pid:1234",
    ] {
        let c = config(&format!("cgroup = \"{target}\"\n{XDP}"));
        let e = check_target(&c, mount, "agent.toml")
            .expect_err(target)
            .to_string();
        for want in [
            "config agent.toml: line 4: [xdp] `interfaces`",
            "root cgroup",
            target,
            "lose its replies",
            "/sys/fs/cgroup",
        ] {
            assert!(e.contains(want), "{target}: {want:?} missing from {e}");
        }
    }
}
