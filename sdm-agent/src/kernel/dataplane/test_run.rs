//! Running an skb program on a crafted packet (BPF_PROG_TEST_RUN), for
//! the verdict tests and the benchmark.

use std::{io, os::fd::RawFd};

use aya::programs::{CgroupSkb, ProgramError, TestRun as _, TestRunOptions};

use crate::kernel::bpf_syscall;

/// Size of the context passed in: `struct __sk_buff`
/// (include/uapi/linux/bpf.h), of which only `ifindex` is set.
const SKB_CTX_LEN: usize = 192;
/// Offset of `ifindex` in `struct __sk_buff`.
const SKB_CTX_IFINDEX: usize = 40;

/// What BPF_PROG_TEST_RUN gets for `packet` (from the IP header on) on
/// `ifindex`: the packet behind an Ethernet header (an skb program's test
/// run expects one; its ethertype says IPv4 or IPv6 from the version
/// nibble), and a `struct __sk_buff` context holding only the ifindex.
pub(super) fn skb_test_input(packet: &[u8], ifindex: u32) -> (Vec<u8>, [u8; SKB_CTX_LEN]) {
    let ethertype: u16 = match packet.first().map(|b| b >> 4) {
        Some(6) => 0x86dd,
        _ => 0x0800,
    };
    let mut data = Vec::with_capacity(14 + packet.len());
    data.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
    data.extend_from_slice(&ethertype.to_be_bytes());
    data.extend_from_slice(packet);
    let mut ctx = [0u8; SKB_CTX_LEN];
    ctx[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    (data, ctx)
}

/// The kernel's average duration (ns, a u32 in `bpf_attr`) back from the
/// `Duration` aya makes of it.
pub(super) fn duration_ns(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// aya's error as the `io::Error` of the syscall when it is one, so that
/// callers can still tell EPERM or EINVAL.
pub(super) fn into_io(e: ProgramError) -> io::Error {
    match e {
        ProgramError::SyscallError(e) => e.io_error,
        e => io::Error::other(e),
    }
}

/// Runs a program once (or `repeat` times) on a crafted packet with
/// BPF_PROG_TEST_RUN, through aya's [`TestRun`](aya::programs::TestRun),
/// and returns its verdict (1 pass, 0 drop) and the kernel's average
/// duration in ns. `packet` starts at the IP header (see
/// `skb_test_input`). `ifindex` must name a non-loopback device of the
/// calling thread's network namespace for the packet not to count as
/// loopback.
pub fn test_run(
    prog: &CgroupSkb,
    packet: &[u8],
    ifindex: u32,
    repeat: u32,
) -> io::Result<(u32, u32)> {
    let (data, ctx) = skb_test_input(packet, ifindex);
    let opts = TestRunOptions {
        data_in: Some(&data),
        ctx_in: Some(&ctx),
        repeat,
        ..TestRunOptions::new()
    };
    let r = prog.test_run(opts).map_err(into_io)?;
    Ok((r.return_value, duration_ns(r.duration)))
}

/// [`test_run`] on any skb program's fd. The benchmark's empty baseline
/// program is loaded without aya, and aya 0.14 builds a program handle
/// only by loading it or from a pin (`CgroupSkb::from_pin`), never from a
/// bare fd: hence the raw command here.
pub fn test_run_fd(raw: RawFd, packet: &[u8], ifindex: u32, repeat: u32) -> io::Result<(u32, u32)> {
    let (data, ctx) = skb_test_input(packet, ifindex);
    bpf_syscall::prog_test_run(raw, &data, &ctx, repeat)
}
