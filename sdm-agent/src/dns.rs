//! Name resolution by the agent: every policy hostname resolved and kept
//! current ([`resolver`]). Learning from the host's own DNS answers
//! happens in the kernel (sdm-ebpf's dns.rs).

pub mod resolver;
