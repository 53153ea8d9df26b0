//! Name resolution by the agent: every policy hostname resolved and kept
//! current ([`resolver`]), its queries paced and its refreshes spread
//! ([`pacing`]). Learning from the host's own DNS answers happens in the
//! kernel (sdm-ebpf's dns.rs).

pub mod pacing;
pub mod resolver;
