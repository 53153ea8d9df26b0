//! The backstop's userspace side: which interfaces it watches, attaching
//! the tc classifier `sdm_backstop` at their clsact egress and the
//! cgroup/setsockopt program `sdm_setsockopt` to the target cgroup, and
//! taking both away again. The kernel side is `sdm-ebpf/src/backstop.rs`.
//!
//! The tc program is attached through netlink (cls_bpf, direct action), the
//! one interface every supported kernel has (TCX links came in 6.6). A
//! cls_bpf filter is not a bpf_link and cannot be pinned, but it needs no
//! pin either: it stays attached until it is deleted or its interface goes
//! away, whatever happens to the agent. It always sits at the same
//! priority and handle, so a restarted agent replaces it in one netlink
//! request (`cls_bpf_change` swaps the program of an existing handle with
//! `list_replace_rcu`:
//! <https://github.com/torvalds/linux/blob/v6.18/net/sched/cls_bpf.c>):
//! never two copies, never a gap.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, CgroupArray, HashMap, MapData},
    programs::{
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        CgroupSockopt, SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use sdm_common::{
    Backstop, BackstopIf, BACKSTOP_LINK_ETHER, BACKSTOP_LINK_RAW_IP, MAP_BACKSTOP,
    MAP_BACKSTOP_CGROUP, MAP_BACKSTOP_IFS, PROG_BACKSTOP, PROG_SETSOCKOPT,
};

use crate::{
    kernel::{
        bpf_syscall,
        dataplane::{AttachRecord, Layout},
    },
    policy::config::{Config, ConfigError},
};

/// The clsact egress priority and handle of the backstop's filter: the
/// first priority, so that it runs before filters that end classification.
pub const TC_PRIORITY: u16 = 1;
pub const TC_HANDLE: u32 = 0x5d3e_0001;
/// Where the setsockopt program's cgroup link is pinned, beside the others.
pub const SOCKOPT_PIN: &str = "setsockopt";

/// ARPHRD_* link types (include/uapi/linux/if_arp.h) the backstop reads.
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_RAWIP: u16 = 519;
const ARPHRD_NONE: u16 = 0xfffe;

/// A listed interface as the kernel knows it in this network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    /// `BACKSTOP_LINK_*`.
    pub link: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BackstopError {
    #[error("the programs are not loaded")]
    NotLoaded,
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {PROG_BACKSTOP} at the egress of {interface}: {source}")]
    Tc {
        interface: String,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("removing {PROG_BACKSTOP} from {interface}: {source}")]
    Detach {
        interface: String,
        source: Box<tc::TcError>,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> BackstopError {
    move |e| BackstopError::Map {
        name,
        source: Box::new(e),
    }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> BackstopError {
    move |e| BackstopError::Program {
        name,
        source: Box::new(e),
    }
}

/// Looks up every `[backstop] interfaces` entry in this network namespace:
/// an interface the host does not have, or whose frames the backstop
/// cannot read, is an error at its line of the config.
pub fn resolve(config: &Config, path: Option<&Path>) -> Result<Vec<Interface>, ConfigError> {
    config
        .backstop
        .interfaces
        .iter()
        .map(|i| {
            lookup(&i.name).map_err(|message| ConfigError::Invalid {
                path: path.map_or_else(|| PathBuf::from("(built-in)"), Path::to_path_buf),
                line: i.line,
                column: None,
                section: Some("[backstop]".into()),
                key: Some("interfaces".into()),
                message,
            })
        })
        .collect()
}

/// The interface's index and link type, through ioctls on a socket of this
/// network namespace (sysfs may belong to another one).
fn lookup(name: &str) -> Result<Interface, String> {
    let c = CString::new(name).map_err(|_| format!("{name:?} is not an interface name"))?;
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "cannot look up {name:?}: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: a new fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; the name fits (checked by the config:
    // at most 15 bytes, and the NUL is the zeroed last byte).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(c.as_bytes().iter().take(15)) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFINDEX and SIOCGIFHWADDR read the name and write the
    // union of the ifreq passed.
    let ifindex = unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ENODEV) {
                format!("no interface named {name:?} in this network namespace (see `ip link`)")
            } else {
                format!("cannot look up {name:?}: {e}")
            });
        }
        req.ifr_ifru.ifru_ifindex as u32
    };
    // SAFETY: as above.
    let link_type = unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) < 0 {
            return Err(format!(
                "cannot read the link type of {name:?}: {}",
                io::Error::last_os_error()
            ));
        }
        req.ifr_ifru.ifru_hwaddr.sa_family
    };
    let link = match link_type {
        ARPHRD_ETHER => BACKSTOP_LINK_ETHER,
        ARPHRD_NONE | ARPHRD_RAWIP => BACKSTOP_LINK_RAW_IP,
        other => {
            return Err(format!(
                "{name:?} has link type {other} (ARPHRD_*): the backstop reads Ethernet and raw-IP (tun, WireGuard) interfaces only"
            ))
        }
    };
    Ok(Interface {
        name: name.to_owned(),
        ifindex,
        link,
    })
}

