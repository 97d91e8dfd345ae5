//! One scope's budget ledger (a value in KV `agentos-usage`): what was used in the current
//! minute, day and month, and the holds of the runs and requests in flight, each with what it
//! reserved, what of it is settled, and a lease. Every change is a pure [`Ledger::apply`] of a
//! [`LedgerOp`]; the store applies it under compare-and-set, so a reservation is checked and
//! taken in one atomic write, never read-then-write. Every operation is idempotent per hold: a
//! repeated reserve renews, a settle carries the hold's running total (not a delta), a repeated
//! release finds nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::settings::{Limits, OverConcurrency};

mod allowance;
mod period;

pub use allowance::{Allot, Allowance};
pub use period::{Period, Window};

/// Seconds an ended hold is kept as a marker, so that a stale driver (one still acting on a
/// journal read before the run ended) neither takes it anew nor counts its usage again.
pub const ENDED_KEPT: i64 = 120;

/// At most this many ended holds are kept (the newest), so a ledger, written whole on every
/// operation, stays small however fast its runs end (128 made every write of a busy tenant's
/// ledger about 25 KB, which alone cost its runs ≈ 0.5 ms each at 200 runs a second).
pub const MAX_ENDED: usize = 32;

/// Tokens and cost (micro-dollars: millionths of a US dollar). Zeros are left out of the
/// stored ledger, which is written whole on every operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cost_micros: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Amount {
    fn add(&mut self, o: Amount) {
        self.tokens = self.tokens.saturating_add(o.tokens);
        self.cost_micros = self.cost_micros.saturating_add(o.cost_micros);
    }

    fn minus(self, o: Amount) -> Amount {
        Amount {
            tokens: self.tokens.saturating_sub(o.tokens),
            cost_micros: self.cost_micros.saturating_sub(o.cost_micros),
        }
    }

    fn max(self, o: Amount) -> Amount {
        Amount {
            tokens: self.tokens.max(o.tokens),
            cost_micros: self.cost_micros.max(o.cost_micros),
        }
    }
}

/// What usage is counted under besides its scope: the model, and the agent of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meter {
    pub model: String,
    pub agent: Option<String>,
}

/// A run's or a request's claim on the budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// A run (counts against `concurrent_runs`); else a single request (a chat completion).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run: bool,
    pub reserved: Amount,
    /// What of it is used and counted in the windows.
    pub settled: Amount,
    /// Unix seconds after which the hold is reclaimed (its holder was lost).
    pub expires: i64,
    /// Ended (released by its run's finisher, or dropped by a driver that found the run ended):
    /// it keeps nothing and counts nothing more, is never taken anew (a stale driver's
    /// reserve), and still lets a finisher that comes after a drop count exactly the rest.
    /// Lapses [`ENDED_KEPT`] seconds later.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
}

impl Hold {
    /// What the hold still keeps from others.
    fn outstanding(&self) -> Amount {
        if self.dropped {
            return Amount::default();
        }
        self.reserved.minus(self.settled)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(default)]
    pub minute: Window,
    #[serde(default)]
    pub day: Window,
    #[serde(default)]
    pub month: Window,
    /// Everything ever settled here.
    #[serde(default)]
    pub total: Amount,
    #[serde(default)]
    pub holds: BTreeMap<String, Hold>,
    /// Orchestrators' allowances, by holder ([`Allowance`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allowances: BTreeMap<String, Allowance>,
}

impl crate::envelope::Envelope for Ledger {
    const WHAT: &'static str = "budget ledger";
}

/// What a scope limits, in the ledger's units.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScopeLimits {
    pub concurrent_runs: Option<u32>,
    pub over_concurrency: OverConcurrency,
    pub tokens: super::settings::Periods<u64>,
    /// Micro-dollars.
    pub cost_micros: super::settings::Periods<u64>,
}

