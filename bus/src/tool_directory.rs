//! The tool directory: every tool some running worker declares ([`Bus::discover_tools`]),
//! cached, so that the orchestrator can hand a model the definitions of an agent's tools on
//! every step without a `$SRV.INFO` round trip per model call. One discovery runs at a time;
//! callers that arrive meanwhile wait for its answer instead of asking again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::envelope::ToolSpec;
use crate::id::ToolName;
use crate::{Bus, Result};

/// How long a discovered tool list is trusted by the orchestrator.
pub const TOOL_CACHE_TTL: Duration = Duration::from_secs(2);

/// Discovery waits this long for a first service to answer (every running AgentOS component
/// answers, so this is reached only when nothing runs)...
const FIRST: Duration = Duration::from_millis(250);
/// ...then until no other answer came for this long.
const IDLE: Duration = Duration::from_millis(25);

/// The tools declared right now, by name.
pub type Declared = Arc<BTreeMap<ToolName, ToolSpec>>;

/// Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct ToolDirectory {
    bus: Bus,
    cached: Arc<Mutex<Option<(Instant, Declared)>>>,
    discovering: Arc<tokio::sync::Mutex<()>>,
}

impl ToolDirectory {
    pub fn new(bus: Bus) -> Self {
        Self {
            bus,
            cached: Arc::default(),
            discovering: Arc::default(),
        }
    }

    /// The declared tools, discovered at most `max_age` ago (`Duration::ZERO`: right now). When
    /// discovery fails, an older list is answered if there is one.
    pub async fn get(&self, max_age: Duration) -> Result<Declared> {
        let asked = Instant::now();
        if let Some(fresh) = self.cached_since(asked, max_age) {
            return Ok(fresh);
        }
        let _one_at_a_time = self.discovering.lock().await;
        // A discovery that started after this call was made answers it too.
        if let Some(fresh) = self.cached_since(asked, max_age) {
            return Ok(fresh);
        }
        let started = Instant::now();
        match self.bus.discover_tools(FIRST, IDLE).await {
            Ok(tools) => {
                let tools = Arc::new(tools);
                *self.lock() = Some((started, tools.clone()));
                Ok(tools)
            }
            Err(e) => match self.lock().as_ref() {
                Some((_, stale)) => {
                    tracing::warn!(error = %e, "tool discovery failed; using the last list");
                    Ok(stale.clone())
                }
                None => Err(e),
            },
        }
    }

    fn cached_since(&self, asked: Instant, max_age: Duration) -> Option<Declared> {
        self.lock()
            .as_ref()
            .filter(|(at, _)| asked.saturating_duration_since(*at) <= max_age)
            .map(|(_, tools)| tools.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Declared)>> {
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
