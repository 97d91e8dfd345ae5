//! `multitask_strategy: reject` at the edge: the new run takes its thread's lock before it is
//! submitted (KV create, or compare-and-set over a lock that no longer holds), or the request is
//! refused `409 thread_busy`. Of any number of concurrent submissions on one thread, across
//! every edge, exactly one wins the compare-and-set. The orchestrator that picks the run up finds
//! the lock its own and renews the lease (see `workers/src/orchestrator/thread_lock.rs`).

use agentos_bus::envelope::{RunRecord, ThreadLock, now};
use agentos_bus::id::{RunId, ThreadId};
use agentos_bus::{Error as BusError, Versioned};

use crate::error::{ApiError, ApiResult};
use crate::runs::run_key;
use crate::{AppState, AuthContext};

/// The lease the edge takes for a run not yet picked up; the orchestrator renews it with its own.
pub const CLAIM_LEASE: time::Duration = time::Duration::seconds(30);

fn busy(thread: &ThreadId) -> ApiError {
    ApiError::conflict(
        "thread_busy",
        format!("thread {thread} has an active run (multitask_strategy reject)"),
    )
    .with_param("thread_id")
}

/// Takes the thread's lock for `run`, or refuses with `409 thread_busy`.
pub(crate) async fn claim_or_refuse(
    state: &AppState,
    auth: &AuthContext,
    thread: &ThreadId,
    run: RunId,
) -> ApiResult<()> {
    let ts = now();
    let current: Option<Versioned<ThreadLock>> = state.threads.lock(&auth.tenant, thread).await?;
    if let Some(held) = &current
        && held.value.run_id != run
        && held.value.holds(ts)
    {
        let ended = state
            .runs
            .get_as::<RunRecord>(&run_key(auth, &held.value.run_id))
            .await?
            .is_some_and(|r| r.value.status.is_terminal());
        if !ended {
            return Err(busy(thread));
        }
    }
    let lock = ThreadLock {
        run_id: run,
        expires_at: ts + CLAIM_LEASE,
        released: false,
    };
    match state
        .threads
        .write_lock(&auth.tenant, thread, &lock, current.map(|c| c.revision))
        .await
    {
        Ok(_) => Ok(()),
        Err(BusError::AlreadyExists { .. } | BusError::WrongRevision { .. }) => Err(busy(thread)),
        Err(e) => Err(e.into()),
    }
}
