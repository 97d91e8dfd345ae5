//! The workers' spans: one per run delivery (`run`) and one per model or tool call served
//! (`model`, `tool`), each the child of the trace context its message carried, so one run is one
//! trace across processes. Their fields (`run_id`, `tenant`, `trace_id`) are on every log line
//! written inside them.

use agentos_bus::Incoming;
use agentos_bus::envelope::RunRequest;
use agentos_bus::trace::{adopt, current_trace_id};

/// The span a run delivery is driven in.
pub(crate) fn run_span(req: &RunRequest, parent: opentelemetry::Context) -> tracing::Span {
    let span = tracing::info_span!(
        "run",
        run_id = %req.run_id,
        tenant = %req.tenant,
        trace_id = tracing::field::Empty,
    );
    adopt(&span, parent);
    if let Some(id) = span.in_scope(current_trace_id) {
        span.record("trace_id", id);
    }
    span
}

/// The span a served call (`model` or `tool`) is handled in.
pub(crate) fn call_span(name: &'static str, req: &Incoming) -> tracing::Span {
    let span = match name {
        "model" => tracing::info_span!(
            "model",
            subject = req.subject(),
            trace_id = tracing::field::Empty
        ),
        _ => tracing::info_span!(
            "tool",
            subject = req.subject(),
            trace_id = tracing::field::Empty
        ),
    };
    adopt(&span, req.trace_context());
    if let Some(id) = span.in_scope(current_trace_id) {
        span.record("trace_id", id);
    }
    span
}
