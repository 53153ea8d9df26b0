//! The backstop: frames that reach a host interface from below the IP
//! layer, where no cgroup program runs.
//!
//! A packet socket (AF_PACKET, with CAP_NET_RAW) writes whole link-layer
//! frames: `packet_snd` hands them to `dev_queue_xmit` without passing
//! `ip_finish_output`, so the cgroup egress program never sees them
//! (https://github.com/torvalds/linux/blob/v6.18/net/packet/af_packet.c).
//! `sdm_backstop` runs at tc (clsact) egress of the interfaces the config
//! lists and judges, in this order:
//!
//!  1. A packet without a full socket (forwarded, the kernel's own ARP and
//!     neighbour discovery, socket-less tunnel traffic): passed untouched.
//!     Such a packet cannot be attributed to a cgroup.
//!  2. A packet of an AF_INET/AF_INET6 socket: passed untouched. The cgroup
//!     egress program judged it already in `ip_finish_output` /
//!     `ip6_finish_output` (`BPF_CGROUP_RUN_PROG_INET_EGRESS`, raw IP
//!     sockets included:
//!     https://github.com/torvalds/linux/blob/v6.18/net/ipv4/ip_output.c),
//!     so judging it again would only double the per-packet cost.
//!  3. A socket outside the target cgroup (`bpf_skb_under_cgroup` against
//!     `SDM_BACKSTOP_CG`, which the agent fills with the target's
//!     directory; a descendant counts, as for the cgroup programs): passed.
//!  4. What remains is a frame of a packet (or other non-IP) socket of the
//!     target cgroup. IPv4 or IPv6 is parsed as the cgroup programs parse
//!     it and judged by the egress allowlist: steps 2, 3, 4, 6 and 8 of
//!     the verdict order in filter.rs (a packet socket has no cached verdict
//!     and receives no replies that would make step 7 apply). Any other
//!     ethertype (ARP, a VLAN tag, anything else) is denied, reason
//!     `packet_socket`.
//!
//! A deny drops in enforce mode (`TC_ACT_SHOT`) and passes in audit mode;
//! both count and report like the cgroup programs. Everything passed
//! returns `TC_ACT_UNSPEC`, so other filters on the interface still run.
//!
//! `PACKET_QDISC_BYPASS` makes a packet socket transmit through
//! `dev_direct_xmit`, which skips the qdisc layer and tc egress
//! (`packet_direct_xmit`, net/packet/af_packet.c; `__dev_direct_xmit`,
//! https://github.com/torvalds/linux/blob/v6.18/net/core/dev.c), and AF_XDP
//! sockets transmit the same way in copy mode (`xsk_generic_xmit`,
//! net/xdp/xsk.c). `sdm_setsockopt`, a cgroup/setsockopt program on the
//! target cgroup, refuses that option and every `SOL_XDP` option (an XDP
//! socket cannot transmit before its UMEM and rings are set up with them)
//! with EPERM while the backstop is on.

use core::ptr;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::bpf_sk_fullsock,
    macros::{cgroup_sockopt, classifier, map},
    maps::{Array, CgroupArray, HashMap},
    programs::{sk_buff::SkBuff, SockoptContext, TcContext},
};
use sdm_common::{
    deny_index, Backstop, BackstopIf, DenyReason, KernelMode, TrafficDir, BACKSTOP_LINK_ETHER,
    BACKSTOP_LINK_RAW_IP,
};

use crate::{
    events,
    maps::{CONFIG, DENY_STATS},
    parse::{parse_at, PacketFlow},
    policy::lookup,
    stats::{add_packet, count_rule},
    PASS,
};

/// Interfaces the backstop is attached to: at most this many.
const MAX_INTERFACES: u32 = 64;
/// Ethernet header length and the ethertypes of IPv4 and IPv6.
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// Socket families (include/linux/socket.h).
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// Socket option levels and the option refused (include/linux/socket.h,
/// include/uapi/linux/if_packet.h).
const SOL_PACKET: i32 = 263;
const SOL_XDP: i32 = 283;
const PACKET_QDISC_BYPASS: i32 = 20;
/// The largest option a cgroup/setsockopt program sees in full: with a
/// longer one, the program must set `optlen` to 0 for the kernel to use the
/// caller's buffer unchanged, or the call fails with EFAULT on kernels
/// before 6.5 (`__cgroup_bpf_run_filter_setsockopt`,
/// https://github.com/torvalds/linux/blob/v6.1/kernel/bpf/cgroup.c).
/// 4096 is the smallest page size Linux runs with.
const SOCKOPT_SEEN_MAX: i32 = 4096;

#[map(name = "SDM_BACKSTOP")]
static BACKSTOP: Array<Backstop> = Array::with_max_entries(1, 0);
#[map(name = "SDM_BACKSTOP_IF")]
static BACKSTOP_IFS: HashMap<u32, BackstopIf> = HashMap::with_max_entries(MAX_INTERFACES, 0);
#[map(name = "SDM_BACKSTOP_CG")]
static BACKSTOP_CGROUP: CgroupArray = CgroupArray::with_max_entries(1, 0);

#[classifier]
pub fn sdm_backstop(ctx: TcContext) -> i32 {
    match try_backstop(&ctx) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT as i32,
    }
}

enum Verdict {
    Pass,
    Drop,
}

