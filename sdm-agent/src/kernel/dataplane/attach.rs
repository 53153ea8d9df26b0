//! Attaching the programs to a cgroup: which programs ([`ATTACHMENTS`]),
//! adopting or replacing pinned links ([`attach`]), and the record of
//! what is attached ([`AttachRecord`]).

use std::{
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
    },
    Ebpf,
};
use sdm_common::{
    PROG_CONNECT4, PROG_CONNECT6, PROG_EGRESS, PROG_INGRESS, PROG_SENDMSG4, PROG_SENDMSG6,
    PROG_SOCK_CREATE,
};
use serde::{Deserialize, Serialize};

use super::{
    capacity, embedded_object_hash, io_err, load, missing, object_hash, prog_err, DataplaneError,
    Layout, Maps, EBPF_OBJECT,
};

/// The kind of program, which says how it is loaded and attached.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Skb(CgroupSkbAttachType),
    Sock,
    SockAddr,
}

/// One program and where its link is pinned.
#[derive(Clone, Copy, Debug)]
pub struct Attachment {
    pub program: &'static str,
    pub pin: &'static str,
    pub(super) kind: Kind,
}

/// Every program, in attach order: the packet filters first (they are the
/// authority), then the socket hooks that name processes and fail fast.
pub const ATTACHMENTS: [Attachment; 7] = [
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

    /// Whether this record says the object `hash` runs on the cgroup at
    /// `cgroup` whose id is `cgroup_id`.
    pub(super) fn runs(&self, cgroup: &Path, cgroup_id: u64, hash: u64) -> bool {
        self.cgroup == cgroup && self.cgroup_id == cgroup_id && self.object_hash == hash
    }

    pub(super) fn write(&self, layout: &Layout) -> Result<(), DataplaneError> {
        fs::create_dir_all(&layout.run_dir).map_err(io_err("create", &layout.run_dir))?;
        let path = layout.attach_record();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        fs::write(&tmp, text).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))
    }
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
/// a moment without a filter. Pinned rule maps that hold fewer than
/// `rules` rules are never adopted: the object is loaded with larger ones
/// (see `capacity`), which replace the pinned ones once the new links are
/// in place.
pub fn attach(
    layout: &Layout,
    cgroup: &Path,
    object: &[u8],
    ebpf: Option<&mut Ebpf>,
    rules: usize,
) -> Result<(AttachOutcome, Option<Ebpf>), DataplaneError> {
    let hash = if std::ptr::eq(object, EBPF_OBJECT) {
        embedded_object_hash()
    } else {
        object_hash(object)
    };
    let record = AttachRecord::read(layout);
    let holds = capacity::pinned_rule_capacity(layout)?.is_some_and(|c| c as usize >= rules);
    if holds && adopt_pinned(layout, cgroup, hash, record.as_ref())? {
        return Ok((AttachOutcome::Adopted, None));
    }
    let mut owned = None;
    let ebpf = match ebpf {
        Some(e) => e,
        None => owned.insert(load(layout, object, rules)?),
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
        replaced |= attach_and_pin(layout, ebpf, a, &cg)?;
    }
    // The new links run on grown rule maps (if load made any): they now
    // take the pins, and the old maps go with the old programs.
    if capacity::commit(layout)? {
        tracing::info!("the grown rule maps replaced the pinned ones");
    }
    Maps::open(layout)?.store_object_hash(hash);
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

/// Whether every link is pinned and the record says they run the object
/// `hash` on this very cgroup (same path, same id); if so, the record
/// takes this process's pid and the links are kept as they are.
fn adopt_pinned(
    layout: &Layout,
    cgroup: &Path,
    hash: u64,
    record: Option<&AttachRecord>,
) -> Result<bool, DataplaneError> {
    let pinned = ATTACHMENTS.iter().all(|a| layout.link_pin(a.pin).exists());
    let cgroup_id = crate::kernel::cgroup::cgroup_id(cgroup)
        .map_err(|e| DataplaneError::Cgroup(Box::new(e)))?;
    let Some(r) = record.filter(|_| pinned) else {
        return Ok(false);
    };
    if !r.runs(cgroup, cgroup_id, hash) {
        return Ok(false);
    }
    AttachRecord {
        pid: std::process::id(),
        ..r.clone()
    }
    .write(layout)?;
    Ok(true)
}

/// Attaches one program and pins its link over the previous one. Returns
/// whether a previous link was replaced.
fn attach_and_pin(
    layout: &Layout,
    ebpf: &mut Ebpf,
    a: &Attachment,
    cg: &fs::File,
) -> Result<bool, DataplaneError> {
    let fd_link = attach_program(ebpf, a, cg)?;
    let final_path = layout.link_pin(a.pin);
    // bpffs refuses names with dots (reserved: bpf_lookup in kernel/bpf/inode.c).
    let tmp = layout.link_pin(&format!("{}_new", a.pin));
    let _ = fs::remove_file(&tmp);
    let pinned: PinnedLink = fd_link.pin(&tmp).map_err(|e| DataplaneError::Pin {
        path: tmp.clone(),
        source: Box::new(e),
    })?;
    let replaced = final_path.exists();
    // rename(2) over the old pin drops the old link's last reference,
    // which detaches the old program, after the new one is in place.
    fs::rename(&tmp, &final_path).map_err(io_err("rename", &final_path))?;
    drop(pinned);
    Ok(replaced)
}
