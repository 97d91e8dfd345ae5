//! Deterministic simulation of the run state machine, in the spirit of FoundationDB's and
//! TigerBeetle's simulators. The real [`drive`] runs against [`SimPort`]: an in-memory bus
//! (journals with JetStream's guard and dedup semantics, run records with compare-and-set,
//! agents, a scripted model worker and a tool worker that follows the bus protocol's
//! claim-and-record rule), on a virtual clock. One seeded generator decides everything: which
//! driver runs next, and which fault strikes at each await — a driver dropped mid-step and its
//! run redelivered, one delivery driven by two orchestrators at once, bus errors, appends that
//! time out after being stored, model and tool timeouts, duplicate replies, cancels at any
//! moment, agents edited mid-run. After each schedule the invariants are checked; a failure
//! names its seed, and `AGENTOS_SIM_SEED=<seed>` replays exactly that schedule.
//!
//! `AGENTOS_SIM_SCHEDULES` sets how many schedules run (default 8,000; 200,000 with
//! `AGENTOS_LONG_TESTS=1`, as `scripts/test-long` runs it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use agentos_bus::envelope::{
    AgentSpec, AuditRecord, ChatMessage, Envelope, ErrorBody, Event, EventData, ModelReply,
    ModelRequest, MultitaskStrategy, REASON_INTERRUPTED, Role, RunRecord, RunRequest, RunStatus,
    ThreadLock, ThreadTurn, ToolCallSpec, ToolReply, ToolRequest, ToolSpec, Usage,
};
use agentos_bus::id::{AgentId, CallId, ModelName, RunId, Tenant, ThreadId, ToolName};
use agentos_bus::subject::{self, Subject};
use agentos_bus::{CallMeta, Error as BusError, Reply, Result, Standing, Stored, Versioned};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::json;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::OrchestratorOptions;
use super::drive::{Attempt, Disposition, drive};
use super::port::{Port, Replies};
use crate::tool::Declared;

/// The earlier user message of the simulated thread.
const EARLIER_QUESTION: &str = "an earlier question";

/// Schedules per `cargo test` run, and with `AGENTOS_LONG_TESTS`.
const SCHEDULES: u64 = 8_000;
const LONG_SCHEDULES: u64 = 200_000;

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// Fault rates, per mille, drawn per schedule so that some schedules are calm and some stormy.
#[derive(Clone, Copy, Debug)]
struct Faults {
    /// Per scheduler tick: drop a driver (crash) and redeliver its run later.
    crash: u64,
    /// Per tick: start a second driver on a run already being driven.
    duplicate: u64,
    /// Per bus operation: fail it.
    bus_error: u64,
    /// Per append: store it, then report a timeout (the caller cannot tell).
    ambiguous_append: u64,
    /// Per model call: no reply at all.
    model_timeout: u64,
    /// Per tool call: the reply is lost (the tool ran).
    tool_timeout: u64,
    /// Per reply: deliver it twice.
    duplicate_reply: u64,
    /// Per tick: a client cancels a run.
    cancel: u64,
    /// Per tick: a client edits an agent (a run pinned to its definition must not notice).
    edit_agent: u64,
}

impl Faults {
    fn draw(rng: &mut Rng) -> Self {
        let mut rate = |max: u64| rng.below(max + 1);
        Self {
            crash: rate(30),
            duplicate: rate(20),
            bus_error: rate(40),
            ambiguous_append: rate(40),
            model_timeout: rate(60),
            tool_timeout: rate(60),
            duplicate_reply: rate(200),
            cancel: rate(6),
            edit_agent: rate(10),
        }
    }
}

/// A tool result slot, as the tool worker keeps it.
#[derive(Clone, Debug)]
enum Slot {
    Claimed { until_ms: u64 },
    Replied(ToolReply),
}

/// A tool request on its way through the simulated worker.
struct ToolJob {
    at_ms: u64,
    inbox: u64,
    request: ToolRequest,
    key: Option<String>,
    phase: ToolPhase,
    lose_reply: bool,
}

enum ToolPhase {
    /// Arrived: claim the key (or answer from the record).
    Arrive,
    /// Claimed: the tool runs and finishes now.
    Finish,
}

struct StoredEvent {
    stream_seq: u64,
    event: Event,
}

/// How often each fault struck and how runs ended, summed over schedules: proof that the
/// schedules reach what they claim to.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    crashes: u64,
    duplicate_drivers: u64,
    append_conflicts: u64,
    bus_errors: u64,
    ambiguous_appends: u64,
    model_timeouts: u64,
    lost_tool_replies: u64,
    duplicate_replies: u64,
    tool_busy: u64,
    tool_replays: u64,
    tool_progress: u64,
    cancels: u64,
    agent_edits: u64,
    /// Tool calls refused before they started: arguments outside the tool's schema.
    invalid_arguments: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
}

