//! Human in the loop. When a step's model calls a client tool or a tool that requires approval,
//! the run journals `run.requires_action` (after the step's other calls are done) and *parks*:
//! the record says `requires_action` with the pending calls, the expiry timer is scheduled (a
//! JetStream message schedule that wakes the run at its `expires_at`), the thread's lock is held
//! without a lease until then, and the delivery is acked. A parked run holds no orchestrator slot
//! and no unacked message; it waits in JetStream as long as it takes.
//!
//! Three kinds of delivery find it again:
//! - a continuation (the answer): checked against the journal's open wait, claimed in the run
//!   record (the first answer to claim a wait wins, whoever claims it: the edge that took it or
//!   the orchestrator that holds it), journaled whole as `run.action_answered`; the delivery then
//!   drives the run on. A redelivered continuation whose answer is already journaled carries the
//!   run on too (its first carrier died). Any other answer is left alone;
//! - a wake (the expiry timer, or a cancel): ends the run `expired` or `cancelled` if it still
//!   waits, else does nothing;
//! - a redelivered submission (its ack was lost): parks it again.

use agentos_bus::envelope::{
    Claim, Continuation, EventData, MAX_EXPIRY, PendingCall, RequiredAction, RunStatus, ThreadLock,
    expired,
};
use agentos_bus::{Error as BusError, Versioned};

use super::drive::{Advance, Driver, Stop};
use super::port::Port;
use super::state::Waiting;

/// What started this delivery.
#[derive(Clone, Debug)]
pub(crate) enum Trigger {
    /// The run's submission.
    Submission,
    /// An answer to a wait.
    Answer(Continuation),
    /// A wake: expiry timer or cancel.
    Wake,
}

/// Whether the delivery goes on to drive the run.
pub(super) enum Go {
    Drive,
    /// Nothing to do (the run does not wait, or waits for another answer): ack.
    Skip,
    /// The answer does not fit the run's wait: dead-letter it.
    Refuse(agentos_bus::Error),
}

