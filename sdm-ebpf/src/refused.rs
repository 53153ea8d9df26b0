//! A test fixture, never loaded by the agent: one cgroup_skb program that
//! every kernel's verifier refuses, because its two-call chain needs more
//! than the 512 bytes of stack a BPF program may use in all (MAX_BPF_STACK,
//! check_max_stack_depth in
//! https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/verifier.c).
//! It is the same refusal that 5.10 and 6.1 gave the real programs once,
//! and it lets the tests show that `sdm-agent check --kernel` names the
//! program and the verifier's reason and exits non-zero.
#![no_std]
#![no_main]

use core::hint::black_box;

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};

// The panic handler and license, shared with the real object.
#[path = "runtime.rs"]
mod runtime;

/// Bytes of stack each of the two frames takes: 2 x 320 > 512, while each
/// alone stays under LLVM's own per-function limit.
const FRAME_BYTES: usize = 320;

#[cgroup_skb(egress)]
pub fn sdm_refused(ctx: SkBuffContext) -> i32 {
    let mut outer = [0u8; FRAME_BYTES];
    outer[0] = ctx.len() as u8;
    let outer = black_box(outer);
    i32::from(outer[usize::from(outer[1]) % FRAME_BYTES] & 1) + inner(ctx.len())
}

#[inline(never)]
fn inner(len: u32) -> i32 {
    let mut frame = [0u8; FRAME_BYTES];
    frame[0] = len as u8;
    let frame = black_box(frame);
    i32::from(frame[usize::from(frame[2]) % FRAME_BYTES] & 1)
}
