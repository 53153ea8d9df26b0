//! sdm-egress kernel programs, one module per concern (the agent loads
//! them all from this one object):
//!
//! - `filter`: the cgroup_skb egress and ingress programs and their
//!   verdict order;
//! - `parse`: a packet's headers into a `PacketFlow`;
//! - `policy`: the allowlist lookups of the live policy slot, and replies;
//! - `sock`: socket storage (the creating process, the cached verdict) and
//!   the sock_create program;
//! - `sock_addr`: the connect and sendmsg programs (EPERM at once);
//! - `events`: denies (counters, rate-limited events, the verdict log);
//! - `stats`: per-CPU counters;
//! - `maps`: the maps these share with the agent;
//! - `dns`: learning addresses from answers, and the query judge;
//! - `backstop`: the tc egress backstop for packet sockets and its
//!   setsockopt guard.
#![no_std]
#![no_main]
// Atomic add on the BPF target: core::sync::atomic does not offer
// fetch_add there, the intrinsic lowers to BPF_ATOMIC | BPF_ADD.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod backstop;
mod dns;
mod events;
mod filter;
mod maps;
mod parse;
mod policy;
mod runtime;
mod sock;
mod sock_addr;
mod stats;

/// cgroup_skb and sock_addr return codes: 1 lets the packet or call
/// through, 0 drops it (EPERM for a call).
pub(crate) const PASS: i32 = 1;
pub(crate) const DROP: i32 = 0;
