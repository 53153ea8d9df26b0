//! [`CgroupTarget`]: what `cgroup =` names, parsed and printed.

use std::path::PathBuf;

use super::slice_path;

/// What `cgroup =` names: a cgroup2 directory, the cgroup of a systemd
/// unit, or the cgroup of a running process.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub enum CgroupTarget {
    /// An absolute path to a cgroup2 directory.
    Path(PathBuf),
    /// `unit:NAME`: the unit's cgroup (e.g. `sdm-proxy.service`), where
    /// systemd's layout puts it: under a slice, never inside another unit's
    /// (delegated) cgroup. See [`find_unit`](super::systemd::find_unit).
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
