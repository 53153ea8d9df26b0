//! Per-CPU counters of allowed and denied packets.

use core::{
    intrinsics::{atomic_xadd, AtomicOrdering},
    ptr,
};

use aya_ebpf::maps::PerCpuArray;
use sdm_common::{rule_stats_index, Counter, TrafficDir, RULE_CEILING};

use crate::maps::RULE_STATS;

/// Atomic `*p += v` (see the crate's `core_intrinsics` note).
#[inline(always)]
pub(crate) fn atomic_add_u64(p: *mut u64, v: u64) {
    // SAFETY: callers pass valid map value pointers.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

#[inline(always)]
pub(crate) fn count_rule(rule: u32, dir: TrafficDir, len: u32) {
    // The ceiling, not the map's size (the agent sets that): it keeps the
    // index from wrapping (NO_RULE); an id past the map's end counts nothing.
    if rule < RULE_CEILING {
        add(&RULE_STATS, rule_stats_index(rule, dir), len);
    }
}

/// Adds one refused send, which has no bytes. Not `add(.., 0)`: LLVM turns
/// an atomic add of a constant 0 into an atomic OR, an instruction 5.10
/// rejects ("BPF_STX uses reserved fields"; atomics other than add came in
/// 5.12: https://github.com/torvalds/linux/blob/v5.10/kernel/bpf/verifier.c).
#[inline(always)]
pub(crate) fn add_packet(map: &PerCpuArray<Counter>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is valid per-CPU map memory, 8-byte aligned.
        unsafe { atomic_add_u64(ptr::addr_of_mut!((*c).packets), 1) };
    }
}

/// Adds one packet of `len` bytes. Atomic even though the array is per-CPU:
/// a softirq (ingress, TCP timers) can interrupt a process-context program
/// on the same CPU, and a plain `+=` would then lose one of the two.
#[inline(always)]
pub(crate) fn add(map: &PerCpuArray<Counter>, index: u32, len: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is valid per-CPU map memory, 8-byte aligned.
        unsafe {
            atomic_add_u64(ptr::addr_of_mut!((*c).packets), 1);
            atomic_add_u64(ptr::addr_of_mut!((*c).bytes), u64::from(len));
        }
    }
}
