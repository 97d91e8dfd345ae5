//! Driving one run: fold the journal into a [`RunState`], then repeat "what next → do it →
//! append the result" until the run ends. Every append is guarded by the last stream sequence
//! this driver saw; losing that race means another orchestrator wrote first, so the driver
//! re-reads the journal and continues from there. The steps themselves live beside this module:
//! admission (before the run starts), the model step, the tool step, projection onto the run
//! record, and cancels.

use std::time::Duration;

use agentos_bus::envelope::{AgentSpec, ErrorBody, Event, EventData, RunRecord, RunRequest};
use agentos_bus::id::CallId;
use agentos_bus::{CallMeta, Error as BusError, Versioned};
use tokio_util::sync::CancellationToken;

use super::OrchestratorOptions;
use super::human::{Go, Trigger};
use super::port::Port;
use super::state::{Next, RunState};
use super::thread_lock::{LeaseCell, Taking, keep_lease};

/// How a delivery ends.
#[derive(Debug)]
pub(crate) enum Disposition {
    /// The run reached a terminal state (or was already there), or waits for its caller: ack.
    Done,
    /// Not now: give it back for redelivery after the delay.
    Retry(Duration),
    /// The message cannot be applied (an answer that does not fit the run's wait):
    /// dead-letter it.
    Refused(BusError),
}

/// What one action left the run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Advance {
    /// More to do.
    Next,
    /// The run has ended.
    Ended,
    /// The run waits for its caller, holding nothing.
    Parked,
}

/// Why the driver stopped before the run ended.
pub(crate) enum Stop {
    /// Another writer appended first: reload the journal.
    Conflict,
    /// The bus failed; retry the delivery later.
    Bus(BusError),
    /// Shutdown grace ran out: hand the run back now.
    Drain,
    /// Another driver may be working on the run (a tool call it started is still within its
    /// lease): look again after this long (in place, up to the longest lease; then the run is
    /// handed back).
    Busy(Duration),
    /// The run waits, not started, for a concurrency slot of its tenant, and this orchestrator
    /// has enough such runs waiting (`budget`): hand it back to the queue for this long.
    Queued(Duration),
}

impl From<BusError> for Stop {
    fn from(e: BusError) -> Self {
        match e {
            BusError::WrongLastSequence { .. } => Stop::Conflict,
            e => Stop::Bus(e),
        }
    }
}

/// This delivery of the run.
#[derive(Clone, Debug)]
pub(crate) struct Attempt {
    /// How many times the message has been delivered, this time included.
    pub(crate) delivered: i64,
    pub(crate) request_id: Option<String>,
    /// The submission, an answer, or a wake.
    pub(crate) trigger: Trigger,
}

