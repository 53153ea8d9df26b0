//! Shutdown: the last deny events handed to the store; the programs stay
//! attached and keep enforcing from the pinned maps.

use std::time::Duration;

use tokio::{sync::oneshot, task::JoinHandle};

use crate::flows::store::StoreHandle;

use super::{event_loop::Running, systemd::notify_systemd};

/// The flow pipeline's tasks: the ring buffer's forwarder (stopped by
/// `stop_events`), the pipeline, and the store's writer.
pub(super) struct FlowTasks {
    pub(super) stop_events: oneshot::Sender<()>,
    pub(super) pipeline: JoinHandle<()>,
    pub(super) store: StoreHandle,
}

impl Running {
    pub(super) async fn shutdown(self) {
        notify_systemd("STOPPING=1");
        // Hand the last events to the store before exiting: the forwarder
        // drains the ring and closes the channel, the pipeline flushes, the
        // writer commits. Bounded, so a stuck disk cannot hang a shutdown.
        let FlowTasks {
            stop_events,
            pipeline,
            store,
        } = self.flows;
        let _ = stop_events.send(());
        let _ = tokio::time::timeout(Duration::from_secs(3), pipeline).await;
        let synced = tokio::task::spawn_blocking(move || store.sync(Duration::from_secs(3)))
            .await
            .unwrap_or(false);
        if !synced {
            tracing::warn!("the flow store did not confirm the last write before exit");
        }
        tracing::info!("stopping; the programs stay attached and keep enforcing from the pinned maps (`sdm-agent detach` removes them)");
    }
}
