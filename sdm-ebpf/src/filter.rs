//! The packet programs: cgroup_skb egress and ingress filters that allow
//! only the flows of the host's StrongDM role and count every packet.
//!
//! Verdict order (both directions; "remote" is the destination on egress
//! and the source on ingress). Each step is labelled with its number in
//! [`filter`]:
//!
//!  1. Loopback interface and `loopback = pass`: allow, uncounted. This
//!     comes before parsing, so a malformed packet on loopback passes too
//!     (loopback traffic never leaves the host).
//!  2. Not IPv4/IPv6, or a header that does not fit in the packet: deny,
//!     reason `malformed`.
//!  3. Non-first fragment (no transport header to judge): deny, reason
//!     `fragment`. The kernel reassembles before delivering to a socket and
//!     fragments after the egress hook, so only raw sockets ever show these.
//!  4. A protocol other than TCP, UDP, ICMP or ICMPv6 (after walking IPv4
//!     options and IPv6 extension headers): deny, reason `unknown_protocol`.
//!     An IPv4 loose/strict source route option, or an IPv6 routing header
//!     with segments left, names hops beyond the address judged: deny,
//!     reason `source_route`. (Steps 2-4 are parse.rs.)
//!  5. The socket's cached verdict (socket local storage, sock.rs) is for
//!     this same remote address, port and protocol, in this direction or as
//!     a reply to it (TCP: never into a listener, never a SYN without ACK),
//!     and its rule is still in the live policy: allow, counted for that
//!     rule. Established flows stop here: one storage lookup and two array
//!     lookups, whatever the policy size.
//!  6. The allowlist of this direction (policy.rs): exact (direction,
//!     protocol, port, address) in a hash map, then (direction, protocol,
//!     port, CIDR) in an LPM trie, then port ranges of more than 16 ports
//!     (address prefix, then port prefix, two LPM tries: ranges.rs), then
//!     addresses learned from DNS answers (dns.rs) and their hostnames'
//!     port ranges. Hit: allow, cache the verdict on the socket.
//!     After 5 or 6 on egress (and for a loopback resolver passed at 1): a
//!     packet to a trusted resolver's port 53 is noted for the DNS learning
//!     and, with `[dns] queries = "policy"`, judged by its question in the
//!     tail-called `sdm_dns_query` (dns.rs, steps Q1-Q5): refused, reason
//!     `dns_query`.
//!  7. The reverse allowlist, for replies (policy.rs): an ingress packet
//!     from a remote this host may reach on egress (unless it is addressed
//!     to a TCP listener, which only ingress rules may open), or an egress
//!     packet to a remote allowed in by an ingress rule on this local port.
//!     Hit: allow.
//!  8. Otherwise deny, reason `no_rule`.
//!
//! A deny (events.rs) drops the packet in enforce mode and passes it in
//! audit mode; either way it is counted under its mode, direction and
//! reason.
//!
//! Kernel behaviour relied on:
//! - the program sees the packet from its network header in both directions
//!   (`__cgroup_bpf_run_filter_skb` pushes back to it:
//!   https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/cgroup.c);
//! - egress runs only for packets of full sockets, so `skb->sk` is set
//!   (`BPF_CGROUP_RUN_PROG_INET_EGRESS`,
//!   https://github.com/torvalds/linux/blob/v6.18/include/linux/bpf-cgroup.h).

use aya_ebpf::{bindings::bpf_sock, macros::cgroup_skb, programs::SkBuffContext};
use aya_log_ebpf::info;
use sdm_common::{DenyReason, KernelConfig, SockState, TrafficDir, LOOPBACK_ENFORCE};

use crate::{
    dns,
    events::deny,
    maps::CONFIG,
    parse::{parse, PacketFlow},
    policy::{lookup, note_peers, reverse_lookup, NO_RULE},
    sock::{cached_rule, remember, skb_socket, sock_state},
    stats::count_rule,
    PASS,
};

/// The loopback device is ifindex 1 in every network namespace
/// (LOOPBACK_IFINDEX, include/net/flow.h).
pub(crate) const LOOPBACK_IFINDEX: u32 = 1;

#[cgroup_skb(egress)]
pub fn sdm_egress(ctx: SkBuffContext) -> i32 {
    // Only in the upgrade test's second object (feature `upgrade-variant`,
    // built by tests/build.rs, never shipped): real code whose result is
    // unused, so the program differs (another tag) but judges alike.
    #[cfg(feature = "upgrade-variant")]
    // SAFETY: a helper without arguments, allowed in every program type.
    let _ = core::hint::black_box(unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() });
    filter::<{ TrafficDir::Egress as u8 }>(&ctx)
}

#[cgroup_skb(ingress)]
pub fn sdm_ingress(ctx: SkBuffContext) -> i32 {
    filter::<{ TrafficDir::Ingress as u8 }>(&ctx)
}

