//! Allowances: runs' worth of a scope's budget and concurrency, granted to one orchestrator with
//! a reservation it made, so that its next runs are admitted locally, with no round trip on
//! their path. Each run admitted so later takes its own hold from the allowance in the
//! background ([`LedgerOp::Draw`]).
//!
//! Limits stay exact:
//! - An allowance counts as reserved (its runs as running) for everyone else.
//! - One is granted only while every limit of the scope keeps at least half of it free after
//!   the grant, so near a limit every run is checked against the ledger itself.
//! - While any allowance is out, a run the ledger would refuse waits instead
//!   ([`super::Refusal::wait`]): the allowance is drawn, returned or lapses within seconds,
//!   and only then is a refusal final. So no run is refused while capacity sits unused in
//!   another orchestrator's allowance.

use serde::{Deserialize, Serialize};

use super::{Amount, Ledger, Period, ScopeLimits};

/// Runs an orchestrator may still admit from a scope without asking, each reserving `each`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    pub runs: u32,
    pub each: Amount,
    /// Unix seconds after which it lapses (its holder stopped drawing or died).
    pub expires: i64,
}

impl Allowance {
    /// What it keeps from others.
    pub(super) fn outstanding(&self) -> Amount {
        Amount {
            tokens: self.each.tokens.saturating_mul(u64::from(self.runs)),
            cost_micros: self.each.cost_micros.saturating_mul(u64::from(self.runs)),
        }
    }
}

/// Asked with a run's reservation: grant `holder` an allowance of up to `runs` more runs like
/// it, for `lease`. Any allowance the holder had in the scope is given back first.
#[derive(Clone, Debug, PartialEq)]
pub struct Allot {
    pub holder: String,
    pub runs: u32,
    pub lease: time::Duration,
}

impl Ledger {
    /// Grants what `allot` asks, as far as every limit keeps half of it free afterwards.
    pub(super) fn allot(
        &mut self,
        allot: &Allot,
        each: Amount,
        limits: &ScopeLimits,
        t: i64,
    ) -> Option<Allowance> {
        self.allowances.remove(&allot.holder);
        let runs = self.allowable(each, limits, allot.runs);
        if runs == 0 {
            return None;
        }
        let granted = Allowance {
            runs,
            each,
            expires: t + allot.lease.whole_seconds(),
        };
        self.allowances.insert(allot.holder.clone(), granted);
        Some(granted)
    }

    /// The most runs (up to `want`) of `each` an allowance can hold while every limit keeps at
    /// least half of it free.
    fn allowable(&self, each: Amount, limits: &ScopeLimits, want: u32) -> u32 {
        let mut n = u64::from(want);
        if let Some(max) = limits.concurrent_runs.map(u64::from) {
            n = n.min(max.saturating_sub(self.running() as u64 + max.div_ceil(2)));
        }
        let out = self.outstanding();
        for p in Period::ALL {
            let used = self.window(p).used;
            let dims = [
                (p.of(&limits.tokens), used.tokens, out.tokens, each.tokens),
                (
                    p.of(&limits.cost_micros),
                    used.cost_micros,
                    out.cost_micros,
                    each.cost_micros,
                ),
            ];
            for (limit, used, out, each) in dims {
                if let Some(limit) = limit.filter(|_| each > 0) {
                    let taken = used.saturating_add(out).saturating_add(limit.div_ceil(2));
                    n = n.min(limit.saturating_sub(taken) / each);
                }
            }
        }
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// A run admitted from `holder`'s allowance takes its own hold of `amount`, one run less
    /// in the allowance. If the allowance lapsed meanwhile the hold is taken all the same: the
    /// run was admitted. A hold already there is renewed; an ended one is left alone.
    pub(super) fn draw(&mut self, hold: &str, holder: &str, amount: Amount, expires: i64) -> bool {
        if let Some(h) = self.holds.get_mut(hold) {
            if h.dropped {
                return false;
            }
            h.expires = expires;
            return true;
        }
        if let Some(a) = self.allowances.get_mut(holder) {
            a.runs = a.runs.saturating_sub(1);
            if a.runs == 0 {
                self.allowances.remove(holder);
            }
        }
        self.holds.insert(
            hold.to_owned(),
            super::Hold {
                run: true,
                reserved: amount,
                settled: Amount::default(),
                expires,
                dropped: false,
            },
        );
        true
    }
}