/// Drives `req` until it ends, the bus fails, or `drain` fires.
pub(crate) async fn drive<P: Port>(
    port: &P,
    opts: &OrchestratorOptions,
    attempt: Attempt,
    req: &RunRequest,
    cancel: &CancellationToken,
    drain: &CancellationToken,
) -> Disposition {
    let lease = LeaseCell::default();
    let keeper = keep_lease(port, req, &lease, opts.thread_lease);
    tokio::pin!(keeper);
    let mut driver = Driver {
        port,
        opts,
        req,
        cancel,
        lease: &lease,
        state: RunState::default(),
        last: 0,
        record: None,
        agent: None,
        fresh_call: None,
        trace_id: agentos_bus::trace::current_trace_id(),
        meta: CallMeta {
            request_id: attempt.request_id.clone(),
            ..CallMeta::new(req.tenant.clone())
        },
    };
    let mut trigger = Some(&attempt.trigger).filter(|t| !matches!(t, Trigger::Submission));
    let resumed = attempt.delivered > 1 || trigger.is_some();
    let mut conflicts = 0u32;
    let mut bus_failures = 0u32;
    let mut busy_waited = Duration::ZERO;
    let mut needs_reload = resumed;
    loop {
        if needs_reload {
            if let Err(e) = driver.reload().await {
                tracing::warn!(error = %e, run = %req.run_id, "could not read the journal");
                match retry_in_place(port, opts, &mut bus_failures, drain).await {
                    true => continue,
                    false => {
                        return Disposition::Retry(bus_backoff(opts.bus_retry, attempt.delivered));
                    }
                }
            }
            needs_reload = false;
            driver.renew_budget().await;
        }
        // An answer or a wake acts on the journal as read: once.
        if let Some(t) = trigger {
            match driver.on_trigger(t).await {
                Ok(Go::Drive) => trigger = None,
                Ok(Go::Skip) => return Disposition::Done,
                Ok(Go::Refuse(e)) => return Disposition::Refused(e),
                Err(Stop::Conflict) => {
                    needs_reload = true;
                    continue;
                }
                Err(_) => return Disposition::Retry(Duration::from_secs(1)),
            }
        }
        // A run that never started did nothing a retry repeats: waiting for a concurrency slot
        // (handed back each time) does not use up its attempts.
        if resumed
            && attempt.delivered > opts.max_attempts
            && driver.state.has_started()
            && driver.state.ended().is_none()
        {
            let error = ErrorBody::new(
                "too_many_attempts",
                format!("gave up after {} deliveries", attempt.delivered),
            );
            match driver.finish(EventData::RunFailed { error }).await {
                Ok(()) => return Disposition::Done,
                Err(Stop::Conflict) => {
                    needs_reload = true;
                    continue;
                }
                Err(_) => return Disposition::Retry(Duration::from_secs(1)),
            }
        }
        let step = tokio::select! {
            biased;
            _ = drain.cancelled() => Err(Stop::Drain),
            () = &mut keeper => {
                // The lock was lost: stop here, and take it again before the next action.
                keeper.set(keep_lease(port, req, &lease, opts.thread_lease));
                Err(Stop::Conflict)
            }
            r = driver.advance() => r,
        };
        match step {
            Ok(Advance::Ended) => {
                driver.release_thread_lock().await;
                driver.release_budget(false).await;
                return Disposition::Done;
            }
            Ok(Advance::Parked) => return Disposition::Done,
            Ok(Advance::Next) => conflicts = 0,
            Err(Stop::Conflict) => {
                conflicts += 1;
                if conflicts > 20 {
                    return Disposition::Retry(Duration::from_secs(1));
                }
                needs_reload = true;
            }
            Err(Stop::Bus(e)) => {
                tracing::warn!(error = %e, run = %req.run_id, "bus failure; the run goes on from its journal");
                needs_reload = true;
                if !retry_in_place(port, opts, &mut bus_failures, drain).await {
                    return Disposition::Retry(bus_backoff(opts.bus_retry, attempt.delivered));
                }
            }
            Err(Stop::Busy(wait)) => {
                // The claim's lease (the call's timeout and a grace) bounds how long a call
                // stays busy, also when its worker died mid-call: waited out in place, alive, so
                // it costs the run time, not its attempts (handed back at each look, five
                // attempts fell short of a dead worker's lease and failed the run).
                busy_waited += wait;
                if busy_waited > opts.tool_timeout + 2 * opts.claim_grace || drain.is_cancelled() {
                    tracing::info!(run = %req.run_id, ?wait, "a tool call of this run may still be running elsewhere; handing the run back");
                    return Disposition::Retry(wait);
                }
                tracing::debug!(run = %req.run_id, ?wait, "a tool call of this run may still be running elsewhere; looking again");
                tokio::select! {
                    _ = drain.cancelled() => return Disposition::Retry(Duration::ZERO),
                    () = port.sleep(wait) => {}
                }
                needs_reload = true;
            }
            Err(Stop::Queued(wait)) => return Disposition::Retry(wait),
            Err(Stop::Drain) => return Disposition::Retry(Duration::ZERO),
        }
    }
}

