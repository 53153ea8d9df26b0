//! Targets, systemd's layout, process cgroups and mounts, on files and
//! trees the tests make.

use super::{systemd::is_child_slice, *};

#[test]
fn parses_targets() {
    let t = |s: &str| s.parse::<CgroupTarget>();
    assert_eq!(
        t("/sys/fs/cgroup/x"),
        Ok(CgroupTarget::Path("/sys/fs/cgroup/x".into()))
    );
    assert_eq!(
        t("unit:sdm-proxy.service"),
        Ok(CgroupTarget::Unit("sdm-proxy.service".into()))
    );
    assert_eq!(
        t("unit:sdm-proxy"),
        Ok(CgroupTarget::Unit("sdm-proxy.service".into()))
    );
    assert_eq!(
        t("unit:a@b.scope"),
        Ok(CgroupTarget::Unit("a@b.scope".into()))
    );
    assert_eq!(t("pid:42"), Ok(CgroupTarget::Pid(42)));
    for bad in [
        "unit:",
        "unit:../x",
        "unit:a/b",
        "unit:x.socket",
        "pid:0",
        "pid:-1",
        "pid:x",
        "rel/path",
    ] {
        assert!(t(bad).is_err(), "{bad} should be refused");
    }
    assert_eq!(
        CgroupTarget::Unit("a.service".into()).to_string(),
        "unit:a.service"
    );
}

#[test]
fn slice_paths_follow_systemds_layout() {
    let p = |n: &str| slice_path(n).map(|p| p.display().to_string());
    assert_eq!(p("system.slice").as_deref(), Some("system.slice"));
    assert_eq!(
        p("a-b-c.slice").as_deref(),
        Some("a.slice/a-b.slice/a-b-c.slice")
    );
    for bad in [
        "-.slice",
        "a--b.slice",
        "-a.slice",
        "a-.slice",
        ".slice",
        "a.service",
    ] {
        assert_eq!(p(bad), None, "{bad}");
    }
    assert!(is_child_slice(None, "user.slice"));
    assert!(!is_child_slice(None, "user-1000.slice"));
    assert!(is_child_slice(Some("user.slice"), "user-1000.slice"));
    assert!(!is_child_slice(Some("user.slice"), "user-1000-x.slice"));
    assert!(!is_child_slice(Some("user.slice"), "other-1.slice"));
    assert!(!is_child_slice(Some("user.slice"), "user@1000.service"));
    let t = |s: &str| s.parse::<CgroupTarget>();
    assert!(t("unit:-.slice").is_err());
    assert!(t("unit:a--b.slice").is_err());
    assert!(t("unit:.service").is_err());
    assert_eq!(
        t("unit:a-b.slice"),
        Ok(CgroupTarget::Unit("a-b.slice".into()))
    );
}

/// Issue 16: a directory named like the unit anywhere in the tree
/// (in a user's delegated subtree, inside another unit's cgroup)
/// captured the target. Only systemd's layout places count.
#[test]
fn units_are_found_where_systemd_puts_them_never_in_delegated_subtrees() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let mk = |p: &str| fs::create_dir_all(root.join(p)).unwrap();
    // Decoys: in a user's delegated subtree, in a container's scope,
    // inside another service, and a slice at the wrong place.
    mk("user.slice/user-1000.slice/user@1000.service/app.slice/x.service");
    mk("user.slice/user-1000.slice/user@1000.service/x.service");
    mk("machine.slice/libpod-1.scope/system.slice/x.service");
    mk("system.slice/other.service/x.service");
    mk("system.slice/other.service/s.slice");
    mk("a-b.slice/x.service");
    assert_eq!(find_unit(root, "x.service"), None);
    assert_eq!(find_unit(root, "s.slice"), None);
    assert_eq!(find_unit(root, "a-b.slice"), None);
    // The real ones.
    mk("a.slice/a-b.slice/y.service");
    mk("system.slice/system-getty.slice/getty@tty1.service");
    mk("user.slice/user-1000.slice/session-3.scope");
    mk("init.scope");
    assert_eq!(
        find_unit(root, "y.service"),
        Some(root.join("a.slice/a-b.slice/y.service"))
    );
    assert_eq!(
        find_unit(root, "a-b.slice"),
        Some(root.join("a.slice/a-b.slice"))
    );
    assert_eq!(
        find_unit(root, "getty@tty1.service"),
        Some(root.join("system.slice/system-getty.slice/getty@tty1.service"))
    );
    assert_eq!(find_unit(root, "init.scope"), Some(root.join("init.scope")));
    assert_eq!(
        find_unit(root, "session-3.scope"),
        Some(root.join("user.slice/user-1000.slice/session-3.scope"))
    );
    // system.slice first: the default place wins over another slice.
    mk("a.slice/x.service");
    assert_eq!(
        find_unit(root, "x.service"),
        Some(root.join("a.slice/x.service"))
    );
    mk("system.slice/x.service");
    assert_eq!(
        find_unit(root, "x.service"),
        Some(root.join("system.slice/x.service"))
    );
    assert_eq!(find_unit(root, "z.service"), None);
}

