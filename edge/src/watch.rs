//! Waiting for runs to finish without a JetStream consumer per waiter: one core subscription on
//! the run-record bucket per edge wakes every waiter whose run reached a terminal status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use agentos_bus::Bus;
use agentos_bus::envelope::RunRecord;
use agentos_bus::id::RunId;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

type Map = HashMap<RunId, Vec<oneshot::Sender<RunRecord>>>;

/// Runs being waited for. Register *before* reading the record, so no update is missed.
#[derive(Clone, Default)]
pub struct Waiters(Arc<Mutex<Map>>);

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Map> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves with the run's record once it is terminal.
    pub fn register(&self, run: RunId) -> oneshot::Receiver<RunRecord> {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(run).or_default().push(tx);
        rx
    }

    /// Drops registrations whose waiter gave up.
    pub fn forget_closed(&self, run: &RunId) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(run) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                map.remove(run);
            }
        }
    }

    fn notify(&self, rec: RunRecord) {
        if !rec.status.is_terminal() {
            return;
        }
        let Some(list) = self.lock().remove(&rec.id) else {
            return;
        };
        for tx in list {
            let _ = tx.send(rec.clone());
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
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
            metadata: Default::default(),
            submitted_at: now(),
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
        let rx1 = w.register(a);
        let rx2 = w.register(a);
        let rx3 = w.register(b);
        w.notify(record(a, RunStatus::Running));
        assert_eq!(w.waiting(), 2);
        w.notify(record(a, RunStatus::Completed));
        assert_eq!(rx1.await.expect("woken").status, RunStatus::Completed);
        assert_eq!(rx2.await.expect("woken").status, RunStatus::Completed);
        assert_eq!(w.waiting(), 1);
        drop(rx3);
        w.forget_closed(&b);
        assert_eq!(w.waiting(), 0);
    }
}
