//! Quotas and budgets: typed settings ([`settings`]), the per-scope ledger and its pure
//! operations ([`ledger`]), model prices, and the store that applies operations to ledgers in KV
//! `agentos-usage` under compare-and-set ([`Budgets`]). JetStream is the only store: every
//! edge and orchestrator reserves and settles against the same ledgers.

mod ledger;
mod rate;
mod settings;
mod store;

use std::collections::BTreeMap;

pub use ledger::{
    Allot, Allowance, Amount, Applied, Hold, Ledger, LedgerOp, Meter, Period, Refusal, ScopeLimits,
    Window,
};
pub use rate::{Gcra, LEASE_HORIZON, MAX_LEASE, RateDecision, Take, interval_ms};
use serde::{Deserialize, Serialize};
pub use settings::{Limits, OverConcurrency, Periods, QuotaError, Quotas, Rate, RunCaps};
pub use store::Budgets;

use crate::envelope::Usage;

/// What a run reserves when its tenant has a budget but no `run.max_tokens` cap: the run is
/// then capped at this many tokens.
pub const DEFAULT_RUN_TOKENS: u64 = 16_384;

/// How long a hold outlives its last settle before it is reclaimed (its holder was lost).
pub const DEFAULT_HOLD_LEASE: std::time::Duration = std::time::Duration::from_secs(600);

/// A model's price in US dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

/// Prices by public model name (`[quotas.prices."<model>"]` in `agentos.toml`). A model
/// without a price costs nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Prices(pub BTreeMap<String, Price>);

impl Prices {
    /// What `usage` of `model` cost, in micro-dollars (rounded up).
    pub fn cost_micros(&self, model: &str, usage: &Usage) -> u64 {
        // USD per million tokens is micro-dollars per token.
        self.0.get(model).map_or(0, |p| {
            (usage.prompt_tokens as f64 * p.input + usage.completion_tokens as f64 * p.output)
                .ceil() as u64
        })
    }

    /// The most `tokens` of `model` can cost (all at the dearer of the two prices).
    pub fn most_micros(&self, model: &str, tokens: u64) -> u64 {
        self.0
            .get(model)
            .map_or(0, |p| (tokens as f64 * p.input.max(p.output)).ceil() as u64)
    }

    /// Tokens and cost of `usage`.
    pub fn amount(&self, model: &str, usage: &Usage) -> Amount {
        Amount {
            tokens: usage.total_tokens,
            cost_micros: self.cost_micros(model, usage),
        }
    }
}

/// What one run (or chat completion) reserves in every scope it is held to: its token cap, and
/// that many tokens at the model's dearer price.
pub fn reservation(prices: &Prices, model: &str, caps: &RunCaps, budgeted: bool) -> (Amount, u64) {
    let cap = caps
        .max_tokens
        .unwrap_or(if budgeted { DEFAULT_RUN_TOKENS } else { 0 });
    (
        Amount {
            tokens: cap,
            cost_micros: prices.most_micros(model, cap),
        },
        cap,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_per_million_tokens_and_round_up() {
        let prices = Prices(BTreeMap::from([(
            "gpt".to_owned(),
            Price {
                input: 2.5,
                output: 10.0,
            },
        )]));
        let u = Usage::new(1000, 100);
        // 1000 × 2.5 + 100 × 10 micro-dollars.
        assert_eq!(prices.cost_micros("gpt", &u), 3500);
        assert_eq!(prices.cost_micros("other", &u), 0);
        assert_eq!(prices.most_micros("gpt", 3), 30);
    }
}