#[inline(always)]
fn try_backstop(ctx: &TcContext) -> Verdict {
    let skb = &ctx.skb;
    if !non_ip_socket(skb) {
        return Verdict::Pass;
    }
    // Nothing in the cgroup array (the agent has not written it): the
    // helper returns an error, and nothing can be attributed.
    if !matches!(ctx.skb_under_cgroup(&BACKSTOP_CGROUP, 0), Ok(true)) {
        return Verdict::Pass;
    }
    // SAFETY: reading the context's ifindex, allowed for tc programs.
    let ifindex = unsafe { (*skb.skb).ifindex };
    // SAFETY: a plain value, copied out at once.
    let link = unsafe { BACKSTOP_IFS.get(&ifindex) }.map_or(0, |i| i.link);
    match link {
        BACKSTOP_LINK_ETHER => judge_ether(ctx),
        BACKSTOP_LINK_RAW_IP => judge_ip::<0>(ctx, None),
        // An interface the agent did not describe: the frame cannot be
        // read, so it is refused rather than guessed at.
        _ => deny(ctx, DenyReason::PacketSocket, None),
    }
}

/// Whether the packet belongs to a full socket of a family other than
/// AF_INET/AF_INET6 (steps 1 and 2).
#[inline(always)]
fn non_ip_socket(skb: &SkBuff) -> bool {
    // SAFETY: reading the context's `sk` field (tc programs may, since
    // Linux 5.1); bpf_sk_fullsock accepts a non-null socket pointer.
    let sk = unsafe {
        let sk = (*skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return false;
        }
        bpf_sk_fullsock(sk)
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a full socket, whose family the verifier lets us read.
    let family = unsafe { (*sk).family };
    family != AF_INET && family != AF_INET6
}

/// An Ethernet frame: IPv4 and IPv6 are judged, anything else is denied.
#[inline(always)]
fn judge_ether(ctx: &TcContext) -> Verdict {
    let Ok(ethertype) = ctx.skb.load::<[u8; 2]>(12) else {
        return deny(ctx, DenyReason::Malformed, None);
    };
    match u16::from_be_bytes(ethertype) {
        ETH_P_IP => judge_ip::<ETH_HLEN>(ctx, Some(false)),
        ETH_P_IPV6 => judge_ip::<ETH_HLEN>(ctx, Some(true)),
        _ => deny(ctx, DenyReason::PacketSocket, None),
    }
}

/// Steps 2, 3, 4, 6 and 8 of filter.rs's order for an IP packet whose
/// header is `B` bytes into the frame; `v6` is what the ethertype announced, if there is one (a
/// header of the other version is malformed: the receiver would drop it,
/// and judging it as what it is not would be judging another packet).
#[inline(always)]
fn judge_ip<const B: usize>(ctx: &TcContext, v6: Option<bool>) -> Verdict {
    let skb = &ctx.skb;
    let flow = match parse_at::<B>(skb, TrafficDir::Egress) {
        Ok(flow) => flow,
        Err(why) => return deny(ctx, why.reason(), None),
    };
    if matches!(v6, Some(v) if v != flow.v6) {
        return deny(ctx, DenyReason::Malformed, None);
    }
    let Some(config) = CONFIG.get(0) else {
        return Verdict::Pass;
    };
    let slot = config.generation & 1;
    if let Some(rule) = lookup(slot, &flow, TrafficDir::Egress, flow.remote_port) {
        count_rule(rule, TrafficDir::Egress, skb.len());
        return Verdict::Pass;
    }
    deny(ctx, DenyReason::NoRule, Some(&flow))
}

/// The egress deny of events.rs (counters, a rate-limited event, the
/// verdict log), for a packet socket: no socket storage, so the event
/// carries no pid or comm (sock_create runs for inet sockets only).
#[inline(always)]
fn deny(ctx: &TcContext, reason: DenyReason, flow: Option<&PacketFlow>) -> Verdict {
    let Some(config) = CONFIG.get(0) else {
        return Verdict::Pass;
    };
    let verdict = events::deny(
        ctx,
        &ctx.skb,
        config,
        TrafficDir::Egress,
        reason,
        ctx.skb.len(),
        flow,
        ptr::null_mut(),
        None,
    );
    if verdict == PASS {
        Verdict::Pass
    } else {
        Verdict::Drop
    }
}

/// Refuses, while the backstop is on and in enforce mode, the options that
/// would take a socket's frames past tc egress; passes every other option
/// to the kernel unchanged. Returning 0 fails the call with EPERM
/// (`__cgroup_bpf_run_filter_setsockopt`,
/// https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/cgroup.c).
#[cgroup_sockopt(setsockopt)]
pub fn sdm_setsockopt(ctx: SockoptContext) -> i32 {
    try_setsockopt(&ctx)
}

#[inline(always)]
fn try_setsockopt(ctx: &SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: reading the context's fields, allowed for this program type.
    let (level, optname, optlen) = unsafe { ((*so).level, (*so).optname, (*so).optlen) };
    let bypass = (level == SOL_PACKET && optname == PACKET_QDISC_BYPASS) || level == SOL_XDP;
    if bypass && BACKSTOP.get(0).is_some_and(|b| b.on != 0) {
        if let Some(config) = CONFIG.get(0) {
            let mode = KernelMode::of_config(config.mode);
            add_packet(
                &DENY_STATS,
                deny_index(mode, TrafficDir::Egress, DenyReason::PacketSocket),
            );
            if mode == KernelMode::Enforce {
                return 0;
            }
        }
    }
    if optlen > SOCKOPT_SEEN_MAX {
        // SAFETY: optlen is writable for setsockopt programs; 0 means "the
        // caller's own buffer, as it is".
        unsafe { (*so).optlen = 0 };
    }
    PASS
}
