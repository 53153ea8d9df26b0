//! The kernel side as the agent sees it: loading the programs, pinning
//! maps and links under the pin root, attaching to a cgroup, adopting what
//! an earlier agent left, and reading and writing the maps.
//!
//! Pin layout (default root /sys/fs/bpf/sdm):
//!   maps/<SDM_...>        every map, so enforcement, policy and counters
//!                         outlive the agent
//!   links/egress|ingress  the cgroup links; while they are pinned the
//!                         programs stay attached (links/setsockopt only
//!                         while the backstop is on; its tc filters are
//!                         not pinned: see backstop.rs)
//! and /run/sdm-agent/attach.json (see [`AttachRecord`]) says which cgroup
//! they are attached to and which object they run.

use std::{
    collections::BTreeMap,
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues,
        ProgramArray,
    },
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
    },
    Ebpf, EbpfLoader,
};
use sdm_common::{
    deny_index, rule_slot_index, rule_stats_index, Cidr4, Cidr6, Counter, DnsHost, HostPortKey,
    KernelConfig, Key4, Key6, Learned, ResolverKey, RuleName, RuleRef, RuleState,
    DNS_STAT_LEARN_FULL, KERNEL_MAPS, LAYOUT_VERSION, MAP_CIDR4, MAP_CIDR6, MAP_CONFIG,
    MAP_DENY_STATS, MAP_DNSQ_PROGS, MAP_DNSQ_STATS, MAP_DNS_NAMES, MAP_DNS_PROGS,
    MAP_DNS_RESOLVERS, MAP_DNS_STATS, MAP_EXACT4, MAP_EXACT6, MAP_HOST_PORTS, MAP_LEARNED4,
    MAP_LEARNED6, MAP_RULES, MAP_RULE_NAMES, MAP_RULE_STATS, MAP_SOCK_STATE, MAX_RULES,
    PROG_CONNECT4, PROG_CONNECT6, PROG_DNS, PROG_DNS_IN, PROG_DNS_QUERY, PROG_EGRESS, PROG_INGRESS,
    PROG_SENDMSG4, PROG_SENDMSG6, PROG_SOCK_CREATE,
};
use serde::{Deserialize, Serialize};

use crate::{
    kernel::config_map::{ConfigField, ConfigMapping},
    kernel::entries::{diff, Entries},
};

