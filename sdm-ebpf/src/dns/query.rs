//! The query judge (`[dns] queries = "policy"`): steps Q1-Q5 below, in
//! the egress program and the tail-called `sdm_dns_query`.

use super::*;

// ---------------------------------------------------------------------
// Query filtering (`[dns] queries = "policy"`).
//
// Order, for a packet to a trusted resolver's port 53 that a rule allows:
//
//  Q1. It is noted for learning (step 1 above), whatever follows.
//  Q2. `queries = "any"`: allowed. TCP without payload (handshake, ACK,
//      FIN): allowed, there is no question in it.
//  Q3. Refused unless it holds exactly one whole DNS message (UDP: the
//      datagram; TCP: the 2-byte length and the message, nothing after
//      it, so that a second message cannot ride behind an allowed one) of
//      at most `DNS_BUF` bytes.
//  Q4. The message is copied to the per-CPU `SDM_DNSQ_SCRATCH` and the
//      judge `sdm_dns_query` is tail-called; its verdict is the packet's.
//      The judge refuses anything but a plain query (QR clear, opcode
//      QUERY, one question, no answer or authority records, at most one
//      additional record: EDNS), a question name with a compression
//      pointer, and a name not in `SDM_DNS_NAMES` (exact, or under a
//      `*.suffix` entry: the policy's wildcards and `[dns] search`),
//      compared in full as stage VERIFY does for answers.
//  Q5. A refusal drops the packet in enforce mode (a UDP send fails at
//      once with EPERM: `ip_finish_output` returns the cgroup program's
//      verdict to the socket, https://github.com/torvalds/linux/blob/v6.18/net/ipv4/ip_output.c),
//      passes it in audit mode, and is counted by `SDM_DNSQ_STATS` and as
//      a deny of reason `dns_query`, with the question name in the event.
// ---------------------------------------------------------------------

/// What [`judge_query`] made of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Not a query to judge: the caller goes on.
    Pass,
    /// To be judged, but the judge could not be reached.
    Unjudged,
}

#[inline(always)]
pub(super) fn count_query(verdict: DnsQueryVerdict) {
    if let Some(c) = DNSQ_STATS.get_ptr_mut(verdict as u32) {
        atomic_add_u64(c, 1);
    }
}

/// The packet's control block, which the judge's runs share: `cb[0]` the
/// judgement's sequence number (0 before the first run), `cb[1]` the rule
/// that allowed the packet. The kernel zeroes it for a program that uses
/// it and restores it after (`bpf_prog_run_save_cb`,
/// https://github.com/torvalds/linux/blob/v6.18/include/linux/filter.h);
/// tail calls keep it.
#[inline(always)]
pub(super) fn cb(ctx: &SkBuffContext, i: usize) -> u32 {
    // SAFETY: cb[0..5] of the program's own context, readable by cgroup_skb.
    unsafe { (*ctx.skb.skb).cb[i & 3] }
}

#[inline(always)]
pub(super) fn set_cb(ctx: &SkBuffContext, i: usize, v: u32) {
    // SAFETY: as for `cb`; cgroup_skb programs may write cb[0..5].
    unsafe { (*ctx.skb.skb).cb[i & 3] = v };
}

/// Steps Q1, Q2 and the hand-over of Q4 above, in the egress program; kept
/// small, as everything here is verified once per path of the egress
/// program. Returns only when the judge was not reached.
#[inline(always)]
pub fn judge_query(
    ctx: &SkBuffContext,
    flow: &PacketFlow,
    config: &KernelConfig,
    rule: u32,
) -> Query {
    if flow.remote_port != DNS_PORT || (flow.proto != PROTO_UDP && flow.proto != PROTO_TCP) {
        return Query::Pass;
    }
    if !is_resolver(flow) {
        return Query::Pass;
    }
    note_query(ctx, flow);
    if config.dns_queries != DNS_QUERIES_POLICY {
        return Query::Pass;
    }
    set_cb(ctx, 1, rule);
    judge_next(ctx);
    Query::Unjudged
}

