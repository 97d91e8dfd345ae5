//! Waiting for runs to finish without a JetStream consumer per waiter: one core subscription on
//! the run-record bucket per edge wakes every waiter whose run reached a terminal status, or
//! waits for its caller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use agentos_bus::Bus;
use agentos_bus::envelope::{RunRecord, RunStatus};
use agentos_bus::id::RunId;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

type Map = HashMap<RunId, Vec<oneshot::Sender<RunRecord>>>;

/// Whether a run is where `/wait` returns: ended, or waiting for its caller's answer (and not
/// answered yet).
pub fn settled(rec: &RunRecord) -> bool {
    rec.status.is_terminal()
        || (rec.status == RunStatus::RequiresAction
            && rec
                .required_action
                .as_ref()
                .is_some_and(|a| a.answered_by.is_none()))
}

/// One registered waiter; unregisters itself on drop.
pub struct Waiter {
    rx: Option<oneshot::Receiver<RunRecord>>,
    run: RunId,
    waiters: Waiters,
}

impl Waiter {
    /// The terminal record, once notified (`None` if the registration was dropped).
    pub async fn done(&mut self) -> Option<RunRecord> {
        self.rx.as_mut()?.await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.waiters.forget_closed(&self.run);
    }
}

/// Runs being waited for. Register *before* reading the record, so no update is missed.
#[derive(Clone, Default)]
pub struct Waiters(Arc<Mutex<Map>>);

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Map> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A registration that resolves with the run's record once it is terminal; dropping it
    /// (on any path: answered, timed out, 404, error) removes it.
    pub fn register(&self, run: RunId) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(run).or_default().push(tx);
        Waiter {
            rx: Some(rx),
            run,
            waiters: self.clone(),
        }
    }

    /// Drops registrations whose waiter gave up.
    fn forget_closed(&self, run: &RunId) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(run) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                map.remove(run);
            }
        }
    }

    fn notify(&self, rec: RunRecord) {
        if !settled(&rec) {
            return;
        }
        let Some(list) = self.lock().remove(&rec.id) else {
            return;
        };
        for tx in list {
            let _ = tx.send(rec.clone());
        }
    }

    /// How many runs have a registered waiter.
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    /// Feeds record updates to waiters until `shutdown`.
    pub async fn run(self, bus: Bus, shutdown: CancellationToken) -> agentos_bus::Result<()> {
        let mut updates = bus.run_record_updates().await?;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                rec = updates.next() => match rec {
                    Some(rec) => self.notify(rec),
                    None => return Ok(()),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use agentos_bus::envelope::{RunRecord, RunRequest, RunStatus, now};
    use agentos_bus::id::RunId;

    use super::Waiters;

    fn record(id: RunId, status: RunStatus) -> RunRecord {
        let req = RunRequest {
            run_id: id,
            tenant: "t".parse().expect("tenant"),
            agent_id: "a".parse().expect("agent"),
            agent: None,
            input: String::new(),
            thread_id: None,
            multitask_strategy: None,
            metadata: Default::default(),
            submitted_at: now(),
            expires_at: None,
        };
        RunRecord {
            status,
            ..RunRecord::queued(&req)
        }
    }

    #[tokio::test]
    async fn waiters_wake_on_terminal_records_only_and_forget_the_impatient() {
        let w = Waiters::default();
        let (a, b) = (RunId::new(), RunId::new());
        let mut rx1 = w.register(a);
        let mut rx2 = w.register(a);
        let rx3 = w.register(b);
        w.notify(record(a, RunStatus::Running));
        assert_eq!(w.waiting(), 2);
        w.notify(record(a, RunStatus::Completed));
        assert_eq!(
            rx1.done().await.expect("woken").status,
            RunStatus::Completed
        );
        assert_eq!(
            rx2.done().await.expect("woken").status,
            RunStatus::Completed
        );
        assert_eq!(w.waiting(), 1);
        drop(rx3);
        assert_eq!(w.waiting(), 0);
    }
}
