//! Every metric the edge records: name, unit and help in one place, one function per
//! recording. Names follow `docs/instrumentation.md`. Routes are axum's matched route templates
//! (`/v1/runs/{id}`), never raw paths; no request id, run id or principal is ever a label.

use std::time::Duration;

use agentos_bus::id::Tenant;
use agentos_bus::metric_definitions::tenant_label;
use axum::http::{Method, StatusCode};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

pub const HTTP_REQUESTS_TOTAL: &str = "agentos_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "agentos_http_request_duration_seconds";
pub const SSE_OPEN_STREAMS: &str = "agentos_sse_open_streams";
pub const RUNS_SUBMITTED_TOTAL: &str = "agentos_runs_submitted_total";

/// Registers the help text and unit of every metric above.
pub fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests answered, by matched route, method and status class (2xx, 4xx, …)"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time to the response head (SSE: until the stream starts), by matched route and method"
    );
    describe_gauge!(
        SSE_OPEN_STREAMS,
        Unit::Count,
        "Server-sent event streams of run events open right now"
    );
    describe_counter!(
        RUNS_SUBMITTED_TOTAL,
        Unit::Count,
        "Runs created and submitted through this edge, by tenant (allow-listed, else other)"
    );
}

/// One answered request. `route` is the matched route template, `None` when nothing matched.
pub(crate) fn http_request(
    route: Option<&str>,
    method: &Method,
    status: StatusCode,
    took: Duration,
) {
    let route = route.map_or_else(|| "unmatched".to_owned(), str::to_owned);
    let method = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let class = match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    counter!(HTTP_REQUESTS_TOTAL, "route" => route.clone(), "method" => method, "status_class" => class)
        .increment(1);
    histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route, "method" => method)
        .record(took.as_secs_f64());
}

/// A run was created and submitted.
pub(crate) fn run_submitted(tenant: &Tenant) {
    counter!(RUNS_SUBMITTED_TOTAL, "tenant" => tenant_label(tenant)).increment(1);
}

/// Counts an open SSE stream while it lives.
pub(crate) struct OpenSse;

impl OpenSse {
    pub(crate) fn open() -> Self {
        gauge!(SSE_OPEN_STREAMS).increment(1.0);
        Self
    }
}

impl Drop for OpenSse {
    fn drop(&mut self) {
        gauge!(SSE_OPEN_STREAMS).decrement(1.0);
    }
}
