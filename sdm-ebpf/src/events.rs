//! Denies: the counter, the rate-limited event for the agent (per flow
//! and per CPU budget) and the verdict log.

use core::ptr;

use aya_ebpf::{
    bindings::bpf_sock,
    cty::c_void,
    helpers::generated::{bpf_get_socket_uid, bpf_ktime_get_ns, bpf_skb_cgroup_id},
    programs::sk_buff::SkBuff,
    EbpfContext,
};
use aya_log_ebpf::info;
use sdm_common::{
    deny_index, DenyEvent, DenyReason, EventSeenKey, EventStat, FlowSeen, KernelConfig, KernelMode,
    TrafficDir, DNS_NAME_WIRE, EVENT_BUDGET_PER_SEC, EVENT_INTERVAL_NS,
};

use crate::{
    maps::{DENY_STATS, EVENTS, EVENT_BUDGET, EVENT_SEEN, EVENT_STATS},
    parse::PacketFlow,
    sock::sock_state,
    stats::{add, atomic_add_u64},
    DROP, PASS,
};

#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn deny<C: EbpfContext>(
    ctx: &C,
    skb: &SkBuff,
    config: &KernelConfig,
    dir: TrafficDir,
    reason: DenyReason,
    len: u32,
    flow: Option<&PacketFlow>,
    sk: *mut bpf_sock,
    qname: Option<&[u8; DNS_NAME_WIRE]>,
) -> i32 {
    let mode = KernelMode::of_config(config.mode);
    let enforce = mode == KernelMode::Enforce;
    add(&DENY_STATS, deny_index(mode, dir, reason), len);
    // SAFETY: a helper on the program's own context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb.skb) };
    let (remote, remote_port, local_port, proto) = match flow {
        Some(f) => (f.remote, f.remote_port, f.local_port, f.proto),
        None => ([0; 16], 0, 0, 0),
    };
    let key = flow_key(
        &remote,
        remote_port,
        local_port,
        proto,
        dir,
        reason,
        cgroup_id,
    );
    if let Some((packets, ev)) = reserve_event(&key) {
        // SAFETY: `ev` points at a reserved, zeroed ring buffer record.
        unsafe {
            (*ev).packets = packets;
            (*ev).cgroup_id = cgroup_id;
            (*ev).uid = bpf_get_socket_uid(skb.skb);
            (*ev).len = len;
            (*ev).reason = reason as u32;
            (*ev).dir = dir as u8;
            (*ev).dropped = u8::from(enforce);
            (*ev).remote = remote;
            (*ev).remote_port = remote_port;
            (*ev).local_port = local_port;
            (*ev).proto = proto;
            if let Some(f) = flow {
                (*ev).local = f.local;
                (*ev).v6 = u8::from(f.v6);
            }
            if let Some(q) = qname {
                copy_name(ptr::addr_of_mut!((*ev).qname), q);
            }
            // The process that owns the socket, as recorded when it was
            // created or connected: this program often runs outside that
            // process's context.
            if let Some(state) = sock_state(sk, false) {
                (*ev).pid = (*state).pid;
                (*ev).comm = (*state).comm;
            }
        }
        submit_event(ev);
    }
    if config.log_verdicts != 0 {
        info!(
            ctx,
            "deny dir={} reason={} enforce={}", dir as u8, reason as u32, config.mode
        );
    }
    if enforce {
        DROP
    } else {
        PASS
    }
}

#[inline(always)]
pub(crate) fn flow_key(
    remote: &[u8; 16],
    remote_port: u16,
    local_port: u16,
    proto: u8,
    dir: TrafficDir,
    reason: DenyReason,
    cgroup_id: u64,
) -> EventSeenKey {
    EventSeenKey {
        remote: *remote,
        remote_port,
        // Egress flows differ by destination, not by ephemeral source port.
        local_port: if dir == TrafficDir::Ingress {
            local_port
        } else {
            0
        },
        proto,
        dir: dir as u8,
        reason: reason as u8,
        _pad: 0,
        cgroup_id,
    }
}

