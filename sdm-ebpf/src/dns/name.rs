//! Reading names in the copied message: bytes, the bounded name walker
//! (compression pointers included), and the match of a question against
//! `SDM_DNS_NAMES` (by hash, then byte for byte).

use super::*;

/// The byte at `pos` of the copied message (masked: the verifier sees an
/// in-bounds offset; callers check `pos < len` for the meaning).
#[inline(always)]
pub(super) fn byte(s: &DnsScratch, pos: u32) -> u8 {
    s.buf[(pos & MASK) as usize]
}

#[inline(always)]
pub(super) fn be16(s: &DnsScratch, pos: u32) -> u16 {
    u16::from_be_bytes([byte(s, pos), byte(s, pos + 1)])
}

#[inline(always)]
pub(super) fn be32(s: &DnsScratch, pos: u32) -> u32 {
    u32::from_be_bytes([
        byte(s, pos),
        byte(s, pos + 1),
        byte(s, pos + 2),
        byte(s, pos + 3),
    ])
}

pub(super) const WALKING: u32 = 0;
pub(super) const WALKED: u32 = 1;
pub(super) const WALK_FAILED: u32 = 2;
/// No walk in progress (set by `sdm_dns_in` for a new answer).
pub const WALK_IDLE: u32 = 3;
/// Steps per program run: the verifier's work grows faster than linearly
/// with a longer loop; a longer name resumes in the next tail call.
pub(super) const WALK_STEPS: u32 = 128;

/// Starts a walk of the name at `pos`, following compression pointers if
/// `pointers`; [`walk_steps`] does the walking. The result is in `s.w_hash`
/// (the hash of its lower-cased wire form), `s.w_end` (where the record
/// continues after it) and `s.w_labels` (how many labels; their hashes are
/// in `s.labels`). Pointers must point before the previous one, which rules
/// out loops; reserved label types, names over 255 bytes and reads past the
/// message fail.
#[inline(always)]
pub(super) fn walk_init(s: *mut DnsScratch, pos: u32, pointers: u32) {
    set!(s.w_pos, pos);
    set!(s.w_pointers, pointers);
    set!(s.w_limit, pos);
    set!(s.w_end, 0);
    set!(s.w_jumped, 0);
    set!(s.w_remaining, 0);
    set!(s.w_labels, 0);
    set!(s.w_total, 0);
    set!(s.w_state, WALKING);
    set!(s.w_hash, FNV_OFFSET);
    set!(s.w_label, FNV_OFFSET);
}

/// Up to `WALK_STEPS` steps (a byte or a pointer each) of the current walk;
/// returns the walk's state. A longer name continues in the next run.
#[inline(always)]
pub(super) fn walk_steps(s: *mut DnsScratch) -> u32 {
    let mut i = 0;
    while i < WALK_STEPS {
        step(s);
        if get!(s.w_state) != WALKING {
            break;
        }
        i += 1;
    }
    let state = get!(s.w_state);
    if state == WALKING {
        let left = get!(s.w_steps_left);
        if left <= WALK_STEPS {
            // Longer than any valid name can take.
            set!(s.w_state, WALK_FAILED);
            return WALK_FAILED;
        }
        set!(s.w_steps_left, left - WALK_STEPS);
    }
    state
}

