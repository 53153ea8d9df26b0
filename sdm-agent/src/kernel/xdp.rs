//! The XDP shield's userspace side (`[xdp] interfaces`, README "XDP
//! shield"): which targets it may be used with ([`check_target`]),
//! attaching it ([`sync`], in `attach`), the flows that existed before it
//! (`seed`) and its counters ([`counters`]). The kernel side is
//! `sdm-ebpf/src/xdp.rs`.
//!
//! XDP runs at the driver, before the packet belongs to any socket or
//! cgroup: it judges every packet of the interface. Its "flows this host
//! started" are recorded by the egress cgroup program, which only sees the
//! target cgroup's packets; with any other target than the root cgroup, a
//! process outside it would open flows the shield never heard of, and their
//! replies would be dropped.

use std::path::{Path, PathBuf};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    Ebpf,
};
use sdm_common::{Counter, XdpFlowKey, XdpVerdict, MAP_XDP_FLOWS, MAP_XDP_STATS};
use serde::{Deserialize, Serialize};

use crate::{
    kernel::{cgroup::CgroupTarget, dataplane::Layout},
    policy::config::{Config, ConfigError},
};

mod attach;
mod seed;

pub use attach::{attached, load_program};

/// How the shield runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver (XDP_FLAGS_DRV_MODE), before a socket buffer exists.
    Native,
    /// In the stack (XDP_FLAGS_SKB_MODE), for drivers without XDP support:
    /// after the socket buffer is built, still before IP and the sockets.
    Generic,
}

impl AttachMode {
    pub const ALL: [AttachMode; 2] = [AttachMode::Native, AttachMode::Generic];

    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

/// An interface the shield is on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shielded {
    pub interface: String,
    pub mode: AttachMode,
}

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
    #[error("the programs are not loaded")]
    NotLoaded,
    #[error("{op} program sdm_xdp: {source}")]
    Program {
        op: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{op} {interface}: {source}")]
    Attach {
        op: &'static str,
        interface: String,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("the XDP link of {interface}: {source}")]
    Link {
        interface: String,
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("pin {}: {source}", path.display())]
    Pin {
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl XdpError {
    fn map(name: &'static str) -> impl Fn(aya::maps::MapError) -> XdpError {
        move |e| XdpError::Map {
            name,
            source: Box::new(e),
        }
    }
}

/// Makes the shield what `ifaces` says: flow recording on, the flows that
/// exist now seeded, then each interface attached (its program replaced in
/// place if it has the shield already); interfaces no longer listed lose
/// it. With `ifaces` empty everything of the shield is removed and the
/// recording switched off. `ebpf` must hold the loaded object when
/// `ifaces` is not empty.
pub fn sync(
    layout: &Layout,
    ebpf: Option<&mut Ebpf>,
    ifaces: &[String],
) -> Result<Vec<Shielded>, XdpError> {
    let before = attached(layout);
    for s in before.iter().filter(|s| !ifaces.contains(&s.interface)) {
        attach::detach_one(&layout.link_pin(&attach::pin_name(s.mode, &s.interface)))?;
        tracing::info!(interface = %s.interface, "XDP shield removed (no longer in [xdp] interfaces)");
    }
    if ifaces.is_empty() {
        if layout.map_pin(sdm_common::MAP_XDP_ON).exists() {
            attach::set_switch(layout, false)?;
        }
        return Ok(Vec::new());
    }
    let ebpf = ebpf.ok_or(XdpError::NotLoaded)?;
    // Recording first, then the seed: a flow started in between is in one
    // of the two, and both come before the first drop.
    attach::set_switch(layout, true)?;
    let seeded = seed_flows(layout)?;
    tracing::info!(
        flows = seeded,
        "XDP shield: the host's existing connections seeded"
    );
    let mut out = Vec::new();
    for name in ifaces {
        let previous = before.iter().find(|s| &s.interface == name).map(|s| s.mode);
        let mode = attach::attach_one(layout, ebpf, name, previous)?;
        tracing::info!(interface = %name, mode = mode.name(), "XDP shield attached");
        out.push(Shielded {
            interface: name.clone(),
            mode,
        });
    }
    Ok(out)
}

/// Writes the flows of the host's sockets into `SDM_XDP_FLOWS`; returns
/// how many. A table that cannot be read (no IPv6) is skipped.
fn seed_flows(layout: &Layout) -> Result<usize, XdpError> {
    let data =
        MapData::from_pin(layout.map_pin(MAP_XDP_FLOWS)).map_err(XdpError::map(MAP_XDP_FLOWS))?;
    let mut map: HashMap<MapData, XdpFlowKey, u8> =
        HashMap::try_from(aya::maps::Map::LruHashMap(data))
            .map_err(XdpError::map(MAP_XDP_FLOWS))?;
    let mut n = 0;
    for (path, proto, v6) in seed::TABLES {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for key in seed::flows(&text, proto, v6) {
            map.insert(key, 0, 0)
                .map_err(XdpError::map(MAP_XDP_FLOWS))?;
            n += 1;
        }
    }
    Ok(n)
}

/// The shield's counters, summed over CPUs, per verdict (drops by reason,
/// and what passed); `None` when its map is not pinned.
pub fn counters(layout: &Layout) -> Option<Vec<(XdpVerdict, u64)>> {
    let data = MapData::from_pin(layout.map_pin(MAP_XDP_STATS)).ok()?;
    let arr: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).ok()?;
    Some(
        XdpVerdict::ALL
            .iter()
            .map(|v| {
                let n = arr
                    .get(&v.raw(), 0)
                    .map(|per_cpu| per_cpu.iter().map(|c| c.packets).sum())
                    .unwrap_or(0);
                (*v, n)
            })
            .collect(),
    )
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

/// Every `[xdp] interfaces` entry must name an interface of this network
/// namespace: one the host lacks is an error at its line of the config.
pub fn check_interfaces(config: &Config, path: Option<&Path>) -> Result<(), ConfigError> {
    for i in &config.xdp.interfaces {
        let index = std::ffi::CString::new(i.name.as_str())
            // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
            .map_or(0, |c| unsafe { libc::if_nametoindex(c.as_ptr()) });
        if index == 0 {
            return Err(ConfigError::Invalid {
                path: path.map_or_else(|| PathBuf::from("(built-in)"), Path::to_path_buf),
                line: i.line,
                column: None,
                section: Some("[xdp]".into()),
                key: Some("interfaces".into()),
                message: format!(
                    "no interface named {:?} in this network namespace (see `ip link`)",
                    i.name
                ),
            });
        }
    }
    Ok(())
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