impl From<&Limits> for ScopeLimits {
    fn from(l: &Limits) -> Self {
        let micros = |v: Option<f64>| v.map(|usd| (usd * 1e6).floor() as u64);
        Self {
            concurrent_runs: l.concurrent_runs,
            over_concurrency: l.over_concurrency.unwrap_or_default(),
            tokens: l.tokens,
            cost_micros: super::settings::Periods {
                per_minute: micros(l.cost_usd.per_minute),
                per_day: micros(l.cost_usd.per_day),
                per_month: micros(l.cost_usd.per_month),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum LedgerOp {
    /// Take a hold of `amount` unless it would pass a limit (a hold already there is renewed);
    /// with `allot`, also grant its holder an allowance of more runs like it.
    Reserve {
        hold: String,
        run: bool,
        amount: Amount,
        limits: ScopeLimits,
        lease: time::Duration,
        allot: Option<Allot>,
    },
    /// A run admitted locally from `holder`'s allowance takes its hold ([`Allowance`]).
    Draw {
        hold: String,
        holder: String,
        amount: Amount,
        lease: time::Duration,
    },
    /// `holder` gives back what is left of its allowance.
    Return { holder: String },
    /// A run admitted earlier goes on (after a wait, on another orchestrator): renew its hold,
    /// or, if the hold lapsed meanwhile, take it again with `counted` (what its settles already
    /// counted) as settled, and no limit checked: the run was admitted once. An ended hold is
    /// left alone.
    Resume {
        hold: String,
        amount: Amount,
        counted: Amount,
        lease: time::Duration,
    },
    /// The hold's holder has used `total` so far: count what was not counted yet, renew.
    Settle {
        hold: String,
        total: Amount,
        lease: time::Duration,
        meter: Meter,
    },
    /// Count what is left of `total` and drop the hold. Only the holder that ended the run
    /// (or request) releases so.
    Release {
        hold: String,
        total: Amount,
        meter: Meter,
    },
    /// Drop the hold, counting nothing more: a driver that found the run already ended. A
    /// stale driver may have taken the hold anew after the release; dropping (not counting)
    /// keeps the count exact. A dropped hold stays, inert, until the finisher's release or its
    /// lease, so it is never taken anew in between.
    Drop { hold: String },
    /// Remove a reservation taken a moment ago and not used (another scope refused the run).
    Undo { hold: String },
}

/// Which limit refused, and when it frees up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The setting: `tokens.per_day`, `cost_usd.per_month`, `concurrent_runs`.
    pub limit: String,
    /// The setting's value (tokens, micro-dollars, runs).
    pub value: u64,
    /// When the period resets (`None` for `concurrent_runs`: when a run ends).
    pub resets_at: Option<OffsetDateTime>,
    /// Wait and ask again: `concurrent_runs` with `over_concurrency = queue` (wait for a
    /// slot), or any limit while an allowance is out (it is drawn, given back or lapses soon).
    pub wait: bool,
}

impl Refusal {
    /// `budget_exceeded` for tokens and cost, `quota_exceeded` for concurrency.
    pub fn code(&self) -> &'static str {
        if self.limit == "concurrent_runs" {
            "quota_exceeded"
        } else {
            "budget_exceeded"
        }
    }

    pub fn message(&self) -> String {
        let value = if self.limit.starts_with("cost_usd") {
            format!("{:.6} USD", self.value as f64 / 1e6)
        } else {
            self.value.to_string()
        };
        match self.resets_at {
            Some(at) => format!(
                "quota {} ({value}) would be exceeded; it resets at {}",
                self.limit,
                at.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            ),
            None => format!(
                "quota {} ({value}) reached; a slot frees when a run ends",
                self.limit
            ),
        }
    }
}

/// What applying an operation did.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// Changed the ledger (write it).
    Changed,
    /// Took the reservation and granted this allowance (write it).
    Allotted(Allowance),
    /// Nothing to change (a release of a hold that is gone).
    Unchanged,
    Refused(Refusal),
}

impl LedgerOp {
    /// Whether a run or request waits on it before it starts (written without lingering).
    pub fn admits(&self) -> bool {
        matches!(
            self,
            Self::Reserve { .. } | Self::Undo { .. } | Self::Resume { .. }
        )
    }
}

impl Applied {
    /// Whether the ledger changed and must be written.
    pub fn writes(&self) -> bool {
        matches!(self, Self::Changed | Self::Allotted(_))
    }
}

impl Ledger {
    fn window_mut(&mut self, p: Period) -> &mut Window {
        match p {
            Period::Minute => &mut self.minute,
            Period::Day => &mut self.day,
            Period::Month => &mut self.month,
        }
    }

    pub fn window(&self, p: Period) -> &Window {
        match p {
            Period::Minute => &self.minute,
            Period::Day => &self.day,
            Period::Month => &self.month,
        }
    }