/// The eBPF object built by build.rs (aya-build), embedded in the binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sdm-ebpf"));

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/sdm";
pub const DEFAULT_RUN_DIR: &str = "/run/sdm-agent";

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("this sdm-agent was built with AYA_BUILD_SKIP=1 and holds no eBPF object; rebuild it with `cargo xtask build`")]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: String,
        source: Box<aya::maps::MapError>,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },
    #[error("link {path}: {source}")]
    Link {
        path: PathBuf,
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("cgroup: {0}")]
    Cgroup(#[source] Box<crate::kernel::cgroup::CgroupError>),
    #[error("nothing is pinned under {0}: is the agent attached (sdm-agent run)?")]
    NotAttached(PathBuf),
    #[error("the maps pinned under {root} have layout {found}, this agent uses {expected}: run `sdm-agent detach` first (enforcement stops until the agent runs again)")]
    Layout {
        root: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("more than {MAX_RULES} distinct rules have been seen; run `sdm-agent detach` to reset rule ids")]
    RuleIdsExhausted,
    /// Not a `#[source]`: the message already says it all, once.
    #[error("{0}; nothing was written")]
    Capacity(crate::kernel::entries::Overflow),
    #[error("backstop: {0}")]
    Backstop(#[source] Box<crate::kernel::backstop::BackstopError>),
}

impl From<crate::kernel::backstop::BackstopError> for DataplaneError {
    fn from(e: crate::kernel::backstop::BackstopError) -> Self {
        DataplaneError::Backstop(Box::new(e))
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DataplaneError + 'a {
    move |source| DataplaneError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn map_err(name: &str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError + '_ {
    move |source| DataplaneError::Map {
        name: name.to_owned(),
        source: Box::new(source),
    }
}

/// Where things are pinned and recorded.
#[derive(Clone, Debug)]
pub struct Layout {
    pub pin_root: PathBuf,
    pub run_dir: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            pin_root: DEFAULT_PIN_ROOT.into(),
            run_dir: DEFAULT_RUN_DIR.into(),
        }
    }
}

impl Layout {
    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.pin_root.join("maps").join(name)
    }
    pub fn link_pin(&self, which: &str) -> PathBuf {
        self.pin_root.join("links").join(which)
    }
    pub fn attach_record(&self) -> PathBuf {
        self.run_dir.join("attach.json")
    }
    pub fn is_attached(&self) -> bool {
        ATTACHMENTS.iter().any(|a| self.link_pin(a.pin).exists())
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Skb(CgroupSkbAttachType),
    Sock,
    SockAddr,
}

/// One program and where its link is pinned.
#[derive(Clone, Copy, Debug)]
pub struct Attachment {
    pub program: &'static str,
    pub pin: &'static str,
    kind: Kind,
}

/// Every program, in attach order: the packet filters first (they are the
/// authority), then the socket hooks that name processes and fail fast.
pub const ATTACHMENTS: [Attachment; 8] = [
    Attachment {
        program: PROG_EGRESS,
        pin: "egress",
        kind: Kind::Skb(CgroupSkbAttachType::Egress),
    },
    Attachment {
        program: PROG_INGRESS,
        pin: "ingress",
        kind: Kind::Skb(CgroupSkbAttachType::Ingress),
    },
    // Learns allowed addresses from DNS answers; always passes.
    Attachment {
        program: PROG_DNS_IN,
        pin: "dns_in",
        kind: Kind::Skb(CgroupSkbAttachType::Ingress),
    },
    Attachment {
        program: PROG_SOCK_CREATE,
        pin: "sock_create",
        kind: Kind::Sock,
    },
    Attachment {
        program: PROG_CONNECT4,
        pin: "connect4",
        kind: Kind::SockAddr,
    },
    Attachment {
        program: PROG_CONNECT6,
        pin: "connect6",
        kind: Kind::SockAddr,
    },
    Attachment {
        program: PROG_SENDMSG4,
        pin: "sendmsg4",
        kind: Kind::SockAddr,
    },
    Attachment {
        program: PROG_SENDMSG6,
        pin: "sendmsg6",
        kind: Kind::SockAddr,
    },
];

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> DataplaneError {
    move |e| DataplaneError::Program {
        name,
        source: Box::new(e),
    }
}

fn missing(name: &'static str) -> DataplaneError {
    DataplaneError::Program {
        name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

/// Loads one program into the kernel.
fn load_program(ebpf: &mut Ebpf, a: &Attachment) -> Result<(), DataplaneError> {
    let prog = ebpf
        .program_mut(a.program)
        .ok_or_else(|| missing(a.program))?;
    match a.kind {
        Kind::Skb(_) => <&mut CgroupSkb>::try_from(prog)
            .map_err(prog_err(a.program))?
            .load(),
        Kind::Sock => <&mut CgroupSock>::try_from(prog)
            .map_err(prog_err(a.program))?
            .load(),
        Kind::SockAddr => <&mut CgroupSockAddr>::try_from(prog)
            .map_err(prog_err(a.program))?
            .load(),
    }
    .map_err(prog_err(a.program))
}

/// Attaches one program to the cgroup and returns its link, not yet pinned.
///
/// A cgroup bpf_link always coexists with other programs (it has
/// BPF_F_ALLOW_MULTI semantics); BPF_LINK_CREATE rejects that flag itself,
/// so the mode here must be Single (cgroup_bpf_link_attach in
/// kernel/bpf/cgroup.c).
fn attach_program(
    ebpf: &mut Ebpf,
    a: &Attachment,
    cg: &fs::File,
) -> Result<FdLink, DataplaneError> {
    let prog = ebpf
        .program_mut(a.program)
        .ok_or_else(|| missing(a.program))?;
    let mode = CgroupAttachMode::Single;
    let link_err = |e| DataplaneError::Link {
        path: PathBuf::from(a.pin),
        source: Box::new(e),
    };
    match a.kind {
        Kind::Skb(t) => {
            let p = <&mut CgroupSkb>::try_from(prog).map_err(prog_err(a.program))?;
            let id = p.attach(cg.as_fd(), t, mode).map_err(prog_err(a.program))?;
            FdLink::try_from(p.take_link(id).map_err(prog_err(a.program))?).map_err(link_err)
        }
        Kind::Sock => {
            let p = <&mut CgroupSock>::try_from(prog).map_err(prog_err(a.program))?;
            let id = p.attach(cg.as_fd(), mode).map_err(prog_err(a.program))?;
            FdLink::try_from(p.take_link(id).map_err(prog_err(a.program))?).map_err(link_err)
        }
        Kind::SockAddr => {
            let p = <&mut CgroupSockAddr>::try_from(prog).map_err(prog_err(a.program))?;
            let id = p.attach(cg.as_fd(), mode).map_err(prog_err(a.program))?;
            FdLink::try_from(p.take_link(id).map_err(prog_err(a.program))?).map_err(link_err)
        }
    }
}

/// What a running or past agent attached, kept beside the pins so that
/// `status`, a restarted agent and `detach` know it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRecord {
    pub cgroup: PathBuf,
    /// The attached cgroup's id (inode): a cgroup re-created at the same
    /// path (a restarted service) has a new one, and the old links died
    /// with the old cgroup. 0 in records of older agents.
    #[serde(default)]
    pub cgroup_id: u64,
    pub object_hash: u64,
    pub pid: u32,
    /// The interfaces the backstop's tc filter is on (empty: off). Kept
    /// here because netlink filters cannot be pinned: a restart and
    /// `detach` find them through this.
    #[serde(default)]
    pub backstop: Vec<String>,
}

impl AttachRecord {
    pub fn read(layout: &Layout) -> Option<Self> {
        let text = fs::read_to_string(layout.attach_record()).ok()?;
        serde_json::from_str(&text).ok()
    }
    /// Records the backstop's interfaces in the existing record.
    pub fn set_backstop(layout: &Layout, names: Vec<String>) -> Result<(), DataplaneError> {
        let mut r = Self::read(layout).unwrap_or_default();
        r.backstop = names;
        r.write(layout)
    }

    fn write(&self, layout: &Layout) -> Result<(), DataplaneError> {
        fs::create_dir_all(&layout.run_dir).map_err(io_err("create", &layout.run_dir))?;
        let path = layout.attach_record();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        fs::write(&tmp, text).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))
    }
}

/// FNV-1a: a stable fingerprint of the embedded object, to tell whether
/// pinned links already run this very code.
pub fn object_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// [`object_hash`] of [`EBPF_OBJECT`], computed once: attaching to a
/// re-created target cgroup should not wait for 2 MB to be hashed byte by
/// byte again (about 30 ms in a debug build).
fn embedded_object_hash() -> u64 {
    static HASH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HASH.get_or_init(|| object_hash(EBPF_OBJECT))
}

