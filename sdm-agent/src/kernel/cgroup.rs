//! Finding and checking cgroup2 directories.

use std::{
    fs,
    ops::ControlFlow,
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// statfs f_type of a cgroup2 mount (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cgroup2 file system is mounted (none in /proc/mounts)")]
    NoCgroup2Mount,
    #[error("{path} is not a directory of a cgroup2 file system")]
    NotCgroup2 { path: PathBuf },
    /// The target does not exist (yet): a unit that has not started, a
    /// process that is gone. The agent waits for it.
    #[error("{target}: {why}")]
    Missing { target: String, why: String },
    #[error("{target}: {why}")]
    Refused { target: String, why: String },
}

impl CgroupError {
    /// Whether waiting could help (the target may appear later).
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing { .. })
    }
}

/// What `cgroup =` names: a cgroup2 directory, the cgroup of a systemd
/// unit, or the cgroup of a running process.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub enum CgroupTarget {
    /// An absolute path to a cgroup2 directory.
    Path(PathBuf),
    /// `unit:NAME`: the unit's cgroup (e.g. `sdm-proxy.service`), where
    /// systemd's layout puts it: under a slice, never inside another unit's
    /// (delegated) cgroup. See [`find_unit`].
    Unit(String),
    /// `pid:N`: the cgroup process N is in, resolved when the agent starts;
    /// from then on the agent follows that cgroup's path.
    Pid(u32),
}

impl std::fmt::Display for CgroupTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path(p) => write!(f, "{}", p.display()),
            Self::Unit(u) => write!(f, "unit:{u}"),
            Self::Pid(p) => write!(f, "pid:{p}"),
        }
    }
}

impl From<CgroupTarget> for String {
    fn from(t: CgroupTarget) -> String {
        t.to_string()
    }
}

/// Unit types that own a cgroup.
const UNIT_SUFFIXES: [&str; 3] = [".service", ".scope", ".slice"];

impl std::str::FromStr for CgroupTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(unit) = s.strip_prefix("unit:") {
            let unit = unit.trim();
            if unit.is_empty() {
                return Err("`unit:` needs a unit name, e.g. unit:sdm-proxy.service".into());
            }
            // systemd unit names: ASCII letters, digits, ":-_.\@"
            // (systemd.unit(5)); no '/', so the name is one path component.
            if let Some(c) = unit
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
            {
                return Err(format!("{unit:?} is not a unit name (character {c:?})"));
            }
            let unit = if UNIT_SUFFIXES.iter().any(|x| unit.ends_with(x)) {
                if unit == "-.slice" {
                    return Err("-.slice is the root slice, i.e. the whole host: \
                                name the cgroup2 mount as a path if that is what you want"
                        .into());
                }
                if unit.ends_with(".slice") && slice_path(unit).is_none() {
                    return Err(format!(
                        "{unit:?} is not a slice name (a-b.slice: parts separated by single '-')"
                    ));
                }
                if unit.starts_with('.') {
                    return Err(format!(
                        "{unit:?} is not a unit name (no name before the suffix)"
                    ));
                }
                unit.to_string()
            } else if unit.contains('.') {
                return Err(format!(
                    "{unit:?}: only .service, .scope and .slice units have a cgroup"
                ));
            } else {
                format!("{unit}.service")
            };
            return Ok(Self::Unit(unit));
        }
        if let Some(pid) = s.strip_prefix("pid:") {
            return match pid.trim().parse::<u32>() {
                Ok(p) if p > 0 => Ok(Self::Pid(p)),
                _ => Err(format!("{pid:?} is not a process id (pid:<N>, N > 0)")),
            };
        }
        let p = PathBuf::from(s);
        if !p.is_absolute() {
            return Err(format!(
                "{s:?} is not an absolute path, `unit:NAME` or `pid:N`"
            ));
        }
        Ok(Self::Path(p))
    }
}

/// The cgroup id of a cgroup2 directory: its inode number (kernfs node id,
/// what bpf_get_current_cgroup_id returns on 64-bit). A re-created cgroup
/// (a restarted service) has the same path and a new id.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Io {
            op: "stat",
            path: path.to_owned(),
            source,
        })
}