    /// What the holds and allowances keep from others.
    pub fn outstanding(&self) -> Amount {
        let mut a = Amount::default();
        for h in self.holds.values() {
            a.add(h.outstanding());
        }
        for allowance in self.allowances.values() {
            a.add(allowance.outstanding());
        }
        a
    }

    /// Runs holding a slot, and slots allowances keep for runs to come.
    pub fn running(&self) -> usize {
        let allowed: usize = self.allowances.values().map(|a| a.runs as usize).sum();
        allowed + self.holds.values().filter(|h| h.run && !h.dropped).count()
    }

    /// Starts new periods and reclaims lapsed holds; whether anything changed.
    pub fn roll(&mut self, now: OffsetDateTime) -> bool {
        let mut changed = false;
        for p in Period::ALL {
            let start = p.start(now).unix_timestamp();
            let w = self.window_mut(p);
            if w.start != start {
                *w = Window {
                    start,
                    ..Window::default()
                };
                changed = true;
            }
        }
        let t = now.unix_timestamp();
        let before = self.holds.len();
        self.holds.retain(|id, h| {
            let keep = h.expires >= t;
            if !keep && !h.dropped {
                tracing::info!(hold = %id, "budget hold lapsed; reclaimed");
            }
            keep
        });
        let allowances = self.allowances.len();
        self.allowances.retain(|_, a| a.expires >= t);
        changed || self.holds.len() != before || self.allowances.len() != allowances
    }

    /// Keeps only the newest [`MAX_ENDED`] ended holds.
    fn trim_ended(&mut self) {
        let mut ended: Vec<(i64, &String)> = self
            .holds
            .iter()
            .filter(|(_, h)| h.dropped)
            .map(|(id, h)| (h.expires, id))
            .collect();
        if ended.len() <= MAX_ENDED {
            return;
        }
        ended.sort_unstable();
        let oldest: Vec<String> = ended[..ended.len() - MAX_ENDED]
            .iter()
            .map(|(_, id)| (*id).clone())
            .collect();
        for id in oldest {
            self.holds.remove(&id);
        }
    }

    /// What the windows still allow in `p` (tokens, micro-dollars), `None` where unlimited.
    pub fn remaining(&self, limits: &ScopeLimits, p: Period) -> (Option<u64>, Option<u64>) {
        let used = self.window(p).used;
        let out = self.outstanding();
        (
            p.of(&limits.tokens)
                .map(|l| l.saturating_sub(used.tokens + out.tokens)),
            p.of(&limits.cost_micros)
                .map(|l| l.saturating_sub(used.cost_micros + out.cost_micros)),
        )
    }

    /// Marks a hold ended: it keeps and counts nothing more, and lapses after [`ENDED_KEPT`].
    fn end(&mut self, hold: &str, settled: Amount, now: i64) {
        if let Some(h) = self.holds.get_mut(hold) {
            h.dropped = true;
            h.settled = settled;
            h.reserved = settled;
            h.expires = h.expires.min(now + ENDED_KEPT);
        }
    }

    fn count(&mut self, delta: Amount, meter: &Meter) {
        if delta == Amount::default() {
            return;
        }
        for p in Period::ALL {
            let w = self.window_mut(p);
            w.used.add(delta);
            w.models.entry(meter.model.clone()).or_default().add(delta);
            if let Some(agent) = &meter.agent {
                w.agents.entry(agent.clone()).or_default().add(delta);
            }
        }
        self.total.add(delta);
    }

