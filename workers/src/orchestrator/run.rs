//! Driving one run: decode the delivery, replay the journal, then repeat
//! "plan the next action → perform it → append the result" until the run ends. Every append is
//! guarded by the last sequence this driver saw; losing that race means another orchestrator
//! wrote first, so the driver re-reads the journal and continues from there.

use std::time::Duration;

use agentos_bus::envelope::{
    AgentSpec, AuditRecord, Envelope, ErrorBody, Event, EventData, ModelReply, ModelRequest,
    RunRecord, RunRequest, RunStatus, SubmitMessage, ToolCallSpec, ToolDef, ToolReply, ToolRequest,
    now,
};
use agentos_bus::id::{CallId, ToolName};
use agentos_bus::subject::{self, DlqKind};
use agentos_bus::{CallMeta, Delivery, Error as BusError, PendingAppend, Standing, Versioned};
use tokio_util::sync::CancellationToken;

use super::plan::{self, Next};
use super::{Active, Ctx, lock};

/// How a delivery ends.
enum Disposition {
    /// The run reached a terminal state (or was already there): ack.
    Done,
    /// A transient failure: give it back for redelivery after the delay.
    Retry(Duration),
}

/// Why the driver stopped before the run ended.
enum Stop {
    /// Another writer appended first: reload the journal.
    Conflict,
    /// The bus failed; retry the delivery later.
    Bus(BusError),
    /// Shutdown grace ran out: hand the run back now.
    Drain,
}

impl From<BusError> for Stop {
    fn from(e: BusError) -> Self {
        match e {
            BusError::WrongLastSequence { .. } => Stop::Conflict,
            e => Stop::Bus(e),
        }
    }
}