pub(crate) struct Driver<'a, P> {
    pub(super) port: &'a P,
    pub(super) opts: &'a OrchestratorOptions,
    pub(super) req: &'a RunRequest,
    pub(super) cancel: &'a CancellationToken,
    /// The thread lock this driver holds (runs on a thread).
    pub(super) lease: &'a LeaseCell,
    /// The run's journal as this driver knows it, folded.
    pub(super) state: RunState,
    /// Stream sequence of the last journaled event: the guard for the next append.
    pub(super) last: u64,
    pub(super) meta: CallMeta,
    /// The run record as this driver last wrote it.
    pub(super) record: Option<Versioned<RunRecord>>,
    /// The agent this delivery runs, once resolved.
    pub(super) agent: Option<Result<AgentSpec, ErrorBody>>,
    /// The tool call whose `tool.started` this driver itself just appended: its first attempt.
    pub(super) fresh_call: Option<(u32, CallId)>,
    /// The run's trace, named in every event this driver appends.
    pub(super) trace_id: Option<String>,
}

impl<P: Port> Driver<'_, P> {
    async fn reload(&mut self) -> agentos_bus::Result<()> {
        let stored = self
            .port
            .read_journal(&self.req.tenant, &self.req.run_id)
            .await?;
        self.last = stored.last().map_or(0, |s| s.stream_seq);
        self.state = RunState::fold(stored.iter().map(|s| &s.event));
        self.fresh_call = None;
        self.record = None;
        self.agent = None;
        if let Ok(Some(rec)) = self
            .port
            .read_record(&self.req.tenant, &self.req.run_id)
            .await
        {
            self.meta.principal = Some(self.creator(Some(&rec.value)));
            self.meta.roles.clone_from(&rec.value.created_by_roles);
            self.note_record_status(rec.value.status);
        }
        Ok(())
    }

    /// The next event of this run.
    pub(super) fn event(&self, data: EventData) -> Event {
        Event {
            seq: self.state.seq + 1,
            run_id: self.req.run_id,
            tenant: self.req.tenant.clone(),
            ts: self.port.now(),
            trace_id: self.trace_id.clone(),
            data,
        }
    }

    /// Appends under the guard and folds the event in.
    pub(super) async fn append(&mut self, data: EventData) -> Result<(), Stop> {
        let event = self.event(data);
        self.last = self.port.append(&event, self.last).await?;
        self.state.apply(&event);
        Ok(())
    }

    /// Performs the next action.
    async fn advance(&mut self) -> Result<Advance, Stop> {
        if self.state.is_empty() {
            self.audit_direct_submission().await?;
        }
        let agent = self.agent().await?;
        if let Some(error) = self.refusal_before_start(&agent).await? {
            self.ensure_created().await?;
            self.finish(EventData::RunFailed { error }).await?;
            return Ok(Advance::Ended);
        }
        let agent = match agent {
            Ok(agent) => agent,
            // Only reached once the run started: a redelivery of a run whose agent is gone.
            Err(error) => {
                if self.state.ended().is_some() {
                    self.project_terminal().await?;
                } else {
                    self.finish(EventData::RunFailed { error }).await?;
                }
                return Ok(Advance::Ended);
            }
        };
        let next = self.state.next(&agent);
        if self.honour_cancel(&next).await? {
            return Ok(Advance::Ended);
        }
        if !matches!(next, Next::Create | Next::Finished | Next::Wait(_))
            && self.needs_thread_lock()
        {
            match self.take_thread_lock().await? {
                Taking::Taken | Taking::Cancelled => return Ok(Advance::Next),
                Taking::Busy => {
                    let error = ErrorBody::new(
                        "thread_busy",
                        "another run is active on the thread (multitask_strategy reject)",
                    );
                    self.finish(EventData::RunFailed { error }).await?;
                    return Ok(Advance::Ended);
                }
            }
        }
        match next {
            Next::Create => {
                self.append(EventData::RunCreated {
                    agent_id: self.req.agent_id.clone(),
                    input: self.req.input.clone(),
                })
                .await?
            }
            Next::Start => {
                // A run submitted without a snapshot is pinned to the definition it starts with;
                // so is one that may wait for its caller (its answer carries no snapshot).
                let pin =
                    (self.req.agent.is_none() || agent.may_wait()).then(|| Box::new(agent.clone()));
                self.append(EventData::RunStarted { agent: pin }).await?;
                self.project_started().await?;
            }
            Next::StartStep(_) if self.needs_history() => {
                if let Err(error) = self.load_history(&agent).await? {
                    self.finish(EventData::RunFailed { error }).await?;
                    return Ok(Advance::Ended);
                }
            }
            Next::StartStep(step) => self.append(EventData::StepStarted { step }).await?,
            Next::CallModel(step) => {
                if let Err(error) = self.call_model(&agent, step).await? {
                    self.finish(EventData::RunFailed { error }).await?;
                    return Ok(Advance::Ended);
                }
            }
            Next::StartTool(step, call) => self.start_tool(&agent, step, call).await?,
            Next::InvokeTool(step, call) => self.invoke_tool(&agent, step, &call).await?,
            Next::RequireAction(step, calls) => self.require_action(step, calls).await?,
            Next::Wait(waiting) => return self.park(waiting).await,
            Next::Complete { output } => {
                let usage = self.state.usage();
                self.finish(EventData::RunCompleted { output, usage })
                    .await?;
                return Ok(Advance::Ended);
            }
            Next::TooManySteps(max) => {
                let error = ErrorBody::new(
                    "max_steps_exceeded",
                    format!("no final answer within {max} steps"),
                );
                self.finish(EventData::RunFailed { error }).await?;
                return Ok(Advance::Ended);
            }
            Next::Finished => {
                // Make sure the record reflects the end (a previous orchestrator may have died
                // between the terminal event and the projection), and the thread has its turn.
                self.record_turn().await?;
                self.project_terminal().await?;
                return Ok(Advance::Ended);
            }
        }
        Ok(Advance::Next)
    }

    pub(super) async fn ensure_created(&mut self) -> Result<(), Stop> {
        if self.state.is_empty() {
            self.append(EventData::RunCreated {
                agent_id: self.req.agent_id.clone(),
                input: self.req.input.clone(),
            })
            .await?;
        }
        Ok(())
    }

    /// Appends the terminal event and projects it onto the record.
    pub(super) async fn finish(&mut self, data: EventData) -> Result<(), Stop> {
        let outcome = crate::metric_definitions::run_outcome(&data);
        self.append(data).await?;
        crate::metric_definitions::run_ended(
            &self.req.tenant,
            &self.req.run_id,
            outcome,
            self.state.steps(),
            self.port.now(),
        );
        self.record_turn().await?;
        self.project_terminal().await?;
        self.release_budget(true).await;
        Ok(())
    }
}