/// Names of the interfaces, for the attach record and `status`.
pub fn names(ifaces: &[Interface]) -> Vec<String> {
    ifaces.iter().map(|i| i.name.clone()).collect()
}

fn open_map(layout: &Layout, name: &'static str) -> Result<MapData, BackstopError> {
    MapData::from_pin(layout.map_pin(name)).map_err(map_err(name))
}

/// The object has no program `name` (of the expected type).
fn missing(name: &'static str) -> BackstopError {
    BackstopError::Program {
        name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

/// Loads the backstop's two programs (the rest of the object is loaded by
/// `dataplane::load`).
pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), BackstopError> {
    let p: &mut SchedClassifier = ebpf
        .program_mut(PROG_BACKSTOP)
        .ok_or_else(|| missing(PROG_BACKSTOP))?
        .try_into()
        .map_err(prog_err(PROG_BACKSTOP))?;
    p.load().map_err(prog_err(PROG_BACKSTOP))?;
    let p: &mut CgroupSockopt = ebpf
        .program_mut(PROG_SETSOCKOPT)
        .ok_or_else(|| missing(PROG_SETSOCKOPT))?
        .try_into()
        .map_err(prog_err(PROG_SETSOCKOPT))?;
    p.load().map_err(prog_err(PROG_SETSOCKOPT))
}

/// Makes the backstop what `ifaces` says for `cgroup`: the maps first (the
/// target cgroup, each interface's link type, on), then the setsockopt
/// link (a new one pinned over the old: never none), then each interface's
/// filter (replaced in place, or created); last, interfaces of the previous
/// run that are no longer listed lose theirs. `previous` is what the attach
/// record said. With `ifaces` empty the backstop is switched off and
/// everything of it removed. `ebpf` must hold the loaded object when
/// `ifaces` is not empty.
pub fn sync(
    layout: &Layout,
    cgroup: &Path,
    ebpf: Option<&mut Ebpf>,
    ifaces: &[Interface],
    previous: &[String],
) -> Result<(), BackstopError> {
    let mut on: Array<MapData, Backstop> =
        Array::try_from(aya::maps::Map::Array(open_map(layout, MAP_BACKSTOP)?))
            .map_err(map_err(MAP_BACKSTOP))?;
    let mut links: HashMap<MapData, u32, BackstopIf> =
        HashMap::try_from(aya::maps::Map::HashMap(open_map(layout, MAP_BACKSTOP_IFS)?))
            .map_err(map_err(MAP_BACKSTOP_IFS))?;
    let stale: Vec<u32> = links
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !ifaces.iter().any(|i| i.ifindex == *k))
        .collect();

    if ifaces.is_empty() {
        switch_off(layout, &mut on, previous)?;
    } else {
        let ebpf = ebpf.ok_or(BackstopError::NotLoaded)?;
        let cg = std::fs::File::open(cgroup).map_err(|source| BackstopError::Io {
            op: "open cgroup",
            path: cgroup.to_owned(),
            source,
        })?;
        switch_on(layout, &cg, &mut on, &mut links, ifaces)?;
        attach_sockopt(layout, ebpf, &cg)?;
        attach_filters(ebpf, ifaces, previous)?;
    }
    for k in stale {
        let _ = links.remove(&k);
    }
    Ok(())
}

