//! Installing the process's Prometheus recorder (`[metrics]`): the edge serves `/metrics` on its
//! API listener unless given its own; a worker exports on its own listener (`agentos up`
//! assigns the ports) or not at all. Every crate's metrics are described here once.

use std::time::Duration;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::config;

/// Latency buckets in seconds: 1 ms to 2 min.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Steps per run.
const STEPS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 50.0, 100.0];

/// How often an orchestrator polls the work queue's consumer info for its gauges.
pub const QUEUE_GAUGES: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the recorder drops idle series and rolls histograms when nothing else does.
const UPKEEP: Duration = Duration::from_secs(5);

/// Where a process's metrics go.
pub enum Exported {
    /// Nowhere: no recorder is installed, recording costs nothing.
    Off,
    /// On the process's own listener.
    Listener,
    /// Rendered by the caller (the edge's `/metrics`).
    Handle(PrometheusHandle),
}

impl Exported {
    pub fn handle(self) -> Option<PrometheusHandle> {
        match self {
            Self::Handle(h) => Some(h),
            _ => None,
        }
    }

    pub fn is_on(&self) -> bool {
        !matches!(self, Self::Off)
    }
}

/// Installs the recorder for a process: on `[metrics] listen` if set; else, when `own_route`
/// (the edge), as a handle to render; else not at all. Call inside the runtime.
pub fn install(m: &config::Metrics, own_route: bool) -> Result<Exported> {
    let tenants = m
        .tenants()
        .iter()
        .map(|t| t.parse::<agentos_bus::id::Tenant>())
        .collect::<Result<Vec<_>, _>>()
        .context("[metrics] tenants")?;
    agentos_bus::metric_definitions::label_tenants(tenants);
    let builder = PrometheusBuilder::new()
        .set_buckets(SECONDS)?
        .set_buckets_for_metric(
            Matcher::Full(agentos_workers::metric_definitions::RUN_STEPS.into()),
            STEPS,
        )?
        .idle_timeout(MetricKindMask::ALL, Some(m.idle_timeout()))
        .upkeep_timeout(UPKEEP);
    let exported = match (m.listen(), own_route) {
        (Some(addr), _) => {
            builder
                .with_http_listener(addr)
                .install()
                .with_context(|| format!("serving metrics on {addr}"))?;
            tracing::info!(listen = %addr, "metrics listener");
            Exported::Listener
        }
        (None, true) => {
            let handle = builder
                .install_recorder()
                .context("installing the metrics recorder")?;
            let upkeep = handle.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(UPKEEP).await;
                    upkeep.run_upkeep();
                }
            });
            Exported::Handle(handle)
        }
        (None, false) => return Ok(Exported::Off),
    };
    agentos_bus::metric_definitions::describe();
    agentos_workers::metric_definitions::describe();
    agentos_edge::metric_definitions::describe();
    Ok(exported)
}
