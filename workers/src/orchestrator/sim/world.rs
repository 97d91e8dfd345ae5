//! The simulated world: the bus (journals under JetStream's guard, run records with
//! compare-and-set, agents, threads), a scripted model worker and a tool worker that follows the
//! claim protocol, on a virtual clock; faults drawn per operation.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use agentos_bus::envelope::{
    AgentSpec, AuditRecord, ChatMessage, ClientTool, Envelope, Event, ModelReply, ModelRequest,
    Role, RunRecord, ThreadLock, ThreadTurn, ToolCallSpec, ToolReply, ToolRequest, ToolSpec, Usage,
};
use agentos_bus::id::{AgentId, CallId, RunId, ThreadId, ToolName};
use agentos_bus::subject::{self};
use agentos_bus::{Error as BusError, Reply, Result};
use serde_json::json;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::check::Seen;
use super::{EARLIER_QUESTION, Faults, Rng};
use crate::tool::Declared;

#[derive(Clone, Debug)]
pub(super) enum Slot {
    Claimed { until_ms: u64 },
    Replied(ToolReply),
}

/// A tool request on its way through the simulated worker.
pub(super) struct ToolJob {
    pub(super) at_ms: u64,
    pub(super) inbox: u64,
    pub(super) request: ToolRequest,
    pub(super) key: Option<String>,
    pub(super) phase: ToolPhase,
    pub(super) lose_reply: bool,
}

pub(super) enum ToolPhase {
    /// Arrived: claim the key (or answer from the record).
    Arrive,
    /// Claimed: the tool runs and finishes now.
    Finish,
}

pub(super) struct StoredEvent {
    pub(super) stream_seq: u64,
    pub(super) event: Event,
}

/// How often each fault struck and how runs ended, summed over schedules: proof that the
/// schedules reach what they claim to.
pub(super) struct World {
    pub(super) rng: Rng,
    pub(super) faults: Faults,
    pub(super) now_ms: u64,
    pub(super) stream_seq: u64,
    pub(super) journals: BTreeMap<RunId, Vec<StoredEvent>>,
    pub(super) records: BTreeMap<RunId, (RunRecord, u64)>,
    pub(super) revision: u64,
    pub(super) agents: BTreeMap<AgentId, AgentSpec>,
    pub(super) audits: Vec<AuditRecord>,
    /// The run index (the edge lists what it admits; the orchestrator, direct submissions).
    pub(super) indexed: BTreeSet<RunId>,
    pub(super) results: BTreeMap<String, Slot>,
    pub(super) executions: BTreeMap<String, u32>,
    pub(super) jobs: Vec<ToolJob>,
    pub(super) inboxes: BTreeMap<u64, VecDeque<Reply>>,
    pub(super) next_inbox: u64,
    /// The model config each run's model calls carried.
    pub(super) configs: BTreeMap<RunId, BTreeSet<String>>,
    /// Tools a model request showed without their declared description and schema.
    pub(super) undeclared_defs: Vec<String>,
    /// Threads and their turns, in the order added.
    pub(super) threads: BTreeMap<ThreadId, Vec<ThreadTurn>>,
    /// Runs whose model request lacked the thread's earlier messages.
    pub(super) history_missing: BTreeSet<RunId>,
    /// Thread locks with their revisions; the runs submitted on each thread.
    pub(super) locks: BTreeMap<ThreadId, (ThreadLock, u64)>,
    pub(super) thread_runs: BTreeMap<ThreadId, Vec<RunId>>,
    /// Each run's cancel signal (what the `ctl` subject reaches).
    pub(super) signals: BTreeMap<RunId, CancellationToken>,
    /// Wakes published onto the runs subject by cancels, and each waiting run's expiry timer
    /// (a message schedule: one per run), due at a virtual millisecond.
    pub(super) outbox: Vec<(u64, RunId)>,
    pub(super) timers: BTreeMap<RunId, u64>,
    /// Budget ledgers by key (`Port::ledger`; the simulated tenant has no quota settings, so
    /// they stay empty unless a scenario gives it some).
    pub(super) ledgers: BTreeMap<agentos_bus::Key, agentos_bus::quota::Ledger>,
    /// The tenant's record with quota settings (half the schedules), else none.
    pub(super) quotas: Option<std::sync::Arc<agentos_bus::envelope::TenantRecord>>,
    pub(super) seen: Seen,
}

