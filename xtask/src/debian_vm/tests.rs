use std::path::PathBuf;

use super::{boot::*, image::*, *};

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

#[test]
fn every_scenario_must_pass_and_the_guest_finish() {
    let all: String = SCENARIOS
        .iter()
        .map(|s| format!("PASS {s} (detail)\n"))
        .collect();
    check_results(&lines(&format!("{all}DONE 8 passed, 0 failed"))).unwrap();
    // No DONE: the guest stopped half way.
    assert!(check_results(&lines(&all)).is_err());
    // A failure, a missing scenario, nothing at all.
    let failed = all.replace("PASS purge (detail)", "FAIL purge: left /run/sdm-agent");
    assert!(check_results(&lines(&format!("{failed}DONE"))).is_err());
    let missing = all.replace("PASS reboot (detail)\n", "");
    assert!(check_results(&lines(&format!("{missing}DONE 7 passed, 0 failed"))).is_err());
    assert!(check_results(&[]).is_err());
    // A prefix of another scenario's name is not that scenario.
    let odd = all.replace("PASS restart (detail)", "PASS restarted");
    assert!(check_results(&lines(&format!("{odd}DONE"))).is_err());
}

#[test]
fn the_guest_script_runs_every_scenario() {
    for s in SCENARIOS {
        assert!(
            GUEST_SCRIPT.contains(&format!("scenario {s} ")),
            "guest.sh does not run {s}"
        );
    }
}

#[test]
fn finds_what_a_killed_build_left_mounted() {
    let mounts = "proc /proc proc rw 0 0\n\
                  proc /c/v1.partial/rootfs/proc proc rw 0 0\n\
                  udev /c/v1.partial/rootfs/dev devtmpfs rw 0 0\n\
                  udev /c/v1.partial2/dev devtmpfs rw 0 0\n\
                  x /c/a\\040b/dev tmpfs rw 0 0\n";
    assert_eq!(
        mount_points_under(mounts, Path::new("/c/v1.partial")),
        [
            PathBuf::from("/c/v1.partial/rootfs/proc"),
            PathBuf::from("/c/v1.partial/rootfs/dev")
        ]
    );
    assert_eq!(
        mount_points_under(mounts, Path::new("/c/a b")),
        [PathBuf::from("/c/a b/dev")]
    );
    assert!(mount_points_under(mounts, Path::new("/c/v2")).is_empty());
}

#[test]
fn drive_paths_with_commas_are_escaped() {
    assert_eq!(
        drive(Path::new("/a,b/disk.img"), "snapshot=on"),
        "file=/a,,b/disk.img,format=raw,if=virtio,snapshot=on"
    );
}
