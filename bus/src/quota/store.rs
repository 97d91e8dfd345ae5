//! Ledgers and rate states in KV `agentos-usage`, changed only by compare-and-set: apply the
//! operations to the state, write it at the revision it was read at; on a lost race, read again
//! (jittered backoff). A refusal writes nothing. Within a process, operations on one key are
//! batched (group commit), and the state this process last wrote is kept, so while no other
//! process writes the key an operation is one round trip (the write), not two; a refusal is
//! always confirmed against a fresh read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::ledger::{Applied, Ledger, LedgerOp};
use super::rate::{Gcra, RateDecision, Take};
use crate::envelope::Envelope;
use crate::{Bucket, Bus, Error, Key, Kv, Result, Versioned};

/// Compare-and-set attempts before giving up (each lost to another writer of the same ledger).
const MAX_ATTEMPTS: u32 = 500;

/// How long operations other than admissions (draws, settles, releases) wait for others before
/// their write, unless an admission joins them: at hundreds of runs a second one write then
/// carries several runs' operations, instead of one write of the whole ledger each.
const LINGER: Duration = Duration::from_millis(20);

/// States kept per kind before the cache starts over (one per tenant scope in use).
const MAX_CACHED: usize = 10_000;

/// Cheap to clone; clones share the batches in flight.
#[derive(Clone)]
pub struct Budgets {
    kv: Kv,
    batches: Arc<Batches<LedgerOp, Applied>>,
    rates: Arc<Batches<Take, RateDecision>>,
    ledgers: Arc<Cache<Ledger>>,
    gcras: Arc<Cache<Gcra>>,
}

/// The state of each key as this process last wrote (or read) it, with its revision.
struct Cache<S>(Mutex<HashMap<Key, (S, u64)>>);

impl<S> Default for Cache<S> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<S: Clone> Cache<S> {
    fn get(&self, key: &Key) -> Option<(S, u64)> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).cloned()
    }

    fn put(&self, key: &Key, state: S, revision: u64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_CACHED && !map.contains_key(key) {
            map.clear();
        }
        map.insert(key.clone(), (state, revision));
    }

    fn forget(&self, key: &Key) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(key);
    }
}

/// Operations waiting, per key, for the next write of their batch, and where each outcome goes.
struct Batches<O, R> {
    waiting: Mutex<HashMap<Key, Waiting<O, R>>>,
    /// Wakes lingering leaders when an awaited operation joins.
    urgent: tokio::sync::Notify,
}

/// Operations queued for one write, each with where its outcome goes.
type Batch<O, R> = Vec<(O, oneshot::Sender<Result<R>>)>;

struct Waiting<O, R> {
    batch: Batch<O, R>,
    /// Someone awaits an operation of the batch: write it without lingering.
    urgent: bool,
}

impl<O, R> Default for Batches<O, R> {
    fn default() -> Self {
        Self {
            waiting: Mutex::default(),
            urgent: tokio::sync::Notify::new(),
        }
    }
}

impl<O, R> Batches<O, R> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Waiting<O, R>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `op`; `true` when no batch of `key` was under way (the caller starts its leader).
    fn join(&self, key: &Key, op: O, urgent: bool) -> (bool, oneshot::Receiver<Result<R>>) {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut batches = self.lock();
            match batches.get_mut(key) {
                Some(waiting) => {
                    waiting.batch.push((op, tx));
                    waiting.urgent |= urgent;
                    false
                }
                None => {
                    let batch = vec![(op, tx)];
                    batches.insert(key.clone(), Waiting { batch, urgent });
                    true
                }
            }
        };
        if urgent {
            self.urgent.notify_waiters();
        }
        (lead, rx)
    }

    /// Waits up to [`LINGER`] for more operations of `key`, unless an awaited one is queued.
    async fn linger(&self, key: &Key) {
        let woken = self.urgent.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if self.lock().get(key).is_some_and(|w| !w.urgent) {
            let _ = tokio::time::timeout(LINGER, woken).await;
        }
    }

    /// The next batch of `key`; `None` (and the key forgotten) when none waits.
    fn next(&self, key: &Key) -> Option<Batch<O, R>> {
        let mut batches = self.lock();
        match batches.get_mut(key) {
            Some(waiting) if !waiting.batch.is_empty() => {
                waiting.urgent = false;
                Some(std::mem::take(&mut waiting.batch))
            }
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
            ledgers: Arc::default(),
            gcras: Arc::default(),
        })
    }
}

impl Budgets {
    pub async fn read(&self, key: &Key) -> Result<Option<Versioned<Ledger>>> {
        self.kv.get_as(key).await
    }

    /// Applies `op` to the ledger at `key` atomically. Operations on the same ledger that
    /// arrive while a write is in flight in this process wait and go together in the next
    /// write (group commit): one compare-and-set per batch, so concurrent runs of one tenant
    /// contend only across processes, not with each other.
    /// An admission (a reservation, or its undo) is written at once; any other operation
    /// lingers like [`Budgets::apply_soon`]'s.
    pub async fn apply(&self, key: &Key, op: &LedgerOp) -> Result<Applied> {
        self.submit(key, op.clone(), op.admits())
            .await
            .unwrap_or_else(dropped)
    }