/// Off: the setsockopt program first (it refuses nothing once `on` is 0,
/// but it need not run at all), then the filters of `previous`.
fn switch_off(
    layout: &Layout,
    on: &mut Array<MapData, Backstop>,
    previous: &[String],
) -> Result<(), BackstopError> {
    on.set(0, Backstop::default(), 0)
        .map_err(map_err(MAP_BACKSTOP))?;
    remove_sockopt_link(layout)?;
    for name in previous {
        detach_filter(name)?;
    }
    Ok(())
}

/// On, in the maps: the target cgroup, each interface's link type, then
/// the switch itself.
fn switch_on(
    layout: &Layout,
    cg: &std::fs::File,
    on: &mut Array<MapData, Backstop>,
    links: &mut HashMap<MapData, u32, BackstopIf>,
    ifaces: &[Interface],
) -> Result<(), BackstopError> {
    let mut target = CgroupArray::try_from(aya::maps::Map::CgroupArray(open_map(
        layout,
        MAP_BACKSTOP_CGROUP,
    )?))
    .map_err(map_err(MAP_BACKSTOP_CGROUP))?;
    target
        .set(0, cg.as_fd().as_raw_fd(), 0)
        .map_err(map_err(MAP_BACKSTOP_CGROUP))?;
    for i in ifaces {
        links
            .insert(
                i.ifindex,
                BackstopIf {
                    link: i.link,
                    _pad: 0,
                },
                0,
            )
            .map_err(map_err(MAP_BACKSTOP_IFS))?;
    }
    on.set(0, Backstop { on: 1, _pad: 0 }, 0)
        .map_err(map_err(MAP_BACKSTOP))
}

/// The tc filter on every interface of `ifaces`, then none left on the
/// interfaces of `previous` no longer listed.
fn attach_filters(
    ebpf: &mut Ebpf,
    ifaces: &[Interface],
    previous: &[String],
) -> Result<(), BackstopError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROG_BACKSTOP)
        .ok_or_else(|| missing(PROG_BACKSTOP))?
        .try_into()
        .map_err(prog_err(PROG_BACKSTOP))?;
    for i in ifaces {
        attach_filter(prog, &i.name)?;
    }
    for name in previous {
        if !ifaces.iter().any(|i| &i.name == name) {
            detach_filter(name)?;
        }
    }
    Ok(())
}

/// Puts the program at clsact egress of `name`: replaces the program of
/// the backstop's filter where it exists, else creates the filter (and
/// the clsact qdisc, if the interface has none yet).
fn attach_filter(prog: &mut SchedClassifier, name: &str) -> Result<(), BackstopError> {
    let tc_err = |e| BackstopError::Tc {
        interface: name.to_owned(),
        source: Box::new(e),
    };
    let existing = SchedClassifierLink::attached(
        name,
        TcAttachType::Egress,
        TC_PRIORITY,
        TcHandle::from(TC_HANDLE),
        None,
    )
    .map_err(|e| tc_err(aya::programs::ProgramError::from(tc::TcError::IoError(e))))?;
    let id = match prog.attach_to_link(existing) {
        Ok(id) => id,
        Err(_) => {
            // No filter to replace (a first start, or the qdisc is new):
            // create it. A clsact qdisc that is there already is fine.
            let _ = tc::qdisc_add_clsact(name);
            prog.attach_with_options(
                name,
                TcAttachType::Egress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: TC_PRIORITY,
                    handle: TcHandle::from(TC_HANDLE),
                    classid: None,
                }),
            )
            .map_err(tc_err)?
        }
    };
    // The filter must outlive this process: a SchedClassifierLink deletes
    // its filter when dropped, and a netlink "link" holds no descriptor,
    // so forgetting it leaks nothing.
    let link = prog.take_link(id).map_err(tc_err)?;
    std::mem::forget(link);
    Ok(())
}

