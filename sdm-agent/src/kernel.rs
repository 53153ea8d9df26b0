//! The kernel side: loading the eBPF object, attaching and pinning its
//! programs on the target cgroup, the maps the policy is written into, and
//! what tells whether a cgroup is policed.
//!
//! - [`dataplane`]: load, attach (adopt or replace pinned links), pins,
//!   and [`dataplane::Maps`], the typed view of every pinned map;
//! - [`entries`]: a policy and its resolved addresses as map entries;
//! - [`config_map`]: the mmapped config entry, one atomic store per field;
//! - [`cgroup`]: target cgroups (paths, `unit:`, `pid:`) and their ids;
//! - [`backstop`]: the tc egress backstop and its setsockopt guard;
//! - [`xdp`]: the XDP shield on gateway hosts (`[xdp] interfaces`);
//! - [`check`]: `check --kernel`, every program through the verifier;
//! - [`policed`]: whether a cgroup is policed right now;
//! - [`caps`]: processes of the target that could bypass the programs;
//! - `bpf_syscall`: the few raw bpf(2) commands aya 0.14 has no call for.

pub mod backstop;
mod bpf_syscall;
pub mod caps;
pub mod cgroup;
pub mod check;
pub mod config_map;
pub mod dataplane;
pub mod entries;
pub mod policed;
pub mod xdp;