impl Seen {
    fn add(&mut self, o: &Seen) {
        let fields = [
            (&mut self.crashes, o.crashes),
            (&mut self.duplicate_drivers, o.duplicate_drivers),
            (&mut self.append_conflicts, o.append_conflicts),
            (&mut self.bus_errors, o.bus_errors),
            (&mut self.ambiguous_appends, o.ambiguous_appends),
            (&mut self.model_timeouts, o.model_timeouts),
            (&mut self.lost_tool_replies, o.lost_tool_replies),
            (&mut self.duplicate_replies, o.duplicate_replies),
            (&mut self.tool_busy, o.tool_busy),
            (&mut self.tool_replays, o.tool_replays),
            (&mut self.tool_progress, o.tool_progress),
            (&mut self.cancels, o.cancels),
            (&mut self.agent_edits, o.agent_edits),
            (&mut self.invalid_arguments, o.invalid_arguments),
            (&mut self.completed, o.completed),
            (&mut self.failed, o.failed),
            (&mut self.cancelled, o.cancelled),
        ];
        for (sum, n) in fields {
            *sum += n;
        }
    }

    /// The faults and endings that never happened.
    fn missing(&self) -> Vec<&'static str> {
        let all = [
            ("crash", self.crashes),
            ("duplicate driver", self.duplicate_drivers),
            ("append conflict", self.append_conflicts),
            ("bus error", self.bus_errors),
            ("ambiguous append", self.ambiguous_appends),
            ("model timeout", self.model_timeouts),
            ("lost tool reply", self.lost_tool_replies),
            ("duplicate reply", self.duplicate_replies),
            ("tool in_progress", self.tool_busy),
            ("tool result replayed", self.tool_replays),
            ("tool progress", self.tool_progress),
            ("cancel", self.cancels),
            ("agent edit", self.agent_edits),
            ("invalid arguments", self.invalid_arguments),
            ("run completed", self.completed),
            ("run failed", self.failed),
            ("run cancelled", self.cancelled),
        ];
        all.into_iter()
            .filter(|(_, n)| *n == 0)
            .map(|(what, _)| what)
            .collect()
    }
}

/// The simulated world: bus, buckets, workers and clock.
struct World {
    rng: Rng,
    faults: Faults,
    now_ms: u64,
    stream_seq: u64,
    journals: BTreeMap<RunId, Vec<StoredEvent>>,
    records: BTreeMap<RunId, (RunRecord, u64)>,
    revision: u64,
    agents: BTreeMap<AgentId, AgentSpec>,
    audits: Vec<AuditRecord>,
    /// The run index (the edge lists what it admits; the orchestrator, direct submissions).
    indexed: BTreeSet<RunId>,
    results: BTreeMap<String, Slot>,
    executions: BTreeMap<String, u32>,
    jobs: Vec<ToolJob>,
    inboxes: BTreeMap<u64, VecDeque<Reply>>,
    next_inbox: u64,
    /// The model config each run's model calls carried.
    configs: BTreeMap<RunId, BTreeSet<String>>,
    /// Tools a model request showed without their declared description and schema.
    undeclared_defs: Vec<String>,
    /// Threads and their turns, in the order added.
    threads: BTreeMap<ThreadId, Vec<ThreadTurn>>,
    /// Runs whose model request lacked the thread's earlier messages.
    history_missing: BTreeSet<RunId>,
    /// Thread locks with their revisions; the runs submitted on each thread.
    locks: BTreeMap<ThreadId, (ThreadLock, u64)>,
    thread_runs: BTreeMap<ThreadId, Vec<RunId>>,
    /// Each run's cancel signal (what the `ctl` subject reaches).
    signals: BTreeMap<RunId, CancellationToken>,
    seen: Seen,
}