#[test]
fn own_process_cgroup() {
    // Whatever cgroup this test runs in: either a path under the mount
    // or a refusal for the root cgroup, never a panic.
    let mount = cgroup2_mount().expect("cgroup2 is mounted on every test machine");
    match pid_cgroup(&mount, std::process::id()) {
        Ok(p) => assert!(p.starts_with(&mount), "{}", p.display()),
        Err(e) => assert!(matches!(e, CgroupError::Refused { .. }), "{e}"),
    }
    let gone = pid_cgroup(&mount, u32::MAX - 1).unwrap_err();
    assert!(gone.is_missing(), "{gone}");
}

#[test]
fn finds_the_cgroup2_mount_in_a_hybrid_layout() {
    let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                  cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                  cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
    assert_eq!(
        cgroup2_mount_in(mounts),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    assert_eq!(cgroup2_mount_in("proc /proc proc rw 0 0\n"), None);
    assert_eq!(
        cgroup2_mount_in("none /a\\040b cgroup2 rw 0 0\n"),
        Some(PathBuf::from("/a b"))
    );
}

/// Found by `cargo xtask fuzz system_files`: a backslash followed by
/// non-ASCII text sliced a string inside a character (a panic), and
/// non-ASCII names came out as mojibake (each byte taken for a char).
#[test]
fn mount_paths_with_non_ascii_names() {
    use std::os::unix::ffi::OsStringExt as _;
    let crash = "cgroup2 /sy\x01\x00y\\2p\u{352}y\\2/fs/cgroup/my\\0cgqoup\u{352}y\\211dir \
                 cgroup2 r40doup 2rw 0 0\n";
    let mut want = b"/sy\x01\x00y\\2p\xcd\x92y\\2/fs/cgroup/my\\0cgqoup\xcd\x92y".to_vec();
    want.push(0o211);
    want.extend_from_slice(b"dir");
    assert_eq!(
        cgroup2_mount_in(crash),
        Some(PathBuf::from(std::ffi::OsString::from_vec(want)))
    );
    assert_eq!(
        cgroup2_mount_in("none /sys/fs/cgroup/caf\u{e9}\\040x cgroup2 rw 0 0\n"),
        Some(PathBuf::from("/sys/fs/cgroup/caf\u{e9} x"))
    );
    // Only three octal digits make an escape, and only up to \377.
    assert_eq!(
        cgroup2_mount_in("none /a\\+12\\777\\08 cgroup2 rw 0 0\n"),
        Some(PathBuf::from("/a\\+12\\777\\08"))
    );
    assert_eq!(
        cgroup2_mount_in("none /a\\134b\\011 cgroup2 rw 0 0\n"),
        Some(PathBuf::from("/a\\b\t"))
    );
}

#[test]
fn a_plain_directory_is_not_a_cgroup() {
    let err = check_cgroup2_dir(Path::new("/tmp")).unwrap_err();
    assert!(matches!(err, CgroupError::NotCgroup2 { .. }), "{err}");
}
