//! The XDP shield's userspace side (`[xdp] interfaces`, README "XDP
//! shield"): which targets it may be used with. The kernel side is
//! `sdm-ebpf/src/xdp.rs`.
//!
//! XDP runs at the driver, before the packet belongs to any socket or
//! cgroup: it judges every packet of the interface. Its "flows this host
//! started" are recorded by the egress cgroup program, which only sees the
//! target cgroup's packets; with any other target than the root cgroup, a
//! process outside it would open flows the shield never heard of, and their
//! replies would be dropped.

use std::path::{Path, PathBuf};

use crate::{kernel::cgroup::CgroupTarget, policy::config::Config};

/// Why the shield cannot be used with this config.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(
        "config {config}: line {line}: [xdp] `interfaces` needs the host's root cgroup as target ({mount}), \
         not {target}: XDP sees every packet of the interface, and only flows started inside \
         the target cgroup are known to it, so a flow started by a process outside {target} \
         would lose its replies. Leave `cgroup` unset (or set it to {mount}) to use the shield, \
         or remove [xdp]"
    )]
    NotRootTarget {
        config: String,
        line: usize,
        target: String,
        mount: PathBuf,
    },
}

/// Refuses `[xdp] interfaces` unless the target is the root of the cgroup2
/// mount `mount` (an unset `cgroup` is that root). `unit:` and `pid:`
/// targets never are (a `pid:` in the root cgroup is refused on its own).
/// `config` names the file in the message.
pub fn check_target(config: &Config, mount: &Path, file: &str) -> Result<(), XdpError> {
    let Some(first) = config.xdp.interfaces.first() else {
        return Ok(());
    };
    let target = match &config.cgroup {
        None => return Ok(()),
        Some(CgroupTarget::Path(p)) if same_dir(p, mount) => return Ok(()),
        Some(t) => t.to_string(),
    };
    Err(XdpError::NotRootTarget {
        config: file.to_owned(),
        line: first.line,
        target,
        mount: mount.to_path_buf(),
    })
}

/// Two spellings of one directory (`/sys/fs/cgroup/` and `/sys/fs/cgroup`,
/// or through a symlink).
fn same_dir(a: &Path, b: &Path) -> bool {
    if a.components().eq(b.components()) {
        return true;
    }
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