/// Detaches the bpf_link pinned at `pin` from its cgroup now
/// (BPF_LINK_DETACH, Linux 5.9: `cgroup_bpf_link_detach` runs under the
/// cgroup mutex before the call returns); the pin stays for the caller.
pub(crate) fn detach_link_now(pin: &Path) -> io::Result<()> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let get = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET; the kernel reads the
    // NUL-terminated path, which outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGet,
            std::mem::size_of::<ObjGet>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just returned, owned here (closed on drop).
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let detach = LinkDetach {
        link_fd: fd.as_raw_fd() as u32,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_LINK_DETACH.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &detach as *const LinkDetach,
            std::mem::size_of::<LinkDetach>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted yet.
pub fn ensure_bpffs() -> Result<(), DataplaneError> {
    let mounts =
        fs::read_to_string("/proc/mounts").map_err(io_err("read", Path::new("/proc/mounts")))?;
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    });
    if mounted {
        return Ok(());
    }
    let dir = Path::new("/sys/fs/bpf");
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .map_err(io_err("mount bpffs at", dir))?;
    if !ok.success() {
        return Err(DataplaneError::Io {
            op: "mount bpffs at",
            path: dir.into(),
            source: io::Error::other(format!("mount exited with {ok}")),
        });
    }
    Ok(())
}

/// Loads the programs, creating the maps under the pin root or reusing the
/// ones pinned there (so policy and counters carry over). Attaches nothing.
pub fn load(layout: &Layout, object: &[u8]) -> Result<Ebpf, DataplaneError> {
    if object.is_empty() {
        return Err(DataplaneError::NoObject);
    }
    let maps_dir = layout.pin_root.join("maps");
    fs::create_dir_all(&maps_dir).map_err(io_err("create", &maps_dir))?;
    check_layout(layout)?;
    let mut loader = EbpfLoader::new();
    let names: Vec<(&str, PathBuf)> = KERNEL_MAPS
        .iter()
        .chain([MAP_SOCK_STATE].iter())
        .map(|n| (*n, layout.map_pin(n)))
        .collect();
    for (name, path) in &names {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(object)
        .map_err(|e| DataplaneError::Load(Box::new(e)))?;
    for a in &ATTACHMENTS {
        load_program(&mut ebpf, a)?;
    }
    // The DNS answer parser and query judge are not attached: the ingress
    // and egress programs tail-call them through the pinned program arrays
    // (whose entries live as long as their pins).
    load_tail_call(&mut ebpf, PROG_DNS, MAP_DNS_PROGS)?;
    load_tail_call(&mut ebpf, PROG_DNS_QUERY, MAP_DNSQ_PROGS)?;
    // Loaded whether or not the config turns the backstop on, so that a
    // kernel that refuses them fails the start like any other program.
    crate::kernel::backstop::load_programs(&mut ebpf)?;
    // A config created just now is all zeros: audit mode, generation 0.
    let mut maps = Maps::open(layout)?;
    if maps.config()?.layout == 0 {
        maps.set_config_field(ConfigField::Layout, LAYOUT_VERSION);
    }
    Ok(ebpf)
}

/// Loads the cgroup_skb program `prog` and puts it at index 0 of the
/// program array `map`, from which another program tail-calls it.
fn load_tail_call(
    ebpf: &mut Ebpf,
    prog: &'static str,
    map: &'static str,
) -> Result<(), DataplaneError> {
    let p = ebpf.program_mut(prog).ok_or_else(|| missing(prog))?;
    let p = <&mut CgroupSkb>::try_from(p).map_err(prog_err(prog))?;
    p.load().map_err(prog_err(prog))?;
    let fd = p
        .fd()
        .map_err(prog_err(prog))?
        .try_clone()
        .map_err(|e| DataplaneError::Io {
            op: "dup the fd of",
            path: prog.into(),
            source: e,
        })?;
    let progs = ebpf.map_mut(map).ok_or_else(|| missing(map))?;
    let mut progs = ProgramArray::try_from(progs).map_err(map_err(map))?;
    progs.set(0, &fd, 0).map_err(map_err(map))
}

fn check_layout(layout: &Layout) -> Result<(), DataplaneError> {
    let path = layout.map_pin(MAP_CONFIG);
    if !path.exists() {
        return Ok(());
    }
    let data = MapData::from_pin(&path).map_err(map_err(MAP_CONFIG))?;
    let arr: Array<MapData, KernelConfig> =
        Array::try_from(aya::maps::Map::Array(data)).map_err(map_err(MAP_CONFIG))?;
    let cfg = arr.get(&0, 0).map_err(map_err(MAP_CONFIG))?;
    if cfg.layout != 0 && cfg.layout != LAYOUT_VERSION {
        return Err(DataplaneError::Layout {
            root: layout.pin_root.clone(),
            found: cfg.layout,
            expected: LAYOUT_VERSION,
        });
    }
    Ok(())
}

pub fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSkb, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::Program {
            name,
            source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
        })?
        .try_into()
        .map_err(|e| DataplaneError::Program {
            name,
            source: Box::new(e),
        })
}

/// How [`attach`] went.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// Pinned links on this cgroup already run this object: kept as they are.
    Adopted,
    /// New links attached; any earlier ones were detached after them.
    Attached { replaced: bool },
}

