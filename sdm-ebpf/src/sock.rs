//! Socket local storage: who created a socket (for deny events) and the
//! socket's cached verdict (verdict order step 5).

use core::ptr;

use aya_ebpf::{
    bindings::{bpf_sock, BPF_SK_STORAGE_GET_F_CREATE},
    cty::c_void,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_sk_fullsock, bpf_sk_storage_get, bpf_tcp_sock},
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

/// Records the creating process on every new socket of the cgroup but TCP
/// ones, so denies on it can name who owns it. A TCP socket's verdicts are
/// taken at `connect()` in the caller's context (`sock_addr`), and its
/// storage is created only when caching pays ([`remember`]): creating it
/// here cost a short connection about 0.9 us, a third of what the programs
/// cost it (BENCHMARKS.md figure 8).
#[cgroup_sock(sock_create)]
pub fn sdm_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: reading a field of the context the verifier allows here.
    if unsafe { (*ctx.sock).protocol } == u32::from(PROTO_TCP) {
        return PASS;
    }
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

/// Step 5: the rule of the socket's cached verdict (`state`, the socket's
/// storage, looked up once per packet by the caller), if it covers this
/// packet (same remote, port and protocol; see `cache_serves`) and the rule
/// is still in the live policy.
#[inline(always)]
pub(crate) fn cached_rule(
    ctx: &SkBuffContext,
    flow: &PacketFlow,
    dir: TrafficDir,
    slot: u32,
    sk: *mut bpf_sock,
    state: Option<*mut SockState>,
) -> Option<u32> {
    let state = state?;
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

/// The packet's socket as the context holds it (a `sock_common`, null
/// without one), for what accepts one: socket storage (the helper checks
/// for a full socket itself and finds nothing on a request or timewait
/// socket: `bpf_sk_storage_get` in
/// https://github.com/torvalds/linux/blob/v6.18/net/core/bpf_sk_storage.c)
/// and the `state` field. One helper call fewer per packet than
/// [`full_socket`]; helper calls are most of what an established flow
/// costs.
#[inline(always)]
pub(crate) fn skb_socket(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: reading the context's `sk` field, which the verifier allows
    // for cgroup_skb programs.
    unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk }
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

/// Segments a TCP connection has sent and received before its verdict is
/// cached: a connection that opens, asks once and closes (what a gateway
/// does for every proxied session) takes about ten, each judged by the
/// allowlist for a few tens of ns, which costs less than creating the
/// storage (an allocation, about 0.9 us here).
pub(crate) const TCP_CACHE_AFTER_SEGS: u32 = 16;

/// Whether caching this flow's verdict pays: always for a socket that has
/// storage already, and for datagram sockets (connected UDP talks to one
/// peer for its life); for TCP, once the connection has lived past
/// [`TCP_CACHE_AFTER_SEGS`] segments.
#[inline(always)]
fn caching_pays(sk: *mut bpf_sock, flow: &PacketFlow) -> bool {
    if flow.proto != PROTO_TCP || sk.is_null() {
        return true;
    }
    // SAFETY: sk is the context's socket, non-null; the helper accepts a
    // sock_common and returns null unless it is a full TCP socket.
    let tp = unsafe { bpf_tcp_sock(sk.cast()) };
    if tp.is_null() {
        // Not a full TCP socket (a request or timewait socket, which have
        // no storage, or BPF_PROG_TEST_RUN's socket of one call): nothing a
        // cache would serve.
        return false;
    }
    // SAFETY: a non-null pointer from bpf_tcp_sock, read-only fields.
    let segs = unsafe { (*tp).segs_in.wrapping_add((*tp).segs_out) };
    segs >= TCP_CACHE_AFTER_SEGS
}

/// Caches the verdict of a flow step 6 allowed on its socket, creating the
/// storage where caching pays (sockets older than the programs, TCP
/// sockets, sockets seen only by BPF_PROG_TEST_RUN).
#[inline(always)]
pub(crate) fn remember(
    sk: *mut bpf_sock,
    state: Option<*mut SockState>,
    flow: &PacketFlow,
    dir: TrafficDir,
    rule: u32,
) -> Cached {
    let state = match state {
        Some(state) => state,
        None if caching_pays(sk, flow) => match sock_state(sk, true) {
            Some(state) => state,
            None => return Cached::No,
        },
        None => return Cached::No,
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
