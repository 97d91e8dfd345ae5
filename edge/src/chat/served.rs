//! Which models some worker serves, as service discovery saw them lately. A call for a model no
//! worker has served lately fails at once (`404 model_not_found`, or `503 model_unavailable`
//! when no model worker runs at all) instead of after the bus's no-responders grace, which is
//! there for workers reconnecting after the loss of a NATS node, not for names nobody serves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentos_bus::id::ModelName;
use agentos_bus::{Bus, MODEL_SERVICE, subject};

use super::models::{DISCOVERY_FIRST, DISCOVERY_IDLE};
use crate::error::ApiError;

/// A model served this recently is called (with the bus's grace for a reconnecting worker)
/// without looking again.
const REMEMBER: Duration = Duration::from_secs(300);
/// A model not seen is looked for again when the last look is older than this, so a worker
/// that just started is found at once.
const RELOOK: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
pub struct ServedModels(Arc<Mutex<Seen>>);

#[derive(Default)]
struct Seen {
    /// When each model was last seen served.
    models: HashMap<ModelName, Instant>,
    /// The last look, and whether any model worker answered it.
    looked: Option<(Instant, bool)>,
}

impl ServedModels {
    /// `Ok` when `model` may be called; the error a call would end in when no worker serves it.
    /// A discovery that fails lets the call decide.
    pub async fn check(&self, bus: &Bus, model: &ModelName) -> Result<(), ApiError> {
        let (seen, looked) = {
            let s = self.lock();
            (s.models.get(model).copied(), s.looked)
        };
        if seen.is_some_and(|at| at.elapsed() < REMEMBER) {
            return Ok(());
        }
        let any_worker = match looked {
            Some((at, any)) if at.elapsed() < RELOOK => any,
            _ => {
                let Ok(workers) = bus
                    .discover_service(MODEL_SERVICE, DISCOVERY_FIRST, DISCOVERY_IDLE)
                    .await
                else {
                    return Ok(());
                };
                let now = Instant::now();
                let mut s = self.lock();
                for name in workers
                    .iter()
                    .flat_map(|w| &w.endpoints)
                    .filter_map(|e| subject::model_of_filter(e))
                {
                    s.models.insert(name, now);
                }
                s.looked = Some((now, !workers.is_empty()));
                if s.models.get(model).is_some_and(|at| *at == now) {
                    return Ok(());
                }
                !workers.is_empty()
            }
        };
        Err(if any_worker {
            super::not_served(model)
        } else {
            super::no_model_worker()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
