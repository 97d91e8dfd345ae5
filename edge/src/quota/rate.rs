//! Request rates, cluster-wide. Every authenticated request of a tenant with a `rate` setting
//! (its principal's override, else the tenant's) passes two checks: this edge's own `governor`
//! limiter at the same rate, which refuses at once when this edge alone is over (no round trip),
//! then the shared GCRA state in KV `agentos-usage`, advanced by compare-and-set, which holds
//! the rate for the sum over every edge. A take from the shared state also leases this edge up
//! to 100 ms of the rate while the bucket stays at least half full
//! ([`agentos_bus::quota::Take`]), which the next requests use without a round trip. A refusal
//! is `429 rate_limited` with `Retry-After`, `retry-after-ms` and OpenAI's
//! `x-ratelimit-*-requests` headers, so SDKs back off on their own.
//!
//! Drift: the shared state is exact up to the edges' clock skew (it compares each edge's wall
//! clock with the stored arrival time), and leased requests are counted when leased, used
//! within [`LEASE_HORIZON`]: over `T` seconds at most `rate × (T + skew + 0.1 s × edges) +
//! burst` requests pass. The local limiter never admits alone, it only refuses early, and may
//! refuse a request the cluster would have let through only while this edge alone is over the
//! rate. Leases unused when their 100 ms ends are lost (the edges admit less, never more).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentos_bus::envelope::TenantRecord;
use agentos_bus::key::{self, Key};
use agentos_bus::quota::{LEASE_HORIZON, Rate, RateDecision, Take, interval_ms};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::error::{ApiError, ApiResult};
use crate::{AppState, AuthContext};

/// This edge's limiters and leases, one per scope and rate (a changed setting gets fresh ones).
#[derive(Default)]
pub(crate) struct LocalRates(Mutex<HashMap<Key, (Rate, Arc<Local>)>>);

/// One scope's rate at this edge: its `governor` limiter and the requests leased to it.
struct Local {
    limiter: DefaultDirectRateLimiter,
    lease: Mutex<Lease>,
}

/// Requests leased from the cluster, usable until `until`.
#[derive(Clone, Copy)]
struct Lease {
    left: u32,
    until: Instant,
}

impl Local {
    /// Uses one leased request, if a lease is left.
    fn use_lease(&self) -> bool {
        let mut lease = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
        if lease.left == 0 || Instant::now() >= lease.until {
            return false;
        }
        lease.left -= 1;
        true
    }

    /// Keeps `leased` requests (replacing what is left: the older lease ends sooner).
    fn keep(&self, leased: u32) {
        if leased > 0 {
            let mut lease = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
            *lease = Lease {
                left: leased,
                until: Instant::now() + LEASE_HORIZON,
            };
        }
    }
}

impl LocalRates {
    fn local(&self, key: &Key, rate: Rate) -> Arc<Local> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((r, l)) = map.get(key)
            && *r == rate
        {
            return l.clone();
        }
        let period = Duration::from_millis(interval_ms(&rate) as u64);
        let burst = NonZeroU32::new(rate.burst()).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let local = Arc::new(Local {
            limiter: DefaultDirectRateLimiter::direct(quota),
            lease: Mutex::new(Lease {
                left: 0,
                until: Instant::now(),
            }),
        });
        map.insert(key.clone(), (rate, local.clone()));
        local
    }
}

/// Refuses the request when its tenant's (or principal's) rate is spent, here or cluster-wide.
pub(crate) async fn check(
    state: &AppState,
    auth: &AuthContext,
    rec: Option<&TenantRecord>,
) -> ApiResult<()> {
    let Some((scope, rate)) = rec.and_then(|r| r.quotas.rate(Some(&auth.subject))) else {
        return Ok(());
    };
    let key = key::rate(&auth.tenant, &scope);
    let local = state.rates.local(&key, rate);
    if let Err(not_until) = local.limiter.check() {
        agentos_bus::metric_definitions::quota_rejected(&auth.tenant, "rate_limited");
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let ms = (wait.as_millis() as u64).max(1);
        return Err(limited(&RateDecision {
            allowed: false,
            limit: rate.burst(),
            remaining: 0,
            retry_after_ms: ms,
            reset_ms: ms,
            leased: 0,
        }));
    }
    if local.use_lease() {
        return Ok(());
    }
    let decision = state.budgets.take_rate(&key, Take::leasing(rate)).await?;
    if decision.allowed {
        local.keep(decision.leased);
        Ok(())
    } else {
        agentos_bus::metric_definitions::quota_rejected(&auth.tenant, "rate_limited");
        Err(limited(&decision))
    }
}

/// `429 rate_limited` with the headers SDKs honour.
fn limited(d: &RateDecision) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "request rate limit reached ({} at once); retry after {} ms",
            d.limit, d.retry_after_ms
        ),
    )
    .with_param("quotas.rate");
    e.retry_after = Some(d.retry_after_ms.div_ceil(1000).max(1));
    let header = |name: &'static str, value: String| {
        HeaderValue::from_str(&value)
            .ok()
            .map(|v| (HeaderName::from_static(name), v))
    };
    e.headers.extend(
        [
            header("retry-after-ms", d.retry_after_ms.to_string()),
            header("x-ratelimit-limit-requests", d.limit.to_string()),
            header("x-ratelimit-remaining-requests", d.remaining.to_string()),
            header(
                "x-ratelimit-reset-requests",
                format!("{}ms", d.reset_ms.max(d.retry_after_ms)),
            ),
        ]
        .into_iter()
        .flatten(),
    );
    e
}
