//! What every eBPF object of this crate carries: the panic handler a
//! `no_std` binary needs (BPF programs cannot unwind; the verifier rejects
//! a reachable loop, so a panic path must be proven dead) and the license
//! section, which lets the kernel allow GPL-only helpers.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
