//! The tool step: the call's arguments are checked against the tool's declared JSON Schema
//! (arguments that do not fit end the call as `tool.failed` `invalid_arguments` before it
//! starts: uniform for tools in every language, and the model sees the validator's message);
//! then `tool.started` is journaled (under the guard, so one driver wins), the tool is invoked
//! with the idempotency key `<run_id>:<step>:<call_id>` and its declared timeout (at most the
//! orchestrator's), and its reply becomes `tool.completed` or `tool.failed`. A tool may send
//! `progress` replies before its final one; each is journaled as `tool.progress` (guarded like
//! every event) while the call goes on, within the call's one deadline.
//!
//! At most once per key: the worker claims a key before it runs the call and records the reply
//! under it; a repeated key gets the recorded reply, or `in_progress` while the claim holder
//! still works (a duplicate delivery, or a driver resumed while the first call runs). On
//! `in_progress` the driver hands the run back and asks again later. `first_attempt` (this
//! driver appended `tool.started` just before) lets the worker skip looking for a record.

use std::time::Duration;

use agentos_bus::envelope::{
    AgentSpec, Envelope, ErrorBody, EventData, ToolCallSpec, ToolReply, ToolRequest,
};
use agentos_bus::grant::RunScope;
use agentos_bus::id::ToolName;
use agentos_bus::subject;
use agentos_bus::{CallMeta, Error as BusError};

use super::drive::{Driver, Stop};
use super::port::{Port, Replies};

/// How long a caller waits for a tool reply beyond the timeout it gave the worker.
const REPLY_GRACE: Duration = Duration::from_secs(2);

impl<P: Port> Driver<'_, P> {
    /// Journals `tool.started` for an allowed tool, or `tool.failed` for one the agent may not
    /// use (the model sees that and can correct itself).
    pub(super) async fn start_tool(
        &mut self,
        agent: &AgentSpec,
        step: u32,
        call: ToolCallSpec,
    ) -> Result<(), Stop> {
        let allowed = ToolName::parse(call.name.clone())
            .ok()
            .filter(|n| agent.tools.contains(n));
        let Some(name) = allowed else {
            let error = ErrorBody::new(
                "tool_not_allowed",
                format!("agent {} may not use tool {}", agent.id, call.name),
            );
            return self
                .append(EventData::ToolFailed {
                    step,
                    call_id: call.id,
                    name: call.name,
                    error,
                })
                .await;
        };
        // Arguments that do not fit the tool's schema end the call before it starts; the model
        // sees the validator's message at its next step and can correct itself.
        let declared = self.port.tools(std::slice::from_ref(&name)).await?;
        if let Some(Err(error)) = declared
            .first()
            .and_then(Option::as_ref)
            .map(|d| d.check(&call.arguments))
        {
            return self
                .append(EventData::ToolFailed {
                    step,
                    call_id: call.id,
                    name: call.name,
                    error,
                })
                .await;
        }
        self.append(EventData::ToolStarted {
            step,
            call_id: call.id.clone(),
            name,
            arguments: call.arguments,
        })
        .await?;
        self.fresh_call = Some((step, call.id));
        Ok(())
    }

    /// Invokes a journaled call and journals its result.
    pub(super) async fn invoke_tool(
        &mut self,
        agent: &AgentSpec,
        step: u32,
        call: &ToolCallSpec,
    ) -> Result<(), Stop> {
        let first_attempt = self.fresh_call.take() == Some((step, call.id.clone()));
        let data = self.call_tool(agent, step, call, first_attempt).await?;
        self.append(data).await
    }

    async fn call_tool(
        &mut self,
        agent: &AgentSpec,
        step: u32,
        call: &ToolCallSpec,
        first_attempt: bool,
    ) -> Result<EventData, Stop> {
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
        // The memory the agent grants, resolved for this run from what only the platform knows
        // (its creator, thread and agent): the tool worker trusts it, since only platform
        // processes can publish on tool subjects.
        let memory_namespaces = agent.memory.resolve(&RunScope {
            principal: self.meta.principal.as_deref(),
            thread: self.req.thread_id.as_ref().map(|t| t.as_str()),
            agent: &agent.id,
        });
        // The tool's declared timeout, within the orchestrator's own bound.
        let declared = self.port.tools(std::slice::from_ref(&name)).await?;
        let timeout = match declared.first().and_then(Option::as_ref) {
            Some(d) => d.timeout().min(self.opts.tool_timeout),
            None => self.opts.tool_timeout,
        };
        let request = ToolRequest {
            tool: name.clone(),
            arguments: call.arguments.clone(),
            run_id: Some(self.req.run_id),
            step,
            call_id: Some(call.id.clone()),
            idempotency_key: Some(key.clone()),
            first_attempt,
            timeout_ms: timeout.as_millis() as u64,
            memory_namespaces,
        };
        let meta = CallMeta {
            idempotency_key: Some(key),
            ..self.meta.clone()
        };
        let subject = subject::tool(&self.req.tenant, &name);
        let mut replies = self.port.call(subject, &meta, request.encode()).await?;
        // The whole call, progress replies included, has one deadline.
        let deadline = tokio::time::Instant::now() + timeout + REPLY_GRACE;
        loop {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let reply = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    return Ok(failed(ErrorBody::new("cancelled", "the run was cancelled")));
                }
                r = replies.next(wait) => r,
            };
            let reply = match reply {
                Ok(r) => ToolReply::decode(r.schema.as_deref(), &r.payload),
                Err(BusError::NoResponders { .. }) => {
                    return Ok(failed(ErrorBody::new(
                        "tool_unavailable",
                        format!("no worker serves tool {}", call.name),
                    )));
                }
                Err(BusError::TimedOut { .. }) => {
                    return Ok(failed(ErrorBody::new(
                        "tool_timeout",
                        format!("no reply from tool {} within {timeout:?}", call.name),
                    )));
                }
                Err(e) => return Err(Stop::Bus(e)),
            };
            return Ok(match reply {
                Ok(ToolReply::Ok { output }) => EventData::ToolCompleted {
                    step,
                    call_id: call.id.clone(),
                    name,
                    output,
                },
                Ok(ToolReply::Error { error, .. }) => failed(error),
                Ok(ToolReply::InProgress { retry_after_ms }) => {
                    return Err(Stop::Busy(Duration::from_millis(retry_after_ms.max(100))));
                }
                Ok(ToolReply::Progress {
                    progress,
                    total,
                    message,
                }) => {
                    // Journaled like every event (guarded), then wait for the next reply.
                    self.append(EventData::ToolProgress {
                        step,
                        call_id: call.id.clone(),
                        name: name.clone(),
                        progress,
                        total,
                        message,
                    })
                    .await?;
                    continue;
                }
                Err(e) => failed(ErrorBody::new("invalid_tool_reply", e.to_string())),
            });
        }
    }
}
