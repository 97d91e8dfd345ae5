//! OpenTelemetry traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP/HTTP
//! (protobuf) in batches, as service `agentos-<role>`, and W3C trace context propagates through
//! NATS headers (`bus::trace`). Without it there is no exporter, no OpenTelemetry layer and no
//! cost beyond the `tracing` spans themselves.

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Flushes and stops the exporter when dropped.
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: flushing traces: {e}");
        }
    }
}

/// The OpenTelemetry layer for `service`, when `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector.
/// Call before the async runtime starts (the HTTP client is a blocking one, on the batch
/// exporter's own thread).
pub fn layer<S>(service: &str) -> Result<(Option<impl tracing_subscriber::Layer<S>>, Guard)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none_or(|v| v.is_empty()) {
        return Ok((None, Guard(None)));
    }
    // The exporter's HTTP client is rustls without a built-in provider: ours is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("the OTLP/HTTP span exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("agentos");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((Some(layer), Guard(Some(provider))))
}
