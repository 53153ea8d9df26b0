//! The answer path: `sdm_dns_in` hands a trusted resolver's answer to
//! the parser `sdm_dns`, which runs one stage per tail call (steps 2-5 of
//! the order in dns.rs) and learns the addresses of allowed names.

use super::*;

/// Tail-called by `sdm_ingress` (`hand_answer`) for a packet from port 53
/// it passed; always passes: answers from a trusted resolver go to the
/// parser (step 2 above). Not attached: a program of its own so that the
/// packet filter's verification stays as it was, and a tail call so that
/// only DNS packets pay for a second parse.
#[cgroup_skb(ingress)]
pub fn sdm_dns_in(ctx: SkBuffContext) -> i32 {
    let Ok(flow) = parse(&ctx, TrafficDir::Ingress) else {
        return PASS;
    };
    if flow.remote_port != DNS_PORT || (flow.proto != PROTO_UDP && flow.proto != PROTO_TCP) {
        return PASS;
    }
    if !is_resolver(&flow) {
        count(DnsResult::NotResolver);
        return PASS;
    }
    let Some((start, len)) = message(&ctx, &flow) else {
        return PASS;
    };
    if len < 12 {
        count(DnsResult::Malformed);
        return PASS;
    }
    if flow.proto == PROTO_TCP && !in_sequence(&ctx, &flow) {
        count(DnsResult::Unasked);
        return PASS;
    }
    let Some(s) = DNS_SCRATCH.get_ptr_mut(0) else {
        return PASS;
    };
    let n = if len > DNS_BUF as u32 {
        DNS_BUF as u32
    } else {
        len
    };
    if n < 12 {
        return PASS;
    }
    if !load_message(&ctx, start, s, n) {
        count(DnsResult::Malformed);
        return PASS;
    }
    // SAFETY: `s` is valid per-CPU map memory.
    unsafe {
        (*s).len = n;
        (*s).stage = STAGE_QUESTION;
        (*s).calls = 0;
        (*s).learned = 0;
        (*s).chain_len = 0;
        (*s).host = 0;
        (*s).resolver = flow.remote;
        (*s).v6 = u32::from(flow.v6);
        (*s).local_port = u32::from(flow.local_port);
        (*s).proto = u32::from(flow.proto);
        // A truncated copy: the records past DNS_BUF are not read.
        (*s).truncated = u32::from(len > DNS_BUF as u32);
        (*s).next = 0;
        (*s).w_state = WALK_IDLE;
    }
    parse_next(&ctx);
    PASS
}

/// Whether a TCP segment is the one its socket expects next: its sequence
/// number is the socket's `rcv_nxt`. This program runs before TCP checks
/// sequence numbers (`tcp_filter` comes first in `tcp_v4_rcv`,
/// https://github.com/torvalds/linux/blob/v6.18/net/ipv4/tcp_ipv4.c), so a
/// forged segment must not be parsed on the strength of its addresses.
#[inline(always)]
pub(super) fn in_sequence(ctx: &SkBuffContext, flow: &PacketFlow) -> bool {
    let sk = full_socket(ctx);
    if sk.is_null() {
        return false;
    }
    // SAFETY: sk is a full socket; the helper returns NULL for non-TCP ones.
    let tp = unsafe { bpf_tcp_sock(sk) };
    if tp.is_null() {
        return false;
    }
    let Ok(seq) = ctx.load::<[u8; 4]>(flow.l4_off as usize + 4) else {
        return false;
    };
    // SAFETY: a valid bpf_tcp_sock pointer from the helper.
    u32::from_be_bytes(seq) == unsafe { (*tp).rcv_nxt }
}

/// Addresses no service answers from: unspecified, loopback, link-local,
/// multicast, broadcast; never learned.
#[inline(always)]
pub(super) fn unlearnable4(a: &[u8; 4]) -> bool {
    a[0] == 0 || a[0] == 127 || (a[0] == 169 && a[1] == 254) || a[0] >= 224
}