/// A query the judge could not be handed (its program array is filled
/// before the programs attach, so only a broken load gets here): refused
/// in enforce mode, counted.
#[inline(always)]
pub fn unjudged(config: &KernelConfig) -> i32 {
    if config.mode == KernelMode::Enforce {
        count_query(DnsQueryVerdict::Refused);
        DROP
    } else {
        count_query(DnsQueryVerdict::WouldRefuse);
        PASS
    }
}

/// Step Q3 and the copy of Q4, in the judge's first run: `Ok(true)` when
/// the scratch holds the message, `Ok(false)` for a TCP segment without
/// payload (nothing to judge), `Err` to refuse.
#[inline(always)]
pub(super) fn take_message(ctx: &SkBuffContext, sp: *mut DnsScratch) -> Result<bool, ()> {
    let flow = parse(ctx, TrafficDir::Egress).map_err(|_| ())?;
    let Some((start, msg_len)) = whole_message(ctx, &flow) else {
        return if flow.proto == PROTO_TCP && no_payload(ctx, &flow) {
            Ok(false)
        } else {
            Err(())
        };
    };
    if !(12..=DNS_BUF as u32).contains(&msg_len) {
        return Err(());
    }
    if !load_message(ctx, start, sp, msg_len) {
        return Err(());
    }
    // SAFETY: `sp` is valid per-CPU map memory.
    unsafe {
        let seq = (*sp).seq.wrapping_add(1) | 1;
        (*sp).seq = seq;
        set_cb(ctx, 0, seq);
        (*sp).len = msg_len;
        (*sp).stage = STAGE_QUESTION;
        (*sp).calls = 0;
        (*sp).w_state = WALK_IDLE;
    }
    Ok(true)
}

/// The message of a UDP datagram, or of a TCP segment that holds its
/// 2-byte length and exactly that many bytes after it.
#[inline(always)]
pub(super) fn whole_message(ctx: &SkBuffContext, flow: &PacketFlow) -> Option<(u32, u32)> {
    let (start, len) = message(ctx, flow)?;
    if flow.proto == PROTO_TCP && ctx.len() != start + len {
        return None;
    }
    Some((start, len))
}

/// A TCP segment without payload.
#[inline(always)]
pub(super) fn no_payload(ctx: &SkBuffContext, flow: &PacketFlow) -> bool {
    let Ok(hdr) = ctx.load::<[u8; 14]>(flow.l4_off as usize) else {
        return false;
    };
    flow.l4_off + u32::from(hdr[12] >> 4) * 4 == ctx.len()
}

/// The query judge, tail-called from `sdm_egress` (step Q4) and from
/// itself, one name walk (or the final comparison) per run. Its return is
/// the packet's verdict.
///
/// The scratch is per CPU; a program run in process context can be
/// interrupted by a softirq that sends (a TCP retransmission) and judges a
/// query of its own on the same CPU. Each judgement numbers the scratch
/// and the packet's `cb[0]` alike (odd numbers, never 0), and a run that
/// finds them different refuses: the scratch holds another packet's
/// question.
#[cgroup_skb(egress)]
pub fn sdm_dns_query(ctx: SkBuffContext) -> i32 {
    match try_dns_query(&ctx) {
        Ok(()) => {
            count_query(DnsQueryVerdict::Allowed);
            count_rule(cb(&ctx, 1), TrafficDir::Egress, ctx.len());
            PASS
        }
        Err(()) => refuse_query(&ctx),
    }
}

