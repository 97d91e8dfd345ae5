//! The federation task of an edge: provisions the federation streams, announces this node,
//! resumes the relays of runs peers forwarded here, consumes the inbox, and watches the peer
//! deadline.

use std::sync::Arc;
use std::time::Duration;

use agentos_bus::envelope::{Event, now};
use agentos_bus::federation::{
    Announcement, FedDelivery, ForwardAnswer, ForwardCancel, ForwardRun, InboundEntry, PeerRecord,
    Topology,
};
use agentos_bus::subject::{DlqKind, FedIn, FedKind};
use agentos_bus::{Error as BusError, key};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::inbound::{self, Outcome};
use super::{Fed, outbound};
use crate::AppState;

/// Models and tools are discovered at most this often for announcements.
const DISCOVERY_EVERY: Duration = Duration::from_secs(5);

/// Runs until `shutdown`; does nothing when the cluster is not federated.
pub async fn run(state: AppState, shutdown: CancellationToken) -> Result<(), BusError> {
    let Some(fed) = state.federation.clone() else {
        return Ok(());
    };
    let topology = Topology {
        node: fed.config.node.clone(),
        peers: fed.config.peers.clone(),
    };
    state.bus.provision_federation(&topology).await?;
    tracing::info!(node = %topology.node, peers = ?topology.peers, "federation on");
    let announcer = tokio::spawn(announce(state.clone(), fed.clone(), shutdown.clone()));
    let deadline = tokio::spawn(watch_deadline(state.clone(), fed.clone(), shutdown.clone()));
    match fed.fwd.entries_under::<InboundEntry>("in").await {
        Ok(open) => {
            for entry in open.into_iter().filter(|e| !e.done) {
                inbound::spawn_relay(&state, &fed, entry);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list forwarded runs to resume relays"),
    }
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match consume(&state, &fed, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "federation inbox interrupted; binding again");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    announcer.abort();
    deadline.abort();
    Ok(())
}

/// Inbox messages are handled by this many lanes at once; the messages of one run always take
/// the same lane, so they are handled in their order.
const LANES: usize = 16;

async fn consume(
    state: &AppState,
    fed: &Arc<Fed>,
    shutdown: &CancellationToken,
) -> Result<(), BusError> {
    let mut inbox = state.bus.fed_inbox().await?;
    let mut lanes = Vec::with_capacity(LANES);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<FedDelivery>(256);
        lanes.push(tx);
        let (state, fed) = (state.clone(), fed.clone());
        tasks.spawn(async move {
            while let Some(d) = rx.recv().await {
                if let Err(e) = settle(&state, &fed, &d).await {
                    // Unacked: redelivered after the ack wait.
                    tracing::warn!(subject = d.subject(), error = %e, "could not settle a federation message");
                }
            }
        });
    }
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = inbox.next() => next,
        };
        let Some(d) = next else {
            return Err(BusError::Missing {
                kind: "consumer",
                name: "federation inbox ended".into(),
            });
        };
        let d = d?;
        let lane = lane_of(d.run_key(), LANES);
        if let Some(tx) = lanes.get(lane)
            && tx.send(d).await.is_err()
        {
            return Err(BusError::Missing {
                kind: "federation lane",
                name: lane.to_string(),
            });
        }
    }
}

/// The lane of a run (FNV-1a of its id); messages without one take lane 0.
fn lane_of(key: Option<&str>, lanes: usize) -> usize {
    let Some(key) = key else {
        return 0;
    };
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % lanes.max(1) as u64).unwrap_or(0)
}

/// Handles one message and acks, dead-letters or naks it.
async fn settle(state: &AppState, fed: &Arc<Fed>, d: &FedDelivery) -> Result<(), BusError> {
    match handle(state, fed, d).await {
        Outcome::Done => d.ack().await,
        Outcome::DeadLetter(tenant, e) => {
            state
                .bus
                .dead_letter(
                    tenant.as_ref(),
                    DlqKind::Federation,
                    d.subject(),
                    &e,
                    d.payload().clone(),
                )
                .await?;
            d.ack().await
        }
        Outcome::Retry(e) => {
            tracing::warn!(subject = d.subject(), error = %e, "federation message failed; retrying later");
            d.nak(Duration::from_secs(1)).await
        }
    }
}

