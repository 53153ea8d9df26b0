//! `sdm-agent policed`: whether a cgroup is policed right now, for an
//! `ExecStartPre=` of the service the agent polices (the sdm-proxy drop-in).
//!
//! It answers from what enforcement itself rests on, not from whether the
//! agent process runs: the pinned links, the cgroup they are attached to
//! (the attach record, checked against that cgroup's current id) and a
//! policy generation in the pinned config. So a stopped agent whose pins
//! still enforce counts as policing, and a running agent that has not
//! applied its first policy does not.

use std::path::{Path, PathBuf};

use crate::{
    api::status,
    kernel::cgroup::{self, CgroupTarget},
    kernel::dataplane::{AttachRecord, Layout, Maps, ATTACHMENTS},
};

/// Why a cgroup is not policed; each is a plain sentence for the journal.
#[derive(Debug, thiserror::Error)]
pub enum NotPoliced {
    #[error("cannot find the cgroup to check: {0}")]
    Target(#[from] cgroup::CgroupError),
    #[error(
        "nothing is attached: no attach record in {0} (the agent never started, or was detached)"
    )]
    NoRecord(PathBuf),
    #[error("the pinned link {0} is missing (detached?)")]
    NoLink(PathBuf),
    #[error("{target} is outside the policed cgroup {attached}")]
    Outside { target: PathBuf, attached: PathBuf },
    #[error(
        "the policed cgroup {0} was removed and re-created since the programs were attached to it"
    )]
    Recreated(PathBuf),
    #[error("cannot read the pinned maps: {0}")]
    Maps(#[from] crate::kernel::dataplane::DataplaneError),
    #[error("the programs are attached but no policy has been applied yet")]
    NoPolicy,
    #[error("the mode is {0}, not enforce")]
    NotEnforcing(&'static str),
}

/// What was found policed: the cgroup checked, where the programs are
/// attached, and the live mode.
#[derive(Debug)]
pub struct Policed {
    pub target: PathBuf,
    pub attached: PathBuf,
    pub mode: &'static str,
    pub generation: u32,
}

/// Checks that `target` (default: the cgroup this process runs in, which in
/// an `ExecStartPre=` is the service's own) is the attached cgroup or below
/// it, that every link is pinned and that a policy is live; with
/// `require_enforce`, also that the mode is enforce.
pub fn check(
    layout: &Layout,
    target: Option<&CgroupTarget>,
    require_enforce: bool,
) -> Result<Policed, NotPoliced> {
    let target = match target {
        Some(t) => cgroup::resolve_target(Some(t))?,
        None => cgroup::pid_cgroup(&cgroup::cgroup2_mount()?, std::process::id())?,
    };
    let record =
        AttachRecord::read(layout).ok_or_else(|| NotPoliced::NoRecord(layout.attach_record()))?;
    if let Some(a) = ATTACHMENTS
        .iter()
        .find(|a| !layout.link_pin(a.pin).exists())
    {
        return Err(NotPoliced::NoLink(layout.link_pin(a.pin)));
    }
    if !within(&target, &record.cgroup) {
        return Err(NotPoliced::Outside {
            target,
            attached: record.cgroup,
        });
    }
    // A cgroup link dies with its cgroup; one re-created at the same path
    // (its slice was stopped and started again) has a new id and nothing
    // attached. Records of older agents carry no id (0).
    if record.cgroup_id != 0 && cgroup::cgroup_id(&record.cgroup).ok() != Some(record.cgroup_id) {
        return Err(NotPoliced::Recreated(record.cgroup));
    }
    let cfg = Maps::open(layout)?.config()?;
    // The maps start all zeros; the agent's first apply makes it 1.
    if cfg.generation == 0 {
        return Err(NotPoliced::NoPolicy);
    }
    let mode = status::mode_name(cfg.mode);
    if require_enforce && cfg.mode != sdm_common::KernelMode::Enforce {
        return Err(NotPoliced::NotEnforcing(mode));
    }
    Ok(Policed {
        target,
        attached: record.cgroup,
        mode,
        generation: cfg.generation,
    })
}

/// Whether `cgroup` is `attached` or a descendant of it: the programs of a
/// cgroup run for every cgroup below it.
fn within(cgroup: &Path, attached: &Path) -> bool {
    cgroup.starts_with(attached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_is_policed_by_itself_and_its_ancestors_only() {
        let slice = Path::new("/sys/fs/cgroup/sdm.slice/sdm-proxy.slice");
        let service = slice.join("sdm-proxy.service");
        assert!(within(&service, slice));
        assert!(within(slice, slice));
        assert!(within(&service, Path::new("/sys/fs/cgroup")));
        assert!(!within(slice, &service));
        // Whole components only: a sibling with a longer name is outside.
        assert!(!within(
            Path::new("/sys/fs/cgroup/sdm.slice/sdm-proxy.slice2"),
            slice
        ));
    }

    #[test]
    fn nothing_attached_is_not_policed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            pin_root: dir.path().join("pins"),
            run_dir: dir.path().join("run"),
        };
        let target = CgroupTarget::Path(dir.path().to_owned());
        // The temp dir is not a cgroup2 directory, or (if it were) nothing
        // is recorded: either way it is refused.
        assert!(check(&layout, Some(&target), false).is_err());
    }
}