impl World {
    pub(super) fn fail(&mut self, op: &str) -> Result<()> {
        if self.rng.chance(self.faults.bus_error) {
            self.seen.bus_errors += 1;
            return Err(BusError::TimedOut {
                op: format!("simulated {op}"),
                after: Duration::ZERO,
            });
        }
        Ok(())
    }

    pub(super) fn now(&self) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
            + Duration::from_secs(1_800_000_000)
            + Duration::from_millis(self.now_ms)
    }

    /// The virtual millisecond of a wall time.
    pub(super) fn ms_of(&self, at: OffsetDateTime) -> u64 {
        let ahead = (at - self.now()).whole_milliseconds().max(0);
        self.now_ms + u64::try_from(ahead).unwrap_or(u64::MAX / 2)
    }

    pub(super) fn deliver(&mut self, inbox: u64, reply: Reply) {
        let twice = self.rng.chance(self.faults.duplicate_reply);
        let queue = self.inboxes.entry(inbox).or_default();
        if twice {
            self.seen.duplicate_replies += 1;
            queue.push_back(reply.clone());
        }
        queue.push_back(reply);
    }

    /// JetStream's publish to a run's subject under the expected-last-subject-sequence guard.
    /// Returns the stream sequence.
    pub(super) fn publish(&mut self, event: &Event, expected: u64) -> Result<u64> {
        let run = event.run_id;
        let journal = self.journals.entry(run).or_default();
        let last = journal.last().map_or(0, |s| s.stream_seq);
        if expected != last {
            self.seen.append_conflicts += 1;
            return Err(BusError::WrongLastSequence {
                subject: subject::events(&event.tenant, &run).to_string(),
                expected,
            });
        }
        self.stream_seq += 1;
        let seq = self.stream_seq;
        journal.push(StoredEvent {
            stream_seq: seq,
            event: event.clone(),
        });
        Ok(seq)
    }

    /// The scripted model: `config.plan[k]` tool calls at step k+1, then a final answer.
    pub(super) fn model_call(&mut self, inbox: u64, req: &ModelRequest) {
        for def in &req.tools {
            let declared = sim_tool(&def.name)
                .map(|d| d.def())
                .or_else(|| (def.name == ASK).then(|| ask_tool().def()));
            if declared.as_ref() != Some(def) {
                self.undeclared_defs.push(def.name.clone());
            }
        }
        if let Some(run) = req.run_id {
            self.configs
                .entry(run)
                .or_default()
                .insert(req.config.to_string());
            let on_thread = req.config["thread"].as_bool().unwrap_or(false);
            let has_history = req
                .messages
                .iter()
                .any(|m| m.content.as_deref() == Some(EARLIER_QUESTION));
            if on_thread != has_history {
                self.history_missing.insert(run);
            }
        }
        if self.rng.chance(self.faults.model_timeout) {
            self.seen.model_timeouts += 1;
            return;
        }
        let plan: Vec<u64> = req.config["plan"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        let calls = plan.get(req.step as usize - 1).copied();
        let usage = Usage::new(req.messages.len() as u64, 1 + req.step as u64);
        let reply = |r: ModelReply| Reply {
            schema: None,
            payload: r.encode(),
        };
        let message = match calls {
            Some(n) => ChatMessage {
                role: Role::Assistant,
                content: None,
                tool_calls: (0..n)
                    .map(|i| ToolCallSpec {
                        id: CallId::parse(format!("call_{}_{i}", req.step))
                            .unwrap_or_else(|_| unreachable_id()),
                        // The last call of a step sometimes names a tool the agent lacks.
                        name: if i == 2 {
                            "forbidden".into()
                        } else {
                            req.tools[(i + u64::from(req.step)) as usize % req.tools.len().max(1)]
                                .name
                                .clone()
                        },
                        arguments: json!({"step": req.step, "i": i}),
                    })
                    .collect(),
                tool_call_id: None,
            },
            None => {
                self.deliver(
                    inbox,
                    reply(ModelReply::Delta {
                        text: "all ".into(),
                    }),
                );
                self.deliver(
                    inbox,
                    reply(ModelReply::Delta {
                        text: "done".into(),
                    }),
                );
                ChatMessage::text(Role::Assistant, format!("answer after {} steps", req.step))
            }
        };
        self.deliver(
            inbox,
            reply(ModelReply::Final {
                message,
                usage,
                finish_reason: "stop".into(),
                usage_estimated: false,
                logprobs: None,
            }),
        );
    }

    /// The tool worker, one phase of one job (see `workers/src/tool/claim.rs`).
    pub(super) fn tool_phase(&mut self, job: ToolJob) {
        let reply = |r: &ToolReply| Reply {
            schema: None,
            payload: r.encode(),
        };
        match job.phase {
            ToolPhase::Arrive => {
                // `first_attempt` only spares the worker a read: a failed create reads anyway,
                // so the outcome per slot is the same either way.
                if let Some(key) = &job.key {
                    match self.results.get(key).cloned() {
                        Some(Slot::Replied(r)) => {
                            self.seen.tool_replays += 1;
                            self.deliver(job.inbox, reply(&r));
                            return;
                        }
                        Some(Slot::Claimed { until_ms }) if until_ms > self.now_ms => {
                            self.seen.tool_busy += 1;
                            let busy = ToolReply::InProgress {
                                retry_after_ms: (until_ms - self.now_ms).min(5_000),
                            };
                            self.deliver(job.inbox, reply(&busy));
                            return;
                        }
                        // Free, or an expired claim taken over.
                        _ => {
                            let lease = job.request.timeout_ms + super::CLAIM_GRACE_MS;
                            let until_ms = self.now_ms + lease;
                            self.results.insert(key.clone(), Slot::Claimed { until_ms });
                        }
                    }
                }
                // A running tool may report progress (0-2 replies before its final one).
                for i in 0..self.rng.below(3) {
                    self.seen.tool_progress += 1;
                    let progress = ToolReply::Progress {
                        progress: (i + 1) as f64,
                        total: Some(2.0),
                        message: None,
                    };
                    self.deliver(job.inbox, reply(&progress));
                }
                let run_for = 1 + self.rng.below(job.request.timeout_ms.min(40));
                self.jobs.push(ToolJob {
                    at_ms: self.now_ms + run_for,
                    phase: ToolPhase::Finish,
                    ..job
                });
            }
            ToolPhase::Finish => {
                let r = ToolReply::Ok {
                    output: json!({"echo": job.request.arguments}),
                };
                if let Some(key) = &job.key {
                    *self.executions.entry(key.clone()).or_default() += 1;
                    self.results.insert(key.clone(), Slot::Replied(r.clone()));
                }
                if !job.lose_reply {
                    self.deliver(job.inbox, reply(&r));
                }
            }
        }
    }
}

