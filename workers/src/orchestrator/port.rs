//! The orchestrator's one seam with the world. The run state machine reaches the journal, the
//! run record, agents, tenants, the audit log and model and tool calls only through [`Port`];
//! production implements it over [`Bus`] ([`BusPort`]), the simulation test over an in-memory
//! bus that injects faults at every await.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentos_bus::envelope::{
    AgentSpec, AuditRecord, Envelope, Event, RunRecord, RunStatus, ThreadLock, ThreadTurn,
};
use agentos_bus::id::{AgentId, RunId, Tenant, ThreadId, ToolName};
use agentos_bus::key::Scope;
use agentos_bus::quota::{Applied, Budgets, LedgerOp};
use agentos_bus::subject::Subject;
use agentos_bus::{
    Bucket, Bus, CallMeta, Kv, Reply, Result, Standing, Stored, Tenants, Threads, Versioned, key,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use time::OffsetDateTime;

use crate::tool::{Catalog, Declared};

/// The replies to one call, in order.
pub(crate) trait Replies: Send {
    /// The next reply, waiting at most `timeout` ([`agentos_bus::Error::TimedOut`] after that,
    /// [`agentos_bus::Error::NoResponders`] when nobody serves the subject).
    fn next(&mut self, timeout: Duration) -> impl Future<Output = Result<Reply>> + Send;
}

/// What the run state machine needs from the bus.
pub(crate) trait Port: Send + Sync {
    type Replies: Replies;

    /// Wall-clock time, for event timestamps and leases.
    fn now(&self) -> OffsetDateTime;

    /// The run's journal as stored now.
    fn read_journal(
        &self,
        tenant: &Tenant,
        run: &RunId,
    ) -> impl Future<Output = Result<Vec<Stored>>> + Send;

    /// Appends `event` if the run's last stored event is at stream sequence `expected_last`;
    /// returns the new one ([`agentos_bus::Error::WrongLastSequence`] when another writer was
    /// first).
    fn append(&self, event: &Event, expected_last: u64)
    -> impl Future<Output = Result<u64>> + Send;

    /// [`Port::append`] without waiting for the ack (streamed deltas): the returned future
    /// resolves to the new stream sequence, or to the same errors.
    fn send_append(
        &self,
        event: &Event,
        expected_last: u64,
    ) -> impl Future<Output = Result<BoxFuture<'static, Result<u64>>>> + Send;

    fn read_record(
        &self,
        tenant: &Tenant,
        run: &RunId,
    ) -> impl Future<Output = Result<Option<Versioned<RunRecord>>>> + Send;

    /// Creates the record (`revision: None`) or replaces the one at `revision`
    /// ([`agentos_bus::Error::AlreadyExists`] / [`agentos_bus::Error::WrongRevision`]).
    fn write_record(
        &self,
        record: &RunRecord,
        revision: Option<u64>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// The agent's current definition.
    fn agent(
        &self,
        tenant: &Tenant,
        agent: &AgentId,
    ) -> impl Future<Output = Result<Option<AgentSpec>>> + Send;

    fn standing(&self, tenant: &Tenant) -> impl Future<Output = Result<Standing>> + Send;

    /// Drops a cached tenant record, so the next [`Port::standing`] reads it afresh.
    fn forget_tenant(&self, tenant: &Tenant);

    fn audit(&self, record: &AuditRecord) -> impl Future<Output = Result<()>> + Send;

    /// Lists the run in the tenant's run index (idempotent: one entry per run).
    fn index_run(
        &self,
        tenant: &Tenant,
        agent: &AgentId,
        run: &RunId,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The declarations of `names`, in order (`None`: nobody declares that tool right now):
    /// built-ins from code, the rest from service discovery, cached (not a round trip per call).
    fn tools(
        &self,
        names: &[ToolName],
    ) -> impl Future<Output = Result<Vec<Option<Arc<Declared>>>>> + Send;
    /// The thread's turns in the order they were added; `None` when there is no such thread.
    fn thread_turns(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
    ) -> impl Future<Output = Result<Option<Vec<ThreadTurn>>>> + Send;

    /// Adds a run's turn to the thread, once (a repeat changes nothing).
    fn add_thread_turn(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
        turn: &ThreadTurn,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The thread's lock as stored.
    fn thread_lock(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
    ) -> impl Future<Output = Result<Option<Versioned<ThreadLock>>>> + Send;

    /// Creates the lock (`revision: None`) or replaces the one at `revision`
    /// ([`agentos_bus::Error::AlreadyExists`] / [`agentos_bus::Error::WrongRevision`]).
    fn write_thread_lock(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
        lock: &ThreadLock,
        revision: Option<u64>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// The runs submitted on the thread, in submission (run id) order.
    fn thread_runs(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
    ) -> impl Future<Output = Result<Vec<RunId>>> + Send;

    /// Asks another run to stop, as a client's cancel does, with a reason its `run.cancelled`
    /// will carry (a run already ended is left alone).
    fn request_cancel(
        &self,
        tenant: &Tenant,
        run: &RunId,
        reason: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Schedules a wake of a waiting run at `at` (its expiry), replacing the run's previous one.
    fn schedule_wake(
        &self,
        tenant: &Tenant,
        run: &RunId,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Applies `op` to the tenant's budget ledger of `scope`, atomically (compare-and-set).
    fn ledger(
        &self,
        tenant: &Tenant,
        scope: &Scope,
        op: &LedgerOp,
    ) -> impl Future<Output = Result<Applied>> + Send;
    /// Applies `op` like [`Port::ledger`] without waiting for it (settles, which carry the
    /// run's running total: one that is lost or late changes nothing). Operations of one
    /// process on one ledger keep their order.
    fn ledger_soon(&self, tenant: &Tenant, scope: &Scope, op: LedgerOp);

    /// Waits `d` (wall time; virtual in the simulation).
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send;

    /// Sends a request (a model or tool call) and returns its replies.
    fn call(
        &self,
        subject: Subject,
        meta: &CallMeta,
        payload: Bytes,
    ) -> impl Future<Output = Result<Self::Replies>> + Send;
}

/// [`Port`] over NATS.
#[derive(Clone)]
pub(crate) struct BusPort {
    pub(crate) bus: Bus,
    runs: Kv,
    agents: Kv,
    tenants: Tenants,
    tools: Catalog,
    threads: Threads,
    budgets: Budgets,
}

impl BusPort {
    pub(crate) async fn new(bus: Bus, admission: agentos_bus::Admission) -> Result<Self> {
        Ok(Self {
            runs: bus.kv(Bucket::Runs).await?,
            agents: bus.kv(Bucket::Agents).await?,
            tenants: bus.tenants(admission).await?,
            tools: Catalog::new(agentos_bus::ToolDirectory::new(bus.clone())),
            threads: bus.threads().await?,
            budgets: bus.budgets().await?,
            bus,
        })
    }
}

impl Replies for agentos_bus::Replies {
    async fn next(&mut self, timeout: Duration) -> Result<Reply> {
        agentos_bus::Replies::next(self, timeout).await
    }
}

impl Port for BusPort {
    type Replies = agentos_bus::Replies;

    fn now(&self) -> OffsetDateTime {
        agentos_bus::envelope::now()
    }

    async fn read_journal(&self, tenant: &Tenant, run: &RunId) -> Result<Vec<Stored>> {
        self.bus.read_journal(tenant, run).await
    }

    async fn append(&self, event: &Event, expected_last: u64) -> Result<u64> {
        let stored = self.bus.append(event, expected_last).await;
        crate::metric_definitions::journal_append(&stored);
        stored
    }

    async fn send_append(
        &self,
        event: &Event,
        expected_last: u64,
    ) -> Result<BoxFuture<'static, Result<u64>>> {
        let pending = self.bus.send_append(event, expected_last).await?;
        Ok(Box::pin(async move {
            let stored = pending.stored().await;
            crate::metric_definitions::journal_append(&stored);
            stored
        }))
    }

    async fn read_record(
        &self,
        tenant: &Tenant,
        run: &RunId,
    ) -> Result<Option<Versioned<RunRecord>>> {
        self.runs.get_as(&key::run(tenant, run)).await
    }

    async fn write_record(&self, record: &RunRecord, revision: Option<u64>) -> Result<u64> {
        let key = key::run(&record.tenant, &record.id);
        match revision {
            Some(rev) => self.runs.update(&key, record.encode(), rev).await,
            None => self.runs.create(&key, record.encode()).await,
        }
    }

    async fn agent(&self, tenant: &Tenant, agent: &AgentId) -> Result<Option<AgentSpec>> {
        Ok(self
            .agents
            .get_as::<AgentSpec>(&key::agent(tenant, agent))
            .await?
            .map(|v| v.value))
    }

    async fn standing(&self, tenant: &Tenant) -> Result<Standing> {
        self.tenants.standing(tenant).await
    }

    fn forget_tenant(&self, tenant: &Tenant) {
        self.tenants.forget(tenant);
    }

    async fn audit(&self, record: &AuditRecord) -> Result<()> {
        self.bus.audit(record).await.map(|_| ())
    }

    async fn index_run(&self, tenant: &Tenant, agent: &AgentId, run: &RunId) -> Result<()> {
        self.bus
            .index_run(tenant, agent, run)
            .await?
            .stored()
            .await
            .map(|_| ())
    }

    async fn tools(&self, names: &[ToolName]) -> Result<Vec<Option<Arc<Declared>>>> {
        self.tools.lookup(names).await
    }

    async fn thread_turns(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
    ) -> Result<Option<Vec<ThreadTurn>>> {
        if self.threads.get(tenant, thread).await?.is_none() {
            return Ok(None);
        }
        self.threads.turns(tenant, thread).await.map(Some)
    }

    async fn add_thread_turn(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
        turn: &ThreadTurn,
    ) -> Result<()> {
        // A thread deleted while the run went on gets no turn.
        if self.threads.get(tenant, thread).await?.is_none() {
            return Ok(());
        }
        self.threads.add_turn(tenant, thread, turn).await
    }

    async fn thread_lock(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
    ) -> Result<Option<Versioned<ThreadLock>>> {
        self.threads.lock(tenant, thread).await
    }

    async fn write_thread_lock(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
        lock: &ThreadLock,
        revision: Option<u64>,
    ) -> Result<u64> {
        self.threads
            .write_lock(tenant, thread, lock, revision)
            .await
    }

    async fn thread_runs(&self, tenant: &Tenant, thread: &ThreadId) -> Result<Vec<RunId>> {
        Ok(self
            .threads
            .runs(tenant, thread)
            .await?
            .into_iter()
            .map(|r| r.run_id)
            .collect())
    }

    async fn request_cancel(&self, tenant: &Tenant, run: &RunId, reason: &str) -> Result<()> {
        let key = key::run(tenant, run);
        for _ in 0..10 {
            let Some(current) = self.runs.get_as::<RunRecord>(&key).await? else {
                break;
            };
            let mut rec = current.value;
            if rec.status.is_terminal() {
                return Ok(());
            }
            rec.status = RunStatus::Cancelling;
            rec.cancel_reason = Some(reason.to_owned());
            rec.updated_at = agentos_bus::envelope::now();
            match self.runs.update(&key, rec.encode(), current.revision).await {
                Ok(_) => break,
                Err(agentos_bus::Error::WrongRevision { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        self.bus.publish_cancel(tenant, run).await
    }

    async fn schedule_wake(&self, tenant: &Tenant, run: &RunId, at: OffsetDateTime) -> Result<()> {
        self.bus.schedule_wake(tenant, run, at).await
    }

    async fn ledger(&self, tenant: &Tenant, scope: &Scope, op: &LedgerOp) -> Result<Applied> {
        self.budgets.apply(&key::ledger(tenant, scope), op).await
    }

    fn ledger_soon(&self, tenant: &Tenant, scope: &Scope, op: LedgerOp) {
        self.budgets.apply_soon(&key::ledger(tenant, scope), op);
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    async fn call(
        &self,
        subject: Subject,
        meta: &CallMeta,
        payload: Bytes,
    ) -> Result<agentos_bus::Replies> {
        self.bus.call(subject, meta, payload).await
    }
}