/// Deletes the backstop's filters from `name`'s egress; an interface that
/// is gone, or that has none, is fine.
pub fn detach_filter(name: &str) -> Result<(), BackstopError> {
    match tc::qdisc_detach_program(name, TcAttachType::Egress, PROG_BACKSTOP) {
        Ok(()) => Ok(()),
        Err(tc::TcError::IoError(e))
            if matches!(e.kind(), io::ErrorKind::NotFound)
                || e.raw_os_error() == Some(libc::ENODEV) =>
        {
            Ok(())
        }
        Err(tc::TcError::NetlinkError(e))
            if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) =>
        {
            // No clsact qdisc on the interface: nothing of ours there.
            Ok(())
        }
        Err(e) => Err(BackstopError::Detach {
            interface: name.to_owned(),
            source: Box::new(e),
        }),
    }
}

/// Attaches `sdm_setsockopt` to the cgroup and pins the link over the
/// previous one (whose program is detached only then).
///
/// aya 0.14 cannot hand out a cgroup sockopt link as an `FdLink` (there is
/// no conversion for that link type), so the link is created and pinned
/// with the two bpf(2) commands directly. A cgroup bpf_link coexists with
/// other programs; BPF_LINK_CREATE takes no multi flag (see
/// `dataplane::attach_program`).
fn attach_sockopt(
    layout: &Layout,
    ebpf: &mut Ebpf,
    cg: &std::fs::File,
) -> Result<(), BackstopError> {
    let final_path = layout.link_pin(SOCKOPT_PIN);
    let p: &mut CgroupSockopt = ebpf
        .program_mut(PROG_SETSOCKOPT)
        .ok_or_else(|| missing(PROG_SETSOCKOPT))?
        .try_into()
        .map_err(prog_err(PROG_SETSOCKOPT))?;
    let prog_fd = p.fd().map_err(prog_err(PROG_SETSOCKOPT))?;
    let link = bpf_syscall::link_create(
        prog_fd.as_fd().as_raw_fd(),
        cg.as_fd().as_raw_fd(),
        BPF_CGROUP_SETSOCKOPT,
    )
    .map_err(|source| BackstopError::Io {
        op: "attach sdm_setsockopt (BPF_LINK_CREATE) to",
        path: layout.link_pin(SOCKOPT_PIN),
        source,
    })?;
    // bpffs refuses names with dots, hence `_new`.
    let tmp = layout.link_pin(&format!("{SOCKOPT_PIN}_new"));
    let _ = std::fs::remove_file(&tmp);
    bpf_syscall::obj_pin(&link, &tmp).map_err(|source| BackstopError::Io {
        op: "pin",
        path: tmp.clone(),
        source,
    })?;
    // rename(2) over the old pin drops the old link's last reference once
    // the new one is in place.
    std::fs::rename(&tmp, &final_path).map_err(|source| BackstopError::Io {
        op: "rename",
        path: final_path.clone(),
        source,
    })
}

/// `enum bpf_attach_type` value of the setsockopt hook
/// (include/uapi/linux/bpf.h).
const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// Detaches and unpins the setsockopt link, if there is one.
fn remove_sockopt_link(layout: &Layout) -> Result<(), BackstopError> {
    let pin = layout.link_pin(SOCKOPT_PIN);
    if !pin.exists() {
        return Ok(());
    }
    crate::kernel::dataplane::detach_link_now(&pin).map_err(|source| BackstopError::Io {
        op: "detach the link pinned at",
        path: pin.clone(),
        source,
    })?;
    std::fs::remove_file(&pin).map_err(|source| BackstopError::Io {
        op: "unpin",
        path: pin,
        source,
    })
}

/// The interfaces the attach record says the backstop is on.
pub fn recorded(layout: &Layout) -> Vec<String> {
    AttachRecord::read(layout)
        .map(|r| r.backstop)
        .unwrap_or_default()
}
