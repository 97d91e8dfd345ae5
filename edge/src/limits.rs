//! Bounds that keep an overloaded edge answering instead of queueing without end: a cap on the
//! requests in flight (beyond it `503 overloaded` with `Retry-After`, at once), and a cap on the
//! SSE streams one tenant keeps open (beyond it `429 too_many_streams`), so that one tenant's
//! followers cannot hold every connection. Health, readiness, metrics and the OpenAPI document
//! are never shed: an orchestrator of edges must still see an overloaded edge alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use agentos_bus::id::Tenant;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Requests in flight at once, by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4_096;
/// SSE streams one tenant may keep open on one edge, by default.
pub const DEFAULT_MAX_STREAMS_PER_TENANT: usize = 256;
/// What an overloaded edge tells clients to wait, in seconds.
const RETRY_AFTER_S: u64 = 1;

/// The edge's caps, shared by every request.
#[derive(Clone, Debug)]
pub struct Limits {
    in_flight: Arc<Semaphore>,
    max_streams: usize,
    streams: Arc<Mutex<HashMap<Tenant, usize>>>,
}

impl Limits {
    pub fn new(max_in_flight: usize, max_streams_per_tenant: usize) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            max_streams: max_streams_per_tenant.max(1),
            streams: Arc::default(),
        }
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<Tenant, usize>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more SSE stream of `tenant`, held until the stream ends.
    pub fn open_stream(&self, tenant: &Tenant) -> Result<StreamSlot, ApiError> {
        let mut streams = self.streams();
        let open = streams.entry(tenant.clone()).or_default();
        if *open >= self.max_streams {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "tenant {tenant} has {} event streams open on this edge; close one first",
                    self.max_streams
                ),
            )
            .with_retry_after(RETRY_AFTER_S));
        }
        *open += 1;
        Ok(StreamSlot {
            limits: self.clone(),
            tenant: tenant.clone(),
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_STREAMS_PER_TENANT)
    }
}

/// One open SSE stream; frees its slot when dropped (the stream ended or the client left).
#[derive(Debug)]
pub struct StreamSlot {
    limits: Limits,
    tenant: Tenant,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.limits.streams();
        if let Some(open) = streams.get_mut(&self.tenant) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.tenant);
            }
        }
    }
}

/// Middleware: refuses a request at once when the edge already has its maximum in flight.
pub async fn shed(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    if matches!(
        req.uri().path(),
        "/healthz" | "/readyz" | "/openapi.json" | "/metrics"
    ) {
        return next.run(req).await;
    }
    match limits.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the edge has too many requests in flight; retry shortly",
        )
        .with_retry_after(RETRY_AFTER_S)
        .into_response(),
    }
}
