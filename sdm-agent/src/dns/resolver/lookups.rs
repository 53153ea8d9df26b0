//! Running many lookups: each query (A and AAAA apart) waits for its
//! [`Pacer`] slot, at most `concurrency` are in flight, and the two answers
//! of a name are merged into one.

use std::{
    future::Future,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;

use crate::dns::pacing::Pacer;

/// Which records a query asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// A records.
    V4,
    /// AAAA records.
    V6,
}

/// What one query returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Addresses, valid for this long.
    Answer(Vec<IpAddr>, Duration),
    /// The name has no records of the family (NOERROR without records, or
    /// NXDOMAIN): with its error message, for when neither family answers.
    NoRecords(String),
    /// No answer: a timeout, SERVFAIL, a refused connection.
    Failed(String),
    /// Not asked: the gate's time ran out first.
    Skipped,
}

/// The gate every query passes: the pacer's slot, then the count.
pub struct Gate<'a> {
    pub pacer: &'a Mutex<Pacer>,
    /// Queries sent (`sdm_resolver_queries_total`).
    pub sent: &'a AtomicU64,
    pub concurrency: usize,
    /// No query starts after this: what is left stays due. A resolver that
    /// drops every query costs each one the full timeout (about 6 s), and
    /// the agent must not wait for thousands of them in turn.
    pub until: Instant,
}

/// How late after its slot a query may still go. One that wakes later (the
/// agent was not scheduled for a while) takes a new slot instead: else all
/// the queries whose slots passed meanwhile would go at once, a burst.
/// Above the timer's 1 ms resolution.
const LATE: Duration = Duration::from_millis(5);
/// New slots a late query takes at most, so that a machine too loaded to
/// ever wake on time still sends.
const RESLOTS: u32 = 3;

impl Gate<'_> {
    fn slot(&self) -> Instant {
        match self.pacer.lock() {
            Ok(mut p) => p.slot(Instant::now()),
            // A panic while holding the pacer cannot leave it half
            // updated (one assignment); go on with it.
            Err(poisoned) => poisoned.into_inner().slot(Instant::now()),
        }
    }

    /// Waits until a query may be sent, and counts it; false when the
    /// gate's time ran out.
    async fn pass(&self) -> bool {
        for _ in 0..RESLOTS {
            if Instant::now() >= self.until {
                return false;
            }
            let slot = self.slot();
            tokio::time::sleep_until(slot.into()).await;
            if Instant::now() <= slot + LATE {
                break;
            }
        }
        if Instant::now() >= self.until {
            return false;
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Runs `lookup` for every `(name index, family)` of `jobs`, each after its
/// slot of the gate and at most `gate.concurrency` at once. The lookup
/// futures are made only when their turn comes (a lookup future does
/// nothing until polled, so the slot is what decides when it is sent).
pub async fn run<F, Fut>(
    jobs: Vec<(usize, Family)>,
    gate: &Gate<'_>,
    lookup: F,
) -> Vec<(usize, Family, Outcome)>
where
    F: Fn(usize, Family) -> Fut,
    Fut: Future<Output = Outcome>,
{
    futures_util::stream::iter(jobs)
        .map(|(i, family)| {
            let query = lookup(i, family);
            async move {
                if !gate.pass().await {
                    return (i, family, Outcome::Skipped);
                }
                (i, family, query.await)
            }
        })
        .buffer_unordered(gate.concurrency.max(1))
        .collect()
        .await
}

/// One name's A and AAAA outcomes as one: the addresses of both, valid
/// for the shorter TTL; an error only when neither family has an address
/// (the failure rather than the "no records" message, if one failed). A
/// family that failed while the other answered is left out, as hickory's
/// dual-stack lookup does. `None` when a family was not asked (the name
/// stays due).
pub fn merge(
    a: Option<Outcome>,
    b: Option<Outcome>,
) -> Option<Result<(Vec<IpAddr>, Duration), String>> {
    if [&a, &b]
        .iter()
        .any(|o| matches!(o, None | Some(Outcome::Skipped)))
    {
        return None;
    }
    Some(merge_asked(a, b))
}

fn merge_asked(a: Option<Outcome>, b: Option<Outcome>) -> Result<(Vec<IpAddr>, Duration), String> {
    let mut addrs = Vec::new();
    let mut ttl: Option<Duration> = None;
    let mut failed = None;
    let mut no_records = None;
    for o in [a, b].into_iter().flatten() {
        match o {
            Outcome::Answer(v, t) => {
                addrs.extend(v);
                ttl = Some(ttl.map_or(t, |x| x.min(t)));
            }
            Outcome::NoRecords(e) => no_records = Some(e),
            Outcome::Failed(e) => failed = Some(e),
            Outcome::Skipped => {}
        }
    }
    match ttl {
        Some(t) if !addrs.is_empty() => Ok((addrs, t)),
        _ => Err(failed
            .or(no_records)
            .unwrap_or_else(|| "empty answer".into())),
    }
}
