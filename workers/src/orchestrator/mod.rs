//! The orchestrator pool member: pulls runs from the shared durable consumer, drives each one
//! in its own task (bounded by `concurrency`), routes cancels to them, and shuts down in two
//! phases — stop pulling, let in-flight runs finish within a grace period, then hand the rest
//! back to the bus for another orchestrator.
//!
//! The run state machine ([`drive`]) reaches the bus only through [`port::Port`]; `sim` tests it
//! against an in-memory bus that injects faults.

mod admission;
pub mod allowance;
mod budget;
mod cancel;
mod delivery;
mod drive;
mod human;
mod model_step;
mod port;
mod projection;
#[cfg(test)]
mod sim;
mod state;
mod thread;
mod thread_lock;
mod tool_step;

use std::collections::HashMap;
use std::time::Duration;

use agentos_bus::{Bus, QueueOptions, ServiceSpec};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use cancel::Active;
use port::BusPort;

#[derive(Clone, Debug)]
pub struct OrchestratorOptions {
    /// Runs driven at once by this instance.
    pub concurrency: usize,
    pub queue: QueueOptions,
    /// Longest wait for the next model reply chunk.
    pub model_timeout: Duration,
    /// Longest wait for a tool reply.
    pub tool_timeout: Duration,
    /// How often an in-progress ack is sent for a run being worked on.
    pub progress_interval: Duration,
    /// Deliveries of one run after which it is failed instead of retried.
    pub max_attempts: i64,
    /// The first wait after a bus failure (doubling to ten times it); a delivery waits out
    /// five failures in place before it hands the run back.
    pub bus_retry: Duration,
    /// What the tool workers add to a call's timeout for its claim's lease
    /// ([`crate::tool::LEASE_GRACE`]): a delivery waits in place for a call another worker holds
    /// up to the tool timeout plus twice this, then hands the run back.
    pub claim_grace: Duration,
    /// How long shutdown waits for in-flight runs before handing them back.
    pub drain_grace: Duration,
    /// Which tenants' runs may start.
    pub admission: agentos_bus::Admission,
    /// Lease of a thread's lock: how long a thread waits for a holder that went silent.
    pub thread_lease: Duration,
    /// How often a run waiting for its thread looks again.
    pub thread_poll: Duration,
    /// How often to publish the work queue's gauges (backlog, ack pending, redeliveries) as
    /// metrics; `None` when this process exports no metrics.
    pub queue_gauges: Option<Duration>,
    /// Model prices, for cost budgets.
    pub prices: std::sync::Arc<agentos_bus::quota::Prices>,
    /// How long a budget hold outlives its last settle (its run was lost).
    pub hold_lease: Duration,
    /// How often a run over its tenant's concurrency limit looks for a free slot.
    pub quota_poll: Duration,
    /// How long such a run waits in the queue when too many already wait in this orchestrator.
    pub quota_requeue: Duration,
    /// This orchestrator's runs waiting for a concurrency slot (shared by clones).
    pub quota_waiters: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// This orchestrator's budget allowances (shared by clones).
    pub allowances: std::sync::Arc<allowance::Allowances>,
}

impl Default for OrchestratorOptions {
    fn default() -> Self {
        let queue = QueueOptions::default();
        Self {
            concurrency: 256,
            progress_interval: queue.progress_interval(),
            queue,
            model_timeout: Duration::from_secs(120),
            tool_timeout: Duration::from_secs(60),
            max_attempts: 5,
            bus_retry: Duration::from_secs(1),
            claim_grace: crate::tool::LEASE_GRACE,
            drain_grace: Duration::from_secs(10),
            admission: agentos_bus::Admission::default(),
            thread_lease: Duration::from_secs(30),
            thread_poll: Duration::from_millis(200),
            queue_gauges: None,
            prices: Default::default(),
            hold_lease: agentos_bus::quota::DEFAULT_HOLD_LEASE,
            quota_poll: Duration::from_millis(100),
            quota_requeue: Duration::from_secs(2),
            quota_waiters: Default::default(),
            allowances: Default::default(),
        }
    }
}

/// Shared by every run task of one orchestrator.
struct Ctx {
    port: BusPort,
    opts: OrchestratorOptions,
}

pub struct Orchestrator {
    ctx: std::sync::Arc<Ctx>,
}

impl Orchestrator {
    pub async fn new(bus: Bus, opts: OrchestratorOptions) -> crate::Result<Self> {
        let port = BusPort::new(bus, opts.admission).await?;
        Ok(Self {
            ctx: std::sync::Arc::new(Ctx { port, opts }),
        })
    }

    pub async fn run(self, shutdown: CancellationToken) -> crate::Result<()> {
        let ctx = self.ctx;
        let bus = &ctx.port.bus;
        let service = bus
            .serve(&ServiceSpec {
                name: "agentos-orchestrator".into(),
                version: crate::VERSION.into(),
                description: "AgentOS orchestrator".into(),
                endpoints: Vec::new(),
                metadata: HashMap::new(),
                tools: Vec::new(),
            })
            .await?;
        let mut deliveries = bus.run_queue(&ctx.opts.queue, ctx.opts.concurrency).await?;
        let mut cancels = bus.cancels().await?;
        let active = Active::default();
        let drain = CancellationToken::new();
        let mut tasks = JoinSet::new();
        if let Some(every) = ctx.opts.queue_gauges {
            let (bus, stop) = (bus.clone(), shutdown.clone());
            tokio::spawn(async move { bus.poll_queue_gauges(every, stop.cancelled_owned()).await });
        }
        tracing::info!(
            concurrency = ctx.opts.concurrency,
            "orchestrator pulling runs"
        );
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((_, run)) = cancels.next() => active.cancel(&run),
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done { tracing::error!(error = %e, "run task panicked"); }
                }
                d = deliveries.next(), if tasks.len() < ctx.opts.concurrency => match d {
                    Some(Ok(delivery)) => {
                        let (ctx, active, drain) = (ctx.clone(), active.clone(), drain.clone());
                        tasks.spawn(async move { delivery::process(&ctx, delivery, &active, &drain).await });
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "pulling runs failed; the client retries"),
                    None => break,
                },
            }
        }
        // Phase 1: stop pulling; in-flight runs may finish within the grace period.
        drop(deliveries);
        tracing::info!(in_flight = tasks.len(), "orchestrator draining");
        let grace = tokio::time::sleep(ctx.opts.drain_grace);
        tokio::pin!(grace);
        while !tasks.is_empty() {
            tokio::select! {
                _ = &mut grace, if !drain.is_cancelled() => {
                    // Phase 2: hand what is left back to the bus (nak) for another orchestrator.
                    tracing::warn!(in_flight = tasks.len(), "grace period over; handing runs back");
                    drain.cancel();
                }
                Some((_, run)) = cancels.next() => active.cancel(&run),
                _ = tasks.join_next() => {}
            }
        }
        let _ = service.stop().await;
        Ok(())
    }
}
