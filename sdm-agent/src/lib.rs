//! sdm-agent: turns a StrongDM host role and a short config into the
//! allowlist maps of the sdm-egress kernel programs, and keeps them current.
pub mod app;
pub mod backstop;
pub mod caps;
pub mod catalogue;
pub mod cgroup;
pub mod compile;
pub mod config;
pub mod config_map;
pub mod dataplane;
pub mod entries;
pub mod events;
pub mod flows;
pub mod http;
pub mod http_server;
pub mod kernel_check;
pub mod metrics;
pub mod policed;
pub mod policy;
pub mod resolver;
pub mod status;
pub mod store;