/// Decides whether this flow is reported now: not if it was reported less
/// than `EVENT_INTERVAL_NS` ago (then it only adds to the flow's pending
/// count, which the next event carries), and not if this CPU has spent its
/// `EVENT_BUDGET_PER_SEC` (then the flow keeps its count and stays due, so
/// a later packet reports it). A flood of denied packets, of few flows or
/// of ever new ones, costs the agent a bounded number of events; the
/// counters still count every packet. Returns the packets the event stands
/// for and a zeroed ring buffer record to fill in and pass to
/// [`submit_event`]; the record is written in place, as the stack is too
/// small for a copy.
#[inline(always)]
pub(crate) fn reserve_event(key: &EventSeenKey) -> Option<(u64, *mut DenyEvent)> {
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut pending = 0;
    let seen = EVENT_SEEN.get_ptr_mut(key);
    if let Some(seen) = seen {
        // SAFETY: a valid map value pointer.
        unsafe {
            if now.wrapping_sub((*seen).last_ns) < EVENT_INTERVAL_NS {
                atomic_add_u64(ptr::addr_of_mut!((*seen).pending), 1);
                bump(EventStat::Suppressed);
                return None;
            }
            pending = (*seen).pending;
        }
    }
    if !take_budget(now) {
        match seen {
            // SAFETY: as above.
            Some(seen) => unsafe { atomic_add_u64(ptr::addr_of_mut!((*seen).pending), 1) },
            None => {
                // Due at once: its next packet may report it.
                let stale = now.wrapping_sub(EVENT_INTERVAL_NS);
                let _ = EVENT_SEEN.insert(
                    key,
                    &FlowSeen {
                        last_ns: stale,
                        pending: 1,
                    },
                    0,
                );
            }
        }
        bump(EventStat::Throttled);
        return None;
    }
    let _ = EVENT_SEEN.insert(
        key,
        &FlowSeen {
            last_ns: now,
            pending: 0,
        },
        0,
    );
    let Some(mut entry) = EVENTS.reserve::<DenyEvent>(0) else {
        bump(EventStat::Lost);
        return None;
    };
    let ev = entry.as_mut_ptr();
    // The entry is submitted through its pointer by submit_event.
    core::mem::forget(entry);
    // SAFETY: a reserved record of the right size. Zeroed up to the name,
    // whose first byte (its end, for the agent) is enough: a whole zeroing
    // is a memset call, a subprogram in every program that reports.
    unsafe {
        ptr::write_bytes(ev.cast::<u8>(), 0, DENY_EVENT_FIXED);
        (*ev).qname[0] = 0;
        (*ev).ts_ns = now;
    }
    Some((pending + 1, ev))
}

/// Bytes of a `DenyEvent` before its question name.
pub(crate) const DENY_EVENT_FIXED: usize = core::mem::offset_of!(DenyEvent, qname);

/// Copies a question name into an event, in 32-bit words (volatile, so
/// that LLVM does not turn the loop back into a memcpy call).
#[inline(always)]
pub(crate) fn copy_name(dst: *mut [u8; DNS_NAME_WIRE], src: &[u8; DNS_NAME_WIRE]) {
    let d = dst.cast::<u32>();
    let s = src.as_ptr().cast::<u32>();
    let mut i = 0;
    while i < DNS_NAME_WIRE / 4 {
        // SAFETY: both are DNS_NAME_WIRE bytes and 4-byte aligned (the
        // name sits 12 bytes into the 8-byte aligned DNS scratch buffer).
        unsafe { ptr::write_volatile(d.add(i), ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Takes one event from this CPU's budget for the current second. Per-CPU,
/// so floods on several CPUs do not contend on one cache line; a program
/// preempted between the read and the write can at worst let one extra
/// event through.
#[inline(always)]
pub(crate) fn take_budget(now: u64) -> bool {
    let Some(b) = EVENT_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: valid per-CPU map memory.
    unsafe {
        if now.wrapping_sub((*b).window_ns) >= 1_000_000_000 {
            (*b).window_ns = now;
            (*b).used = 1;
            return true;
        }
        if (*b).used >= EVENT_BUDGET_PER_SEC {
            return false;
        }
        (*b).used += 1;
    }
    true
}

#[inline(always)]
pub(crate) fn submit_event(ev: *mut DenyEvent) {
    // SAFETY: a record from reserve_event, submitted once.
    unsafe { aya_ebpf::helpers::generated::bpf_ringbuf_submit(ev.cast::<c_void>(), 0) };
    bump(EventStat::Sent);
}

#[inline(always)]
pub(crate) fn bump(stat: EventStat) {
    if let Some(c) = EVENT_STATS.get_ptr_mut(stat as u32) {
        atomic_add_u64(c, 1);
    }
}
