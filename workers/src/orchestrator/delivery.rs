//! A run delivery from the work queue: decode it, drive the run while keeping the delivery alive
//! with in-progress acks, then ack (the run ended) or nak (hand it back for later). What cannot
//! be decoded is dead-lettered, never dropped.

use std::time::Duration;

use agentos_bus::envelope::{RunRequest, SubmitMessage};
use agentos_bus::id::{RunId, Tenant};
use agentos_bus::subject::{self, DlqKind};
use agentos_bus::{Delivery, Error as BusError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Ctx;
use super::cancel::Active;
use super::drive::{Attempt, Disposition, drive};
use super::human::Trigger;
use super::port::Port;

pub(super) async fn process(
    ctx: &Ctx,
    delivery: Delivery,
    active: &Active,
    drain: &CancellationToken,
) {
    let (req, trigger) = match delivery.decode() {
        Ok(SubmitMessage::Run(req)) => (Ok(*req), Trigger::Submission),
        Ok(SubmitMessage::Continuation(c)) => {
            let req = resumed_request(ctx, &c.tenant, &c.run_id)
                .await
                .and_then(|r| {
                    r.ok_or_else(|| {
                        Unfit::Refused(BusError::Decode {
                            what: "continuation",
                            reason: format!("no run {}", c.run_id),
                        })
                    })
                });
            (req, Trigger::Answer(c))
        }
        Ok(SubmitMessage::Wake(w)) => {
            let req = resumed_request(ctx, &w.tenant, &w.run_id).await;
            (req.and_then(|r| r.ok_or(Unfit::Unknown)), Trigger::Wake)
        }
        Err(err) => (Err(Unfit::Refused(err)), Trigger::Wake),
    };
    let disposition = match req {
        Ok(req) => {
            let cancel = active.register(req.run_id);
            let _active = crate::metric_definitions::ActiveRun::start(delivery.delivered());
            let attempt = Attempt {
                delivered: delivery.delivered(),
                request_id: delivery.request_id().map(str::to_owned),
                trigger,
            };
            let span = crate::trace::run_span(&req, delivery.trace_context());
            let work = drive(&ctx.port, &ctx.opts, attempt, &req, &cancel, drain).instrument(span);
            let d = with_progress(ctx, &delivery, work).await;
            active.remove(&req.run_id);
            d
        }
        Err(Unfit::Refused(err)) => Disposition::Refused(err),
        Err(Unfit::Unknown) => Disposition::Done,
        Err(Unfit::Later) => Disposition::Retry(Duration::from_secs(1)),
    };
    let result = match disposition {
        Disposition::Done => delivery.ack().await,
        Disposition::Retry(delay) => delivery.nak(delay).await,
        Disposition::Refused(err) => {
            let tenant = subject::tenant_of(delivery.subject());
            match dead_letter(ctx, &delivery, tenant.as_ref(), &err).await {
                Disposition::Done => delivery.ack().await,
                _ => delivery.nak(Duration::from_secs(5)).await,
            }
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, subject = delivery.subject(), "could not settle the run delivery; it will be redelivered");
    }
}

/// Why a delivery has no run to drive.
enum Unfit {
    /// Malformed, or an answer for a run that does not exist: dead-letter it.
    Refused(BusError),
    /// A wake for a run that does not exist (or not yet): nothing to do.
    Unknown,
    /// The record could not be read: try again.
    Later,
}

/// The request of a run that started before, from its record (`None`: no such run).
async fn resumed_request(
    ctx: &Ctx,
    tenant: &Tenant,
    run: &RunId,
) -> Result<Option<RunRequest>, Unfit> {
    match ctx.port.read_record(tenant, run).await {
        Ok(rec) => Ok(rec.map(|r| RunRequest::resumed(&r.value))),
        Err(e) => {
            tracing::warn!(error = %e, %run, "could not read the run record");
            Err(Unfit::Later)
        }
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