/// Runs one stage; `Ok` when the question is allowed (or there is none),
/// `Err` when refused. A stage that goes on tail-calls the next run and
/// does not return (`Err` if that fails).
#[inline(always)]
pub(super) fn try_dns_query(ctx: &SkBuffContext) -> Result<(), ()> {
    let Some(sp) = DNSQ_SCRATCH.get_ptr_mut(0) else {
        return Err(());
    };
    if cb(ctx, 0) == 0 {
        // The first run only takes the message: a run that parsed the
        // packet and walked a name would be verified once per parse path.
        if !take_message(ctx, sp)? {
            return Ok(());
        }
        judge_next(ctx);
        return Err(());
    }
    {
        // SAFETY: valid per-CPU map memory; see above for who else uses it.
        let s = unsafe { &mut *sp };
        if s.seq != cb(ctx, 0) {
            return Err(());
        }
        s.calls += 1;
        if s.calls > MAX_CALLS {
            return Err(());
        }
        if s.stage == STAGE_VERIFY {
            return if verify_name(s) { Ok(()) } else { Err(()) };
        }
        if s.w_state != WALKING {
            if !plain_query(s) {
                return Err(());
            }
            walk_init(sp, 12, 0);
            set!(sp.w_steps_left, DNS_MAX_STEPS);
        }
    }
    let state = walk_steps(sp);
    // SAFETY: as above.
    let s = unsafe { &mut *sp };
    if state == WALKED {
        s.w_state = WALK_IDLE;
        // The question's type and class follow the name.
        if s.w_end + 4 > s.len {
            return Err(());
        }
        // let-else, not `.ok_or(())?`: with the latter LLVM reads the
        // tuple's stack slot before testing for None, and kernels before
        // 6.5 refuse a read of stack never written on that path.
        let Some((_, key, start)) = match_host(s, s.w_labels) else {
            return Err(());
        };
        s.m_key = key;
        s.m_start = start;
        s.stage = STAGE_VERIFY;
    } else if state != WALKING {
        return Err(());
    }
    judge_next(ctx);
    Err(())
}

/// Tail-calls the judge (its first or next run); returns only if that
/// fails.
#[inline(always)]
pub(super) fn judge_next(ctx: &SkBuffContext) {
    tail_call(ctx, &DNSQ_PROGS);
}

/// A plain query (step Q4): QR clear, opcode QUERY, one question, no
/// answer or authority records, at most one additional record.
#[inline(always)]
pub(super) fn plain_query(s: &DnsScratch) -> bool {
    let flags = be16(s, 2);
    flags & 0x8000 == 0
        && (flags >> 11) & 0xf == 0
        && be16(s, 4) == 1
        && be16(s, 6) == 0
        && be16(s, 8) == 0
        && be16(s, 10) <= 1
}

/// Step Q5: counts the refusal and reports it, with the question name
/// when the scratch holds this packet's; drops in enforce mode.
#[inline(always)]
pub(super) fn refuse_query(ctx: &SkBuffContext) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return DROP;
    };
    let enforce = config.mode == KernelMode::Enforce;
    count_query(if enforce {
        DnsQueryVerdict::Refused
    } else {
        DnsQueryVerdict::WouldRefuse
    });
    let mut qname = None;
    if let Some(p) = DNSQ_SCRATCH.get_ptr(0) {
        // SAFETY: a valid per-CPU map value, only read; the name sits 12
        // bytes into the 2048-byte buffer.
        unsafe {
            if cb(ctx, 0) != 0 && (*p).seq == cb(ctx, 0) {
                qname = Some(
                    &*(*p)
                        .buf
                        .as_ptr()
                        .add(12)
                        .cast::<[u8; sdm_common::DNS_NAME_WIRE]>(),
                );
            }
        }
    }
    // Not an `Option<PacketFlow>` from `.ok()`: LLVM copies the fields of a
    // `None` as well, and the verifier refuses reading them uninitialised.
    let (len, sk) = (ctx.len(), full_socket(ctx));
    match parse(ctx, TrafficDir::Egress) {
        Ok(flow) => deny(
            ctx,
            &ctx.skb,
            config,
            TrafficDir::Egress,
            DenyReason::DnsQuery,
            len,
            Some(&flow),
            sk,
            qname,
        ),
        Err(_) => deny(
            ctx,
            &ctx.skb,
            config,
            TrafficDir::Egress,
            DenyReason::DnsQuery,
            len,
            None,
            sk,
            qname,
        ),
    }
}