/// Attaches the programs to `cgroup` and pins the links, unless pinned
/// links from an earlier agent already run this object there (then they
/// are adopted and nothing is touched: no gap, no double counting).
///
/// Replacing earlier links attaches the new ones first (multi-attach: both
/// run and both must pass) and only then unpins the old, so there is never
/// a moment without a filter.
pub fn attach(
    layout: &Layout,
    cgroup: &Path,
    object: &[u8],
    ebpf: Option<&mut Ebpf>,
) -> Result<(AttachOutcome, Option<Ebpf>), DataplaneError> {
    let hash = if std::ptr::eq(object, EBPF_OBJECT) {
        embedded_object_hash()
    } else {
        object_hash(object)
    };
    let record = AttachRecord::read(layout);
    let pinned = ATTACHMENTS.iter().all(|a| layout.link_pin(a.pin).exists());
    let cgroup_id = crate::kernel::cgroup::cgroup_id(cgroup)
        .map_err(|e| DataplaneError::Cgroup(Box::new(e)))?;
    if pinned {
        if let Some(r) = &record {
            if r.cgroup == cgroup && r.cgroup_id == cgroup_id && r.object_hash == hash {
                AttachRecord {
                    pid: std::process::id(),
                    ..r.clone()
                }
                .write(layout)?;
                return Ok((AttachOutcome::Adopted, None));
            }
        }
    }
    let mut owned = None;
    let ebpf = match ebpf {
        Some(e) => e,
        None => owned.insert(load(layout, object)?),
    };
    let links_dir = layout.pin_root.join("links");
    fs::create_dir_all(&links_dir).map_err(io_err("create", &links_dir))?;
    let cg = fs::File::open(cgroup).map_err(io_err("open cgroup", cgroup))?;
    // The id recorded is that of the directory opened, which the links
    // attach to: the path may name a re-created cgroup by now (a service
    // restarting again), and the agent follows the recorded id.
    let cgroup_id = {
        use std::os::unix::fs::MetadataExt as _;
        cg.metadata().map_err(io_err("stat cgroup", cgroup))?.ino()
    };
    let mut replaced = false;
    for a in &ATTACHMENTS {
        let fd_link = attach_program(ebpf, a, &cg)?;
        let final_path = layout.link_pin(a.pin);
        // bpffs refuses names with dots (reserved: bpf_lookup in kernel/bpf/inode.c).
        let tmp = layout.link_pin(&format!("{}_new", a.pin));
        let _ = fs::remove_file(&tmp);
        let pinned: PinnedLink = fd_link.pin(&tmp).map_err(|e| DataplaneError::Pin {
            path: tmp.clone(),
            source: Box::new(e),
        })?;
        replaced |= final_path.exists();
        // rename(2) over the old pin drops the old link's last reference,
        // which detaches the old program, after the new one is in place.
        fs::rename(&tmp, &final_path).map_err(io_err("rename", &final_path))?;
        drop(pinned);
    }
    Maps::open(layout)?.config_mem.store_object_hash(hash);
    AttachRecord {
        cgroup: cgroup.to_owned(),
        cgroup_id,
        object_hash: hash,
        pid: std::process::id(),
        // The backstop is the caller's to change (backstop::sync).
        backstop: record.map(|r| r.backstop).unwrap_or_default(),
    }
    .write(layout)?;
    Ok((AttachOutcome::Attached { replaced }, owned))
}

/// Removes every link and map the agent pinned: the programs are detached
/// once no process holds them any more. Returns what was removed.
pub fn detach(layout: &Layout) -> Result<Vec<PathBuf>, DataplaneError> {
    let mut removed = Vec::new();
    // The backstop's tc filters, recorded by name: they are not pinned.
    // Found in the network namespace this runs in (the agent's).
    for name in AttachRecord::read(layout)
        .map(|r| r.backstop)
        .unwrap_or_default()
    {
        crate::kernel::backstop::detach_filter(&name)?;
        removed.push(PathBuf::from(format!("tc egress filter on {name}")));
    }
    // Links first, detached at once: unpinning alone drops the last
    // reference, and the kernel releases a link in a work item some time
    // later (bpf_link_put, kernel/bpf/syscall.c), so traffic right after
    // `detach` could still meet the programs.
    if let Ok(entries) = fs::read_dir(layout.pin_root.join("links")) {
        for e in entries.flatten() {
            let p = e.path();
            detach_link_now(&p).map_err(io_err("detach the link pinned at", &p))?;
        }
    }
    for sub in ["links", "maps"] {
        let dir = layout.pin_root.join(sub);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            fs::remove_file(&p).map_err(io_err("unpin", &p))?;
            removed.push(p);
        }
        fs::remove_dir(&dir).map_err(io_err("remove", &dir))?;
    }
    if layout.pin_root.exists() {
        fs::remove_dir(&layout.pin_root).map_err(io_err("remove", &layout.pin_root))?;
    }
    let rec = layout.attach_record();
    if rec.exists() {
        fs::remove_file(&rec).map_err(io_err("remove", &rec))?;
        removed.push(rec);
    }
    // The run state too: its DNS answers would otherwise become the "last
    // good" answers of the next run, whatever its config.
    let state = crate::api::status::StateFile::path(layout);
    if crate::api::status::StateFile::remove(layout).map_err(io_err("remove", &state))? {
        removed.push(state);
    }
    Ok(removed)
}

fn resolver_key(ip: std::net::IpAddr) -> ResolverKey {
    let mut addr = [0u8; 16];
    match ip.to_canonical() {
        std::net::IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            ResolverKey { addr, v6: 0 }
        }
        std::net::IpAddr::V6(a) => ResolverKey {
            addr: a.octets(),
            v6: 1,
        },
    }
}