#[inline(always)]
pub(super) fn unlearnable6(a: &[u8; 16]) -> bool {
    let mut zero_prefix = true;
    let mut i = 0;
    while i < 15 {
        if a[i] != 0 {
            zero_prefix = false;
        }
        i += 1;
    }
    // ::, ::1, fe80::/10, ff00::/8
    (zero_prefix && a[15] <= 1) || (a[0] == 0xfe && a[1] & 0xc0 == 0x80) || a[0] == 0xff
}

#[inline(always)]
pub(super) fn learn(s: &DnsScratch, config: &KernelConfig, owner: u32, rtype: u16, ttl: u32) {
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut secs = if ttl < config.learn_ttl_min_s {
        config.learn_ttl_min_s
    } else {
        ttl
    };
    if secs > LEARN_TTL_MAX_S {
        secs = LEARN_TTL_MAX_S;
    }
    let value = Learned {
        host: s.host,
        _pad: 0,
        expires_ns: now + u64::from(secs) * 1_000_000_000,
    };
    if rtype == TYPE_A {
        let a = [
            byte(s, owner),
            byte(s, owner + 1),
            byte(s, owner + 2),
            byte(s, owner + 3),
        ];
        if !unlearnable4(&a) && LEARNED4.insert(&a, &value, 0).is_err() {
            count_learn_full();
        }
    } else {
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            a[i] = byte(s, owner + i as u32);
            i += 1;
        }
        if !unlearnable6(&a) && LEARNED6.insert(&a, &value, 0).is_err() {
            count_learn_full();
        }
    }
}

/// The parser, tail-called from the ingress program and from itself, one
/// name (question, record owner or CNAME target) per run. Always PASS.
#[cgroup_skb(ingress)]
pub fn sdm_dns(ctx: SkBuffContext) -> i32 {
    if let Some(result) = try_dns(&ctx) {
        count(result);
    }
    PASS
}

/// Runs one stage; `Some(result)` when the answer is done with.
#[inline(always)]
pub(super) fn try_dns(ctx: &SkBuffContext) -> Option<DnsResult> {
    let sp = DNS_SCRATCH.get_ptr_mut(0)?;
    let config = CONFIG.get(0)?;
    {
        // SAFETY: valid per-CPU map memory; this CPU runs one parser at a
        // time (softirq context, no nesting of ingress programs).
        let s = unsafe { &mut *sp };
        s.calls += 1;
        if s.calls > MAX_CALLS {
            return Some(DnsResult::Truncated);
        }
        if s.stage == STAGE_VERIFY {
            if !verify_name(s) {
                return Some(DnsResult::NotAllowed);
            }
            s.stage = STAGE_OWNER;
            parse_next(ctx);
            return Some(DnsResult::Truncated);
        }
        if s.w_state != WALKING {
            // Checks before the name, and where the name starts.
            match s.stage {
                STAGE_QUESTION => {
                    if let Some(r) = before_question(s) {
                        return Some(r);
                    }
                    walk_init(sp, 12, 0);
                }
                STAGE_OWNER => {
                    if s.answers_left == 0 || s.pos >= s.len {
                        return Some(finished(s));
                    }
                    walk_init(sp, s.pos, 1);
                }
                _ => walk_init(sp, s.pos, 1),
            }
            set!(sp.w_steps_left, DNS_MAX_STEPS);
        }
    }
    // One name walk per run, whatever the stage: the verifier sees one loop.
    let state = walk_steps(sp);
    // SAFETY: as above.
    let s = unsafe { &mut *sp };
    let done = if state == WALKING {
        None
    } else if state != WALKED {
        Some(if s.learned > 0 {
            DnsResult::Learned
        } else {
            DnsResult::Malformed
        })
    } else {
        s.w_state = WALK_IDLE;
        match s.stage {
            STAGE_QUESTION => question(s),
            STAGE_OWNER => record(s, config),
            _ => cname(s),
        }
    };
    if done.is_some() {
        return done;
    }
    parse_next(ctx);
    // Only reached when the tail call fails (the chain limit).
    Some(DnsResult::Truncated)
}

