//! Socket local storage: who created a socket (for deny events) and the
//! socket's cached verdict (verdict order step 5).

use core::ptr;

use aya_ebpf::{
    bindings::{bpf_sock, BPF_SK_STORAGE_GET_F_CREATE},
    cty::c_void,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_sk_fullsock, bpf_sk_storage_get},
    },
    macros::cgroup_sock,
    programs::{SkBuffContext, SockContext},
};
use sdm_common::{SockState, TrafficDir, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP};

use crate::{
    maps::SOCK_STATE,
    parse::PacketFlow,
    policy::{is_reply, rule_active},
    PASS,
};

/// Records the creating process on every new socket of the cgroup, so
/// denies on it can name who owns it.
#[cgroup_sock(sock_create)]
pub fn sdm_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context is the new socket; sk storage accepts it here
    // (bpf_sk_storage_get_cg_sock_proto, net/core/bpf_sk_storage.c).
    let state = unsafe {
        bpf_sk_storage_get(
            ptr::addr_of!(SOCK_STATE).cast_mut().cast::<c_void>(),
            ctx.sock.cast::<c_void>(),
            ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<SockState>();
    if !state.is_null() {
        // SAFETY: a non-null pointer from bpf_sk_storage_get.
        unsafe { record_process(&mut *state) };
    }
    PASS
}

#[inline(always)]
pub(crate) fn record_process(st: &mut SockState) {
    st.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Ok(comm) = bpf_get_current_comm() {
        st.comm = comm;
    }
}

/// Step 5: the rule of the socket's cached verdict, if it covers this
/// packet (same remote, port and protocol; see `cache_serves`) and the rule
/// is still in the live policy.
#[inline(always)]
pub(crate) fn cached_rule(
    ctx: &SkBuffContext,
    flow: &PacketFlow,
    dir: TrafficDir,
    slot: u32,
    sk: *mut bpf_sock,
) -> Option<u32> {
    let state = sock_state(sk, false)?;
    // SAFETY: a non-null pointer from bpf_sk_storage_get.
    let st = unsafe { &*state };
    let hit = st.valid != 0
        && st.proto == flow.proto
        && st.remote_port == cache_port(flow)
        && st.remote == flow.remote
        && cache_serves(ctx, flow, dir, st.dir, sk)
        && rule_active(slot, st.rule);
    hit.then_some(st.rule)
}

/// Whether a socket's cached verdict, stored when a rule of direction
/// `cached` allowed a packet, covers this packet of direction `dir`. The
/// same direction always; the other one only for what is a reply:
/// - UDP and ICMP: the cached flow proves the socket and the remote are
///   peers (it sent to them, or they sent to it under a rule);
/// - TCP ingress: not to a listener. A socket that connected out to an
///   allowed remote and then listens (connect, disconnect with AF_UNSPEC,
///   listen) would otherwise accept that remote's connections on a port
///   no ingress rule opens;
/// - TCP egress: not a SYN without ACK, which opens a connection.
#[inline(always)]
pub(crate) fn cache_serves(
    ctx: &SkBuffContext,
    flow: &PacketFlow,
    dir: TrafficDir,
    cached: u8,
    sk: *mut bpf_sock,
) -> bool {
    if cached == dir || flow.proto != PROTO_TCP {
        return true;
    }
    is_reply(ctx, flow, dir, sk)
}

/// The port a socket's cached verdict is keyed on: ICMP requests and replies
/// have different types, so ICMP is cached by address alone.
#[inline(always)]
pub(crate) fn cache_port(flow: &PacketFlow) -> u16 {
    if flow.proto == PROTO_ICMP || flow.proto == PROTO_ICMPV6 {
        0
    } else {
        flow.remote_port
    }
}

#[inline(always)]
pub(crate) fn full_socket(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: reading the context's `sk` field, which the verifier allows
    // for cgroup_skb programs; bpf_sk_fullsock accepts NULL.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return ptr::null_mut();
        }
        bpf_sk_fullsock(sk)
    }
}

#[inline(always)]
pub(crate) fn sock_state(sk: *mut bpf_sock, create: bool) -> Option<*mut SockState> {
    if sk.is_null() {
        return None;
    }
    let flags = if create {
        u64::from(BPF_SK_STORAGE_GET_F_CREATE)
    } else {
        0
    };
    // SAFETY: sk is a full socket from bpf_sk_fullsock; the map pointer is
    // the BTF map definition the loader relocates.
    let p = unsafe {
        bpf_sk_storage_get(
            ptr::addr_of!(SOCK_STATE).cast_mut().cast::<c_void>(),
            sk.cast::<c_void>(),
            ptr::null_mut(),
            flags,
        )
    };
    if p.is_null() {
        None
    } else {
        Some(p.cast::<SockState>())
    }
}

/// What [`remember`] did with the socket's cache.
pub(crate) enum Cached {
    /// The socket has no storage (the kernel could not allocate it).
    No,
    /// Cached, in place of nothing or of this same flow.
    Yes,
    /// Cached in place of another flow of the socket, which the caller
    /// keeps as a datagram peer (`policy::note_peers`): its remote and port,
    /// and the rule that allowed it.
    Replaced([u8; 16], u16, u32),
}

/// Caches the verdict of a flow step 6 allowed on its socket (creating the
/// storage for sockets older than the programs, or seen only by
/// BPF_PROG_TEST_RUN).
#[inline(always)]
pub(crate) fn remember(sk: *mut bpf_sock, flow: &PacketFlow, dir: TrafficDir, rule: u32) -> Cached {
    let Some(state) = sock_state(sk, true) else {
        return Cached::No;
    };
    // SAFETY: a non-null pointer from bpf_sk_storage_get.
    let st = unsafe { &mut *state };
    let port = cache_port(flow);
    let replaced = st.valid != 0
        && st.proto == flow.proto
        && (st.remote != flow.remote || st.remote_port != port);
    let cached = if replaced {
        Cached::Replaced(st.remote, st.remote_port, st.rule)
    } else {
        Cached::Yes
    };
    st.remote = flow.remote;
    st.remote_port = port;
    st.proto = flow.proto;
    st.dir = dir as u8;
    st.rule = rule;
    st.valid = 1;
    cached
}

/// Whether the socket's cache holds this datagram flow's remote and port,
/// whatever its rule: the socket and the remote are peers (see
/// `policy::note_peers`).
#[inline(always)]
pub(crate) fn holds_peer(sk: *mut bpf_sock, flow: &PacketFlow) -> bool {
    let Some(state) = sock_state(sk, false) else {
        return false;
    };
    // SAFETY: a non-null pointer from bpf_sk_storage_get.
    let st = unsafe { &*state };
    st.valid != 0
        && st.proto == flow.proto
        && st.remote_port == flow.remote_port
        && st.remote == flow.remote
}