    /// Applies `op` at `now` (periods rolled and lapsed holds reclaimed first).
    pub fn apply(&mut self, op: &LedgerOp, now: OffsetDateTime) -> Applied {
        let rolled = self.roll(now);
        let t = now.unix_timestamp();
        let changed = match op {
            LedgerOp::Reserve {
                hold,
                run,
                amount,
                limits,
                lease,
                allot,
            } => {
                let expires = t + lease.whole_seconds();
                if let Some(h) = self.holds.get_mut(hold) {
                    if h.dropped {
                        // Its run has ended: a stale driver does not take it anew.
                        return Applied::Unchanged;
                    }
                    h.expires = expires;
                    return Applied::Changed;
                }
                if let Some(refusal) = self.refusal(*run, *amount, limits, now) {
                    return Applied::Refused(refusal);
                }
                self.holds.insert(
                    hold.clone(),
                    Hold {
                        run: *run,
                        reserved: *amount,
                        settled: Amount::default(),
                        expires,
                        dropped: false,
                    },
                );
                if let Some(granted) = allot
                    .as_ref()
                    .and_then(|a| self.allot(a, *amount, limits, t))
                {
                    self.trim_ended();
                    return Applied::Allotted(granted);
                }
                true
            }
            LedgerOp::Draw {
                hold,
                holder,
                amount,
                lease,
            } => self.draw(hold, holder, *amount, t + lease.whole_seconds()),
            LedgerOp::Return { holder } => self.allowances.remove(holder).is_some(),
            LedgerOp::Resume {
                hold,
                amount,
                counted,
                lease,
            } => {
                let expires = t + lease.whole_seconds();
                match self.holds.get_mut(hold) {
                    Some(h) if h.dropped => false,
                    Some(h) => {
                        h.expires = expires;
                        true
                    }
                    None => {
                        let taken = Hold {
                            run: true,
                            reserved: (*amount).max(*counted),
                            settled: *counted,
                            expires,
                            dropped: false,
                        };
                        self.holds.insert(hold.clone(), taken);
                        true
                    }
                }
            }
            LedgerOp::Settle {
                hold,
                total,
                lease,
                meter,
            } => {
                let expires = t + lease.whole_seconds();
                match self.holds.get(hold).copied().filter(|h| !h.dropped) {
                    Some(h) => {
                        self.count(total.minus(h.settled), meter);
                        if let Some(h) = self.holds.get_mut(hold) {
                            h.settled = h.settled.max(*total);
                            h.expires = expires;
                        }
                        true
                    }
                    // The hold is gone: released (the run ended; this driver is stale) or
                    // lapsed (no settle for a whole lease). Counting now could count twice, so
                    // nothing is counted: the accounting errs low, never high.
                    None => false,
                }
            }
            // The hold stays for a while as an ended marker (see `ENDED_KEPT`): a stale driver
            // must neither take it anew nor settle on it again (found by the simulation).
            LedgerOp::Release { hold, total, meter } => match self.holds.get(hold).copied() {
                Some(h) => {
                    let rest = total.minus(h.settled);
                    self.count(rest, meter);
                    self.end(hold, h.settled.max(*total), t);
                    !h.dropped || rest != Amount::default()
                }
                None => false,
            },
            LedgerOp::Drop { hold } => match self.holds.get(hold).copied() {
                Some(h) if !h.dropped => {
                    self.end(hold, h.settled, t);
                    true
                }
                _ => false,
            },
            LedgerOp::Undo { hold } => match self.holds.get(hold) {
                Some(h) if !h.dropped => self.holds.remove(hold).is_some(),
                _ => false,
            },
        };
        if changed || rolled {
            self.trim_ended();
            Applied::Changed
        } else {
            Applied::Unchanged
        }
    }

    fn refusal(
        &self,
        run: bool,
        amount: Amount,
        limits: &ScopeLimits,
        now: OffsetDateTime,
    ) -> Option<Refusal> {
        let refusal = self.over(run, amount, limits, now)?;
        // Not final while an allowance is out: what it keeps comes back soon.
        let wait = refusal.wait || !self.allowances.is_empty();
        Some(Refusal { wait, ..refusal })
    }

    fn over(
        &self,
        run: bool,
        amount: Amount,
        limits: &ScopeLimits,
        now: OffsetDateTime,
    ) -> Option<Refusal> {
        if run
            && let Some(max) = limits.concurrent_runs
            && self.running() >= max as usize
        {
            return Some(Refusal {
                limit: "concurrent_runs".into(),
                value: u64::from(max),
                resets_at: None,
                wait: limits.over_concurrency == OverConcurrency::Queue,
            });
        }
        let out = self.outstanding();
        for p in Period::ALL {
            let used = self.window(p).used;
            let over = |limit: Option<u64>, used: u64, out: u64, want: u64, name: &str| {
                limit
                    .filter(|l| used.saturating_add(out).saturating_add(want) > *l)
                    .map(|l| Refusal {
                        limit: format!("{name}.{}", p.field()),
                        value: l,
                        resets_at: Some(p.end(now)),
                        wait: false,
                    })
            };
            if let Some(r) = over(
                p.of(&limits.tokens),
                used.tokens,
                out.tokens,
                amount.tokens,
                "tokens",
            )
            .or_else(|| {
                over(
                    p.of(&limits.cost_micros),
                    used.cost_micros,
                    out.cost_micros,
                    amount.cost_micros,
                    "cost_usd",
                )
            }) {
                return Some(r);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
