//! Empty library target: lets sdm-agent name this crate as a
//! build-dependency, so cargo rebuilds the agent when the kernel programs
//! change (aya-build compiles the binary target for the BPF target).
#![no_std]
