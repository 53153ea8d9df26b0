//! `connect()` and `sendmsg()` with an address, judged before any packet
//! exists, so that a denied destination fails at once with EPERM in
//! enforce mode instead of the application waiting for its own timeout
//! while its SYNs are dropped. The packet programs stay the authority for
//! every packet; this only fails fast. Returning 0 makes the syscall fail
//! with EPERM (`__cgroup_bpf_run_filter_sock_addr`,
//! https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/cgroup.c).
//!
//! Verdict order:
//!
//!  1. Every call: the calling process is recorded on the socket, for
//!     later deny events.
//!  2. Not TCP or UDP, or audit mode: allow (the packet path counts the
//!     would-be drops).
//!  3. An IPv4-mapped IPv6 destination (`::ffff:a.b.c.d`) is judged as the
//!     IPv4 address it goes out as.
//!  4. A loopback destination with `loopback = pass`: allow (judged on the
//!     loopback device by the packet programs, which know the interface).
//!  5. The egress allowlist (`policy::lookup`, learned addresses
//!     included): allow.
//!  6. UDP from a port an ingress rule opens, to a remote that sent to
//!     this socket (its cached verdict, or `SDM_PEERS`: a server
//!     answering with `sendto()`): allow. A
//!     `connect()` is never a reply, whatever port the socket is bound to.
//!  7. Otherwise refuse: counted as an enforce-mode egress `no_rule` deny
//!     and reported with the process's pid and comm.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use sdm_common::{
    deny_index, DenyReason, KernelMode, TrafficDir, LOOPBACK_ENFORCE, PROTO_TCP, PROTO_UDP,
};

use crate::{
    events::{flow_key, reserve_event, submit_event},
    maps::{CONFIG, DENY_STATS, SOCK_STATE},
    parse::PacketFlow,
    policy::{is_peer, lookup},
    sock::record_process,
    stats::add_packet,
    DROP, PASS,
};

#[cgroup_sock_addr(connect4)]
pub fn sdm_connect4(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn sdm_connect6(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sdm_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sdm_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, true)
}

/// The verdict for one call, in the order of the module's header.
#[inline(always)]
pub(crate) fn sock_addr_verdict(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    // 1.
    // SAFETY: the storage API takes this context.
    let st = unsafe { SOCK_STATE.get_or_insert_ptr_mut(ctx, None) };
    // SAFETY: null or a pointer from bpf_sk_storage_get.
    if let Some(st) = unsafe { st.as_mut() } {
        record_process(st);
    }
    // SAFETY: reading context fields the verifier allows for sock_addr programs.
    let (proto, port_be) = unsafe { ((*sa).protocol, (*sa).user_port) };
    let proto = proto as u8;
    // 2.
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return PASS;
    }
    let Some(config) = CONFIG.get(0) else {
        return PASS;
    };
    if config.mode != KernelMode::Enforce {
        return PASS;
    }
    let remote_port = u16::from_be(port_be as u16);
    // 3.
    let (remote, v6) = destination(ctx, v6);
    // 4.
    let loopback = if v6 {
        remote[..15].iter().all(|b| *b == 0) && remote[15] == 1
    } else {
        remote[0] == 127
    };
    if loopback && config.loopback != LOOPBACK_ENFORCE {
        return PASS;
    }
    // SAFETY: the socket behind the context; its source port is readable.
    let local_port = unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        if sk.is_null() {
            0
        } else {
            (*sk).src_port as u16
        }
    };
    let flow = PacketFlow {
        v6,
        proto,
        remote,
        local: [0; 16],
        remote_port,
        local_port,
        l4_off: 0,
    };
    // 5.
    let slot = config.generation & 1;
    if lookup(slot, &flow, TrafficDir::Egress, remote_port).is_some() {
        return PASS;
    }
    // 6. (see `policy::is_reply` for the packet programs' side)
    if proto == PROTO_UDP
        && local_port != 0
        && lookup(slot, &flow, TrafficDir::Ingress, local_port).is_some()
    {
        // SAFETY: null or a pointer from bpf_sk_storage_get.
        let cached = unsafe { st.as_ref() }.is_some_and(|st| {
            st.valid != 0
                && st.proto == proto
                && st.remote_port == remote_port
                && st.remote == flow.remote
        });
        // SAFETY: a helper on the program's own context.
        if cached
            || is_peer(
                unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
                &flow,
            )
        {
            return PASS;
        }
    }
    // 7.
    refuse(&flow)
}

/// The destination of the call, as the packet program will see it: an
/// IPv4-mapped IPv6 address on a dual-stack socket goes out as IPv4.
#[inline(always)]
fn destination(ctx: &SockAddrContext, v6: bool) -> ([u8; 16], bool) {
    let sa = ctx.sock_addr;
    let mut remote = [0u8; 16];
    // SAFETY: reading context fields the verifier allows for sock_addr
    // programs; addresses are read as the u32 words they are.
    unsafe {
        if v6 {
            let w = (*sa).user_ip6;
            let mut i = 0;
            while i < 4 {
                let b = w[i].to_ne_bytes();
                remote[i * 4] = b[0];
                remote[i * 4 + 1] = b[1];
                remote[i * 4 + 2] = b[2];
                remote[i * 4 + 3] = b[3];
                i += 1;
            }
        } else {
            let b = (*sa).user_ip4.to_ne_bytes();
            remote[0] = b[0];
            remote[1] = b[1];
            remote[2] = b[2];
            remote[3] = b[3];
        }
    }
    if v6 && remote[..10].iter().all(|b| *b == 0) && remote[10] == 0xff && remote[11] == 0xff {
        let v4 = [
            remote[12], remote[13], remote[14], remote[15], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        return (v4, false);
    }
    (remote, v6)
}

/// Step 7: counts the refusal and reports it with the calling process
/// (this hook runs in its context, unlike the packet programs).
#[inline(always)]
fn refuse(flow: &PacketFlow) -> i32 {
    add_packet(
        &DENY_STATS,
        deny_index(KernelMode::Enforce, TrafficDir::Egress, DenyReason::NoRule),
    );
    // SAFETY: a helper without arguments, in the process's context.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let key = flow_key(
        &flow.remote,
        flow.remote_port,
        flow.local_port,
        flow.proto,
        TrafficDir::Egress,
        DenyReason::NoRule,
        cgroup_id,
    );
    if let Some((packets, ev)) = reserve_event(&key) {
        // SAFETY: `ev` points at a reserved, zeroed ring buffer record.
        unsafe {
            (*ev).packets = packets;
            (*ev).cgroup_id = cgroup_id;
            (*ev).uid = bpf_get_current_uid_gid() as u32;
            (*ev).reason = DenyReason::NoRule as u32;
            (*ev).dir = TrafficDir::Egress as u8;
            (*ev).dropped = 1;
            (*ev).remote = flow.remote;
            (*ev).remote_port = flow.remote_port;
            (*ev).local_port = flow.local_port;
            (*ev).proto = flow.proto;
            (*ev).v6 = u8::from(flow.v6);
            (*ev).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            if let Ok(comm) = bpf_get_current_comm() {
                (*ev).comm = comm;
            }
        }
        submit_event(ev);
    }
    DROP
}
