//! The origin's side of a forwarded run's life: its events come back and are appended to the
//! local journal exactly once and in order (a guarded append at the next sequence; duplicates
//! and anything after the end are dropped), and the run record follows them. A peer unseen past
//! the deadline fails its runs `peer_unavailable`.

use agentos_bus::envelope::{
    Envelope, ErrorBody, Event, EventData, RequiredAction, RunRecord, RunStatus, now,
};
use agentos_bus::federation::{FwdEntry, FwdState, PeerRecord};
use agentos_bus::id::{NodeId, Tenant};
use agentos_bus::{Error as BusError, key};

use super::inbound::Outcome;
use super::{Fed, PEER_UNAVAILABLE};
use crate::AppState;

/// An event `from` sent back for a run this cluster forwarded to it.
pub(super) async fn event_back(
    state: &AppState,
    fed: &Fed,
    from: &NodeId,
    tenant: &Tenant,
    event: Event,
) -> Outcome {
    if event.tenant != *tenant {
        tracing::warn!(%from, %tenant, "event names another tenant than its subject; dropped");
        return Outcome::Done;
    }
    let fwd_key = key::fwd_out(tenant, &event.run_id);
    let entry = match fed.fwd.get_as::<FwdEntry>(&fwd_key).await {
        Ok(Some(e)) => e,
        Ok(None) => {
            tracing::warn!(run = %event.run_id, %from, "event for a run not forwarded here; dropped");
            return Outcome::Done;
        }
        Err(e) => return Outcome::Retry(e),
    };
    // Only the peer the run went to speaks for it.
    if entry.value.node != *from {
        tracing::warn!(run = %event.run_id, %from, "event from a peer the run was not forwarded to; dropped");
        return Outcome::Done;
    }
    match append_once(state, &event).await {
        // A duplicate may be the redelivery of an event whose projection failed: projecting
        // again is harmless (the record skips what it already reflects).
        Ok(Append::Appended | Append::Skipped) => {}
        // An earlier event is still on its way (redelivered after its handler died): later.
        Ok(Append::Gap { last }) => {
            return Outcome::Retry(BusError::WrongLastSequence {
                subject: format!("events of run {} (have {last})", event.run_id),
                expected: event.seq - 1,
            });
        }
        Err(e) => return Outcome::Retry(e),
    }
    match project(state, fed, &event, entry.value).await {
        Ok(()) => Outcome::Done,
        Err(e) => Outcome::Retry(e),
    }
}

/// What [`append_once`] did.
enum Append {
    Appended,
    /// A duplicate, or an event after the end.
    Skipped,
    /// Events before this one are missing: it waits for them.
    Gap {
        last: u64,
    },
}

