//! At most one active run per thread, across every orchestrator: the thread's lock in KV
//! (`ThreadLock`, `<tenant>.<thread>.lock`), taken by compare-and-set and held under a lease
//! that the holder renews while it drives the run (a keeper beside every action, so a long model
//! call does not let it lapse). A holder that dies stops renewing; once the lease lapses the
//! next run takes the lock. Nothing of it lives in process memory but the revision this driver
//! last wrote.
//!
//! Before a run on a thread does anything but `run.created`, its driver takes the lock,
//! following the run's multitask strategy when another run holds it: `reject` fails the run
//! `thread_busy` (the edge refuses such runs with `409` before they are submitted), `enqueue`
//! waits until the holder ends and no earlier run of the thread still waits, `interrupt` and
//! `rollback` ask the holder to cancel (reason `interrupted` / `rollback`) and take the lock once
//! it has ended. A resumed run (it had started before) always waits its turn.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use agentos_bus::Error as BusError;
use agentos_bus::envelope::{
    MultitaskStrategy, REASON_INTERRUPTED, REASON_ROLLBACK, RunRequest, RunStatus, ThreadLock,
};

use super::drive::{Driver, Stop};
use super::port::Port;

/// The revision of the lock this driver holds, shared with its lease keeper.
#[derive(Default)]
pub(crate) struct LeaseCell(Mutex<Option<u64>>);

impl LeaseCell {
    pub(crate) fn get(&self) -> Option<u64> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set(&self, revision: Option<u64>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = revision;
    }
}

/// How taking the lock went.
pub(super) enum Taking {
    Taken,
    /// `reject`: another run is active.
    Busy,
    /// The run was cancelled while it waited.
    Cancelled,
}

fn lease_until(now: time::OffsetDateTime, lease: Duration) -> time::OffsetDateTime {
    now + time::Duration::try_from(lease).unwrap_or(time::Duration::seconds(30))
}

impl<P: Port> Driver<'_, P> {
    /// Whether the run must take its thread's lock before its next action.
    pub(super) fn needs_thread_lock(&self) -> bool {
        self.req.thread_id.is_some() && self.lease.get().is_none()
    }

    /// Takes the thread's lock as the run's strategy says; waits (polling) while it may not.
    pub(super) async fn take_thread_lock(&mut self) -> Result<Taking, Stop> {
        let Some(thread) = self.req.thread_id.clone() else {
            return Ok(Taking::Taken);
        };
        let tenant = self.req.tenant.clone();
        let me = self.req.run_id;
        let strategy = self.req.multitask_strategy.unwrap_or_default();
        let resumed = self.state.has_started();
        let mut asked = None;
        loop {
            if self.cancel.is_cancelled() {
                return Ok(Taking::Cancelled);
            }
            let now = self.port.now();
            let current = self.port.thread_lock(&tenant, &thread).await?;
            let (free, revision, ours) = match &current {
                None => (true, None, false),
                Some(v) if v.value.run_id == me => (true, Some(v.revision), true),
                Some(v) if !v.value.holds(now) => (true, Some(v.revision), false),
                Some(v) => {
                    let holder = v.value.run_id;
                    let ended = self
                        .port
                        .read_record(&tenant, &holder)
                        .await?
                        .is_some_and(|r| r.value.status.is_terminal());
                    if !ended && !resumed {
                        let reason = match strategy {
                            MultitaskStrategy::Reject => return Ok(Taking::Busy),
                            MultitaskStrategy::Enqueue => None,
                            MultitaskStrategy::Interrupt => Some(REASON_INTERRUPTED),
                            MultitaskStrategy::Rollback => Some(REASON_ROLLBACK),
                        };
                        if let Some(reason) = reason
                            && asked != Some(holder)
                        {
                            tracing::info!(run = %me, %holder, reason, "asking the thread's active run to stop");
                            self.port.request_cancel(&tenant, &holder, reason).await?;
                            asked = Some(holder);
                        }
                    }
                    (ended, Some(v.revision), false)
                }
            };
            let jumps_the_queue = ours
                || resumed
                || strategy != MultitaskStrategy::Enqueue
                || !self.earlier_run_waits(&thread).await?;
            if free && jumps_the_queue {
                let lock = ThreadLock {
                    run_id: me,
                    expires_at: lease_until(now, self.opts.thread_lease),
                    released: false,
                };
                match self
                    .port
                    .write_thread_lock(&tenant, &thread, &lock, revision)
                    .await
                {
                    Ok(rev) => {
                        self.lease.set(Some(rev));
                        return Ok(Taking::Taken);
                    }
                    Err(BusError::AlreadyExists { .. } | BusError::WrongRevision { .. }) => {}
                    Err(e) => return Err(Stop::Bus(e)),
                }
            }
            self.port.sleep(self.opts.thread_poll).await;
        }
    }

    /// Whether a run submitted on the thread before this one still waits to start (`queued`).
    /// A run that started and lost its lock (its orchestrator died) is not waited for: it takes
    /// its turn again when it is redelivered.
    async fn earlier_run_waits(
        &self,
        thread: &agentos_bus::id::ThreadId,
    ) -> Result<bool, BusError> {
        let runs = self.port.thread_runs(&self.req.tenant, thread).await?;
        for run in runs.iter().filter(|r| **r < self.req.run_id) {
            if let Some(rec) = self.port.read_record(&self.req.tenant, run).await?
                && rec.value.status == RunStatus::Queued
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Lets go of the thread's lock once the run has ended (best effort: a failure leaves it to
    /// lapse, and a waiting run sees the holder ended anyway).
    pub(super) async fn release_thread_lock(&self) {
        let (Some(thread), Some(revision)) = (&self.req.thread_id, self.lease.get()) else {
            return;
        };
        let lock = ThreadLock {
            run_id: self.req.run_id,
            expires_at: self.port.now(),
            released: true,
        };
        if let Err(e) = self
            .port
            .write_thread_lock(&self.req.tenant, thread, &lock, Some(revision))
            .await
        {
            tracing::debug!(error = %e, run = %self.req.run_id, "thread lock not released; it lapses");
        }
        self.lease.set(None);
    }
}

/// Renews the lease of the lock in `cell` every third of the lease while the driver works;
/// returns only when the lock was lost (someone else holds it now).
pub(super) async fn keep_lease<P: Port>(
    port: &P,
    req: &RunRequest,
    cell: &LeaseCell,
    lease: Duration,
) {
    let Some(thread) = &req.thread_id else {
        return std::future::pending().await;
    };
    loop {
        port.sleep(lease / 3).await;
        let Some(revision) = cell.get() else {
            continue;
        };
        let lock = ThreadLock {
            run_id: req.run_id,
            expires_at: lease_until(port.now(), lease),
            released: false,
        };
        match port
            .write_thread_lock(&req.tenant, thread, &lock, Some(revision))
            .await
        {
            Ok(rev) => cell.set(Some(rev)),
            Err(BusError::WrongRevision { .. } | BusError::AlreadyExists { .. }) => {
                // Written meanwhile by this driver (a release), or lost: look again.
                if cell.get() == Some(revision) {
                    cell.set(None);
                    tracing::warn!(run = %req.run_id, "lost the thread's lock");
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, run = %req.run_id, "lease renewal failed; retrying")
            }
        }
    }
}
