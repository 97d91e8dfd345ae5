//! The model step: one call to the agent's model with the conversation so far. Streamed text is
//! journaled as `model.delta` while the model goes on: one guarded append in flight at a time,
//! the deltas that arrive before its ack waiting their turn. Every delta is guarded like any
//! other event, so an orchestrator that lost the run cannot slip text into its journal. The
//! final message becomes `model.completed`.

use std::collections::VecDeque;

use agentos_bus::Error as BusError;
use agentos_bus::envelope::{AgentSpec, Envelope, ErrorBody, EventData, ModelReply, ModelRequest};
use agentos_bus::subject;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::drive::{Driver, Stop};
use super::port::{Port, Replies};
use crate::tool::undeclared;

impl<P: Port> Driver<'_, P> {
    /// Calls the model for `step`. `Ok(Err(_))` is a model failure that ends the run; a cancel
    /// mid-call returns `Ok(Ok(()))` with nothing journaled, and the next action cancels.
    pub(super) async fn call_model(
        &mut self,
        agent: &AgentSpec,
        step: u32,
    ) -> Result<Result<(), ErrorBody>, Stop> {
        if let Some(error) = self.cap_refusal(agent, step).await? {
            return Ok(Err(error));
        }
        // The model is shown each tool's declaration: description and argument schema.
        let declared = self.port.tools(&agent.tools).await?;
        // Client tools are declared in the agent itself.
        let tools = agent
            .tools
            .iter()
            .zip(&declared)
            .map(|(name, d)| d.as_ref().map_or_else(|| undeclared(name), |d| d.def()))
            .chain(agent.client_tools.iter().map(|t| t.def()))
            .collect();
        let request = ModelRequest {
            run_id: Some(self.req.run_id),
            step,
            messages: self.state.messages(&agent.instructions, &self.req.input),
            tools,
            config: agent.model_config.clone(),
            stream: true,
            params: Default::default(),
        };
        let subject = subject::model(&self.req.tenant, &agent.model);
        let payload = request.encode();
        let mut deltas = Deltas::default();
        let timeout = self.opts.model_timeout;
        // A reply stream that stops after its first reply (a NATS node on its path died) is
        // called again once; its deltas may then show again, as after a takeover (api.md).
        let mut called_again = false;
        let outcome = 'call: loop {
            let mut replies = self
                .port
                .call(subject.clone(), &self.meta, payload.clone())
                .await?;
            let mut heard = false;
            break loop {
                let reply = tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => break None,
                    r = replies.next(timeout) => r,
                };
                let reply = match reply {
                    Ok(r) => r,
                    Err(BusError::NoResponders { .. }) => {
                        break Some(Err(ErrorBody::new(
                            "model_unavailable",
                            format!("no model worker serves {}", agent.model),
                        )));
                    }
                    Err(BusError::TimedOut { after, .. }) if heard && !called_again => {
                        called_again = true;
                        tracing::warn!(
                            run = %self.req.run_id, step, model = %agent.model, ?after,
                            "the model's reply stream stopped; calling it again"
                        );
                        continue 'call;
                    }
                    Err(BusError::TimedOut { after, .. }) => {
                        break Some(Err(ErrorBody::new(
                            "model_timeout",
                            format!("no reply from model {} within {after:?}", agent.model),
                        )));
                    }
                    Err(e) => return Err(Stop::Bus(e)),
                };
                heard = true;
                match ModelReply::decode(reply.schema.as_deref(), &reply.payload) {
                    Ok(ModelReply::Delta { text }) => {
                        deltas.push(text);
                        self.write_deltas(step, &mut deltas, false).await?;
                    }
                    // Tool calls are journaled whole, from the final reply.
                    Ok(ModelReply::ToolCallDelta { .. }) => {}
                    Ok(ModelReply::Final { message, usage, .. }) => {
                        break Some(Ok((message, usage)));
                    }
                    Ok(ModelReply::Error { error }) => break Some(Err(error)),
                    Err(e) => {
                        break Some(Err(ErrorBody::new("invalid_model_reply", e.to_string())));
                    }
                }
            };
        };
        self.write_deltas(step, &mut deltas, true).await?;
        match outcome {
            None => Ok(Ok(())),
            Some(Ok((message, usage))) => {
                self.append(EventData::ModelCompleted {
                    step,
                    message,
                    usage,
                })
                .await?;
                self.settle_budget(agent).await?;
                Ok(Ok(()))
            }
            Some(Err(error)) => Ok(Err(error)),
        }
    }
}

/// Deltas waiting for the append in flight beyond this many go out as one event, so a model
/// that streams faster than the journal stores falls behind by one append, not by a backlog.
const MAX_WAITING_DELTAS: usize = 64;

/// Streamed text on its way to the journal.
#[derive(Default)]
struct Deltas {
    /// The append sent and not yet acknowledged.
    in_flight: Option<BoxFuture<'static, agentos_bus::Result<u64>>>,
    /// Texts received since, each its own `model.delta`.
    waiting: VecDeque<String>,
}

impl Deltas {
    fn push(&mut self, text: String) {
        if self.waiting.len() >= MAX_WAITING_DELTAS {
            let merged: String = self.waiting.drain(..).chain([text]).collect();
            self.waiting.push_back(merged);
        } else {
            self.waiting.push_back(text);
        }
    }
}

impl<P: Port> Driver<'_, P> {
    /// Moves streamed text towards the journal: collects the ack of the append in flight if it
    /// has come (waits for it when `flush`), then sends the next waiting delta. With `flush`,
    /// returns only once everything is stored.
    async fn write_deltas(
        &mut self,
        step: u32,
        deltas: &mut Deltas,
        flush: bool,
    ) -> Result<(), Stop> {
        loop {
            if let Some(ack) = deltas.in_flight.as_mut() {
                let stored = if flush {
                    Some(ack.await)
                } else {
                    ack.now_or_never()
                };
                match stored {
                    Some(seq) => {
                        self.last = seq?;
                        deltas.in_flight = None;
                    }
                    None => return Ok(()),
                }
            }
            let Some(text) = deltas.waiting.pop_front() else {
                return Ok(());
            };
            let event = self.event(EventData::ModelDelta { step, text });
            deltas.in_flight = Some(self.port.send_append(&event, self.last).await?);
            self.state.apply(&event);
            if !flush {
                return Ok(());
            }
        }
    }
}