#[inline(always)]
/// The verdict of `DIR` (a [`TrafficDir`] as `u8`: an enum is no const
/// parameter without an unstable feature): a constant per program, so that
/// each program holds only its own direction's code (the egress program's
/// tail call to the DNS query judge must not reach the ingress program,
/// even where LLVM keeps part of this function out of line).
pub(crate) fn filter<const DIR: u8>(ctx: &SkBuffContext) -> i32 {
    let dir = program_dir(DIR);
    // Tested on the constant, not on `dir`: see `program_dir`.
    let egress = DIR == TrafficDir::Egress as u8;
    let Some(config) = CONFIG.get(0) else {
        // The map always has its one entry; this only satisfies the verifier.
        return PASS;
    };
    let len = ctx.len();
    // 1.
    let loopback_pass = loopback_passes(ctx, config);
    // A local resolver (systemd-resolved, a cache) still teaches the DNS
    // learning: its queries name the answers to expect, its answers the
    // addresses. Parsed only when one is configured.
    if loopback_pass && config.loopback_dns == 0 {
        return PASS;
    }
    // 2, 3 and 4.
    let flow = match parse(ctx, dir) {
        Ok(flow) => flow,
        Err(_) if loopback_pass => return PASS,
        Err(why) => {
            let sk = skb_socket(ctx);
            return deny(
                ctx,
                &ctx.skb,
                config,
                dir,
                why.reason(),
                len,
                None,
                sk,
                None,
            );
        }
    };
    let slot = config.generation & 1;
    let sk = skb_socket(ctx);
    let port = if egress {
        flow.remote_port
    } else {
        flow.local_port
    };

    // 5 and 6: the rule that allows the flow, and whether it is new to the
    // socket (6) or its cached verdict (5). Loopback, when passed, has no
    // rule: it gets here only for the DNS queries to a local resolver.
    // The socket's storage, looked up once: step 5 reads it, step 6 writes it.
    let state = if loopback_pass {
        None
    } else {
        sock_state(sk, false)
    };
    let allowed = if loopback_pass {
        if !egress {
            return pass_answer::<DIR>(ctx, &flow);
        }
        Some((NO_RULE, false))
    } else if let Some(rule) = cached_rule(ctx, &flow, dir, slot, sk, state) {
        Some((rule, false))
    } else {
        lookup(slot, &flow, dir, port).map(|rule| (rule, true))
    };
    if let Some((rule, fresh)) = allowed {
        if fresh {
            remember_allowed::<DIR>(ctx, config, sk, state, &flow, port, rule);
        }
        return pass_allowed::<DIR>(ctx, config, &flow, rule, len);
    }

    // 7. Replies.
    if let Some(rule) = reverse_lookup(ctx, slot, &flow, dir, sk) {
        count_rule(rule, dir, len);
        return pass_answer::<DIR>(ctx, &flow);
    }

    // 8. No rule.
    let verdict = deny(
        ctx,
        &ctx.skb,
        config,
        dir,
        DenyReason::NoRule,
        len,
        Some(&flow),
        sk,
        None,
    );
    // Audit mode lets the packet through: an answer in it teaches as it
    // would under a policy that allowed it.
    if verdict == PASS {
        return pass_answer::<DIR>(ctx, &flow);
    }
    verdict
}

/// An ingress packet that passes: a DNS answer goes on to the parser
/// (dns.rs step 2), which passes it too; this returns only when there is
/// nothing to hand over. Inlined into the program itself: a tail call from
/// a subprogram is refused once its frame is deep (dns.rs `tail_call`).
#[inline(always)]
fn pass_answer<const DIR: u8>(ctx: &SkBuffContext, flow: &PacketFlow) -> i32 {
    if DIR == TrafficDir::Ingress as u8 {
        dns::hand_answer(ctx, flow);
    }
    PASS
}

/// The direction a program's `DIR` names (a constant, so this folds away).
/// Branches on the direction test `DIR` itself, not this enum: comparing
/// the enum there left LLVM a block layout that 6.1's verifier walked 2.4
/// times longer in sdm_egress (64,850 -> 157,965 instructions, while 6.18
/// barely moved); see the kernel matrix report.
#[inline(always)]
const fn program_dir(dir: u8) -> TrafficDir {
    if dir == TrafficDir::Egress as u8 {
        TrafficDir::Egress
    } else {
        TrafficDir::Ingress
    }
}

/// Step 1's test: the loopback interface, with `loopback = pass`.
#[inline(always)]
fn loopback_passes(ctx: &SkBuffContext, config: &KernelConfig) -> bool {
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    ifindex == LOOPBACK_IFINDEX && config.loopback != LOOPBACK_ENFORCE
}

/// Step 6's hit, new to the socket: the verdict cached on it, the
/// datagram peer noted, the verdict logged when asked. Generic over `DIR`
/// like [`filter`]: the log's closure is then one per program and inlined
/// there, not one out-of-line function both programs call (which costs
/// the verifier a subprogram per call site).
#[inline(always)]
fn remember_allowed<const DIR: u8>(
    ctx: &SkBuffContext,
    config: &KernelConfig,
    sk: *mut bpf_sock,
    state: Option<*mut SockState>,
    flow: &PacketFlow,
    port: u16,
    rule: u32,
) {
    let dir = program_dir(DIR);
    note_peers(ctx, flow, remember(sk, state, flow, dir, rule), rule);
    if DIR == TrafficDir::Egress as u8 {
        crate::xdp::note_flow(flow);
    }
    if config.log_verdicts != 0 {
        info!(
            ctx,
            "allow dir={} proto={} port={} rule={}", dir as u8, flow.proto, port, rule
        );
    }
}

/// Steps 5 and 6 end here: the packet passes, counted for its rule.
/// What leaves for a trusted resolver is first noted for the DNS learning
/// and, with `[dns] queries = "policy"`, judged by its question (a local
/// stub resolver forwards what it is asked, so on loopback too); the judge
/// counts the rule itself. After the socket's peer record: the answer to
/// an allowed query must find it.
#[inline(always)]
fn pass_allowed<const DIR: u8>(
    ctx: &SkBuffContext,
    config: &KernelConfig,
    flow: &PacketFlow,
    rule: u32,
    len: u32,
) -> i32 {
    if DIR == TrafficDir::Egress as u8
        && dns::judge_query(ctx, flow, config, rule) == dns::Query::Unjudged
    {
        return dns::unjudged(config);
    }
    count_rule(rule, program_dir(DIR), len);
    pass_answer::<DIR>(ctx, flow)
}
