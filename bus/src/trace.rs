//! W3C trace context (`traceparent`, `tracestate`) across the bus. Every submission and call
//! carries the current `tracing` span's context in its headers; whoever handles the message
//! makes its own span a child of the context in the headers. Without an OpenTelemetry layer
//! (no `OTEL_EXPORTER_OTLP_ENDPOINT`) spans have no trace context and nothing is injected.

use async_nats::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::headers::{TRACEPARENT, TRACESTATE};

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// The two headers of a W3C trace context, as found.
struct Found {
    parent: Option<String>,
    state: Option<String>,
}

impl Extractor for Found {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.parent.as_deref(),
            TRACESTATE => self.state.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

struct Pairs(Vec<(String, String)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// The current span's trace context as header name/value pairs (`traceparent`, `tracestate`),
/// for an outgoing HTTP request; none when the span has no trace context.
pub fn current_headers() -> Vec<(String, String)> {
    let cx = tracing::Span::current().context();
    let mut out = Pairs(Vec::new());
    if cx.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut out));
    }
    out.0
}

/// Adds the current span's trace context to `h`, if it has one.
pub(crate) fn inject(h: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Inject(h)));
    }
}

/// The trace context in NATS headers (empty when there is none).
pub(crate) fn from_headers(h: Option<&HeaderMap>) -> Context {
    match h {
        Some(h) => from_lookup(|k| h.get(k).map(|v| v.as_str())),
        None => Context::new(),
    }
}

/// The trace context found through `get`, a lookup of header values by name (the edge's HTTP
/// headers, say): a client's own `traceparent`. Empty when there is none.
pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Context {
    let Some(parent) = get(TRACEPARENT) else {
        return Context::new();
    };
    let found = Found {
        parent: Some(parent.to_owned()),
        state: get(TRACESTATE).map(str::to_owned),
    };
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&found))
}

/// Makes `span` a child of `parent`, if `parent` names a valid remote span.
pub fn adopt(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The current span's trace id (32 lowercase hex digits), when it has one.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
