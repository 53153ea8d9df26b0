//! The cgroup2 mount, from /proc/mounts, and the check that a directory
//! is on it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::CgroupError;

/// statfs f_type of a cgroup2 mount (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

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
