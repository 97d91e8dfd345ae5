//! This orchestrator's allowances ([`agentos_bus::quota::Allowance`]): runs' worth of a scope's
//! budget and concurrency the ledger granted it with an earlier reservation. A run that fits
//! in the allowance of every scope it is held to is admitted here, with no round trip; it
//! takes its own hold from the allowance in the background (`Draw`). Used only until a
//! second before the ledger's lease ends, so a draw lands before the allowance lapses.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use agentos_bus::Key;
use agentos_bus::quota::{Allot, Allowance, Amount};
use time::OffsetDateTime;

/// Runs asked for with each reservation.
pub(crate) const ALLOWANCE_RUNS: u32 = 16;

/// How long the ledger keeps an allowance without a new reservation.
pub(crate) const ALLOWANCE_LEASE: time::Duration = time::Duration::seconds(2);

/// How much sooner than the ledger this orchestrator stops using an allowance.
const MARGIN: time::Duration = time::Duration::seconds(1);

/// The allowances one orchestrator holds, by ledger. Shared by its run tasks.
#[derive(Debug)]
pub struct Allowances {
    /// Whose allowances these are in the ledgers: this orchestrator, for its lifetime.
    holder: String,
    local: Mutex<HashMap<Key, Local>>,
}

#[derive(Debug, Default)]
struct Local {
    runs: u32,
    each: Amount,
    until: Option<OffsetDateTime>,
    /// A reservation asking for a new allowance is in flight: one at a time per ledger, so the
    /// grant kept here is always the one the ledger kept.
    asking: bool,
}

impl Default for Allowances {
    fn default() -> Self {
        Self {
            holder: uuid::Uuid::new_v4().simple().to_string(),
            local: Mutex::default(),
        }
    }
}

fn covers(each: Amount, amount: Amount) -> bool {
    amount.tokens <= each.tokens && amount.cost_micros <= each.cost_micros
}

/// The right to ask a ledger for a new allowance; given up when dropped.
pub(crate) struct Asking<'a> {
    allowances: &'a Allowances,
    key: Key,
    /// What the holder had left there and must give back first.
    pub(crate) give_back: bool,
}

impl Asking<'_> {
    /// What to ask for with the reservation.
    pub(crate) fn allot(&self) -> Allot {
        Allot {
            holder: self.allowances.holder.clone(),
            runs: ALLOWANCE_RUNS,
            lease: ALLOWANCE_LEASE,
        }
    }

    /// The ledger granted `allowance` (replacing what was there).
    pub(crate) fn granted(self, allowance: Allowance, now: OffsetDateTime) {
        let mut local = self.allowances.lock();
        let l = local.entry(self.key.clone()).or_default();
        l.runs = allowance.runs;
        l.each = allowance.each;
        l.until = Some(now + ALLOWANCE_LEASE - MARGIN);
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.allowances.lock().get_mut(&self.key) {
            l.asking = false;
        }
    }
}

impl Allowances {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Local>> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn holder(&self) -> &str {
        &self.holder
    }

    /// Admits a run of `amount` from the allowance of every ledger in `keys`, all or none.
    pub(crate) fn take(&self, keys: &[Key], amount: Amount, now: OffsetDateTime) -> bool {
        let mut local = self.lock();
        let fits = keys.iter().all(|k| {
            local.get(k).is_some_and(|l| {
                l.runs > 0 && l.until.is_some_and(|u| u > now) && covers(l.each, amount)
            })
        });
        if fits {
            for k in keys {
                if let Some(l) = local.get_mut(k) {
                    l.runs -= 1;
                }
            }
        }
        fits
    }

    /// The right to ask the ledger at `key` for a new allowance, unless another run of this
    /// orchestrator is asking already. What is left of the old one is dropped here (and is to
    /// be given back: [`Asking::give_back`]).
    pub(crate) fn ask(&self, key: &Key) -> Option<Asking<'_>> {
        let mut local = self.lock();
        let l = local.entry(key.clone()).or_default();
        if l.asking {
            return None;
        }
        let give_back = l.runs > 0;
        *l = Local {
            asking: true,
            ..Local::default()
        };
        Some(Asking {
            allowances: self,
            key: key.clone(),
            give_back,
        })
    }
}