#[inline(always)]
pub(super) fn step(s: *mut DnsScratch) {
    let pos = get!(s.w_pos);
    let len = get!(s.len);
    if pos >= len {
        set!(s.w_state, WALK_FAILED);
        return;
    }
    // SAFETY: the map value is valid; the offset is masked into the buffer.
    let b = unsafe { byte(&*s, pos) };
    let remaining = get!(s.w_remaining);
    if remaining > 0 {
        let c = dns_lower(b);
        set!(s.w_label, fnv_step(get!(s.w_label), c));
        set!(s.w_hash, fnv_step(get!(s.w_hash), c));
        set!(s.w_remaining, remaining - 1);
        set!(s.w_pos, pos + 1);
        if remaining == 1 {
            let n = get!(s.w_labels);
            let label = get!(s.w_label);
            // SAFETY: as above; the index is masked into the array.
            unsafe { (*s).labels[(n as usize) & (DNS_MAX_LABELS - 1)] = label };
            set!(s.w_labels, n + 1);
        }
    } else if b == 0 {
        if get!(s.w_jumped) == 0 {
            set!(s.w_end, pos + 1);
        }
        set!(s.w_state, WALKED);
    } else if b & 0xc0 == 0xc0 {
        if get!(s.w_pointers) == 0 || pos + 1 >= len {
            set!(s.w_state, WALK_FAILED);
            return;
        }
        // SAFETY: as above.
        let lo = unsafe { byte(&*s, pos + 1) };
        let target = (u32::from(b & 0x3f) << 8) | u32::from(lo);
        if target >= get!(s.w_limit) {
            set!(s.w_state, WALK_FAILED);
            return;
        }
        if get!(s.w_jumped) == 0 {
            set!(s.w_end, pos + 2);
            set!(s.w_jumped, 1);
        }
        set!(s.w_limit, target);
        set!(s.w_pos, target);
    } else if b & 0xc0 != 0 {
        set!(s.w_state, WALK_FAILED);
    } else {
        let total = get!(s.w_total) + u32::from(b) + 1;
        if total > 255 {
            set!(s.w_state, WALK_FAILED);
            return;
        }
        set!(s.w_total, total);
        let n = get!(s.w_labels);
        // SAFETY: as above; the index is masked into the array.
        unsafe { (*s).label_pos[(n as usize) & (DNS_MAX_LABELS - 1)] = pos };
        set!(s.w_remaining, u32::from(b));
        set!(s.w_hash, fnv_step(get!(s.w_hash), b));
        set!(s.w_label, FNV_OFFSET);
        set!(s.w_pos, pos + 1);
    }
}

/// The question name's entry by hash: an exact `SDM_DNS_NAMES` entry, else
/// the longest matching `*.suffix`; `(host id, key, where the matched name
/// starts in the message)`, or None. Stage VERIFY then compares the names in full.
#[inline(always)]
pub(super) fn match_host(s: &DnsScratch, labels: u32) -> Option<(u32, u64, u32)> {
    if labels == 0 || labels as usize > DNS_MAX_LABELS {
        return None;
    }
    let mut acc = DNS_NAME_SEED;
    // Plain variables, written before the loop, not an `Option` filled in
    // it: LLVM keeps an `Option`'s payload in stack slots it reads before
    // testing for `None`, and kernels before 6.5 refuse reading stack
    // never written on that path ("invalid read from stack").
    let (mut hit, mut host, mut hit_key, mut start) = (false, 0u32, 0u64, 0u32);
    let mut j = labels;
    let mut k = 0;
    while k < DNS_MAX_LABELS {
        if j == 0 {
            break;
        }
        j -= 1;
        acc = dns_fold(acc, s.labels[(j as usize) & (DNS_MAX_LABELS - 1)]);
        let key = if j > 0 { acc ^ DNS_WILDCARD_TAG } else { acc };
        // SAFETY: plain values, copied out.
        if let Some(h) = unsafe { DNS_NAMES.get(&key) } {
            // Where the matched name starts, read from the map value: an
            // unknown scalar to the verifier, not the loop's constant `j`,
            // so that its states for each iteration stay few.
            hit = true;
            host = h.host;
            hit_key = key;
            start = s.label_pos[(j as usize) & (DNS_MAX_LABELS - 1)];
        }
        k += 1;
    }
    if hit {
        Some((host, hit_key, start))
    } else {
        None
    }
}

/// Stage VERIFY: the question's matched name, from `m_start` in the copied
/// message, is byte for byte (lower-cased) the name the entry holds.
#[inline(always)]
pub(super) fn verify_name(s: &DnsScratch) -> bool {
    // SAFETY: a plain map value, read in place.
    let Some(v) = (unsafe { DNS_NAMES.get(&s.m_key) }) else {
        return false;
    };
    let len = v.len;
    let start = s.m_start;
    if len == 0 || len as usize > DNS_NAME_WIRE || start + len > s.len {
        return false;
    }
    let mut i: u32 = 0;
    while i < DNS_NAME_WIRE as u32 {
        if i >= len {
            break;
        }
        // Length bytes are below 64: lower-casing leaves them as they are.
        if dns_lower(byte(s, start + i)) != v.name[(i as usize) & (DNS_NAME_WIRE - 1)] {
            return false;
        }
        i += 1;
    }
    true
}