/// The header and the query it answers; `Some(result)` if it teaches nothing.
#[inline(always)]
pub(super) fn before_question(s: &DnsScratch) -> Option<DnsResult> {
    let flags = be16(s, 2);
    // QR set, opcode QUERY (RFC 1035 4.1.1).
    if flags & 0x8000 == 0 || (flags >> 11) & 0xf != 0 {
        return Some(DnsResult::Malformed);
    }
    if be16(s, 4) != 1 {
        return Some(DnsResult::Malformed);
    }
    let key = DnsQueryKey {
        resolver: s.resolver,
        port: s.local_port as u16,
        id: be16(s, 0),
        proto: s.proto as u8,
        v6: s.v6 as u8,
        _pad: [0; 2],
    };
    // SAFETY: plain value, copied out; no arguments.
    let Some(asked) = (unsafe { DNS_PENDING.get(&key).copied() }) else {
        return Some(DnsResult::Unasked);
    };
    // The first answer consumes the query: a second one, forged or not, is
    // unasked.
    let _ = DNS_PENDING.remove(&key);
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(asked) > DNS_PENDING_NS {
        return Some(DnsResult::Unasked);
    }
    if flags & 0xf != 0 {
        return Some(DnsResult::ErrorRcode);
    }
    None
}

#[inline(always)]
pub(super) fn question(s: &mut DnsScratch) -> Option<DnsResult> {
    let end = s.w_end;
    if end + 4 > s.len {
        return Some(DnsResult::Malformed);
    }
    let Some((host, key, start)) = match_host(s, s.w_labels) else {
        return Some(DnsResult::NotAllowed);
    };
    if host == 0 || host == DNS_HOST_QUERY_ONLY {
        return Some(DnsResult::NotAllowed);
    }
    s.host = host;
    s.m_key = key;
    s.m_start = start;
    s.chain[0] = s.w_hash;
    s.chain_len = 1;
    s.pos = end + 4;
    s.answers_left = u32::from(be16(s, 6));
    s.stage = STAGE_VERIFY;
    None
}

#[inline(always)]
pub(super) fn on_chain(s: &DnsScratch, hash: u64) -> bool {
    let mut i = 0;
    while i < DNS_CHAIN {
        if (i as u32) < s.chain_len && s.chain[i] == hash {
            return true;
        }
        i += 1;
    }
    false
}

/// Where the answer ends up when there is nothing more to read.
#[inline(always)]
pub(super) fn finished(s: &DnsScratch) -> DnsResult {
    if s.learned > 0 {
        DnsResult::Learned
    } else if s.truncated != 0 {
        DnsResult::Truncated
    } else {
        DnsResult::NoAddress
    }
}

#[inline(always)]
pub(super) fn record(s: &mut DnsScratch, config: &KernelConfig) -> Option<DnsResult> {
    let at = s.w_end;
    if at + 10 > s.len {
        return Some(finished(s));
    }
    let rtype = be16(s, at);
    let class = be16(s, at + 2);
    let ttl = be32(s, at + 4);
    let rdlen = u32::from(be16(s, at + 8));
    let rdata = at + 10;
    if rdata + rdlen > s.len {
        return Some(finished(s));
    }
    let mine = class == CLASS_IN && on_chain(s, s.w_hash);
    s.answers_left -= 1;
    s.pos = rdata + rdlen;
    if mine && ((rtype == TYPE_A && rdlen == 4) || (rtype == TYPE_AAAA && rdlen == 16)) {
        learn(s, config, rdata, rtype, ttl);
        s.learned += 1;
    } else if mine && rtype == TYPE_CNAME {
        s.stage = STAGE_CNAME;
        s.next = s.pos;
        s.pos = rdata;
    }
    None
}

#[inline(always)]
pub(super) fn cname(s: &mut DnsScratch) -> Option<DnsResult> {
    let i = s.chain_len as usize;
    if i < DNS_CHAIN {
        s.chain[i] = s.w_hash;
        s.chain_len += 1;
    }
    s.pos = s.next;
    s.next = 0;
    s.stage = STAGE_OWNER;
    None
}
