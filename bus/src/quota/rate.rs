//! The cluster-wide request rate: one GCRA state per scope in KV `agentos-usage` (the
//! theoretical arrival time of the next request), advanced by compare-and-set, so the rate holds
//! for the sum over every edge. Pure [`Gcra::take`]; [`super::Budgets::take_rate`] stores it.
//!
//! Leases: a take may also lease requests to the edge that asked ([`Take::extra`]), which it
//! then admits without a round trip for [`LEASE_HORIZON`]. Leased requests are counted when
//! leased, and only while the bucket stays at least half full: far from the limit requests are
//! admitted locally, near it every request asks the cluster.

use serde::{Deserialize, Serialize};

use super::settings::Rate;

/// How long leased requests stay usable, and so how many a take leases: the rate's worth of
/// this long (at most [`MAX_LEASE`]).
pub const LEASE_HORIZON: std::time::Duration = std::time::Duration::from_millis(100);

/// The most requests one take leases.
pub const MAX_LEASE: u32 = 1000;

/// One request to admit, and how many more to lease for the next ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Take {
    pub rate: Rate,
    pub extra: u32,
}

impl Take {
    /// One request and, for a rate fast enough, a lease of [`LEASE_HORIZON`]'s worth.
    pub fn leasing(rate: Rate) -> Self {
        let extra = (rate.requests_per_second * LEASE_HORIZON.as_secs_f64()).floor();
        Self {
            rate,
            extra: (extra.max(0.0) as u32).min(MAX_LEASE),
        }
    }
}

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
    /// Requests leased beyond the one admitted.
    pub leased: u32,
}

/// Milliseconds between requests at `rate` (at least 1).
pub fn interval_ms(rate: &Rate) -> i64 {
    ((1000.0 / rate.requests_per_second).ceil() as i64).max(1)
}

impl Gcra {
    /// Takes one request at `now_ms` if the rate allows it (the state is unchanged otherwise),
    /// and leases up to `take.extra` more while at least half the burst remains.
    pub fn take(&mut self, take: &Take, now_ms: i64) -> RateDecision {
        let mut d = self.take_one(&take.rate, now_ms);
        if d.allowed {
            let spare = d.remaining.saturating_sub(take.rate.burst() / 2);
            let leased = take.extra.min(spare);
            let t = interval_ms(&take.rate);
            self.tat_ms += t * i64::from(leased);
            d.leased = leased;
            d.remaining -= leased;
            d.reset_ms += (t * i64::from(leased)) as u64;
        }
        d
    }

    fn take_one(&mut self, rate: &Rate, now_ms: i64) -> RateDecision {
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
                leased: 0,
            };
        }
        self.tat_ms = next;
        RateDecision {
            allowed: true,
            limit: burst,
            remaining: ((window - (next - now_ms)) / t).max(0) as u32,
            retry_after_ms: 0,
            reset_ms: (next - now_ms) as u64,
            leased: 0,
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
        let rate = Take { rate, extra: 0 };
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

    #[test]
    fn leases_only_while_the_bucket_stays_half_full_and_count_when_leased() {
        let rate = Rate {
            requests_per_second: 100.0,
            burst: Some(20),
        };
        let take = Take::leasing(rate);
        assert_eq!(take.extra, 10, "100 ms of 100/s");
        let mut g = Gcra::default();
        let now = 1_000_000;
        // From full (20): one admitted, 9 leased (10 stay).
        let d = g.take(&take, now);
        assert!(d.allowed && d.leased == 9 && d.remaining == 10, "{d:?}");
        // At half, no more leases: each request asks.
        let d = g.take(&take, now);
        assert!(d.allowed && d.leased == 0 && d.remaining == 9, "{d:?}");
        // Leased requests were counted: 20 taken in all, the 21st is refused.
        let left = (0..9).filter(|_| g.take(&take, now).allowed).count();
        assert_eq!(left, 9);
        assert!(!g.take(&take, now).allowed);
        // Slow rates lease nothing; fast ones at most MAX_LEASE.
        let slow = Rate {
            requests_per_second: 2.0,
            burst: None,
        };
        assert_eq!(Take::leasing(slow).extra, 0);
        let fast = Rate {
            requests_per_second: 1e7,
            burst: None,
        };
        assert_eq!(Take::leasing(fast).extra, MAX_LEASE);
    }
}