/// Typed handles on the pinned maps.
pub struct Maps {
    root: PathBuf,
    config: Array<MapData, KernelConfig>,
    /// The same entry, mapped: every change is a store to one field.
    config_mem: ConfigMapping,
    exact4: [HashMap<MapData, Key4, RuleRef>; 2],
    exact6: [HashMap<MapData, Key6, RuleRef>; 2],
    cidr4: [LpmTrie<MapData, Cidr4, RuleRef>; 2],
    cidr6: [LpmTrie<MapData, Cidr6, RuleRef>; 2],
    rules: Array<MapData, RuleState>,
    rule_stats: PerCpuArray<MapData, Counter>,
    deny_stats: PerCpuArray<MapData, Counter>,
    rule_names: Array<MapData, RuleName>,
    host_ports: [HashMap<MapData, HostPortKey, u32>; 2],
    dns_names: HashMap<MapData, u64, DnsHost>,
    dns_resolvers: HashMap<MapData, ResolverKey, u32>,
    dns_stats: PerCpuArray<MapData, u64>,
    dnsq_stats: PerCpuArray<MapData, u64>,
    learned4: HashMap<MapData, [u8; 4], Learned>,
    learned6: HashMap<MapData, [u8; 16], Learned>,
    /// What each slot holds, once read or written by us.
    shadow: [Option<Entries>; 2],
}

fn open_map(layout: &Layout, name: &str) -> Result<aya::maps::Map, DataplaneError> {
    let path = layout.map_pin(name);
    if !path.exists() {
        return Err(DataplaneError::NotAttached(layout.pin_root.clone()));
    }
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    aya::maps::Map::from_map_data(data).map_err(map_err(name))
}

macro_rules! typed {
    ($layout:expr, $name:expr) => {
        open_map($layout, $name)?
            .try_into()
            .map_err(map_err($name))?
    };
}

impl Maps {
    /// Opens the pinned maps; creates and pins the agent-only rule names map
    /// if it is not there yet.
    pub fn open(layout: &Layout) -> Result<Self, DataplaneError> {
        let names_path = layout.map_pin(MAP_RULE_NAMES);
        let rule_names: Array<MapData, RuleName> = if names_path.exists() {
            typed!(layout, MAP_RULE_NAMES)
        } else {
            if !layout.map_pin(MAP_CONFIG).exists() {
                return Err(DataplaneError::NotAttached(layout.pin_root.clone()));
            }
            let arr = Array::<MapData, RuleName>::create(MAX_RULES, 0)
                .map_err(map_err(MAP_RULE_NAMES))?;
            // pin() consumes the handle; the map lives on in bpffs.
            arr.pin(&names_path).map_err(|e| DataplaneError::Pin {
                path: names_path.clone(),
                source: Box::new(e),
            })?;
            typed!(layout, MAP_RULE_NAMES)
        };
        let config_path = layout.map_pin(MAP_CONFIG);
        let config_mem = MapData::from_pin(&config_path)
            .map_err(map_err(MAP_CONFIG))
            .and_then(|data| {
                ConfigMapping::new(&data).map_err(io_err("mmap the kernel config", &config_path))
            })?;
        Ok(Self {
            root: layout.pin_root.clone(),
            config: typed!(layout, MAP_CONFIG),
            config_mem,
            exact4: [typed!(layout, MAP_EXACT4[0]), typed!(layout, MAP_EXACT4[1])],
            exact6: [typed!(layout, MAP_EXACT6[0]), typed!(layout, MAP_EXACT6[1])],
            cidr4: [typed!(layout, MAP_CIDR4[0]), typed!(layout, MAP_CIDR4[1])],
            cidr6: [typed!(layout, MAP_CIDR6[0]), typed!(layout, MAP_CIDR6[1])],
            rules: typed!(layout, MAP_RULES),
            rule_stats: typed!(layout, MAP_RULE_STATS),
            deny_stats: typed!(layout, MAP_DENY_STATS),
            rule_names,
            host_ports: [
                typed!(layout, MAP_HOST_PORTS[0]),
                typed!(layout, MAP_HOST_PORTS[1]),
            ],
            dns_names: typed!(layout, MAP_DNS_NAMES),
            dns_resolvers: typed!(layout, MAP_DNS_RESOLVERS),
            dns_stats: typed!(layout, MAP_DNS_STATS),
            dnsq_stats: typed!(layout, MAP_DNSQ_STATS),
            learned4: typed!(layout, MAP_LEARNED4),
            learned6: typed!(layout, MAP_LEARNED6),
            shadow: [None, None],
        })
    }

    pub fn pin_root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> Result<KernelConfig, DataplaneError> {
        self.config.get(&0, 0).map_err(map_err(MAP_CONFIG))
    }

    /// Stores one field of the kernel config (see `config_map`): never a
    /// whole-entry write, which could undo another writer's field.
    pub fn set_config_field(&mut self, field: ConfigField, value: u32) {
        self.config_mem.store(field, value);
    }

    /// Switches the mode in place: the programs read it on every packet.
    pub fn set_mode(&mut self, mode: sdm_common::KernelMode) -> Result<(), DataplaneError> {
        self.set_config_field(ConfigField::Mode, mode.into());
        Ok(())
    }

    pub fn set_loopback(&mut self, loopback: u32) -> Result<(), DataplaneError> {
        self.set_config_field(ConfigField::Loopback, loopback);
        Ok(())
    }

    /// The floor of a learned address's lifetime, in seconds.
    pub fn set_learn_ttl_min(&mut self, secs: u32) -> Result<(), DataplaneError> {
        self.set_config_field(ConfigField::LearnTtlMin, secs);
        Ok(())
    }

    /// Whether a trusted resolver is on loopback (see `KernelConfig::loopback_dns`).
    pub fn set_loopback_dns(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.set_config_field(ConfigField::LoopbackDns, u32::from(on));
        Ok(())
    }

    /// `[dns] queries = "policy"` on or off (see `KernelConfig::dns_queries`).
    pub fn set_dns_queries(&mut self, policy: bool) {
        let v = if policy {
            sdm_common::DNS_QUERIES_POLICY
        } else {
            sdm_common::DNS_QUERIES_ANY
        };
        self.set_config_field(ConfigField::DnsQueries, v);
    }

