//! Deny events from the kernel: the ring buffer `SDM_EVENTS`, drained from
//! a tokio `AsyncFd` task and handed on as [`Event`]s with wall-clock time.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use sdm_common::{DenyEvent, MAP_EVENTS};
use serde::Serialize;
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::kernel::dataplane::{DataplaneError, Layout};

/// A decoded deny event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub time: SystemTime,
    /// "egress" | "ingress".
    pub direction: &'static str,
    /// "tcp" | "udp" | "icmp" | "icmpv6" | the protocol number.
    pub proto: String,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// "dropped" (enforce) | "audit" (would have been dropped; passed).
    pub verdict: &'static str,
    /// `no_rule`, `malformed`, `fragment`, `unknown_protocol`.
    pub reason: &'static str,
    pub cgroup_id: u64,
    pub uid: u32,
    /// 0 when unknown.
    pub pid: u32,
    /// Empty when unknown.
    pub comm: String,
    /// Packets of this flow denied since its previous event (rate limiting
    /// folds floods into one event a second per flow).
    pub packets: u64,
    pub len: u32,
    /// Reason `dns_query`: the name the refused query asked for.
    pub qname: Option<String>,
}

fn addr(bytes: &[u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// Converts the kernel's CLOCK_MONOTONIC stamp into wall-clock time.
fn wall_time(ts_ns: u64) -> SystemTime {
    let age = Duration::from_nanos(crate::api::status::monotonic_ns().saturating_sub(ts_ns));
    SystemTime::now() - age
}

impl Event {
    pub fn from_raw(e: &DenyEvent) -> Self {
        let v6 = e.v6 != 0;
        let proto = match (e.proto, v6) {
            (6, _) => "tcp".to_string(),
            (17, _) => "udp".to_string(),
            (1, false) => "icmp".to_string(),
            (58, true) => "icmpv6".to_string(),
            (p, _) => p.to_string(),
        };
        let len = e.comm.iter().position(|b| *b == 0).unwrap_or(e.comm.len());
        Self {
            time: wall_time(e.ts_ns),
            direction: crate::api::status::dir_name(e.dir),
            proto,
            local: addr(&e.local, v6),
            local_port: e.local_port,
            remote: addr(&e.remote, v6),
            remote_port: e.remote_port,
            verdict: if e.dropped != 0 { "dropped" } else { "audit" },
            reason: sdm_common::DenyReason::ALL
                .map(sdm_common::DenyReason::name)
                .get(e.reason as usize)
                .copied()
                .unwrap_or("unknown"),
            cgroup_id: e.cgroup_id,
            uid: e.uid,
            pid: e.pid,
            comm: String::from_utf8_lossy(&e.comm[..len]).into_owned(),
            packets: e.packets,
            len: e.len,
            // Only a query's refusal carries a name (the kernel leaves the
            // field unwritten, past its first byte, in other events).
            qname: (e.reason == sdm_common::DenyReason::DnsQuery)
                .then(|| wire_name(&e.qname))
                .flatten(),
        }
    }
}

/// A question name in wire form (length-prefixed labels ending in a zero
/// byte) as text; `None` when empty or malformed. Bytes outside printable
/// ASCII are shown escaped (`\xNN`): the name comes from the workload.
pub fn wire_name(wire: &[u8]) -> Option<String> {
    let mut out = String::new();
    let mut i = 0;
    loop {
        let n = usize::from(*wire.get(i)?);
        if n == 0 {
            break;
        }
        let label = wire.get(i + 1..i + 1 + n)?;
        if !out.is_empty() {
            out.push('.');
        }
        for b in label {
            if b.is_ascii_graphic() && *b != b'.' && *b != b'\\' {
                out.push(char::from(*b));
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        i += 1 + n;
    }
    (!out.is_empty()).then_some(out)
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Option<DenyEvent> {
    if bytes.len() < std::mem::size_of::<DenyEvent>() {
        return None;
    }
    // SAFETY: DenyEvent is plain old data; the length was checked.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DenyEvent>()) })
}

/// Opens the pinned ring buffer.
pub fn open(layout: &Layout) -> Result<RingBuf<MapData>, DataplaneError> {
    let path = layout.map_pin(MAP_EVENTS);
    let data = MapData::from_pin(&path).map_err(|e| DataplaneError::Map {
        name: MAP_EVENTS.into(),
        source: Box::new(e),
    })?;
    RingBuf::try_from(aya::maps::Map::RingBuf(data)).map_err(|e| DataplaneError::Map {
        name: MAP_EVENTS.into(),
        source: Box::new(e),
    })
}

/// Drains the ring buffer into `tx` until `stop` fires (then drains what
/// is left, so the last events before a shutdown are not lost) or the
/// receiver is dropped. When the channel is full, events are dropped here
/// and counted in `lost` rather than stalling the kernel side (which counts
/// its own losses).
pub async fn forward(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Event>,
    lost: std::sync::Arc<std::sync::atomic::AtomicU64>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    // SAFETY: the ring buffer owns its fd and moves into the AsyncFd, which
    // owns it for as long as it is registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the deny event ring buffer; flows will not be recorded");
            return;
        }
    };
    // A full channel is counted per event and logged at most once a minute.
    let mut warned: Option<std::time::Instant> = None;
    let mut drain = |ring: &mut RingBuf<MapData>| -> bool {
        while let Some(item) = ring.next() {
            if let Some(raw) = decode(&item) {
                match tx.try_send(Event::from_raw(&raw)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let total = lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if warned.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60))
                        {
                            warned = Some(std::time::Instant::now());
                            tracing::warn!(lost = total, "the flow pipeline is behind: deny events are dropped and counted in sdm_events_lost_total (the packet counters still count every packet)");
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
        }
        true
    };
    loop {
        tokio::select! {
            ready = fd.readable_mut() => {
                let Ok(mut guard) = ready else { return };
                if !drain(guard.get_inner_mut()) {
                    return;
                }
                guard.clear_ready();
            }
            _ = &mut stop => {
                drain(fd.get_mut());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_names_decode_from_wire_form_and_hostile_bytes_are_escaped() {
        assert_eq!(
            wire_name(b"\x03www\x07example\x03com\x00").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(wire_name(b"\x04a.b\n\x00").as_deref(), Some("a\\x2eb\\x0a"));
        assert_eq!(wire_name(b"\x00"), None);
        assert_eq!(wire_name(b"\x05ab"), None, "a label past the end");
        assert_eq!(wire_name(&[0u8; 256]), None);
    }

    #[test]
    fn decodes_a_raw_event() {
        let mut raw = DenyEvent {
            ts_ns: 1,
            pid: 42,
            proto: 6,
            dir: 0,
            v6: 0,
            dropped: 1,
            remote_port: 443,
            local_port: 40000,
            packets: 3,
            ..Default::default()
        };
        raw.remote[..4].copy_from_slice(&[192, 0, 2, 1]);
        raw.comm[..4].copy_from_slice(b"curl");
        // SAFETY: `raw` is a plain repr(C) value that outlives `bytes`.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const DenyEvent).cast::<u8>(),
                std::mem::size_of::<DenyEvent>(),
            )
        };
        let back = decode(bytes).expect("decode");
        let e = Event::from_raw(&back);
        assert_eq!(e.remote, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (e.proto.as_str(), e.verdict, e.comm.as_str(), e.pid),
            ("tcp", "dropped", "curl", 42)
        );
        assert_eq!(e.direction, "egress");
        assert!(decode(&bytes[..10]).is_none());
    }
}