impl World {
    fn fail(&mut self, op: &str) -> Result<()> {
        if self.rng.chance(self.faults.bus_error) {
            self.seen.bus_errors += 1;
            return Err(BusError::TimedOut {
                op: format!("simulated {op}"),
                after: Duration::ZERO,
            });
        }
        Ok(())
    }

    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
            + Duration::from_secs(1_800_000_000)
            + Duration::from_millis(self.now_ms)
    }

    fn deliver(&mut self, inbox: u64, reply: Reply) {
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
    fn publish(&mut self, event: &Event, expected: u64) -> Result<u64> {
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
    fn model_call(&mut self, inbox: u64, req: &ModelRequest) {
        for def in &req.tools {
            let declared = sim_tool(&def.name).map(|d| d.def());
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
                            req.tools[(i as usize) % req.tools.len().max(1)]
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
    fn tool_phase(&mut self, job: ToolJob) {
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
                            let lease = job.request.timeout_ms + 5_000;
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
fn sim_tool(name: &str) -> Option<Arc<Declared>> {
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

fn unreachable_id() -> CallId {
    CallId::parse("call_invalid").unwrap_or_else(|_| unreachable!("a valid literal id"))
}

#[derive(Clone)]
struct SimPort {
    world: Arc<Mutex<World>>,
}

impl SimPort {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An await point: the scheduler may run another driver, or drop this one, here.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

fn point() -> YieldOnce {
    YieldOnce(false)
}

struct SimReplies {
    world: Arc<Mutex<World>>,
    inbox: u64,
    subject: String,
}

impl Replies for SimReplies {
    async fn next(&mut self, timeout: Duration) -> Result<Reply> {
        let deadline = {
            let w = self.world.lock().unwrap_or_else(PoisonError::into_inner);
            w.now_ms + timeout.as_millis() as u64
        };
        loop {
            point().await;
            let mut w = self.world.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(reply) = w.inboxes.get_mut(&self.inbox).and_then(VecDeque::pop_front) {
                return Ok(reply);
            }
            if w.now_ms >= deadline {
                return Err(BusError::TimedOut {
                    op: format!("reply from {}", self.subject),
                    after: timeout,
                });
            }
        }
    }
}

impl Port for SimPort {
    type Replies = SimReplies;

    fn now(&self) -> OffsetDateTime {
        self.world().now()
    }

    async fn read_journal(&self, _tenant: &Tenant, run: &RunId) -> Result<Vec<Stored>> {
        point().await;
        let mut w = self.world();
        w.fail("read journal")?;
        Ok(w.journals
            .get(run)
            .map(|j| {
                j.iter()
                    .map(|s| Stored {
                        stream_seq: s.stream_seq,
                        event: s.event.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn append(&self, event: &Event, expected_last: u64) -> Result<u64> {
        point().await;
        let mut w = self.world();
        w.fail("append")?;
        let seq = w.publish(event, expected_last)?;
        let rate = w.faults.ambiguous_append;
        if w.rng.chance(rate) {
            w.seen.ambiguous_appends += 1;
            return Err(BusError::TimedOut {
                op: "simulated append (stored)".into(),
                after: Duration::ZERO,
            });
        }
        Ok(seq)
    }

    async fn send_append(
        &self,
        event: &Event,
        expected_last: u64,
    ) -> Result<BoxFuture<'static, Result<u64>>> {
        point().await;
        let mut w = self.world();
        w.fail("append")?;
        // Stored (or refused) when sent; the caller learns which at its next await of the ack.
        let stored = w.publish(event, expected_last);
        Ok(Box::pin(async move {
            point().await;
            stored
        }))
    }

    async fn read_record(
        &self,
        _tenant: &Tenant,
        run: &RunId,
    ) -> Result<Option<Versioned<RunRecord>>> {
        point().await;
        let mut w = self.world();
        w.fail("read record")?;
        Ok(w.records.get(run).map(|(value, revision)| Versioned {
            value: value.clone(),
            revision: *revision,
        }))
    }

    async fn write_record(&self, record: &RunRecord, revision: Option<u64>) -> Result<u64> {
        point().await;
        let mut w = self.world();
        w.fail("write record")?;
        let current = w.records.get(&record.id).map(|(_, rev)| *rev);
        match (current, revision) {
            (Some(_), None) => {
                return Err(BusError::AlreadyExists {
                    key: record.id.to_string(),
                });
            }
            (cur, Some(rev)) if cur != Some(rev) => {
                return Err(BusError::WrongRevision {
                    key: record.id.to_string(),
                    expected: rev,
                });
            }
            _ => {}
        }
        w.revision += 1;
        let rev = w.revision;
        w.records.insert(record.id, (record.clone(), rev));
        Ok(rev)
    }

    async fn agent(&self, _tenant: &Tenant, agent: &AgentId) -> Result<Option<AgentSpec>> {
        point().await;
        let mut w = self.world();
        w.fail("read agent")?;
        Ok(w.agents.get(agent).cloned())
    }

    async fn standing(&self, _tenant: &Tenant) -> Result<Standing> {
        point().await;
        self.world().fail("read tenant")?;
        Ok(Standing::Active(None))
    }

    fn forget_tenant(&self, _tenant: &Tenant) {}

    async fn audit(&self, record: &AuditRecord) -> Result<()> {
        point().await;
        let mut w = self.world();
        w.fail("audit")?;
        w.audits.push(record.clone());
        Ok(())
    }

    async fn index_run(&self, _tenant: &Tenant, _agent: &AgentId, run: &RunId) -> Result<()> {
        point().await;
        let mut w = self.world();
        w.fail("index run")?;
        w.indexed.insert(*run);
        Ok(())
    }

    async fn tools(&self, names: &[ToolName]) -> Result<Vec<Option<Arc<Declared>>>> {
        point().await;
        self.world().fail("discover tools")?;
        Ok(names.iter().map(|n| sim_tool(n.as_str())).collect())
    }

    async fn thread_turns(
        &self,
        _tenant: &Tenant,
        thread: &ThreadId,
    ) -> Result<Option<Vec<ThreadTurn>>> {
        point().await;
        let mut w = self.world();
        w.fail("read thread")?;
        Ok(w.threads.get(thread).cloned())
    }

    async fn add_thread_turn(
        &self,
        _tenant: &Tenant,
        thread: &ThreadId,
        turn: &ThreadTurn,
    ) -> Result<()> {
        point().await;
        let mut w = self.world();
        w.fail("add thread turn")?;
        if let Some(turns) = w.threads.get_mut(thread)
            && !turns.iter().any(|t| t.run_id == turn.run_id)
        {
            turns.push(turn.clone());
        }
        Ok(())
    }

    async fn thread_lock(
        &self,
        _tenant: &Tenant,
        thread: &ThreadId,
    ) -> Result<Option<Versioned<ThreadLock>>> {
        point().await;
        let mut w = self.world();
        w.fail("read thread lock")?;
        Ok(w.locks.get(thread).map(|(value, revision)| Versioned {
            value: value.clone(),
            revision: *revision,
        }))
    }

    async fn write_thread_lock(
        &self,
        _tenant: &Tenant,
        thread: &ThreadId,
        lock: &ThreadLock,
        revision: Option<u64>,
    ) -> Result<u64> {
        point().await;
        let mut w = self.world();
        w.fail("write thread lock")?;
        let current = w.locks.get(thread).map(|(_, rev)| *rev);
        match (current, revision) {
            (Some(_), None) => {
                return Err(BusError::AlreadyExists {
                    key: thread.to_string(),
                });
            }
            (cur, Some(rev)) if cur != Some(rev) => {
                return Err(BusError::WrongRevision {
                    key: thread.to_string(),
                    expected: rev,
                });
            }
            _ => {}
        }
        w.revision += 1;
        let rev = w.revision;
        w.locks.insert(thread.clone(), (lock.clone(), rev));
        Ok(rev)
    }

    async fn thread_runs(&self, _tenant: &Tenant, thread: &ThreadId) -> Result<Vec<RunId>> {
        point().await;
        let mut w = self.world();
        w.fail("read thread runs")?;
        Ok(w.thread_runs.get(thread).cloned().unwrap_or_default())
    }

    async fn request_cancel(&self, _tenant: &Tenant, run: &RunId, reason: &str) -> Result<()> {
        point().await;
        let mut w = self.world();
        w.fail("request cancel")?;
        if let Some((mut rec, _)) = w.records.get(run).cloned()
            && !rec.status.is_terminal()
        {
            rec.status = RunStatus::Cancelling;
            rec.cancel_reason = Some(reason.to_owned());
            w.revision += 1;
            let rev = w.revision;
            w.records.insert(*run, (rec, rev));
        }
        if let Some(signal) = w.signals.get(run) {
            signal.cancel();
        }
        Ok(())
    }

    async fn sleep(&self, d: Duration) {
        let deadline = self.world().now_ms + d.as_millis() as u64;
        loop {
            point().await;
            if self.world().now_ms >= deadline {
                return;
            }
        }
    }

    async fn call(&self, subject: Subject, _meta: &CallMeta, payload: Bytes) -> Result<SimReplies> {
        point().await;
        let mut w = self.world();
        w.fail("call")?;
        w.next_inbox += 1;
        let inbox = w.next_inbox;
        if subject::parse_model(&subject).is_some() {
            let req = ModelRequest::decode(None, &payload)?;
            w.model_call(inbox, &req);
        } else if let Some((tenant, _)) = subject::parse_tool(&subject) {
            let request = ToolRequest::decode(None, &payload)?;
            let key = request
                .idempotency_key
                .as_ref()
                .map(|k| format!("{tenant}:{k}"));
            let rate = w.faults.tool_timeout;
            let lose_reply = w.rng.chance(rate);
            w.seen.lost_tool_replies += u64::from(lose_reply);
            let at_ms = w.now_ms + 1 + w.rng.below(5);
            w.jobs.push(ToolJob {
                at_ms,
                inbox,
                request,
                key,
                phase: ToolPhase::Arrive,
                lose_reply,
            });
        }
        Ok(SimReplies {
            world: self.world.clone(),
            inbox,
            subject: subject.to_string(),
        })
    }
}

type DriveFuture = Pin<Box<dyn Future<Output = Disposition> + Send>>;

struct Task {
    run: usize,
    delivered: i64,
    fut: DriveFuture,
}

struct SimRun {
    req: RunRequest,
    acked: bool,
    cancel: CancellationToken,
}

/// One schedule: `runs` runs through the orchestrator under the seed's faults. Returns what
/// went wrong, if anything.
fn schedule(seed: u64) -> std::result::Result<Seen, String> {
    let mut rng = Rng(seed);
    let faults = Faults::draw(&mut rng);
    let tenant = Tenant::parse("sim").map_err(|e| e.to_string())?;
    let opts = OrchestratorOptions {
        model_timeout: Duration::from_millis(200),
        tool_timeout: Duration::from_millis(100),
        max_attempts: 12,
        thread_lease: Duration::from_secs(2),
        thread_poll: Duration::from_millis(50),
        ..OrchestratorOptions::default()
    };
    let world = Arc::new(Mutex::new(World {
        rng: Rng(rng.next()),
        faults,
        now_ms: 0,
        stream_seq: 0,
        journals: BTreeMap::new(),
        records: BTreeMap::new(),
        revision: 0,
        agents: BTreeMap::new(),
        audits: Vec::new(),
        indexed: BTreeSet::new(),
        results: BTreeMap::new(),
        executions: BTreeMap::new(),
        jobs: Vec::new(),
        inboxes: BTreeMap::new(),
        next_inbox: 0,
        configs: BTreeMap::new(),
        undeclared_defs: Vec::new(),
        threads: BTreeMap::new(),
        history_missing: BTreeSet::new(),
        locks: BTreeMap::new(),
        thread_runs: BTreeMap::new(),
        signals: BTreeMap::new(),
        seen: Seen::default(),
    }));
    // One thread with an earlier exchange; some runs continue it.
    let thread = ThreadId::parse("thread_sim").map_err(|e| e.to_string())?;
    lock(&world).threads.insert(
        thread.clone(),
        vec![ThreadTurn {
            run_id: sim_run_id(&mut rng)?,
            messages: vec![
                ChatMessage::text(Role::User, EARLIER_QUESTION),
                ChatMessage::text(Role::Assistant, "an earlier answer"),
            ],
            created_at: OffsetDateTime::UNIX_EPOCH,
        }],
    );
    let port = SimPort {
        world: world.clone(),
    };

    // Runs: each its own agent, with a plan of 0–3 tool calls per step over 0–3 steps.
    let n_runs = 1 + rng.below(6) as usize;
    let mut runs = Vec::new();
    for i in 0..n_runs {
        let steps = rng.below(4);
        let now = lock(&world).now();
        let plan: Vec<u64> = (0..steps).map(|_| rng.below(4)).collect();
        let on_thread = rng.chance(400);
        let agent = AgentSpec {
            id: AgentId::parse(format!("a{i}")).map_err(|e| e.to_string())?,
            tenant: tenant.clone(),
            model: ModelName::parse("sim").map_err(|e| e.to_string())?,
            instructions: String::new(),
            tools: vec![
                ToolName::parse("echo").map_err(|e| e.to_string())?,
                ToolName::parse("sleep").map_err(|e| e.to_string())?,
            ],
            max_steps: 1 + rng.below(5) as u32,
            model_config: json!({ "plan": plan, "thread": on_thread }),
            metadata: Default::default(),
            memory: Default::default(),
            history: Default::default(),
            created_at: now,
            updated_at: now,
        };
        // Half the runs come through the edge (snapshot and queued record), half straight
        // from a NATS publisher (no snapshot, no record: the orchestrator pins and audits).
        let via_edge = rng.chance(500);
        let req = RunRequest {
            run_id: sim_run_id(&mut rng)?,
            tenant: tenant.clone(),
            agent_id: agent.id.clone(),
            agent: via_edge.then(|| agent.clone()),
            input: format!("run {i}"),
            thread_id: on_thread.then(|| thread.clone()),
            multitask_strategy: on_thread.then(|| MultitaskStrategy::ALL[rng.below(4) as usize]),
            metadata: Default::default(),
            submitted_at: now,
        };
        {
            let mut w = lock(&world);
            w.agents.insert(agent.id.clone(), agent);
            if via_edge {
                w.revision += 1;
                let rev = w.revision;
                w.records.insert(req.run_id, (RunRecord::queued(&req), rev));
                w.indexed.insert(req.run_id);
            }
        }
        let cancel = CancellationToken::new();
        {
            let mut w = lock(&world);
            w.signals.insert(req.run_id, cancel.clone());
            if let Some(thread) = &req.thread_id {
                let on_thread = w.thread_runs.entry(thread.clone()).or_default();
                on_thread.push(req.run_id);
                on_thread.sort();
            }
        }
        runs.push(SimRun {
            req,
            acked: false,
            cancel,
        });
    }

    let mut deliveries: Vec<(u64, usize, i64)> =
        (0..n_runs).map(|i| (rng.below(10), i, 1)).collect();
    let mut tasks: Vec<Task> = Vec::new();
    let never = CancellationToken::new();
    let spawn = |run: &SimRun, idx: usize, delivered: i64| -> Task {
        let (port, opts, req, cancel, drain) = (
            port.clone(),
            opts.clone(),
            run.req.clone(),
            run.cancel.clone(),
            never.clone(),
        );
        let attempt = Attempt {
            delivered,
            request_id: None,
        };
        Task {
            run: idx,
            delivered,
            fut: Box::pin(async move { drive(&port, &opts, attempt, &req, &cancel, &drain).await }),
        }
    };
    let mut cx = Context::from_waker(Waker::noop());
    let mut ticks = 0u64;
    loop {
        ticks += 1;
        if ticks > 400_000 {
            return Err(format!(
                "no progress after {ticks} ticks ({} tasks left)",
                tasks.len()
            ));
        }
        let now = {
            let mut w = lock(&world);
            w.now_ms += w.rng.below(3);
            // Tool worker phases that are due.
            let now = w.now_ms;
            let due: Vec<ToolJob> = {
                let (due, later) = std::mem::take(&mut w.jobs)
                    .into_iter()
                    .partition(|j| j.at_ms <= now);
                w.jobs = later;
                due
            };
            for job in due {
                w.tool_phase(job);
            }
            now
        };
        // Deliveries that are due.
        let (due, later): (Vec<_>, Vec<_>) =
            deliveries.into_iter().partition(|(at, _, _)| *at <= now);
        deliveries = later;
        for (_, idx, delivered) in due {
            if !runs[idx].acked {
                tasks.push(spawn(&runs[idx], idx, delivered));
            }
        }
        // Faults between awaits.
        if !tasks.is_empty() && rng.chance(faults.crash) {
            let t = tasks.swap_remove(rng.below(tasks.len() as u64) as usize);
            lock(&world).seen.crashes += 1;
            if !runs[t.run].acked {
                deliveries.push((now + 5 + rng.below(50), t.run, t.delivered + 1));
            }
        }
        if !tasks.is_empty() && rng.chance(faults.duplicate) {
            let t = &tasks[rng.below(tasks.len() as u64) as usize];
            let (idx, delivered) = (t.run, t.delivered + 1);
            lock(&world).seen.duplicate_drivers += 1;
            tasks.push(spawn(&runs[idx], idx, delivered));
        }
        if rng.chance(faults.cancel) {
            let idx = rng.below(n_runs as u64) as usize;
            let mut w = lock(&world);
            w.seen.cancels += 1;
            edge_cancel(&mut w, &runs[idx]);
        }
        if rng.chance(faults.edit_agent) {
            let idx = rng.below(n_runs as u64) as usize;
            let mut w = lock(&world);
            w.seen.agent_edits += 1;
            if let Some(agent) = w.agents.get_mut(&runs[idx].req.agent_id) {
                let thread = agent.model_config["thread"].clone();
                agent.model_config = json!({"plan": [3, 3, 3, 3, 3], "thread": thread});
                agent.max_steps = 7;
            }
        }
        if tasks.is_empty() {
            let pending_jobs = !lock(&world).jobs.is_empty();
            if deliveries.is_empty() && !pending_jobs {
                break;
            }
            continue;
        }
        let i = rng.below(tasks.len() as u64) as usize;
        if let Poll::Ready(d) = tasks[i].fut.as_mut().poll(&mut cx) {
            let t = tasks.swap_remove(i);
            match d {
                Disposition::Done => runs[t.run].acked = true,
                Disposition::Retry(delay) => {
                    if !runs[t.run].acked {
                        let delay = (delay.as_millis() as u64).clamp(1, 300);
                        deliveries.push((now + delay, t.run, t.delivered + 1));
                    }
                }
            }
        }
    }
    let w = lock(&world);
    let mut seen = check(&w, &runs)?;
    seen.add(&w.seen);
    Ok(seen)
}

fn lock(w: &Mutex<World>) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A run id from the seed (a real one is time-based, which would make replays differ).
fn sim_run_id(rng: &mut Rng) -> std::result::Result<RunId, String> {
    let (a, b) = (rng.next(), rng.next());
    let text = format!(
        "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    );
    RunId::parse(&text).map_err(|e| e.to_string())
}

/// What the edge does for `POST /v1/runs/{id}/cancel`, in one step.
fn edge_cancel(w: &mut World, run: &SimRun) {
    let id = run.req.run_id;
    let Some((mut rec, _)) = w.records.get(&id).cloned() else {
        // No record yet (a direct submission before its first projection): signal only.
        run.cancel.cancel();
        return;
    };
    if rec.status.is_terminal() {
        return;
    }
    let cancelled_now = rec.status == RunStatus::Queued && {
        let event = Event {
            seq: 1,
            run_id: id,
            tenant: run.req.tenant.clone(),
            ts: w.now(),
            data: EventData::RunCancelled {
                reason: "cancelled before start".into(),
            },
        };
        w.publish(&event, 0).is_ok()
    };
    if cancelled_now {
        rec.status = RunStatus::Cancelled;
        rec.finished_at = Some(w.now());
        rec.last_seq = 1;
    } else {
        rec.status = RunStatus::Cancelling;
    }
    w.revision += 1;
    let rev = w.revision;
    w.records.insert(id, (rec, rev));
    if !cancelled_now {
        run.cancel.cancel();
    }
}

/// The invariants, checked on the final state; returns how the runs ended.
fn check(w: &World, runs: &[SimRun]) -> std::result::Result<Seen, String> {
    let mut ended = Seen::default();
    for (key, n) in &w.executions {
        if *n > 1 {
            return Err(format!("tool call {key} executed {n} times"));
        }
    }
    if !w.undeclared_defs.is_empty() {
        return Err(format!(
            "model requests showed tools without their declarations: {:?}",
            w.undeclared_defs
        ));
    }
    for run in runs {
        let id = run.req.run_id;
        let journal: Vec<&Event> = w
            .journals
            .get(&id)
            .map(|j| j.iter().map(|s| &s.event).collect())
            .unwrap_or_default();
        let fail = |what: String| {
            Err(format!(
                "run {id}: {what}; journal: {:#?}",
                journal
                    .iter()
                    .map(|e| (e.seq, e.type_name()))
                    .collect::<Vec<_>>()
            ))
        };
        for (i, e) in journal.iter().enumerate() {
            if e.seq != i as u64 + 1 {
                return fail(format!("event {} has seq {}", i + 1, e.seq));
            }
        }
        let terminals = journal.iter().filter(|e| e.data.is_terminal()).count();
        if terminals != 1 {
            return fail(format!("{terminals} terminal events"));
        }
        let Some(last) = journal.last() else {
            return fail("empty journal".into());
        };
        if !last.data.is_terminal() {
            return fail("events after the terminal one".into());
        }
        let mut seen = BTreeSet::new();
        let (mut usage, mut steps) = (Usage::default(), 0u32);
        for e in &journal {
            let mark = match &e.data {
                EventData::RunCreated { .. } => Some("created".to_owned()),
                EventData::RunStarted { .. } => Some("started".to_owned()),
                EventData::ThreadHistory { .. } => Some("history".to_owned()),
                EventData::StepStarted { step } => {
                    steps += 1;
                    Some(format!("step {step}"))
                }
                EventData::ModelCompleted { step, usage: u, .. } => {
                    usage.add(*u);
                    Some(format!("model {step}"))
                }
                EventData::ToolStarted { step, call_id, .. } => {
                    Some(format!("tool.started {step} {call_id}"))
                }
                EventData::ToolCompleted { step, call_id, .. }
                | EventData::ToolFailed { step, call_id, .. } => {
                    Some(format!("tool result {step} {call_id}"))
                }
                _ => None,
            };
            if let Some(mark) = mark
                && !seen.insert(mark.clone())
            {
                return fail(format!("{mark} journaled twice"));
            }
        }
        // A call refused for its arguments never started and never ran.
        for e in &journal {
            let EventData::ToolFailed {
                step,
                call_id,
                error,
                ..
            } = &e.data
            else {
                continue;
            };
            if error.code != "invalid_arguments" {
                continue;
            }
            ended.invalid_arguments += 1;
            let started = journal.iter().any(|s| {
                matches!(&s.data, EventData::ToolStarted { step: st, call_id: c, .. } if st == step && c == call_id)
            });
            let key = format!(
                "{}:{}",
                run.req.tenant,
                ToolRequest::key_for(&id, *step, call_id)
            );
            if started || w.executions.contains_key(&key) {
                return fail(format!(
                    "call {step}/{call_id} had invalid arguments yet started or ran"
                ));
            }
        }
        // Progress lies between its call's start and result.
        let mut open = BTreeSet::new();
        for e in &journal {
            match &e.data {
                EventData::ToolStarted { step, call_id, .. } => {
                    open.insert((*step, call_id.clone()));
                }
                EventData::ToolCompleted { step, call_id, .. }
                | EventData::ToolFailed { step, call_id, .. } => {
                    open.remove(&(*step, call_id.clone()));
                }
                EventData::ToolProgress { step, call_id, .. }
                    if !open.contains(&(*step, call_id.clone())) =>
                {
                    return fail(format!(
                        "tool.progress of {step} {call_id} outside its call"
                    ));
                }
                _ => {}
            }
        }
        let Some((rec, _)) = w.records.get(&id) else {
            return fail("no run record".into());
        };
        let (status, output, error) = match &last.data {
            EventData::RunCompleted { output, .. } => {
                (RunStatus::Completed, Some(output.clone()), None)
            }
            EventData::RunFailed { error } => (RunStatus::Failed, None, Some(error.clone())),
            _ => (RunStatus::Cancelled, None, None::<ErrorBody>),
        };
        match status {
            RunStatus::Completed => ended.completed += 1,
            RunStatus::Failed => ended.failed += 1,
            _ => ended.cancelled += 1,
        }
        let projected = (status, output, error, usage, steps, last.seq);
        let recorded = (
            rec.status,
            rec.output.clone(),
            rec.error.clone(),
            rec.usage,
            rec.steps,
            rec.last_seq,
        );
        if projected != recorded {
            return fail(format!(
                "record {recorded:?} is not the journal's projection {projected:?}"
            ));
        }
        if let EventData::RunCompleted { usage: u, .. } = &last.data
            && *u != usage
        {
            return fail(format!(
                "run.completed usage {u:?} is not the sum {usage:?}"
            ));
        }
        if let Some(configs) = w.configs.get(&id)
            && configs.len() > 1
        {
            return fail(format!(
                "the agent changed mid-run: model calls saw {configs:?}"
            ));
        }
        if run.req.agent.is_none() && !w.audits.iter().any(|a| a.target == id.to_string()) {
            return fail("a direct submission was not audited".into());
        }
        if !w.indexed.contains(&id) {
            return fail("the run is missing from the run index".into());
        }
        if w.history_missing.contains(&id) {
            return fail("a model request did not carry exactly the thread's history".into());
        }
        let turns = w
            .threads
            .values()
            .flatten()
            .filter(|t| t.run_id == id)
            .collect::<Vec<_>>();
        let interrupted = matches!(&last.data, EventData::RunCancelled { reason } if reason == REASON_INTERRUPTED);
        let wants_turn =
            run.req.thread_id.is_some() && (status == RunStatus::Completed || interrupted);
        match turns.as_slice() {
            [] if !wants_turn => {}
            [turn] if wants_turn => {
                if turn.messages.first().and_then(|m| m.content.as_deref())
                    != Some(run.req.input.as_str())
                {
                    return fail("the run's turn does not begin with its input".into());
                }
            }
            _ => return fail(format!("{} turns on the thread", turns.len())),
        }
    }
    Ok(ended)
}

#[test]
fn the_run_state_machine_keeps_its_invariants_under_simulated_faults() {
    if let Some(seed) = std::env::var("AGENTOS_SIM_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        if let Err(e) = schedule(seed) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let default = if std::env::var_os("AGENTOS_LONG_TESTS").is_some() {
        LONG_SCHEDULES
    } else {
        SCHEDULES
    };
    let schedules: u64 = std::env::var("AGENTOS_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    // A fresh base each run, printed, so every failure names a replayable seed.
    let base = std::env::var("AGENTOS_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let started = std::time::Instant::now();
    let mut seen = Seen::default();
    for i in 0..schedules {
        let seed = base.wrapping_add(i);
        match schedule(seed) {
            Ok(s) => seen.add(&s),
            Err(e) => panic!(
                "seed {seed} failed (replay: AGENTOS_SIM_SEED={seed} cargo test -p agentos-workers simulated): {e}"
            ),
        }
    }
    eprintln!(
        "{schedules} schedules from base {base} passed in {:?}: {seen:#?}",
        started.elapsed()
    );
    if schedules >= 500 {
        assert!(
            seen.missing().is_empty(),
            "never simulated: {:?}",
            seen.missing()
        );
    }
}