/// Where systemd's cgroup tree starts: the root of the cgroup2 mount,
/// unless set otherwise (`--unit-root`: a host's tree mounted elsewhere, or
/// a test's own tree). Set once, before any target is resolved.
static UNIT_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Sets the root of systemd's cgroup tree for `unit:` targets; `false` if
/// it was set already (to another path).
pub fn set_unit_root(root: PathBuf) -> bool {
    UNIT_ROOT.set(root.clone()).is_ok() || UNIT_ROOT.get() == Some(&root)
}

/// The root `unit:` targets are resolved under.
pub fn unit_root() -> Result<PathBuf, CgroupError> {
    match UNIT_ROOT.get() {
        Some(p) => Ok(p.clone()),
        None => cgroup2_mount(),
    }
}

/// The cgroup path of slice `name` relative to the root, as systemd lays
/// slices out: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`. `None`
/// for a name that is not a valid slice (empty parts, `-.slice`, the root
/// slice, which is the root itself).
pub fn slice_path(name: &str) -> Option<PathBuf> {
    let stem = name.strip_suffix(".slice")?;
    if stem.is_empty() || stem.split('-').any(str::is_empty) {
        return None;
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

/// Whether `child` is a slice directory that systemd would put directly
/// under the slice `parent` (`None`: the root slice, `-.slice`).
fn is_child_slice(parent: Option<&str>, child: &str) -> bool {
    let Some(stem) = child.strip_suffix(".slice") else {
        return false;
    };
    match parent.and_then(|p| p.strip_suffix(".slice")) {
        None => !stem.is_empty() && !stem.contains('-'),
        Some(p) => stem
            .strip_prefix(p)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|part| !part.is_empty() && !part.contains('-')),
    }
}

/// Finds the cgroup of unit `name` under `root` (systemd's tree) by
/// systemd's own layout, never by a name found just anywhere: a directory
/// named like the unit inside a delegated subtree (below `user@1000.service`,
/// a container's scope, any other unit's cgroup) is created by whoever
/// that subtree is delegated to, and must not capture the target.
///
/// - `a-b.slice`: exactly `a.slice/a-b.slice` ([`slice_path`]);
/// - `NAME.service` or `NAME.scope`: a direct child of a slice, looked for
///   in `system.slice` first (the default), then in every other slice of
///   the tree (the root, `-.slice`, included), breadth first (`Slice=` puts a unit in any slice; a
///   template's instances default to `system.slice/system-NAME.slice`).
///   Only slice directories at their layout place are descended into, so
///   nothing below a service or scope is ever looked at.
pub fn find_unit(root: &Path, name: &str) -> Option<PathBuf> {
    const MAX_SLICE_DEPTH: usize = 8;
    if name.ends_with(".slice") {
        let p = root.join(slice_path(name)?);
        return p.is_dir().then_some(p);
    }
    let system = root.join("system.slice").join(name);
    if system.is_dir() {
        return Some(system);
    }
    // (the slice's directory, its name; None for the root slice)
    let mut level: Vec<(PathBuf, Option<String>)> = vec![(root.to_owned(), None)];
    for _ in 0..MAX_SLICE_DEPTH {
        let mut next = Vec::new();
        // A stable order, so two runs pick the same match.
        level.sort();
        for (dir, slice) in &level {
            // The root is a slice too (`-.slice`: `init.scope`, units with
            // `Slice=-.slice`); only root creates cgroups there.
            let p = dir.join(name);
            if p.is_dir() {
                return Some(p);
            }
            let Ok(rd) = fs::read_dir(dir) else { continue };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(child) = e.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if is_child_slice(slice.as_deref(), &child) {
                    next.push((e.path(), Some(child)));
                }
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    None
}

/// The cgroup2 directory of process `pid`, from /proc/PID/cgroup (the
/// `0::/path` line).
pub fn pid_cgroup(mount: &Path, pid: u32) -> Result<PathBuf, CgroupError> {
    let target = format!("pid:{pid}");
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).map_err(|e| CgroupError::Missing {
        target: target.clone(),
        why: format!("cannot read {file} ({e}): no such process?"),
    })?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| CgroupError::Refused {
            target: target.clone(),
            why: format!("{file} has no cgroup2 entry (0::)"),
        })?;
    // The path is relative to the reader's cgroup namespace: in a
    // container (a sidecar) it can be "/" or "/../<sibling>" although the
    // process is elsewhere in the host's tree. Take it only when it is
    // plainly right; otherwise find the cgroup that lists the process.
    let joined = mount.join(rel.trim_start_matches('/'));
    let path = if rel != "/" && !rel.split('/').any(|c| c == "..") && lists_pid(&joined, pid) {
        joined
    } else {
        find_pid(mount, pid).ok_or_else(|| CgroupError::Missing {
            target: target.clone(),
            why: format!(
                "no cgroup under {} lists the process (it exited?)",
                mount.display()
            ),
        })?
    };
    if path == mount {
        return Err(CgroupError::Refused {
            target,
            why: "the process is in the root cgroup: a pid target would police the whole host; \
                  name the cgroup2 mount as a path if that is what you want"
                .into(),
        });
    }
    Ok(path)
}

fn lists_pid(dir: &Path, pid: u32) -> bool {
    fs::read_to_string(dir.join("cgroup.procs"))
        .is_ok_and(|t| t.lines().any(|l| l.trim().parse() == Ok(pid)))
}

/// The cgroup whose cgroup.procs lists `pid`, breadth first.
fn find_pid(mount: &Path, pid: u32) -> Option<PathBuf> {
    let mut found = None;
    walk_breadth_first(mount, 10, |dir| {
        if lists_pid(dir, pid) {
            found = Some(dir.to_owned());
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

/// Visits `root` and the cgroups below it, level by level, at most
/// `max_depth` levels down, until `visit` breaks.
pub fn walk_breadth_first(
    root: &Path,
    max_depth: usize,
    mut visit: impl FnMut(&Path) -> ControlFlow<()>,
) {
    let mut level = vec![root.to_owned()];
    for _ in 0..=max_depth {
        let mut next = Vec::new();
        for dir in &level {
            if visit(dir).is_break() {
                return;
            }
            if let Ok(rd) = fs::read_dir(dir) {
                next.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        if next.is_empty() {
            return;
        }
        level = next;
    }
}

/// Resolves a target to its cgroup2 directory, checked.
pub fn resolve_target(target: Option<&CgroupTarget>) -> Result<PathBuf, CgroupError> {
    let mount = cgroup2_mount()?;
    let path = match target {
        None => mount,
        Some(CgroupTarget::Path(p)) => p.clone(),
        Some(CgroupTarget::Unit(u)) => {
            let root = unit_root()?;
            find_unit(&root, u).ok_or_else(|| CgroupError::Missing {
                target: format!("unit:{u}"),
                why: format!(
                    "no cgroup for {u} where systemd puts it under {} (a slice's child; \
                     is the unit running?)",
                    root.display()
                ),
            })?
        }
        Some(CgroupTarget::Pid(pid)) => pid_cgroup(&mount, *pid)?,
    };
    check_cgroup2_dir(&path)?;
    Ok(path)
}

/// The mount point of the cgroup2 hierarchy, from /proc/mounts (on hybrid
/// layouts it is not /sys/fs/cgroup but e.g. /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(|source| CgroupError::Io {
        op: "read",
        path: "/proc/mounts".into(),
        source,
    })?;
    cgroup2_mount_in(&mounts).ok_or(CgroupError::NoCgroup2Mount)
}

/// The first cgroup2 mount point listed in a /proc/mounts text.
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| unescape_mount_path(dir))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as `\` and three
/// octal digits (`\040`); every other byte is itself, UTF-8 or not, so the
/// path is rebuilt as bytes.
fn unescape_mount_path(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(d) = b.get(i + 1..i + 4) {
                if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                    let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                    if let Ok(v) = u8::try_from(v) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Checks that `path` is a directory on a cgroup2 file system.
pub fn check_cgroup2_dir(path: &Path) -> Result<(), CgroupError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        CgroupError::NotCgroup2 {
            path: path.to_owned(),
        }
    })?;
    // SAFETY: statfs writes into the zeroed struct we pass; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` outlives the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(CgroupError::Io {
            op: "statfs",
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 on x86_64 but not on every target"
    )]
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC || !path.is_dir() {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The cgroup to attach to: the configured one, or the root of the
/// cgroup2 mount; checked to be a cgroup2 directory.
pub fn resolve(configured: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let path = match configured {
        Some(p) => p.to_owned(),
        None => cgroup2_mount()?,
    };
    check_cgroup2_dir(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
