//! Ledgers in KV `agentos-usage`, changed only by compare-and-set: read, apply the operations,
//! write at the revision read; on a lost race, read again (jittered backoff). A refusal writes
//! nothing. Within a process, operations on one ledger are batched (group commit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::ledger::{Applied, Ledger, LedgerOp};
use crate::envelope::Envelope;
use crate::{Bucket, Bus, Error, Key, Kv, Result, Versioned};

/// Compare-and-set attempts before giving up (each lost to another writer of the same ledger).
const MAX_ATTEMPTS: u32 = 500;

/// Cheap to clone; clones share the batches in flight.
#[derive(Clone)]
pub struct Budgets {
    kv: Kv,
    batches: Arc<Batches<LedgerOp, Applied>>,
    rates: Arc<Batches<super::Rate, super::RateDecision>>,
}

/// Operations waiting, per key, for the next write of their batch, and where each outcome goes.
struct Batches<O, R>(Mutex<HashMap<Key, Batch<O, R>>>);

/// Operations queued for one write, each with where its outcome goes.
type Batch<O, R> = Vec<(O, oneshot::Sender<Result<R>>)>;

impl<O, R> Default for Batches<O, R> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<O, R> Batches<O, R> {
    /// Queues `op`; `true` when no batch of `key` was under way (the caller starts its leader).
    fn join(&self, key: &Key, op: O) -> (bool, oneshot::Receiver<Result<R>>) {
        let (tx, rx) = oneshot::channel();
        let mut batches = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let lead = match batches.get_mut(key) {
            Some(waiting) => {
                waiting.push((op, tx));
                false
            }
            None => {
                batches.insert(key.clone(), vec![(op, tx)]);
                true
            }
        };
        (lead, rx)
    }

    /// The next batch of `key`; `None` (and the key forgotten) when none waits.
    fn next(&self, key: &Key) -> Option<Batch<O, R>> {
        let mut batches = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match batches.get_mut(key) {
            Some(waiting) if !waiting.is_empty() => Some(std::mem::take(waiting)),
            _ => {
                batches.remove(key);
                None
            }
        }
    }
}

/// Hands each waiter its outcome (or the batch's failure).
fn answer<O, R>(key: &Key, batch: Batch<O, R>, outcomes: Result<Vec<R>>) {
    match outcomes {
        Ok(outcomes) => {
            for ((_, tx), outcome) in batch.into_iter().zip(outcomes) {
                let _ = tx.send(Ok(outcome));
            }
        }
        Err(e) => {
            let why = e.to_string();
            for (_, tx) in batch {
                let _ = tx.send(Err(Error::TimedOut {
                    op: format!("update {key}: {why}"),
                    after: Duration::ZERO,
                }));
            }
        }
    }
}

fn dropped<R>(_: oneshot::error::RecvError) -> Result<R> {
    Err(Error::TimedOut {
        op: "budget batch dropped".into(),
        after: Duration::ZERO,
    })
}

impl Bus {
    pub async fn budgets(&self) -> Result<Budgets> {
        Ok(Budgets {
            kv: self.kv(Bucket::Usage).await?,
            batches: Arc::default(),
            rates: Arc::default(),
        })
    }
}

impl Budgets {
    pub async fn read(&self, key: &Key) -> Result<Option<Versioned<Ledger>>> {
        self.kv.get_as(key).await
    }

    /// Creates the ledger (`revision: None`) or replaces the one at `revision`.
    pub async fn write(&self, key: &Key, ledger: &Ledger, revision: Option<u64>) -> Result<u64> {
        match revision {
            Some(rev) => self.kv.update(key, ledger.encode(), rev).await,
            None => self.kv.create(key, ledger.encode()).await,
        }
    }

