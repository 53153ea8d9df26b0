//! Deny events as the ring buffer hands them over: raw bytes decoded into
//! an event, folded into a flow, written as an audit log line, kept in the
//! flow table. Nothing may panic, and the audit line is one line of JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdm_agent::{
    flows::events::{decode, Event},
    flows::{audit_line, Flow, FlowTable},
};

fuzz_target!(|data: &[u8]| {
    let Some(raw) = decode(data) else {
        assert!(data.len() < std::mem::size_of::<sdm_common::DenyEvent>());
        return;
    };
    let e = Event::from_raw(&raw);
    let f = Flow::from_event(&e, Some("fuzz.example".to_string()));
    let line = audit_line(&e, f.hostname.as_deref());
    assert!(!line.contains('\n'), "{line:?}");
    let v: serde_json::Value = serde_json::from_str(&line).expect("the audit line is JSON");
    assert_eq!(v["event"], "denied_flow", "{line}");
    let mut table = FlowTable::new(4, std::time::Duration::from_secs(3600));
    assert!(table.record(&f), "a first flow is new");
    assert!(!table.record(&f), "the same flow again is not");
});
