//! Cancels. A cancel reaches a run two ways: the `ctl` subject fires the token of the task
//! driving it on this orchestrator ([`Active`]), and the record's `cancelling` status tells
//! whoever drives it next. The driver checks before each action and appends `run.cancelled`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use agentos_bus::envelope::{EventData, RunStatus};
use agentos_bus::id::RunId;
use tokio_util::sync::CancellationToken;

use super::drive::{Driver, Stop};
use super::port::Port;
use super::state::Next;

/// The runs this orchestrator drives right now, with their cancel tokens.
#[derive(Clone, Default)]
pub(super) struct Active(Arc<Mutex<HashMap<RunId, CancellationToken>>>);

impl Active {
    fn lock(&self) -> MutexGuard<'_, HashMap<RunId, CancellationToken>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn register(&self, run: RunId) -> CancellationToken {
        let token = CancellationToken::new();
        self.lock().insert(run, token.clone());
        token
    }

    pub(super) fn remove(&self, run: &RunId) {
        self.lock().remove(run);
    }

    /// A cancel arrived on the bus for `run`.
    pub(super) fn cancel(&self, run: &RunId) {
        if let Some(token) = self.lock().get(run) {
            tracing::info!(%run, "cancelling run");
            token.cancel();
        }
    }
}

impl<P: Port> Driver<'_, P> {
    /// A cancel that arrived while no orchestrator held the run is in the record.
    pub(super) fn note_record_status(&self, status: RunStatus) {
        if status == RunStatus::Cancelling {
            self.cancel.cancel();
        }
    }

    /// Ends the run as cancelled if a cancel was requested and the run is neither finished nor
    /// still to be created; `Ok(true)` when it did.
    pub(super) async fn honour_cancel(&mut self, next: &Next) -> Result<bool, Stop> {
        if !self.cancel.is_cancelled() || matches!(next, Next::Finished | Next::Create) {
            return Ok(false);
        }
        // A multitask strategy says why in the record; a client's cancel does not.
        let reason = match self
            .port
            .read_record(&self.req.tenant, &self.req.run_id)
            .await
        {
            Ok(Some(rec)) => rec.value.cancel_reason,
            _ => None,
        };
        self.finish(EventData::RunCancelled {
            reason: reason.unwrap_or_else(|| "cancelled by request".into()),
        })
        .await?;
        Ok(true)
    }
}