impl<P: Port> Driver<'_, P> {
    /// Decides, from the journal just read, what a continuation or a wake does.
    pub(super) async fn on_trigger(&mut self, trigger: &Trigger) -> Result<Go, Stop> {
        if self.state.ended().is_some() {
            // Make sure the record (and the thread) show the end: the carrier that journaled it
            // may have died before projecting it (found by the simulation). Nothing else: its
            // budget hold is the finisher's to release (dropping it here raced the finisher's
            // release into counting the run twice, also found by the simulation).
            self.record_turn().await?;
            self.project_terminal().await?;
            return Ok(Go::Skip);
        }
        match trigger {
            Trigger::Submission => Ok(Go::Drive),
            Trigger::Wake if self.state.waiting().is_some() => Ok(Go::Drive),
            Trigger::Wake => Ok(Go::Skip),
            Trigger::Answer(answer) => self.take_answer(answer).await,
        }
    }

    async fn take_answer(&mut self, answer: &Continuation) -> Result<Go, Stop> {
        let submission = answer.msg_id();
        if self.state.answered(&submission) {
            // Journaled already. The latest answer's delivery carries the run on (its first
            // carrier died, maybe before it parked the run at its next wait: found by the
            // simulation); an older one is a late copy.
            let latest = self.state.last_answer() == Some(submission.as_str());
            return Ok(if latest { Go::Drive } else { Go::Skip });
        }
        let Some(waiting) = self.state.waiting().cloned() else {
            tracing::info!(run = %self.req.run_id, "an answer for a run that does not wait; ignored");
            return Ok(Go::Skip);
        };
        if self.cancel.is_cancelled() {
            // A cancel came first: the run ends cancelled.
            return Ok(Go::Drive);
        }
        let wait = required(&waiting);
        let answers = match wait.answers(answer) {
            Ok(answers) => answers,
            Err(e) => {
                return Ok(Go::Refuse(BusError::Decode {
                    what: "continuation",
                    reason: format!("{}: {e}", e.code()),
                }));
            }
        };
        if !self.claim(&wait, &submission).await? {
            tracing::info!(run = %self.req.run_id, "another answer claimed the wait; this one is ignored");
            return Ok(Go::Skip);
        }
        self.append(EventData::RunActionAnswered {
            step: waiting.step,
            answers,
            submission,
        })
        .await?;
        let seq = self.state.seq;
        self.project(|rec| {
            if rec.last_seq >= seq {
                return;
            }
            if !rec.status.is_terminal() && rec.status != RunStatus::Cancelling {
                rec.status = RunStatus::Running;
            }
            rec.required_action = None;
            rec.last_seq = seq;
        })
        .await?;
        Ok(Go::Drive)
    }

    /// Claims the wait in the run record for `submission`; false if another answer has it.
    async fn claim(&mut self, wait: &RequiredAction, submission: &str) -> Result<bool, Stop> {
        for _ in 0..10 {
            let Some(Versioned {
                value: mut rec,
                revision,
            }) = self
                .port
                .read_record(&self.req.tenant, &self.req.run_id)
                .await?
            else {
                return Ok(true);
            };
            match rec.claim_answer(wait, submission) {
                Claim::Ours => return Ok(true),
                Claim::Taken => return Ok(false),
                // This driver's journal is stale (another driver of this delivery went on):
                // read it again and decide anew.
                Claim::Moved => return Err(Stop::Conflict),
                Claim::Write => {}
            }
            rec.updated_at = self.port.now();
            match self.port.write_record(&rec, Some(revision)).await {
                Ok(revision) => {
                    self.record = Some(Versioned {
                        value: rec,
                        revision,
                    });
                    return Ok(true);
                }
                Err(BusError::WrongRevision { .. }) => continue,
                Err(e) => return Err(Stop::Bus(e)),
            }
        }
        Err(Stop::Conflict)
    }

    /// Journals the step's pending calls: the run waits from here.
    pub(super) async fn require_action(
        &mut self,
        step: u32,
        tool_calls: Vec<PendingCall>,
    ) -> Result<(), Stop> {
        self.append(EventData::RunRequiresAction {
            step,
            tool_calls,
            expires_at: self.req.expires_at,
        })
        .await
    }

    /// The run waits: end it if its time is up, else make the record show the wait, schedule
    /// the expiry, hold the thread, and let the delivery go.
    pub(super) async fn park(&mut self, waiting: Waiting) -> Result<Advance, Stop> {
        if let Some(at) = waiting.expires_at
            && expired(Some(at), self.port.now())
        {
            self.finish(EventData::RunExpired { expires_at: at })
                .await?;
            return Ok(Advance::Ended);
        }
        let shown = self.record.as_ref().is_some_and(|r| {
            r.value.status == RunStatus::RequiresAction
                && r.value.required_action.as_ref().map(|a| a.seq) == Some(waiting.seq)
        });
        if !shown {
            let seq = waiting.seq;
            let wait = required(&waiting);
            self.project(|rec| {
                if rec.last_seq > seq || rec.status.is_terminal() {
                    return;
                }
                if rec.status != RunStatus::Cancelling {
                    rec.status = RunStatus::RequiresAction;
                }
                // An answer may have claimed the wait already: keep its claim.
                if rec.required_action.as_ref().map(|a| a.seq) != Some(seq) {
                    rec.required_action = Some(wait.clone());
                }
                rec.last_seq = seq;
            })
            .await?;
        }
        if let Some(rec) = &self.record {
            self.note_record_status(rec.value.status);
        }
        if self.cancel.is_cancelled() {
            // Cancelled meanwhile: the next action ends the run.
            return Ok(Advance::Next);
        }
        if let Some(at) = waiting.expires_at {
            self.port
                .schedule_wake(&self.req.tenant, &self.req.run_id, at)
                .await?;
        }
        self.park_thread_lock(&waiting).await;
        tracing::info!(run = %self.req.run_id, step = waiting.step, calls = waiting.calls.len(), "run waits for its caller");
        Ok(Advance::Parked)
    }

    /// Holds the thread's lock, without renewal, until the wait expires (or the run queue's age
    /// limit): the thread stays busy while its run waits. Best effort: a lock this driver cannot
    /// write is left as it is.
    async fn park_thread_lock(&self, waiting: &Waiting) {
        let Some(thread) = &self.req.thread_id else {
            return;
        };
        let lock = ThreadLock {
            run_id: self.req.run_id,
            expires_at: waiting
                .expires_at
                .unwrap_or_else(|| self.port.now() + MAX_EXPIRY),
            released: false,
        };
        let revision = match self.lease.get() {
            Some(revision) => Some(revision),
            None => match self.port.thread_lock(&self.req.tenant, thread).await {
                Ok(Some(current)) if current.value.run_id == self.req.run_id => {
                    Some(current.revision)
                }
                _ => None,
            },
        };
        let Some(revision) = revision else {
            return;
        };
        // The lease keeper stops renewing: the lock now lasts as long as the wait.
        self.lease.set(None);
        if let Err(e) = self
            .port
            .write_thread_lock(&self.req.tenant, thread, &lock, Some(revision))
            .await
        {
            tracing::debug!(error = %e, run = %self.req.run_id, "thread lock not parked");
        }
    }
}

fn required(waiting: &Waiting) -> RequiredAction {
    RequiredAction {
        step: waiting.step,
        tool_calls: waiting.calls.clone(),
        seq: waiting.seq,
        answered_by: None,
    }
}
