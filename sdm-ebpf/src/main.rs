//! sdm-egress kernel programs, one module per concern (the agent loads
//! them all from this one object). The order each hook judges in, stated
//! once here; each module labels its steps with these numbers.
//!
//! **Packets** (`filter`: `sdm_egress`, `sdm_ingress`, cgroup_skb; the
//! backstop `sdm_backstop` at tc egress runs steps 2-4, 6 and 8):
//!
//!  1. Loopback interface with `loopback = pass`: allow, uncounted. This
//!     comes *before* parsing, on purpose: a malformed packet on loopback
//!     passes too, since loopback traffic never leaves the host and the
//!     receiving stack drops what it cannot parse. (Egress with a loopback
//!     resolver configured goes on to parse, for DNS query noting only;
//!     a parse failure there still passes.)
//!  2. Not IPv4/IPv6, or a header that does not fit: deny `malformed`.
//!  3. A non-first fragment: deny `fragment`.
//!  4. Another protocol than TCP/UDP/ICMP/ICMPv6: deny `unknown_protocol`;
//!     a source route: deny `source_route` (2-4 are `parse`).
//!  5. The socket's cached verdict (`sock`) for this flow, rule still live:
//!     allow.
//!  6. The allowlist (`policy`): exact, CIDR, port ranges (`ranges`), then
//!     DNS-learned addresses (and their hostnames' ranges): allow and cache. After 5 or 6 on egress, a query to a trusted
//!     resolver is noted and, with `[dns] queries = "policy"`, judged
//!     (DNS Q1-Q5 below).
//!  7. The reverse allowlist, for replies: allow.
//!  8. Otherwise deny `no_rule` (`events`: counted, rate-limited event;
//!     dropped in enforce mode, passed in audit mode).
//!
//! **connect / sendmsg** (`sock_addr`: `sdm_connect4/6`, `sdm_sendmsg4/6`;
//! fail fast with EPERM, the packet programs stay the authority):
//!
//!  1. Record the calling process on the socket.
//!  2. Not TCP/UDP, or audit mode: allow.
//!  3. An IPv4-mapped IPv6 destination is judged as its IPv4 address.
//!  4. A loopback destination with `loopback = pass`: allow.
//!  5. The egress allowlist (learned addresses included): allow.
//!  6. UDP from a port an ingress rule opens, to a remote that sent to
//!     this socket: allow (never for `connect()`).
//!  7. Otherwise refuse: an enforce-mode egress `no_rule` deny.
//!
//! **sock_create** (`sock`: `sdm_sock_create`): never refuses; records the
//! creating process (pid, comm) in socket storage for later deny events.
//!
//! **DNS** (`dns`): answers, handed by `sdm_ingress` (once it passes them)
//! to the tail-called `sdm_dns_in` and parser `sdm_dns`, always pass: (1) queries noted at packet
//! step 6, (2) an answer from a trusted resolver copied to scratch,
//! (3) its question matched to a noted query and an allowed name,
//! (4) A/AAAA records on the CNAME chain learned, (5) one record per tail
//! call. Queries, with `[dns] queries = "policy"`, in the tail-called
//! `sdm_dns_query`, for an allowed packet to a trusted resolver's port 53:
//! Q1 noted for learning; Q2 `queries = "any"` or a TCP segment without
//! payload: allow; Q3 not exactly one whole message: refuse; Q4 copied and
//! judged: a plain query for a name in the policy passes; Q5 a refusal is
//! a `dns_query` deny. Details in `dns`.
//!
//! **setsockopt** (`backstop`: `sdm_setsockopt`): with the backstop on and
//! in enforce mode, refuses `PACKET_QDISC_BYPASS` and AF_XDP set-up.
//!
//! **XDP** (`xdp`: `sdm_xdp`, `[xdp] interfaces`): the shield of gateway
//! hosts, steps 1-7 in `xdp`; the egress program records the flows it
//! allows at step 6 while the shield is on.
//!
//! Modules: `filter`, `parse`, `policy`, `sock`, `sock_addr`, `events`,
//! `stats`, `maps` (shared with the agent), `ranges`, `dns`, `backstop`, `xdp`, and
//! `runtime` (panic handler and license).
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
mod ranges;
mod runtime;
mod sock;
mod sock_addr;
mod stats;
mod xdp;

/// cgroup_skb and sock_addr return codes: 1 lets the packet or call
/// through, 0 drops it (EPERM for a call).
pub(crate) const PASS: i32 = 1;
pub(crate) const DROP: i32 = 0;
