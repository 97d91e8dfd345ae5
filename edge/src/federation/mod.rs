//! Federation at the edge: forwarding runs to peers (`placement`), the peers API, and the
//! federation task every edge of a federated cluster runs beside its HTTP listener.
//!
//! Why here and not in a worker: a run a peer forwards is admitted exactly as this edge admits
//! an HTTP request (the same trust configuration, tenant admission, quotas, idempotency), by
//! replaying it through the edge's own router with the forwarded bearer token; and cancels and
//! results of forwarded runs are answered by the edge that owns the run record. A local run
//! pays nothing: the only federation code on its path is an `Option` check.
//!
//! - `api`: `GET /v1/federation/peers`, the forward of a run and of its cancel (origin side).
//! - `allow`: the per-tenant peer allow-lists.
//! - `answer`: answers to forwarded runs waiting in `requires_action`, both sides.
//! - `inbound`: a peer's forwarded run and cancel (peer side), and the relay of its events back.
//! - `outbound`: the events coming back (origin side), the run record they project, and the
//!   deadline that fails a gone peer's runs `peer_unavailable`.
//! - `worker`: the task: streams, announcements, the inbox consumer.

mod allow;
pub(crate) mod answer;
pub(crate) mod api;
mod inbound;
mod outbound;
mod worker;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentos_bus::federation::{PeerRecord, ProtocolRange};
use agentos_bus::id::{NodeId, RunId};
use agentos_bus::provision::Bucket;
use agentos_bus::{Bus, Kv, key};

pub use allow::TenantPeers;
pub(crate) use api::{auto_place, can_take, ensure_enabled, forward, forward_cancel, routes};
pub use worker::run;

/// Why a forwarded run is still `queued`: the peer has not taken it yet.
pub const WAITING_FOR_PEER: &str = "waiting_for_peer";
/// The code a forwarded run fails with when its peer stays unseen past the deadline.
pub const PEER_UNAVAILABLE: &str = "peer_unavailable";

/// How this cluster federates.
#[derive(Clone, Debug)]
pub struct FederationConfig {
    /// This cluster's node id, also its JetStream domain.
    pub node: NodeId,
    /// The peers whose streams this cluster sources (their domains).
    pub peers: Vec<NodeId>,
    /// How often this node announces itself.
    pub announce_interval: Duration,
    /// How long a peer may stay unseen before its forwarded runs fail `peer_unavailable`.
    pub peer_deadline: Duration,
    /// The protocol versions this node announces and accepts.
    pub protocol: ProtocolRange,
    /// Which peers each tenant's runs may be placed on.
    pub tenant_peers: TenantPeers,
}

/// The federation state an edge holds.
pub(crate) struct Fed {
    pub config: FederationConfig,
    pub peers: Kv,
    pub fwd: Kv,
    /// Runs whose events this process is relaying back to their origin.
    pub relaying: Mutex<HashSet<RunId>>,
}

impl Fed {
    pub async fn open(bus: &Bus, config: FederationConfig) -> agentos_bus::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            config,
            peers: bus.kv(Bucket::Peers).await?,
            fwd: bus.kv(Bucket::Fwd).await?,
            relaying: Mutex::new(HashSet::new()),
        }))
    }

    /// A configured peer's last announcement, if it ever announced.
    pub async fn peer(&self, node: &NodeId) -> agentos_bus::Result<Option<PeerRecord>> {
        if !self.config.peers.contains(node) {
            return Ok(None);
        }
        Ok(self
            .peers
            .get_as::<PeerRecord>(&key::peer(node))
            .await?
            .map(|v| v.value))
    }

    /// Every configured peer that announced.
    pub async fn known_peers(&self) -> agentos_bus::Result<Vec<PeerRecord>> {
        let mut out = Vec::new();
        for node in &self.config.peers {
            if let Some(p) = self.peer(node).await? {
                out.push(p);
            }
        }
        Ok(out)
    }
}
