//! A poller over stream and consumer info: nats-server has no `/metrics` of its own that knows
//! our consumers, so each orchestrator publishes the work queue's backlog, ack-pending count and
//! redeliveries, and every stream's size, as gauges (aggregate with `max` across instances).

use std::time::Duration;

use crate::provision::{STREAM_AUDIT, STREAM_DLQ, STREAM_EVENTS, STREAM_RUN_INDEX, STREAM_RUNS};
use crate::{Bus, ORCHESTRATOR_DURABLE, metric_definitions};

/// The streams whose size is published.
const STREAMS: [&str; 5] = [
    STREAM_RUNS,
    STREAM_EVENTS,
    STREAM_AUDIT,
    STREAM_DLQ,
    STREAM_RUN_INDEX,
];

impl Bus {
    /// Publishes the queue gauges every `every` until `shutdown`. A failed poll is logged at
    /// debug level and tried again next time: the gauges keep their last values meanwhile.
    pub async fn poll_queue_gauges(&self, every: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            match self
                .consumer_status(STREAM_RUNS, ORCHESTRATOR_DURABLE)
                .await
            {
                Ok(c) => metric_definitions::consumer(&c),
                Err(e) => tracing::debug!(error = %e, "consumer info for metrics"),
            }
            for name in STREAMS {
                match self.stream_status(name).await {
                    Ok(s) => metric_definitions::stream(&s),
                    Err(e) => tracing::debug!(error = %e, stream = name, "stream info for metrics"),
                }
            }
        }
    }
}