    /// Verdict tracing through aya-log on or off.
    pub fn set_log_verdicts(&mut self, on: bool) {
        self.set_config_field(ConfigField::LogVerdicts, u32::from(on));
    }

    /// Makes `SDM_DNS_NAMES` hold exactly `names` (name key -> host id and
    /// name) and `SDM_DNS_RESOLV` exactly `resolvers`. Returns the writes.
    pub fn apply_dns(
        &mut self,
        names: &BTreeMap<u64, DnsHost>,
        resolvers: &[std::net::IpAddr],
    ) -> Result<usize, DataplaneError> {
        let mut writes = 0;
        let mut have = BTreeMap::new();
        for kv in self.dns_names.iter() {
            let (k, v) = kv.map_err(map_err(MAP_DNS_NAMES))?;
            have.insert(k, v);
        }
        let d = diff(&have, names);
        for (k, host) in &d.upsert {
            self.dns_names
                .insert(k, host, 0)
                .map_err(map_err(MAP_DNS_NAMES))?;
        }
        for k in &d.remove {
            self.dns_names.remove(k).map_err(map_err(MAP_DNS_NAMES))?;
        }
        writes += d.upsert.len() + d.remove.len();
        let want: BTreeMap<ResolverKey, u32> =
            resolvers.iter().map(|ip| (resolver_key(*ip), 1)).collect();
        let mut have = BTreeMap::new();
        for kv in self.dns_resolvers.iter() {
            let (k, v) = kv.map_err(map_err(MAP_DNS_RESOLVERS))?;
            have.insert(k, v);
        }
        let d = diff(&have, &want);
        for (k, v) in &d.upsert {
            self.dns_resolvers
                .insert(k, v, 0)
                .map_err(map_err(MAP_DNS_RESOLVERS))?;
        }
        for k in &d.remove {
            self.dns_resolvers
                .remove(k)
                .map_err(map_err(MAP_DNS_RESOLVERS))?;
        }
        Ok(writes + d.upsert.len() + d.remove.len())
    }

    /// Answers the DNS parser counted, by `DNS_RESULT_*`, summed over CPUs.
    pub fn dns_stats(&self) -> Result<[u64; sdm_common::DnsResult::COUNT], DataplaneError> {
        let mut out = [0; sdm_common::DnsResult::COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            let v = self
                .dns_stats
                .get(&(i as u32), 0)
                .map_err(map_err(MAP_DNS_STATS))?;
            *slot = v.iter().fold(0u64, |a, b| a.saturating_add(*b));
        }
        Ok(out)
    }

    /// Addresses of allowed answers the kernel could not store because
    /// `SDM_LEARNED4/6` was full, summed over CPUs.
    pub fn learn_table_full(&self) -> Result<u64, DataplaneError> {
        let v = self
            .dns_stats
            .get(&DNS_STAT_LEARN_FULL, 0)
            .map_err(map_err(MAP_DNS_STATS))?;
        Ok(v.iter().fold(0u64, |a, b| a.saturating_add(*b)))
    }

    /// Queries judged under `[dns] queries = "policy"`, by `DNSQ_*`,
    /// summed over CPUs.
    pub fn dns_query_stats(
        &self,
    ) -> Result<[u64; sdm_common::DnsQueryVerdict::COUNT], DataplaneError> {
        let mut out = [0; sdm_common::DnsQueryVerdict::COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            let v = self
                .dnsq_stats
                .get(&(i as u32), 0)
                .map_err(map_err(MAP_DNSQ_STATS))?;
            *slot = v.iter().fold(0u64, |a, b| a.saturating_add(*b));
        }
        Ok(out)
    }

    /// Addresses learned from DNS answers: (address, host id, expiry in
    /// CLOCK_MONOTONIC ns).
    pub fn learned(&self) -> Result<Vec<(std::net::IpAddr, u32, u64)>, DataplaneError> {
        let mut out = Vec::new();
        for kv in self.learned4.iter() {
            let (k, v) = kv.map_err(map_err(MAP_LEARNED4))?;
            out.push((std::net::IpAddr::from(k), v.host, v.expires_ns));
        }
        for kv in self.learned6.iter() {
            let (k, v) = kv.map_err(map_err(MAP_LEARNED6))?;
            out.push((std::net::IpAddr::from(k), v.host, v.expires_ns));
        }
        Ok(out)
    }

