//! [`Port`] over the simulated world: every operation is an await point where the scheduler may
//! run another driver or drop this one, and may fail as the world's faults say.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use agentos_bus::envelope::{
    AgentSpec, AuditRecord, Envelope, Event, ModelRequest, RunRecord, RunStatus, ThreadLock,
    ThreadTurn, ToolRequest,
};
use agentos_bus::id::{AgentId, RunId, Tenant, ThreadId, ToolName};
use agentos_bus::subject::{self, Subject};
use agentos_bus::{CallMeta, Error as BusError, Reply, Result, Standing, Stored, Versioned};
use bytes::Bytes;
use futures::future::BoxFuture;
use time::OffsetDateTime;

use super::super::port::{Port, Replies};
use super::world::*;
use crate::tool::Declared;

#[derive(Clone)]
pub(super) struct SimPort {
    pub(super) world: Arc<Mutex<World>>,
}

impl SimPort {
    pub(super) fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An await point: the scheduler may run another driver, or drop this one, here.
pub(super) struct YieldOnce(bool);

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

pub(super) fn point() -> YieldOnce {
    YieldOnce(false)
}

pub(super) struct SimReplies {
    pub(super) world: Arc<Mutex<World>>,
    pub(super) inbox: u64,
    pub(super) subject: String,
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
        let mut w = self.world();
        w.fail("read tenant")?;
        Ok(Standing::Active(w.quotas.clone()))
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
        // As `Bus::publish_cancel`: a wake follows, for a run no orchestrator holds.
        let now = w.now_ms;
        w.outbox.push((now, *run));
        Ok(())
    }

    async fn schedule_wake(&self, _tenant: &Tenant, run: &RunId, at: OffsetDateTime) -> Result<()> {
        point().await;
        let mut w = self.world();
        w.fail("schedule wake")?;
        let due = w.ms_of(at);
        w.timers.insert(*run, due);
        Ok(())
    }

    async fn ledger(
        &self,
        tenant: &Tenant,
        scope: &agentos_bus::key::Scope,
        op: &agentos_bus::quota::LedgerOp,
    ) -> Result<agentos_bus::quota::Applied> {
        point().await;
        let mut w = self.world();
        w.fail("ledger")?;
        let now = w.now();
        let key = agentos_bus::key::ledger(tenant, scope);
        Ok(w.ledgers.entry(key).or_default().apply(op, now))
    }

    fn ledger_soon(
        &self,
        tenant: &Tenant,
        scope: &agentos_bus::key::Scope,
        op: agentos_bus::quota::LedgerOp,
    ) {
        // Applied at once, or lost (a failed write is only logged).
        let mut w = self.world();
        if w.fail("ledger soon").is_ok() {
            let now = w.now();
            let key = agentos_bus::key::ledger(tenant, scope);
            w.ledgers.entry(key).or_default().apply(&op, now);
        }
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