    /// [`Budgets::apply`] without waiting for the outcome, for settles: they carry the run's
    /// running total, so one that lands late (after a later one of the same process, which it
    /// cannot: batches keep their order) or never changes nothing; a failure is logged. It
    /// waits up to [`LINGER`] for company before its write.
    pub fn apply_soon(&self, key: &Key, op: LedgerOp) {
        let outcome = self.submit(key, op, false);
        let key = key.clone();
        tokio::spawn(async move {
            if let Ok(Err(e)) = outcome.await {
                tracing::warn!(%key, error = %e, "background budget operation not written (a settle: a later one carries it; a draw: the run's settles find no hold and count nothing)");
            }
        });
    }

    /// Queues `op` in the next batch of `key`, leading the batches when none is under way.
    fn submit(&self, key: &Key, op: LedgerOp, urgent: bool) -> oneshot::Receiver<Result<Applied>> {
        let (lead, rx) = self.batches.join(key, op, urgent);
        if lead {
            // The leader writes batches until none waits; on its own task, so a caller that
            // goes away does not strand the others.
            let (me, key) = (self.clone(), key.clone());
            tokio::spawn(async move {
                me.batches.linger(&key).await;
                while let Some(batch) = me.batches.next(&key) {
                    let outcomes = me
                        .update(&me.ledgers, &key, |ledger| {
                            let now = crate::envelope::now();
                            let outcomes: Vec<Applied> =
                                batch.iter().map(|(op, _)| ledger.apply(op, now)).collect();
                            let changed = outcomes.iter().any(Applied::writes);
                            (outcomes, changed)
                        })
                        .await;
                    answer(&key, batch, outcomes);
                }
            });
        }
        rx
    }

    /// Takes one request, and leases as many more as `take` asks and the rate spares, from the
    /// cluster-wide rate state at `key` (compare-and-set; the requests of this process that
    /// arrive meanwhile go in the same write).
    pub async fn take_rate(&self, key: &Key, take: Take) -> Result<RateDecision> {
        let (lead, rx) = self.rates.join(key, take, true);
        if lead {
            let (me, key) = (self.clone(), key.clone());
            tokio::spawn(async move {
                while let Some(batch) = me.rates.next(&key) {
                    let outcomes = me
                        .update(&me.gcras, &key, |gcra| {
                            let now_ms =
                                (crate::envelope::now().unix_timestamp_nanos() / 1_000_000) as i64;
                            let decisions: Vec<RateDecision> =
                                batch.iter().map(|(t, _)| gcra.take(t, now_ms)).collect();
                            let changed = decisions.iter().any(|d| d.allowed);
                            (decisions, changed)
                        })
                        .await;
                    answer(&key, batch, outcomes);
                }
            });
        }
        rx.await.unwrap_or_else(dropped)
    }

    /// One compare-and-set of the state at `key` with `apply` applied (it says whether there
    /// is anything to write). The first attempt starts from the state this process last
    /// wrote, without a read; a lost race, or an outcome that writes nothing (a refusal, which
    /// a stale state could cause), starts again from a fresh read.
    async fn update<S, R>(
        &self,
        cache: &Cache<S>,
        key: &Key,
        mut apply: impl FnMut(&mut S) -> (Vec<R>, bool),
    ) -> Result<Vec<R>>
    where
        S: Envelope + Default + Clone,
    {
        let mut known = cache.get(key);
        for attempt in 0..MAX_ATTEMPTS {
            let (mut state, revision, fresh) = match known.take() {
                Some((state, revision)) => (state, Some(revision), false),
                None => match self.kv.get_as::<S>(key).await? {
                    Some(v) => (v.value, Some(v.revision), true),
                    None => (S::default(), None, true),
                },
            };
            let read = fresh.then(|| state.clone());
            let (outcomes, write) = apply(&mut state);
            if !write {
                if let (Some(read), Some(revision)) = (read, revision) {
                    cache.put(key, read, revision);
                    return Ok(outcomes);
                }
                if fresh {
                    return Ok(outcomes);
                }
                continue;
            }
            let written = match revision {
                Some(rev) => self.kv.update(key, state.encode(), rev).await,
                None => self.kv.create(key, state.encode()).await,
            };
            match written {
                Ok(revision) => {
                    cache.put(key, state, revision);
                    return Ok(outcomes);
                }
                Err(Error::WrongRevision { .. } | Error::AlreadyExists { .. }) => {
                    cache.forget(key);
                    if fresh {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
                Err(e) => {
                    cache.forget(key);
                    return Err(e);
                }
            }
        }
        Err(Error::TimedOut {
            op: format!("update {key}"),
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
