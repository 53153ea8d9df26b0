//! Which eBPF object and programs the pinned links run: for the upgrade
//! tests, which start an agent with another object than the one before.

use std::{collections::BTreeMap, fs, path::PathBuf};

use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs,
};
use sdm_agent::kernel::dataplane::{object_hash, AttachRecord, Layout, ATTACHMENTS};

/// The second eBPF object, built by tests/build.rs: the same programs with
/// sdm-ebpf's feature `upgrade-variant` (one unused helper call more in
/// sdm_egress). The agent loads it with `run --object <path>`.
pub fn variant_object() -> PathBuf {
    let path = PathBuf::from(concat!(env!("OUT_DIR"), "/sdm-ebpf"));
    let len = fs::metadata(&path)
        .unwrap_or_else(|e| panic!("the variant eBPF object {}: {e}", path.display()))
        .len();
    assert!(
        len > 0,
        "the variant eBPF object {} is empty (a build with AYA_BUILD_SKIP=1): rebuild the tests \
         without it",
        path.display()
    );
    path
}

/// The hash attach.json records for the variant object.
pub fn variant_hash() -> u64 {
    let path = variant_object();
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    object_hash(&bytes)
}

/// The object hash in the attach record.
pub fn recorded_hash(layout: &Layout) -> u64 {
    AttachRecord::read(layout)
        .unwrap_or_else(|| panic!("no attach record at {}", layout.attach_record().display()))
        .object_hash
}

/// A program the kernel has loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    pub id: u32,
    /// The kernel's hash of its instructions (`bpf_prog_info.tag`): the
    /// same code has the same tag, whichever load it came from.
    pub tag: u64,
}

/// The program each pinned link runs, by pin name (egress, ingress, ...).
pub fn pinned_programs(layout: &Layout) -> BTreeMap<&'static str, Program> {
    let mut tags = BTreeMap::new();
    for info in loaded_programs() {
        let info = info.unwrap_or_else(|e| panic!("list the loaded programs: {e}"));
        tags.insert(info.id(), info.tag());
    }
    ATTACHMENTS
        .iter()
        .map(|a| {
            let path = layout.link_pin(a.pin);
            let link = PinnedLink::from_pin(&path)
                .unwrap_or_else(|e| panic!("open the link pinned at {}: {e}", path.display()));
            let id = FdLink::from(link)
                .info()
                .unwrap_or_else(|e| panic!("link info of {}: {e}", path.display()))
                .program_id();
            let tag = *tags
                .get(&id)
                .unwrap_or_else(|| panic!("program {id} of {} is not loaded", path.display()));
            (a.pin, Program { id, tag })
        })
        .collect()
}

/// Whether the kernel still holds a program with this id.
pub fn is_loaded(id: u32) -> bool {
    loaded_programs().any(|info| info.is_ok_and(|i| i.id() == id))
}