pub(super) async fn process(
    ctx: &Ctx,
    delivery: Delivery,
    active: &Active,
    drain: &CancellationToken,
) {
    let disposition = match delivery.decode() {
        Ok(SubmitMessage::Run(req)) => {
            let cancel = CancellationToken::new();
            lock(active).insert(req.run_id, cancel.clone());
            let d =
                with_progress(ctx, &delivery, drive(ctx, &delivery, &req, &cancel, drain)).await;
            lock(active).remove(&req.run_id);
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
            dead_letter(
                ctx,
                &delivery,
                subject::tenant_of(delivery.subject()).as_ref(),
                &err,
            )
            .await
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
    match ctx
        .bus
        .dead_letter(
            tenant,
            DlqKind::Runs,
            delivery.subject(),
            err,
            delivery.payload().clone(),
        )
        .await
    {
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

async fn drive(
    ctx: &Ctx,
    delivery: &Delivery,
    req: &RunRequest,
    cancel: &CancellationToken,
    drain: &CancellationToken,
) -> Disposition {
    let mut driver = Driver {
        ctx,
        req,
        cancel,
        journal: Vec::new(),
        last: 0,
        record: None,
        fresh_call: None,
        meta: CallMeta {
            request_id: delivery.request_id().map(str::to_owned),
            ..CallMeta::new(req.tenant.clone())
        },
    };
    let resumed = delivery.delivered() > 1;
    let mut conflicts = 0u32;
    let mut needs_reload = resumed;
    loop {
        if needs_reload {
            if let Err(e) = driver.reload().await {
                tracing::warn!(error = %e, run = %req.run_id, "could not read the journal");
                return Disposition::Retry(Duration::from_secs(1));
            }
            needs_reload = false;
        }
        if resumed
            && delivery.delivered() > ctx.opts.max_attempts
            && driver.journal.last().is_none_or(|e| !e.data.is_terminal())
        {
            let error = ErrorBody::new(
                "too_many_attempts",
                format!("gave up after {} deliveries", delivery.delivered()),
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
            r = driver.advance() => r,
        };
        match step {
            Ok(true) => return Disposition::Done,
            Ok(false) => conflicts = 0,
            Err(Stop::Conflict) => {
                conflicts += 1;
                if conflicts > 20 {
                    return Disposition::Retry(Duration::from_secs(1));
                }
                needs_reload = true;
            }
            Err(Stop::Bus(e)) => {
                tracing::warn!(error = %e, run = %req.run_id, "bus failure; the run will be retried");
                return Disposition::Retry(Duration::from_secs(1));
            }
            Err(Stop::Drain) => return Disposition::Retry(Duration::ZERO),
        }
    }
}

struct Driver<'a> {
    ctx: &'a Ctx,
    req: &'a RunRequest,
    cancel: &'a CancellationToken,
    /// The run's journal as this driver knows it.
    journal: Vec<Event>,
    /// Stream sequence of the last journaled event: the guard for the next append.
    last: u64,
    meta: CallMeta,
    /// The run record as this driver last wrote it.
    record: Option<Versioned<RunRecord>>,
    /// The tool call whose `tool.started` this driver itself just appended: its first attempt.
    fresh_call: Option<(u32, CallId)>,
}

impl Driver<'_> {
    async fn reload(&mut self) -> agentos_bus::Result<()> {
        let stored = self
            .ctx
            .bus
            .read_journal(&self.req.tenant, &self.req.run_id)
            .await?;
        self.last = stored.last().map_or(0, |s| s.stream_seq);
        self.fresh_call = None;
        self.record = None;
        self.journal = stored.into_iter().map(|s| s.event).collect();
        if let Ok(Some(rec)) = self.ctx.runs.get_as::<RunRecord>(&self.record_key()).await {
            self.meta.principal = Some(self.creator(Some(&rec.value)));
            self.meta.roles.clone_from(&rec.value.created_by_roles);
            // A cancel that arrived while no orchestrator held the run is in the record.
            if rec.value.status == RunStatus::Cancelling {
                self.cancel.cancel();
            }
        }
        Ok(())
    }

    fn record_key(&self) -> String {
        format!("{}.{}", self.req.tenant, self.req.run_id)
    }

    fn event(&self, data: EventData) -> Event {
        Event {
            seq: self.journal.last().map_or(0, |e| e.seq) + 1,
            run_id: self.req.run_id,
            tenant: self.req.tenant.clone(),
            ts: now(),
            data,
        }
    }

    async fn append(&mut self, data: EventData) -> Result<(), Stop> {
        let event = self.event(data);
        self.last = self.ctx.bus.append(&event, self.last).await?;
        self.journal.push(event);
        Ok(())
    }

    /// Performs the next action; `Ok(true)` once the run has ended.
    async fn advance(&mut self) -> Result<bool, Stop> {
        if self.journal.is_empty() {
            self.audit_direct_submission().await?;
        }
        let agent = self.agent().await?;
        // Before the run starts: the tenant first (an unregistered or disabled tenant learns
        // nothing about agents), then the agent, then its entitlements.
        let before_start = matches!(
            plan::next(&self.journal, agent.as_ref().map_or(1, |a| a.max_steps)),
            Next::Create | Next::Start
        );
        let refusal = match &agent {
            _ if !before_start => None,
            Ok(agent) => self.admit(Some(agent)).await?.err(),
            Err(error) => Some(
                self.admit(None)
                    .await?
                    .err()
                    .unwrap_or_else(|| error.clone()),
            ),
        };
        if let Some(error) = refusal {
            self.ensure_created().await?;
            self.finish(EventData::RunFailed { error }).await?;
            return Ok(true);
        }
        let agent = match agent {
            Ok(agent) => agent,
            // Only reached once the run started: a redelivery of a run whose agent is gone.
            Err(error) => {
                if self.journal.last().is_some_and(|e| e.data.is_terminal()) {
                    self.project_terminal().await?;
                } else {
                    self.finish(EventData::RunFailed { error }).await?;
                }
                return Ok(true);
            }
        };
        let next = plan::next(&self.journal, agent.max_steps);
        if self.cancel.is_cancelled() && !matches!(next, Next::Finished | Next::Create) {
            self.finish(EventData::RunCancelled {
                reason: "cancelled by request".into(),
            })
            .await?;
            return Ok(true);
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
                self.append(EventData::RunStarted {}).await?;
                self.project(|rec| {
                    if !rec.status.is_terminal() && rec.status != RunStatus::Cancelling {
                        rec.status = RunStatus::Running;
                    }
                    rec.started_at.get_or_insert(now());
                })
                .await?;
            }
            Next::StartStep(step) => self.append(EventData::StepStarted { step }).await?,
            Next::CallModel(step) => match self.call_model(&agent, step).await? {
                Ok(()) => {}
                Err(error) => {
                    self.finish(EventData::RunFailed { error }).await?;
                    return Ok(true);
                }
            },
            Next::StartTool(step, call) => {
                let allowed = ToolName::parse(call.name.clone())
                    .ok()
                    .filter(|n| agent.tools.contains(n));
                if let Some(name) = allowed {
                    self.append(EventData::ToolStarted {
                        step,
                        call_id: call.id.clone(),
                        name,
                        arguments: call.arguments,
                    })
                    .await?;
                    self.fresh_call = Some((step, call.id));
                } else {
                    let error = ErrorBody::new(
                        "tool_not_allowed",
                        format!("agent {} may not use tool {}", agent.id, call.name),
                    );
                    self.append(EventData::ToolFailed {
                        step,
                        call_id: call.id,
                        name: call.name,
                        error,
                    })
                    .await?;
                }
            }
            Next::InvokeTool(step, call) => {
                let data = self.call_tool(step, &call).await?;
                self.append(data).await?;
            }
            Next::Complete { output } => {
                let usage = plan::usage(&self.journal);
                self.finish(EventData::RunCompleted { output, usage })
                    .await?;
                return Ok(true);
            }
            Next::TooManySteps(max) => {
                let error = ErrorBody::new(
                    "max_steps_exceeded",
                    format!("no final answer within {max} steps"),
                );
                self.finish(EventData::RunFailed { error }).await?;
                return Ok(true);
            }
            Next::Finished => {
                // Make sure the record reflects the end (a previous orchestrator may have died
                // between the terminal event and the projection).
                self.project_terminal().await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The agent: from the request's snapshot, else the current definition.
    async fn agent(&self) -> Result<Result<AgentSpec, ErrorBody>, Stop> {
        if let Some(agent) = &self.req.agent {
            return Ok(Ok(agent.clone()));
        }
        let key = format!("{}.{}", self.req.tenant, self.req.agent_id);
        Ok(match self.ctx.agents.get_as::<AgentSpec>(&key).await? {
            Some(a) => Ok(a.value),
            None => Err(ErrorBody::new(
                "agent_not_found",
                format!("no agent {}", self.req.agent_id),
            )),
        })
    }

    /// Whether the tenant may start the run now: it is admitted (registered, if that is
    /// required) and enabled, and entitled to the agent (when known), its model and its tools.
    /// Checked here, not only at the edge, because direct NATS publishers never pass the edge;
    /// checked once, before the run starts.
    async fn admit(&self, agent: Option<&AgentSpec>) -> Result<Result<(), ErrorBody>, Stop> {
        let refusal = self.refusal(agent).await?;
        if refusal.is_none() {
            return Ok(Ok(()));
        }
        // Failing a run cannot be undone, so a refusal is confirmed against a fresh read (the
        // tenant may have just been enabled or entitled).
        self.ctx.tenants.forget(&self.req.tenant);
        Ok(self.refusal(agent).await?.map_or(Ok(()), Err))
    }

    async fn refusal(&self, agent: Option<&AgentSpec>) -> Result<Option<ErrorBody>, Stop> {
        let tenant = match self.ctx.tenants.standing(&self.req.tenant).await? {
            Standing::Active(None) => return Ok(None),
            Standing::Active(Some(rec)) => rec,
            Standing::Disabled => {
                return Ok(Some(ErrorBody::new(
                    "tenant_disabled",
                    format!("tenant {} is disabled", self.req.tenant),
                )));
            }
            Standing::Unregistered => {
                return Ok(Some(ErrorBody::new(
                    "tenant_not_registered",
                    format!(
                        "tenant {} is not registered on this platform",
                        self.req.tenant
                    ),
                )));
            }
        };
        Ok(agent
            .and_then(|a| tenant.entitlements.check_agent(a).err())
            .map(|e| ErrorBody::new("not_entitled", e.to_string())))
    }

    /// Who created the run, as the record says; a run without a record was published straight
    /// onto the bus by the tenant's own NATS user.
    fn creator(&self, record: Option<&RunRecord>) -> String {
        record
            .and_then(|r| r.created_by.clone())
            .unwrap_or_else(|| format!("nats:{}", self.req.tenant))
    }

    /// A run without a record was published straight onto the bus (the edge writes the record
    /// first): the edge did not audit it, so the orchestrator does. The record read here is
    /// kept for the `run.started` projection, so this costs no extra round trip.
    async fn audit_direct_submission(&mut self) -> Result<(), Stop> {
        if self.record.is_none() {
            self.record = self
                .ctx
                .runs
                .get_as::<RunRecord>(&self.record_key())
                .await?;
        }
        let record = self.record.as_ref().map(|r| &r.value);
        self.meta.principal = Some(self.creator(record));
        self.meta.roles = record
            .map(|r| r.created_by_roles.clone())
            .unwrap_or_default();
        if record.is_some() {
            return Ok(());
        }
        // A run published straight onto the bus: the edge did not index it, so it is done here.
        self.ctx
            .bus
            .index_run(&self.req.tenant, &self.req.agent_id, &self.req.run_id)
            .await?
            .stored()
            .await?;
        let record = AuditRecord {
            ts: now(),
            tenant: self.req.tenant.clone(),
            actor: self.creator(None),
            actor_tenant: Some(self.req.tenant.clone()),
            action: "run.create".into(),
            target: self.req.run_id.to_string(),
            request_id: self.meta.request_id.clone(),
            details: serde_json::json!({"agent_id": self.req.agent_id, "via": "nats"}),
        };
        self.ctx.bus.audit(&record).await?;
        Ok(())
    }

    async fn ensure_created(&mut self) -> Result<(), Stop> {
        if self.journal.is_empty() {
            self.append(EventData::RunCreated {
                agent_id: self.req.agent_id.clone(),
                input: self.req.input.clone(),
            })
            .await?;
        }
        Ok(())
    }

    /// Appends the terminal event and projects it onto the record.
    async fn finish(&mut self, data: EventData) -> Result<(), Stop> {
        self.append(data).await?;
        self.project_terminal().await
    }

    async fn project_terminal(&mut self) -> Result<(), Stop> {
        let Some(last) = self.journal.last() else {
            return Ok(());
        };
        let (status, output, error) = match &last.data {
            EventData::RunCompleted { output, .. } => {
                (RunStatus::Completed, Some(output.clone()), None)
            }
            EventData::RunFailed { error } => (RunStatus::Failed, None, Some(error.clone())),
            EventData::RunCancelled { .. } => (RunStatus::Cancelled, None, None),
            _ => return Ok(()),
        };
        let (usage, steps, seq, ts) = (
            plan::usage(&self.journal),
            plan::steps(&self.journal),
            last.seq,
            last.ts,
        );
        self.project(|rec| {
            rec.status = status;
            rec.output = output.clone();
            rec.error = error.clone();
            rec.usage = usage;
            rec.steps = steps;
            rec.last_seq = seq;
            rec.finished_at = Some(ts);
        })
        .await
    }

    /// Read-modify-write of the run record (compare-and-set, retried); creates it for runs
    /// submitted straight onto the bus. The record and revision this driver last wrote are
    /// kept, so the usual case is one `update` with no read; a stale revision (the edge wrote
    /// `cancelling`, say) re-reads and applies the change again.
    async fn project(&mut self, change: impl Fn(&mut RunRecord)) -> Result<(), Stop> {
        let key = self.record_key();
        for _ in 0..10 {
            let current = match self.record.take() {
                Some(cached) => Some(cached),
                None => self.ctx.runs.get_as::<RunRecord>(&key).await?,
            };
            let (mut rec, revision) = match current {
                Some(c) => (c.value, Some(c.revision)),
                None => (
                    RunRecord {
                        created_by: Some(self.creator(None)),
                        ..RunRecord::queued(self.req)
                    },
                    None,
                ),
            };
            change(&mut rec);
            rec.updated_at = now();
            let result = match revision {
                Some(rev) => self.ctx.runs.update_as(&key, &rec, rev).await,
                None => self.ctx.runs.create_as(&key, &rec).await,
            };
            match result {
                Ok(revision) => {
                    self.record = Some(Versioned {
                        value: rec,
                        revision,
                    });
                    return Ok(());
                }
                Err(BusError::WrongRevision { .. } | BusError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(Stop::Bus(e)),
            }
        }
        Err(Stop::Bus(BusError::WrongRevision { key, expected: 0 }))
    }

    /// Calls the model for `step`; deltas are journaled as they stream (pipelined, then all
    /// awaited), then `model.completed` is appended under the guard. `Ok(Err(_))` is a model
    /// failure that ends the run.
    async fn call_model(
        &mut self,
        agent: &AgentSpec,
        step: u32,
    ) -> Result<Result<(), ErrorBody>, Stop> {
        let request = ModelRequest {
            run_id: Some(self.req.run_id),
            step,
            messages: plan::messages(&agent.instructions, &self.req.input, &self.journal),
            tools: agent
                .tools
                .iter()
                .map(|name| ToolDef {
                    name: name.to_string(),
                    description: String::new(),
                    parameters: serde_json::Value::Null,
                })
                .collect(),
            config: agent.model_config.clone(),
            stream: true,
            params: Default::default(),
        };
        let subject = subject::model(&self.req.tenant, &agent.model);
        let mut replies = self
            .ctx
            .bus
            .call(subject, &self.meta, request.encode())
            .await?;
        let mut pending: Vec<PendingAppend> = Vec::new();
        let outcome = loop {
            let reply = tokio::select! {
                r = replies.next(self.ctx.opts.model_timeout) => r,
                _ = self.cancel.cancelled() => break None,
            };
            let reply = match reply {
                Ok(r) => r,
                Err(BusError::NoResponders { .. }) => {
                    break Some(Err(ErrorBody::new(
                        "model_unavailable",
                        format!("no model worker serves {}", agent.model),
                    )));
                }
                Err(BusError::TimedOut { after, .. }) => {
                    break Some(Err(ErrorBody::new(
                        "model_timeout",
                        format!("no reply from model {} within {after:?}", agent.model),
                    )));
                }
                Err(e) => return Err(Stop::Bus(e)),
            };
            match ModelReply::decode(reply.schema.as_deref(), &reply.payload) {
                Ok(ModelReply::Delta { text }) => {
                    let event = self.event(EventData::ModelDelta { step, text });
                    pending.push(self.ctx.bus.append_pipelined(&event).await?);
                    self.journal.push(event);
                }
                // Tool calls are journaled whole, from the final reply.
                Ok(ModelReply::ToolCallDelta { .. }) => {}
                Ok(ModelReply::Final { message, usage, .. }) => break Some(Ok((message, usage))),
                Ok(ModelReply::Error { error }) => break Some(Err(error)),
                Err(e) => break Some(Err(ErrorBody::new("invalid_model_reply", e.to_string()))),
            }
        };
        for p in pending {
            self.last = self.last.max(p.stored().await?);
        }
        match outcome {
            // Cancelled mid-call: the next advance() appends run.cancelled.
            None => Ok(Ok(())),
            Some(Ok((message, usage))) => {
                self.append(EventData::ModelCompleted {
                    step,
                    message,
                    usage,
                })
                .await?;
                Ok(Ok(()))
            }
            Some(Err(error)) => Ok(Err(error)),
        }
    }

    /// Invokes a journaled tool call with its idempotency key; the reply becomes
    /// `tool.completed` or `tool.failed`.
    async fn call_tool(&mut self, step: u32, call: &ToolCallSpec) -> Result<EventData, Stop> {
        let failed = |error| EventData::ToolFailed {
            step,
            call_id: call.id.clone(),
            name: call.name.clone(),
            error,
        };
        // `tool.started` is only journaled for a valid, allowed name.
        let Ok(name) = ToolName::parse(call.name.clone()) else {
            return Ok(failed(ErrorBody::new(
                "tool_not_allowed",
                format!("{:?} is not a tool name", call.name),
            )));
        };
        let key = ToolRequest::key_for(&self.req.run_id, step, &call.id);
        let timeout = self.ctx.opts.tool_timeout;
        let request = ToolRequest {
            tool: name.clone(),
            arguments: call.arguments.clone(),
            run_id: Some(self.req.run_id),
            step,
            call_id: Some(call.id.clone()),
            idempotency_key: Some(key.clone()),
            first_attempt: self.fresh_call.take() == Some((step, call.id.clone())),
            timeout_ms: timeout.as_millis() as u64,
        };
        let meta = CallMeta {
            idempotency_key: Some(key),
            ..self.meta.clone()
        };
        let subject = subject::tool(&self.req.tenant, &name);
        let mut replies = self.ctx.bus.call(subject, &meta, request.encode()).await?;
        // The worker answers within `timeout`; allow a little for the trip.
        let reply = tokio::select! {
            r = replies.next(timeout + Duration::from_secs(2)) => r,
            _ = self.cancel.cancelled() => return Ok(failed(ErrorBody::new("cancelled", "the run was cancelled"))),
        };
        Ok(match reply {
            Ok(r) => match ToolReply::decode(r.schema.as_deref(), &r.payload) {
                Ok(ToolReply::Ok { output }) => EventData::ToolCompleted {
                    step,
                    call_id: call.id.clone(),
                    name,
                    output,
                },
                Ok(ToolReply::Error { error, .. }) => failed(error),
                Err(e) => failed(ErrorBody::new("invalid_tool_reply", e.to_string())),
            },
            Err(BusError::NoResponders { .. }) => failed(ErrorBody::new(
                "tool_unavailable",
                format!("no worker serves tool {}", call.name),
            )),
            Err(BusError::TimedOut { after, .. }) => failed(ErrorBody::new(
                "tool_timeout",
                format!("no reply from tool {} within {after:?}", call.name),
            )),
            Err(e) => return Err(Stop::Bus(e)),
        })
    }
}
