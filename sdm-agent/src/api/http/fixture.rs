//! [`FixtureServer`]: the agent's real router and page, served from a
//! status the test gives rather than the kernel's, for the browser tests
//! of the dashboard at a scale the lab's dataplane does not hold. Not used
//! by the agent itself.

use std::{net::SocketAddr, sync::Arc, thread::JoinHandle};

use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, Semaphore};

use super::{serve, HttpState, StatusFn};
use crate::{api::http_server::HttpStats, flows::FlowTable};

/// A server on a loopback port in a thread of its own (its own runtime);
/// stopped when dropped.
#[derive(Debug)]
pub struct FixtureServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FixtureServer {
    /// Serves `/`, `/api/*` and `/metrics` (empty) on 127.0.0.1, with
    /// `status` as the kernel's state, no flows and no token.
    pub fn start(status: StatusFn) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let state = HttpState {
            registry: Arc::new(Registry::default()),
            status,
            flows: FlowTable::shared(10),
            store: None,
            token: None,
            stats: HttpStats::default(),
            kernel_reads: Arc::new(Semaphore::new(1)),
        };
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    r = serve(listener, state) => {
                        if let Err(e) = r {
                            tracing::error!(error = %e, "the fixture server stopped");
                        }
                    }
                    _ = stopped => {}
                }
            });
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
