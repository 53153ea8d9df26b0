//! The kernel's one config entry (`SDM_CONFIG`), mapped into this process.
//!
//! The map is created `BPF_F_MMAPABLE`, and every writer stores only the
//! field it owns, with one atomic store. A whole-entry update (read the
//! entry, change one field, write it all back) loses writes: an operator's
//! `sdm-agent mode enforce` that lands between the agent's read and its
//! write of a new policy generation would be undone by the agent writing
//! back the mode it had read. Field stores never overwrite another field.
//! The programs read each field with one load, so they see every store as
//! a whole (<https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/arraymap.c>,
//! `array_map_mmap`).

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::{self, NonNull},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use aya::maps::MapData;
use sdm_common::KernelConfig;

/// A `u32` field of [`KernelConfig`] that one writer owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigField {
    Mode,
    Loopback,
    Generation,
    LogVerdicts,
    Layout,
    LearnTtlMin,
    LoopbackDns,
    DnsQueries,
}

/// The shared mapping of the config entry; unmapped on drop.
pub struct ConfigMapping {
    base: NonNull<KernelConfig>,
    len: usize,
}

// SAFETY: the mapping is shared memory that is only read and written
// through atomics; the pointer stays valid until drop.
unsafe impl Send for ConfigMapping {}
// SAFETY: as above.
unsafe impl Sync for ConfigMapping {}

impl ConfigMapping {
    /// Maps the config map's entry read-write. Fails (EINVAL, or EPERM on
    /// a kernel without mmapable arrays) for a map not created mmapable.
    pub fn new(map: &MapData) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page).unwrap_or(4096).max(4096);
        // One entry: its value starts at offset 0 of the map's data pages.
        let len = size_of::<KernelConfig>().div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of a map fd; checked below.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(p.cast::<KernelConfig>()).ok_or_else(|| io::Error::other("mmap"))?;
        Ok(Self { base, len })
    }

    fn cell(&self, field: ConfigField) -> &AtomicU32 {
        let c = self.base.as_ptr();
        // SAFETY: `c` points at the mapped, page-aligned entry for as long
        // as `self` lives; every field is a naturally aligned u32.
        unsafe {
            let p = match field {
                ConfigField::Mode => ptr::addr_of_mut!((*c).mode),
                ConfigField::Loopback => ptr::addr_of_mut!((*c).loopback),
                ConfigField::Generation => ptr::addr_of_mut!((*c).generation),
                ConfigField::LogVerdicts => ptr::addr_of_mut!((*c).log_verdicts),
                ConfigField::Layout => ptr::addr_of_mut!((*c).layout),
                ConfigField::LearnTtlMin => ptr::addr_of_mut!((*c).learn_ttl_min_s),
                ConfigField::LoopbackDns => ptr::addr_of_mut!((*c).loopback_dns),
                ConfigField::DnsQueries => ptr::addr_of_mut!((*c).dns_queries),
            };
            AtomicU32::from_ptr(p)
        }
    }

    pub fn load(&self, field: ConfigField) -> u32 {
        self.cell(field).load(Ordering::SeqCst)
    }

    pub fn store(&self, field: ConfigField, value: u32) {
        self.cell(field).store(value, Ordering::SeqCst);
    }

    /// Stores the hash of the eBPF object the pinned links run.
    pub fn store_object_hash(&self, hash: u64) {
        // SAFETY: as in `cell`; the field is at offset 32, 8-byte aligned.
        unsafe { AtomicU64::from_ptr(ptr::addr_of_mut!((*self.base.as_ptr()).object_hash)) }
            .store(hash, Ordering::SeqCst);
    }
}

impl Drop for ConfigMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