    /// Removes learned addresses that expired more than `grace` ago. The
    /// kernel already ignores them for new flows; connections opened
    /// earlier keep their socket's cached verdict either way. Returns how
    /// many were removed.
    pub fn expire_learned(&mut self, now_ns: u64, grace_ns: u64) -> Result<usize, DataplaneError> {
        let mut removed = 0;
        for (addr, _, expires) in self.learned()? {
            if expires.saturating_add(grace_ns) >= now_ns {
                continue;
            }
            let r = match addr {
                std::net::IpAddr::V4(a) => self.learned4.remove(&a.octets()),
                std::net::IpAddr::V6(a) => self.learned6.remove(&a.octets()),
            };
            // Gone already (another agent's sweep) is fine.
            if r.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Rule ids and names recorded in the pinned names map.
    pub fn rule_names(&self) -> Result<BTreeMap<u32, String>, DataplaneError> {
        let mut out = BTreeMap::new();
        for id in 0..MAX_RULES {
            let n = self
                .rule_names
                .get(&id, 0)
                .map_err(map_err(MAP_RULE_NAMES))?;
            let len = n.name.iter().position(|b| *b == 0).unwrap_or(n.name.len());
            if len > 0 {
                out.insert(id, String::from_utf8_lossy(&n.name[..len]).into_owned());
            }
        }
        Ok(out)
    }

    /// Gives every name an id, keeping the ids already recorded (so counters
    /// continue across restarts). Ids of names no longer wanted are reused
    /// only when no free id is left, with their counters cleared.
    pub fn assign_rule_ids(
        &mut self,
        names: &[&str],
    ) -> Result<BTreeMap<String, u32>, DataplaneError> {
        let known = self.rule_names()?;
        let by_name: BTreeMap<&str, u32> = known.iter().map(|(id, n)| (n.as_str(), *id)).collect();
        let wanted: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        let mut free: Vec<u32> = (0..MAX_RULES)
            .filter(|id| !known.contains_key(id))
            .rev()
            .collect();
        let mut stale: Vec<u32> = known
            .iter()
            .filter(|(_, n)| !wanted.contains(n.as_str()))
            .map(|(id, _)| *id)
            .rev()
            .collect();
        let mut out = BTreeMap::new();
        for name in names {
            if let Some(id) = by_name.get(name) {
                out.insert((*name).to_owned(), *id);
                continue;
            }
            let id = match free.pop() {
                Some(id) => id,
                None => {
                    let id = stale.pop().ok_or(DataplaneError::RuleIdsExhausted)?;
                    self.clear_rule_stats(id)?;
                    id
                }
            };
            let mut rn = RuleName::default();
            let b = name.as_bytes();
            let n = b.len().min(rn.name.len() - 1);
            rn.name[..n].copy_from_slice(&b[..n]);
            self.rule_names
                .set(id, rn, 0)
                .map_err(map_err(MAP_RULE_NAMES))?;
            out.insert((*name).to_owned(), id);
        }
        Ok(out)
    }

    fn clear_rule_stats(&mut self, id: u32) -> Result<(), DataplaneError> {
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io {
            op: "count",
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        for dir in [
            sdm_common::TrafficDir::Egress,
            sdm_common::TrafficDir::Ingress,
        ] {
            let zeros = PerCpuValues::try_from(vec![Counter::default(); ncpus]).map_err(|e| {
                DataplaneError::Io {
                    op: "build per-CPU values for",
                    path: MAP_RULE_STATS.into(),
                    source: e,
                }
            })?;
            self.rule_stats
                .set(rule_stats_index(id, dir), zeros, 0)
                .map_err(map_err(MAP_RULE_STATS))?;
        }
        Ok(())
    }

    fn sum(values: &PerCpuValues<Counter>) -> Counter {
        values.iter().fold(Counter::default(), |a, c| Counter {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        })
    }

    /// Allowed packets and bytes of a rule in one direction, summed over CPUs.
    pub fn rule_counter(
        &self,
        id: u32,
        dir: sdm_common::TrafficDir,
    ) -> Result<Counter, DataplaneError> {
        let v = self
            .rule_stats
            .get(&rule_stats_index(id, dir), 0)
            .map_err(map_err(MAP_RULE_STATS))?;
        Ok(Self::sum(&v))
    }

    /// Deny counter for (mode, direction, reason), summed over CPUs.
    pub fn deny_counter(
        &self,
        enforce: bool,
        dir: sdm_common::TrafficDir,
        reason: sdm_common::DenyReason,
    ) -> Result<Counter, DataplaneError> {
        let mode = if enforce {
            sdm_common::KernelMode::Enforce
        } else {
            sdm_common::KernelMode::Audit
        };
        let v = self
            .deny_stats
            .get(&deny_index(mode, dir, reason), 0)
            .map_err(map_err(MAP_DENY_STATS))?;
        Ok(Self::sum(&v))
    }

    /// Reads what a slot holds from the kernel.
    pub fn read_slot(&self, slot: usize) -> Result<Entries, DataplaneError> {
        let mut e = Entries::default();
        for kv in self.exact4[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_EXACT4[slot]))?;
            e.exact4.insert(k, v.rule);
        }
        for kv in self.exact6[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_EXACT6[slot]))?;
            e.exact6.insert(k, v.rule);
        }
        for kv in self.cidr4[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_CIDR4[slot]))?;
            e.cidr4.insert((k.prefix_len(), k.data()), v.rule);
        }
        for kv in self.cidr6[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_CIDR6[slot]))?;
            e.cidr6.insert((k.prefix_len(), k.data()), v.rule);
        }
        for kv in self.host_ports[slot].iter() {
            let (k, v) = kv.map_err(map_err(MAP_HOST_PORTS[slot]))?;
            e.host_ports.insert(k, v);
        }
        for id in 0..MAX_RULES {
            let s = self
                .rules
                .get(&rule_slot_index(slot as u32, id), 0)
                .map_err(map_err(MAP_RULES))?;
            if s.active != 0 {
                e.rules.insert(id);
            }
        }
        Ok(e)
    }

    /// The live slot's contents.
    pub fn live(&mut self) -> Result<Entries, DataplaneError> {
        let slot = (self.config()?.generation & 1) as usize;
        self.slot(slot).cloned()
    }

    fn slot(&mut self, slot: usize) -> Result<&Entries, DataplaneError> {
        if self.shadow[slot].is_none() {
            self.shadow[slot] = Some(self.read_slot(slot)?);
        }
        Ok(self.shadow[slot].get_or_insert_with(Entries::default))
    }

    /// Makes `want` the live policy. It is written into the idle slot (only
    /// the differences from what that slot held), then one write of the
    /// config flips the generation: packets see the old policy or the new
    /// one, never a mix. Returns the number of map writes, 0 when nothing
    /// changed (then nothing is flipped either). Contents that do not fit
    /// the maps are refused before anything is written; any error leaves
    /// the live slot, and so the enforced policy, as it was.
    pub fn apply(&mut self, want: &Entries) -> Result<usize, DataplaneError> {
        let cfg = self.config()?;
        let live = (cfg.generation & 1) as usize;
        if self.slot(live)? == want {
            return Ok(0);
        }
        if let Some(o) = want.overflow() {
            return Err(DataplaneError::Capacity(o));
        }
        let idle = live ^ 1;
        let have = self.slot(idle)?.clone();
        let mut writes = 0;
        // Mark a slot's contents unknown while it is being written, so an
        // error half way makes the next apply read it back from the kernel.
        self.shadow[idle] = None;

        // Removals first: the idle slot may still hold an older policy,
        // and adding before removing could overflow a map that the wanted
        // contents fit in (a rotation of many addresses, say).
        let d4 = diff(&have.exact4, &want.exact4);
        for k in &d4.remove {
            self.exact4[idle]
                .remove(k)
                .map_err(map_err(MAP_EXACT4[idle]))?;
        }
        let d6 = diff(&have.exact6, &want.exact6);
        for k in &d6.remove {
            self.exact6[idle]
                .remove(k)
                .map_err(map_err(MAP_EXACT6[idle]))?;
        }
        let c4 = diff(&have.cidr4, &want.cidr4);
        for (plen, k) in &c4.remove {
            self.cidr4[idle]
                .remove(&LpmKey::new(*plen, *k))
                .map_err(map_err(MAP_CIDR4[idle]))?;
        }
        let c6 = diff(&have.cidr6, &want.cidr6);
        for (plen, k) in &c6.remove {
            self.cidr6[idle]
                .remove(&LpmKey::new(*plen, *k))
                .map_err(map_err(MAP_CIDR6[idle]))?;
        }
        for (k, v) in &d4.upsert {
            self.exact4[idle]
                .insert(k, RuleRef { rule: *v }, 0)
                .map_err(map_err(MAP_EXACT4[idle]))?;
        }
        for (k, v) in &d6.upsert {
            self.exact6[idle]
                .insert(k, RuleRef { rule: *v }, 0)
                .map_err(map_err(MAP_EXACT6[idle]))?;
        }
        for ((plen, k), v) in &c4.upsert {
            self.cidr4[idle]
                .insert(&LpmKey::new(*plen, *k), RuleRef { rule: *v }, 0)
                .map_err(map_err(MAP_CIDR4[idle]))?;
        }
        for ((plen, k), v) in &c6.upsert {
            self.cidr6[idle]
                .insert(&LpmKey::new(*plen, *k), RuleRef { rule: *v }, 0)
                .map_err(map_err(MAP_CIDR6[idle]))?;
        }
        writes += [
            d4.upsert.len() + d4.remove.len(),
            d6.upsert.len() + d6.remove.len(),
            c4.upsert.len() + c4.remove.len(),
            c6.upsert.len() + c6.remove.len(),
        ]
        .iter()
        .sum::<usize>();

        // Removals first, as for the other maps: a full map must make room
        // before it takes the new entries.
        let d = diff(&have.host_ports, &want.host_ports);
        for k in &d.remove {
            self.host_ports[idle]
                .remove(k)
                .map_err(map_err(MAP_HOST_PORTS[idle]))?;
        }
        for (k, v) in &d.upsert {
            self.host_ports[idle]
                .insert(k, v, 0)
                .map_err(map_err(MAP_HOST_PORTS[idle]))?;
        }
        writes += d.upsert.len() + d.remove.len();

        for id in want.rules.symmetric_difference(&have.rules) {
            let active = u32::from(want.rules.contains(id));
            self.rules
                .set(rule_slot_index(idle as u32, *id), RuleState { active }, 0)
                .map_err(map_err(MAP_RULES))?;
            writes += 1;
        }
        self.shadow[idle] = Some(want.clone());

        // The agent is the generation's only writer: `cfg` was read above.
        self.set_config_field(ConfigField::Generation, cfg.generation.wrapping_add(1));
        Ok(writes + 1)
    }
}