async fn handle(state: &AppState, fed: &Arc<Fed>, d: &FedDelivery) -> Outcome {
    let Some(parsed) = d.parsed() else {
        return Outcome::DeadLetter(
            None,
            BusError::Missing {
                kind: "federation subject",
                name: d.subject().to_owned(),
            },
        );
    };
    let tenant = match &parsed {
        FedIn::Tenant { tenant, .. } => Some(tenant.clone()),
        FedIn::Peer { .. } => None,
    };
    let undecodable = |e: BusError| Outcome::DeadLetter(tenant.clone(), e);
    match parsed {
        FedIn::Peer { from } => {
            let a = match d.decode::<Announcement>() {
                Ok(a) => a,
                Err(e) => return undecodable(e),
            };
            if a.node != from || !fed.config.peers.contains(&from) {
                tracing::warn!(%from, node = %a.node, "announcement from an unexpected node; dropped");
                return Outcome::Done;
            }
            let rec = PeerRecord {
                announcement: a,
                last_seen: now(),
            };
            match fed.peers.put_as(&key::peer(&from), &rec).await {
                Ok(_) => Outcome::Done,
                Err(e) => Outcome::Retry(e),
            }
        }
        FedIn::Tenant { from, kind, tenant } => match kind {
            FedKind::Run => match d.decode::<ForwardRun>() {
                Ok(msg) => inbound::accept(state, fed, &from, &tenant, msg, d.auth()).await,
                Err(e) => undecodable(e),
            },
            FedKind::Cancel => match d.decode::<ForwardCancel>() {
                Ok(msg) => inbound::cancel(state, fed, &from, &tenant, msg, d.auth()).await,
                Err(e) => undecodable(e),
            },
            FedKind::Answer => match d.decode::<ForwardAnswer>() {
                Ok(msg) => super::answer::accept(state, fed, &from, &tenant, msg, d.auth()).await,
                Err(e) => undecodable(e),
            },
            FedKind::Event => match d.decode::<Event>() {
                Ok(ev) => outbound::event_back(state, fed, &from, &tenant, ev).await,
                Err(e) => undecodable(e),
            },
        },
    }
}

/// Announces this node every interval: version, protocol range, agents, models and tools.
async fn announce(state: AppState, fed: Arc<Fed>, shutdown: CancellationToken) {
    let mut models: Vec<String> = Vec::new();
    let mut tools: Vec<String> = Vec::new();
    let mut discovered: Option<tokio::time::Instant> = None;
    loop {
        if discovered.is_none_or(|at| at.elapsed() >= DISCOVERY_EVERY) {
            if let Ok(found) = state.bus.discover(Duration::from_millis(200)).await {
                models = found
                    .iter()
                    .filter(|s| s.name == agentos_bus::MODEL_SERVICE)
                    .flat_map(|s| s.endpoints.iter())
                    .filter_map(|e| agentos_bus::subject::model_of_filter(e))
                    .map(String::from)
                    .collect();
                models.sort();
                models.dedup();
            }
            if let Ok(found) = state
                .bus
                .discover_tools(Duration::from_millis(200), Duration::from_millis(50))
                .await
            {
                tools = found.keys().map(|t| t.to_string()).collect();
            }
            discovered = Some(tokio::time::Instant::now());
        }
        let agents = match state.agents.all_keys().await {
            Ok(keys) => keys
                .iter()
                .filter_map(|k| k.as_str().split_once('.'))
                .map(|(t, a)| format!("{t}/{a}"))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing agents for the announcement");
                Vec::new()
            }
        };
        let a = Announcement {
            node: fed.config.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: fed.config.protocol,
            agents,
            models: models.clone(),
            tools: tools.clone(),
            interval_ms: u64::try_from(fed.config.announce_interval.as_millis())
                .unwrap_or(u64::MAX),
            announced_at: now(),
        };
        if let Err(e) = state.bus.fed_announce(&a).await {
            tracing::warn!(error = %e, "announcing this node");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(fed.config.announce_interval) => {}
        }
    }
}

/// Fails the runs of peers gone past the deadline, checked every announce interval.
async fn watch_deadline(state: AppState, fed: Arc<Fed>, shutdown: CancellationToken) {
    let every = fed.config.announce_interval.max(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = outbound::fail_gone_peers(&state, &fed).await {
            tracing::warn!(error = %e, "checking the peer deadline");
        }
    }
}