/// The simulated tools' declarations: `sleep` takes steps up to 2 only, so the calls a model
/// makes to it at later steps have invalid arguments.
pub(super) fn sim_tool(name: &str) -> Option<Arc<Declared>> {
    static TOOLS: LazyLock<BTreeMap<&'static str, Arc<Declared>>> = LazyLock::new(|| {
        let declare = |name: &'static str, parameters: serde_json::Value, timeout_ms| {
            let spec = ToolSpec {
                name: ToolName::parse(name).ok()?,
                description: format!("the simulated {name}"),
                parameters,
                idempotent: true,
                timeout_ms,
            };
            Some((name, Arc::new(Declared::new(spec))))
        };
        [
            declare("echo", json!({"type": "object"}), 80),
            declare(
                "sleep",
                json!({"type": "object", "properties": {"step": {"type": "integer", "maximum": 2}}}),
                1_000,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    });
    TOOLS.get(name).cloned()
}

/// The client tool of agents whose runs may wait: the caller answers it.
pub(super) const ASK: &str = "ask";

pub(super) fn ask_tool() -> ClientTool {
    ClientTool {
        name: ToolName::parse(ASK).unwrap_or_else(|_| unreachable!("a valid literal name")),
        description: "asks the caller".into(),
        parameters: json!({"type": "object"}),
    }
}

pub(super) fn unreachable_id() -> CallId {
    CallId::parse("call_invalid").unwrap_or_else(|_| unreachable!("a valid literal id"))
}