/// Runs a program once on a crafted packet with BPF_PROG_TEST_RUN and
/// returns its verdict (1 pass, 0 drop). `packet` starts at the IP header;
/// an Ethernet header is put in front, as the kernel expects for skb
/// programs. `ifindex` must name a non-loopback device of the calling
/// thread's network namespace for the packet not to count as loopback.
/// aya has no wrapper for this command, hence the raw syscall.
pub fn test_run(
    prog: &CgroupSkb,
    packet: &[u8],
    ifindex: u32,
    repeat: u32,
) -> io::Result<(u32, u32)> {
    let fd = prog.fd().map_err(io::Error::other)?;
    test_run_fd(fd.as_fd().as_raw_fd(), packet, ifindex, repeat)
}

/// [`test_run`] on any skb program's fd (the benchmark's empty baseline
/// program is loaded without aya).
pub fn test_run_fd(
    raw: std::os::fd::RawFd,
    packet: &[u8],
    ifindex: u32,
    repeat: u32,
) -> io::Result<(u32, u32)> {
    let ethertype: u16 = match packet.first().map(|b| b >> 4) {
        Some(6) => 0x86dd,
        _ => 0x0800,
    };
    let mut data = Vec::with_capacity(14 + packet.len());
    data.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
    data.extend_from_slice(&ethertype.to_be_bytes());
    data.extend_from_slice(packet);
    // struct __sk_buff: only ifindex (offset 40) is set.
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut attr = TestRunAttr {
        prog_fd: raw as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: attr is a valid bpf_attr prefix for this command; the kernel
    // reads data_in/ctx_in within the sizes given and writes only attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((attr.retval, attr.duration))
}
