//! A run delivery from the work queue: decode it, drive the run while keeping the delivery alive
//! with in-progress acks, then ack (the run ended) or nak (hand it back for later). What cannot
//! be decoded is dead-lettered, never dropped.

use std::time::Duration;

use agentos_bus::envelope::SubmitMessage;
use agentos_bus::subject::{self, DlqKind};
use agentos_bus::{Delivery, Error as BusError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Ctx;
use super::cancel::Active;
use super::drive::{Attempt, Disposition, drive};

pub(super) async fn process(
    ctx: &Ctx,
    delivery: Delivery,
    active: &Active,
    drain: &CancellationToken,
) {
    let disposition = match delivery.decode() {
        Ok(SubmitMessage::Run(req)) => {
            let cancel = active.register(req.run_id);
            let _active = crate::metric_definitions::ActiveRun::start(delivery.delivered());
            let attempt = Attempt {
                delivered: delivery.delivered(),
                request_id: delivery.request_id().map(str::to_owned),
            };
            let span = crate::trace::run_span(&req, delivery.trace_context());
            let work = drive(&ctx.port, &ctx.opts, attempt, &req, &cancel, drain).instrument(span);
            let d = with_progress(ctx, &delivery, work).await;
            active.remove(&req.run_id);
            d
        }
        Ok(SubmitMessage::Continuation(c)) => {
            let err = BusError::Decode {
                what: "continuation",
                reason: "continuations (requires_action) are not supported by this version".into(),
            };
            dead_letter(ctx, &delivery, Some(&c.tenant), &err).await
        }
        Err(err) => {
            let tenant = subject::tenant_of(delivery.subject());
            dead_letter(ctx, &delivery, tenant.as_ref(), &err).await
        }
    };
    let result = match disposition {
        Disposition::Done => delivery.ack().await,
        Disposition::Retry(delay) => delivery.nak(delay).await,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, subject = delivery.subject(), "could not settle the run delivery; it will be redelivered");
    }
}

async fn dead_letter(
    ctx: &Ctx,
    delivery: &Delivery,
    tenant: Option<&agentos_bus::id::Tenant>,
    err: &BusError,
) -> Disposition {
    let stored = ctx
        .port
        .bus
        .dead_letter(
            tenant,
            DlqKind::Runs,
            delivery.subject(),
            err,
            delivery.payload().clone(),
        )
        .await;
    match stored {
        Ok(()) => Disposition::Done,
        Err(e) => {
            tracing::error!(error = %e, "could not dead-letter; retrying the delivery");
            Disposition::Retry(Duration::from_secs(5))
        }
    }
}

/// Runs `work` while sending in-progress acks, so the run is not redelivered while alive.
async fn with_progress(
    ctx: &Ctx,
    delivery: &Delivery,
    work: impl Future<Output = Disposition>,
) -> Disposition {
    let heartbeat = async {
        let mut every =
            tokio::time::interval(ctx.opts.progress_interval.max(Duration::from_millis(100)));
        every.tick().await;
        loop {
            every.tick().await;
            if let Err(e) = delivery.in_progress().await {
                tracing::warn!(error = %e, "in-progress ack failed");
            }
        }
    };
    tokio::select! {
        d = work => d,
        never = heartbeat => never,
    }
}
