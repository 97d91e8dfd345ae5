//! The cluster-wide request rate: one GCRA state per scope in KV `agentos-usage` (the
//! theoretical arrival time of the next request), advanced by compare-and-set, so the rate holds
//! for the sum over every edge. Pure [`Gcra::take`]; [`super::Budgets::take_rate`] stores it.

use serde::{Deserialize, Serialize};

use super::settings::Rate;

/// The GCRA state: when the bucket would be full again (unix milliseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gcra {
    pub tat_ms: i64,
}

impl crate::envelope::Envelope for Gcra {
    const WHAT: &'static str = "rate state";
}

/// The answer to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// The burst: requests allowed at once from full.
    pub limit: u32,
    /// Requests that would still pass right now.
    pub remaining: u32,
    /// When a refused request may be retried (0 when allowed).
    pub retry_after_ms: u64,
    /// Until the bucket is full again.
    pub reset_ms: u64,
}

/// Milliseconds between requests at `rate` (at least 1).
pub fn interval_ms(rate: &Rate) -> i64 {
    ((1000.0 / rate.requests_per_second).ceil() as i64).max(1)
}

impl Gcra {
    /// Takes one request at `now_ms` if the rate allows it (the state is unchanged otherwise).
    pub fn take(&mut self, rate: &Rate, now_ms: i64) -> RateDecision {
        let t = interval_ms(rate);
        let burst = rate.burst();
        let window = t * i64::from(burst);
        let tat = self.tat_ms.max(now_ms);
        let next = tat + t;
        if next - now_ms > window {
            let retry = (next - now_ms - window).max(1) as u64;
            return RateDecision {
                allowed: false,
                limit: burst,
                remaining: 0,
                retry_after_ms: retry,
                reset_ms: (tat - now_ms).max(0) as u64,
            };
        }
        self.tat_ms = next;
        RateDecision {
            allowed: true,
            limit: burst,
            remaining: ((window - (next - now_ms)) / t).max(0) as u32,
            retry_after_ms: 0,
            reset_ms: (next - now_ms) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_a_correct_retry_after() {
        let rate = Rate {
            requests_per_second: 10.0,
            burst: Some(3),
        };
        let mut g = Gcra::default();
        let now = 1_000_000;
        for left in [2, 1, 0] {
            let d = g.take(&rate, now);
            assert!(d.allowed && d.remaining == left, "{d:?}");
        }
        let d = g.take(&rate, now);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 100);
        assert!(!g.take(&rate, now + 99).allowed);
        assert!(g.take(&rate, now + 100).allowed);
        // Over 10 s at full pressure: 10/s plus the burst.
        let mut g = Gcra::default();
        let admitted = (0..10_000)
            .filter(|ms| g.take(&rate, now + ms).allowed)
            .count();
        assert_eq!(admitted, 100 + 2);
    }
}