/// Appends `event` if it is the journal's next one.
async fn append_once(state: &AppState, event: &Event) -> Result<Append, BusError> {
    loop {
        let last = state.bus.last_event(&event.tenant, &event.run_id).await?;
        let (last_seq, stream_seq, ended) = last.map_or((0, 0, false), |s| {
            (s.event.seq, s.stream_seq, s.event.data.is_terminal())
        });
        if ended || event.seq <= last_seq {
            return Ok(Append::Skipped);
        }
        if event.seq != last_seq + 1 {
            return Ok(Append::Gap { last: last_seq });
        }
        match state.bus.append(event, stream_seq).await {
            Ok(_) => return Ok(Append::Appended),
            Err(BusError::WrongLastSequence { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The record and the forward index follow the journal: the first event clears
/// `waiting_for_peer`, `run.started` makes it `running`, the end makes it final.
async fn project(
    state: &AppState,
    fed: &Fed,
    event: &Event,
    entry: FwdEntry,
) -> Result<(), BusError> {
    let terminal = event.data.is_terminal();
    let (usage, steps) = if terminal {
        let journal = state.bus.read_journal(&event.tenant, &event.run_id).await?;
        let steps = journal
            .iter()
            .filter(|s| matches!(s.event.data, EventData::ModelCompleted { .. }))
            .count();
        let usage = match &event.data {
            EventData::RunCompleted { usage, .. } => *usage,
            _ => Default::default(),
        };
        (usage, u32::try_from(steps).unwrap_or(u32::MAX))
    } else {
        (Default::default(), 0)
    };
    let run_key = key::run(&event.tenant, &event.run_id);
    for _ in 0..10 {
        let Some(current) = state.runs.get_as::<RunRecord>(&run_key).await? else {
            break;
        };
        let mut rec = current.value;
        if rec.status.is_terminal() || rec.last_seq >= event.seq {
            break;
        }
        rec.status_reason = None;
        match &event.data {
            EventData::RunStarted { .. } => {
                if rec.status == RunStatus::Queued {
                    rec.status = RunStatus::Running;
                }
                rec.started_at.get_or_insert(event.ts);
            }
            // The wait the origin's edge checks answers against and claims; a cancel asked
            // for meanwhile stays `cancelling` (the peer ends the run).
            EventData::RunRequiresAction {
                step,
                tool_calls,
                expires_at,
            } => {
                if rec.status != RunStatus::Cancelling {
                    rec.status = RunStatus::RequiresAction;
                }
                rec.required_action = Some(RequiredAction {
                    step: *step,
                    tool_calls: tool_calls.clone(),
                    seq: event.seq,
                    answered_by: None,
                });
                if expires_at.is_some() {
                    rec.expires_at = *expires_at;
                }
            }
            EventData::RunActionAnswered { .. } => {
                if rec.status == RunStatus::RequiresAction {
                    rec.status = RunStatus::Running;
                }
                rec.required_action = None;
            }
            EventData::RunCompleted { output, .. } => {
                rec.status = RunStatus::Completed;
                rec.output = Some(output.clone());
            }
            EventData::RunFailed { error } => {
                rec.status = RunStatus::Failed;
                rec.error = Some(error.clone());
            }
            EventData::RunCancelled { .. } => rec.status = RunStatus::Cancelled,
            EventData::RunExpired { .. } => rec.status = RunStatus::Expired,
            _ => {}
        }
        if terminal {
            rec.usage = usage;
            rec.steps = steps;
            rec.finished_at = Some(event.ts);
            rec.required_action = None;
        }
        rec.last_seq = event.seq;
        rec.updated_at = now();
        match state
            .runs
            .update(&run_key, rec.encode(), current.revision)
            .await
        {
            Ok(_) => break,
            Err(BusError::WrongRevision { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    let next = if terminal {
        FwdState::Done
    } else {
        FwdState::Accepted
    };
    if entry.state != next && entry.state != FwdState::Done {
        let fwd_key = key::fwd_out(&event.tenant, &event.run_id);
        fed.fwd
            .put_as(
                &fwd_key,
                &FwdEntry {
                    state: next,
                    ..entry
                },
            )
            .await?;
    }
    Ok(())
}

/// Fails, `peer_unavailable`, every open forwarded run whose peer has not been seen for the
/// deadline (and which is itself older than the deadline).
pub(super) async fn fail_gone_peers(state: &AppState, fed: &Fed) -> Result<(), BusError> {
    let at = now();
    let deadline =
        time::Duration::try_from(fed.config.peer_deadline).unwrap_or(time::Duration::MAX);
    let mut gone = Vec::new();
    for node in &fed.config.peers {
        let seen: Option<PeerRecord> = fed.peer(node).await?;
        if seen.is_none_or(|p| at - p.last_seen > deadline) {
            gone.push(node.clone());
        }
    }
    if gone.is_empty() {
        return Ok(());
    }
    let open = fed.fwd.entries_under::<FwdEntry>("out").await?;
    for entry in open {
        if entry.state == FwdState::Done
            || !gone.contains(&entry.node)
            || at - entry.created_at <= deadline
        {
            continue;
        }
        let last = state.bus.last_event(&entry.tenant, &entry.run_id).await?;
        let (last_seq, ended) = last
            .as_ref()
            .map_or((0, false), |s| (s.event.seq, s.event.data.is_terminal()));
        if !ended {
            let event = Event {
                seq: last_seq + 1,
                run_id: entry.run_id,
                tenant: entry.tenant.clone(),
                ts: at,
                trace_id: None,
                data: EventData::RunFailed {
                    error: ErrorBody::new(
                        PEER_UNAVAILABLE,
                        format!(
                            "peer {} has not been seen for {:?}",
                            entry.node, fed.config.peer_deadline
                        ),
                    ),
                },
            };
            let stream_seq = last.map_or(0, |s| s.stream_seq);
            match state.bus.append(&event, stream_seq).await {
                Ok(_) => {
                    tracing::warn!(run = %entry.run_id, node = %entry.node, "forwarded run failed: peer unavailable");
                    project(state, fed, &event, entry).await?;
                }
                // Something else was appended first: the next pass looks again.
                Err(BusError::WrongLastSequence { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
