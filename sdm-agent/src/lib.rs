//! sdm-agent: turns a StrongDM host role and a short config into the
//! allowlist maps of the sdm-egress kernel programs, and keeps them current.
//!
//! The data flow, one folder per stage:
//!
//! ```text
//! config -> policy -> entries -> kernel maps -> events -> flows -> API
//! ```
//!
//! 1. config -> policy ([`policy`]): the config file ([`policy::config`])
//!    and the role's Ports Guide rows ([`policy::catalogue`]) compile
//!    ([`policy::compile`]) into a [`policy::Policy`] of rules, whose
//!    hostnames [`dns`] resolves and keeps current;
//! 2. policy -> entries ([`kernel::entries`]): rules and addresses become
//!    map entries;
//! 3. entries -> kernel maps ([`kernel::dataplane`]): only the difference
//!    is written, into the pinned maps of the programs attached to the
//!    target cgroup, and flipped live at once;
//! 4. kernel maps -> events ([`flows::events`]): the programs judge every
//!    packet against the maps and report denials on a ring buffer;
//! 5. events -> flows ([`flows`]): denied flows, aggregated, kept in the
//!    store and the audit log;
//! 6. flows and maps -> API ([`api`]): status, metrics, flows and the
//!    dashboard over HTTP.
//!
//! [`app`] runs them together (`sdm-agent run`): start-up, the main loop,
//! shutdown.

pub mod api;
pub mod app;
pub mod dns;
pub mod flows;
pub mod kernel;
pub mod policy;
