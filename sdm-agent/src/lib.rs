//! sdm-agent: turns a StrongDM host role and a short config into the
//! allowlist maps of the sdm-egress kernel programs, and keeps them current.
//!
//! The data flow, one folder per stage:
//!
//! 1. [`policy`]: the config file ([`policy::config`]) and the role's
//!    catalogue of Ports Guide rows ([`policy::catalogue`]) compile
//!    ([`policy::compile`]) into a [`policy::Policy`] of rules;
//! 2. [`dns`]: its hostnames are resolved and kept current;
//! 3. [`kernel`]: rules and addresses become map entries
//!    ([`kernel::entries`]), written into the pinned maps of the programs
//!    attached to the target cgroup ([`kernel::dataplane`]);
//! 4. [`flows`]: the kernel's deny events become denied flows, kept in the
//!    store and the audit log;
//! 5. [`api`]: status, metrics, flows and the dashboard over HTTP.
//!
//! [`app`] runs them together (`sdm-agent run`).

pub mod api;
pub mod app;
pub mod dns;
pub mod flows;
pub mod kernel;
pub mod policy;
