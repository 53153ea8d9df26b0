//! Tests of the flows pipeline, table, audit log and suggestions: one file
//! per concern, and here the helpers they share.

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, UNIX_EPOCH},
};

use tokio::sync::mpsc;

use crate::{
    flows::events::Event,
    flows::store::StoreHandle,
    policy::config::{Config, MAX_NAME_LEN},
    policy::{Policy, Proto, Target},
};

use super::{audit::*, flow::*, pipeline::*, suggest::*, table::*};
use crate::flows::store::{Store, StoreOptions, StoreStats};

mod audit;
mod flow;
mod pipeline;
mod suggest;
mod table;

fn event(
    dir: &'static str,
    proto: &str,
    remote: &str,
    port: u16,
    comm: &str,
    verdict: &'static str,
    t: u64,
) -> Event {
    Event {
        time: UNIX_EPOCH + Duration::from_millis(t),
        direction: dir,
        proto: proto.into(),
        local: "10.0.0.5".parse().unwrap(),
        local_port: if dir == "ingress" { port } else { 40000 },
        remote: remote.parse().unwrap(),
        remote_port: if dir == "ingress" { 50000 } else { port },
        verdict,
        reason: "no_rule",
        cgroup_id: 7,
        uid: 1000,
        pid: 4242,
        comm: comm.into(),
        packets: 2,
        len: 60,
        qname: None,
    }
}

fn index(pairs: &[(&str, &[&str])]) -> HostnameIndex {
    let owned: Vec<(String, Vec<IpAddr>)> = pairs
        .iter()
        .map(|(h, a)| {
            (
                h.to_string(),
                a.iter().map(|s| s.parse().unwrap()).collect(),
            )
        })
        .collect();
    Arc::new(RwLock::new(index_from(
        owned.iter().map(|(h, a)| (h.as_str(), a.as_slice())),
    )))
}