/// Bus failures one delivery waits out itself (1 s, doubling to 10 s: about 25 s, longer than a
/// JetStream leader election) before it hands the run back. Waiting in place, the delivery
/// stays alive (in-progress acks), so an election costs the run time, not its attempts
/// (`max_attempts` counts deliveries).
const IN_PLACE_RETRIES: u32 = 5;

/// After a bus failure: waits before the run goes on in this delivery, unless it has waited
/// out [`IN_PLACE_RETRIES`] already or the orchestrator drains (`false`: hand it back).
async fn retry_in_place<P: Port>(
    port: &P,
    opts: &OrchestratorOptions,
    failures: &mut u32,
    drain: &CancellationToken,
) -> bool {
    if *failures >= IN_PLACE_RETRIES || drain.is_cancelled() {
        return false;
    }
    *failures += 1;
    tokio::select! {
        _ = drain.cancelled() => false,
        () = port.sleep(bus_backoff(opts.bus_retry, i64::from(*failures))) => true,
    }
}

/// The wait after the `n`th bus failure (a failure waited out in place, or a delivery handed
/// back): `first` ([`OrchestratorOptions::bus_retry`], 1 s), doubling to ten times it. Five in a
/// row span about 25 s, longer than a JetStream stream's leader election after its leader's
/// node died (up to ~9 s, when every write is refused).
fn bus_backoff(first: Duration, n: i64) -> Duration {
    let doublings = u32::try_from(n.saturating_sub(1).clamp(0, 4)).unwrap_or(0);
    (first * (1u32 << doublings)).min(first * 10)
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn bus_failures_back_off_from_one_second_to_ten() {
        let first = Duration::from_secs(1);
        let waits: Vec<u64> = (0..8).map(|d| bus_backoff(first, d).as_secs()).collect();
        assert_eq!(waits, [1, 1, 2, 4, 8, 10, 10, 10]);
    }
}
