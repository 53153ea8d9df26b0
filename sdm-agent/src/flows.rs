//! Denied flows: the kernel's deny events ([`Event`](events::Event)) aggregated by
//! (direction, protocol, remote address, port, process, verdict), named by
//! the hostname the agent resolved the address from, written once as a JSON
//! line to the audit log when new, and handed in batches to the store
//! ([`crate::flows::store`]), which is the source of truth. The in-memory table is
//! bounded ([`DEFAULT_CAPACITY`]) and only serves the dashboard when the
//! store is unavailable, and decides which flows are new.
//!
//! Also here: [`suggest`](mod@suggest), which turns flows seen in audit mode into
//! `[[allow]]` / `[[resource]]` config.

pub mod audit;
pub mod events;
pub mod flow;
pub mod pipeline;
pub mod store;
pub mod suggest;
pub mod table;

// The flows vocabulary, by the names the rest of the agent uses.
pub use audit::{audit_line, AuditLog};
pub use flow::{
    hostname_of, index_from, now_ms, rfc3339, unix_ms, Flow, FlowKey, FlowQuery, HostnameIndex,
};
pub use pipeline::{Pipeline, DEFAULT_FLUSH_EVENTS, DEFAULT_FLUSH_EVERY, EVENT_CHANNEL_CAPACITY};
pub use suggest::{covered, suggest, DEFAULT_COLLAPSE};
pub use table::{FlowTable, SharedTable, DEFAULT_CAPACITY, DEFAULT_RELOG_AFTER};

#[cfg(test)]
#[allow(clippy::too_many_lines, reason = "a test reads as one scenario")]
mod tests;
