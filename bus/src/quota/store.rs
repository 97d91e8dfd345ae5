//! Ledgers in KV `agentos-usage`, changed only by compare-and-set: read, apply the operation,
//! write at the revision read; on a lost race, read again (jittered backoff). A refusal writes
//! nothing.

use std::time::Duration;

use super::ledger::{Applied, Ledger, LedgerOp};
use crate::envelope::Envelope;
use crate::{Bucket, Bus, Error, Key, Kv, Result, Versioned};

/// Compare-and-set attempts before giving up (each lost to another writer of the same ledger).
const MAX_ATTEMPTS: u32 = 500;

/// Cheap to clone.
#[derive(Clone)]
pub struct Budgets {
    kv: Kv,
}

impl Bus {
    pub async fn budgets(&self) -> Result<Budgets> {
        Ok(Budgets {
            kv: self.kv(Bucket::Usage).await?,
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

    /// Applies `op` to the ledger at `key` atomically.
    pub async fn apply(&self, key: &Key, op: &LedgerOp) -> Result<Applied> {
        for attempt in 0..MAX_ATTEMPTS {
            let current = self.read(key).await?;
            let (mut ledger, revision) = match current {
                Some(v) => (v.value, Some(v.revision)),
                None => (Ledger::default(), None),
            };
            let applied = ledger.apply(op, crate::envelope::now());
            if applied != Applied::Changed {
                return Ok(applied);
            }
            match self.write(key, &ledger, revision).await {
                Ok(_) => return Ok(applied),
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
    /// Takes one request from the cluster-wide rate state at `key` (compare-and-set).
    pub async fn take_rate(&self, key: &Key, rate: &super::Rate) -> Result<super::RateDecision> {
        for attempt in 0..MAX_ATTEMPTS {
            let current = self.kv.get_as::<super::Gcra>(key).await?;
            let (mut gcra, revision) = match current {
                Some(v) => (v.value, Some(v.revision)),
                None => (super::Gcra::default(), None),
            };
            let now_ms = (crate::envelope::now().unix_timestamp_nanos() / 1_000_000) as i64;
            let decision = gcra.take(rate, now_ms);
            if !decision.allowed {
                return Ok(decision);
            }
            let written = match revision {
                Some(rev) => self.kv.update(key, gcra.encode(), rev).await,
                None => self.kv.create(key, gcra.encode()).await,
            };
            match written {
                Ok(_) => return Ok(decision),
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