    /// Applies `op` to the ledger at `key` atomically. Operations on the same ledger that
    /// arrive while a write is in flight in this process wait and go together in the next
    /// write (group commit): one compare-and-set per batch, so concurrent runs of one tenant
    /// contend only across processes, not with each other.
    pub async fn apply(&self, key: &Key, op: &LedgerOp) -> Result<Applied> {
        let (lead, rx) = self.batches.join(key, op.clone());
        if lead {
            // The leader writes batches until none waits; on its own task, so a caller that
            // goes away does not strand the others.
            let (me, key) = (self.clone(), key.clone());
            tokio::spawn(async move {
                while let Some(batch) = me.batches.next(&key) {
                    let ops: Vec<&LedgerOp> = batch.iter().map(|(op, _)| op).collect();
                    let outcomes = me.apply_batch(&key, &ops).await;
                    answer(&key, batch, outcomes);
                }
            });
        }
        rx.await.unwrap_or_else(dropped)
    }

    /// One compare-and-set of the ledger with every operation of the batch applied in order;
    /// a lost race applies them all again to what won.
    async fn apply_batch(&self, key: &Key, ops: &[&LedgerOp]) -> Result<Vec<Applied>> {
        for attempt in 0..MAX_ATTEMPTS {
            let current = self.read(key).await?;
            let (mut ledger, revision) = match current {
                Some(v) => (v.value, Some(v.revision)),
                None => (Ledger::default(), None),
            };
            let now = crate::envelope::now();
            let outcomes: Vec<Applied> = ops.iter().map(|op| ledger.apply(op, now)).collect();
            if !outcomes.contains(&Applied::Changed) {
                return Ok(outcomes);
            }
            match self.write(key, &ledger, revision).await {
                Ok(_) => return Ok(outcomes),
                Err(Error::WrongRevision { .. } | Error::AlreadyExists { .. }) => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::TimedOut {
            op: format!("update budget ledger {key}"),
            after: Duration::ZERO,
        })
    }
}

impl Budgets {
    /// Takes one request from the cluster-wide rate state at `key` (compare-and-set; the
    /// requests of this process that arrive meanwhile go in the same write).
    pub async fn take_rate(&self, key: &Key, rate: &super::Rate) -> Result<super::RateDecision> {
        let (lead, rx) = self.rates.join(key, *rate);
        if lead {
            let (me, key) = (self.clone(), key.clone());
            tokio::spawn(async move {
                while let Some(batch) = me.rates.next(&key) {
                    let rates: Vec<super::Rate> = batch.iter().map(|(r, _)| *r).collect();
                    let outcomes = me.take_rates(&key, &rates).await;
                    answer(&key, batch, outcomes);
                }
            });
        }
        rx.await.unwrap_or_else(dropped)
    }

    async fn take_rates(
        &self,
        key: &Key,
        rates: &[super::Rate],
    ) -> Result<Vec<super::RateDecision>> {
        for attempt in 0..MAX_ATTEMPTS {
            let current = self.kv.get_as::<super::Gcra>(key).await?;
            let (mut gcra, revision) = match current {
                Some(v) => (v.value, Some(v.revision)),
                None => (super::Gcra::default(), None),
            };
            let now_ms = (crate::envelope::now().unix_timestamp_nanos() / 1_000_000) as i64;
            let decisions: Vec<_> = rates.iter().map(|r| gcra.take(r, now_ms)).collect();
            if !decisions.iter().any(|d| d.allowed) {
                return Ok(decisions);
            }
            let written = match revision {
                Some(rev) => self.kv.update(key, gcra.encode(), rev).await,
                None => self.kv.create(key, gcra.encode()).await,
            };
            match written {
                Ok(_) => return Ok(decisions),
                Err(Error::WrongRevision { .. } | Error::AlreadyExists { .. }) => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::TimedOut {
            op: format!("update rate state {key}"),
            after: Duration::ZERO,
        })
    }
}

/// A random pause under a cap that grows with the attempts (up to 8 ms), so writers that lost
/// a race do not collide again in lockstep.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap_us = 250u64 << attempt.min(5);
    let r = (uuid::Uuid::new_v4().as_u128() as u64) % cap_us.max(1);
    Duration::from_micros(r)
}
