//! The simulated callers: a client cancelling a run as the edge does it, and callers answering
//! waiting runs as `POST /v1/runs/{id}/tool_outputs` does (late, twice, racing, wrongly).

use agentos_bus::envelope::{
    ActionKind, Approval, Claim, Continuation, Event, EventData, RunStatus, ToolOutput,
};
use agentos_bus::id::RunId;
use serde_json::json;

use super::super::human::Trigger;
use super::world::World;
use super::{Rng, SimRun};

/// A message on the runs subject, acked once processed.
pub(super) struct Msg {
    pub(super) run: usize,
    pub(super) trigger: Trigger,
    pub(super) acked: bool,
    /// An answer that does not fit its wait (a direct publisher's mistake): never applied.
    pub(super) invalid: bool,
}

/// An answer a caller was told was taken (`202`): it claimed the wait at `seq`.
pub(super) struct Accepted {
    pub(super) run: RunId,
    pub(super) seq: u64,
    pub(super) submission: String,
}

/// What the edge does for `POST /v1/runs/{id}/cancel`, in one step.
pub(super) fn edge_cancel(w: &mut World, run: &SimRun) {
    let id = run.req.run_id;
    let Some((mut rec, _)) = w.records.get(&id).cloned() else {
        // No record yet (a direct submission before its first projection): signal only.
        run.cancel.cancel();
        return;
    };
    if rec.status.is_terminal() {
        return;
    }
    let cancelled_now = rec.status == RunStatus::Queued && {
        let event = Event {
            seq: 1,
            run_id: id,
            tenant: run.req.tenant.clone(),
            ts: w.now(),
            trace_id: None,
            data: EventData::RunCancelled {
                reason: "cancelled before start".into(),
            },
        };
        w.publish(&event, 0).is_ok()
    };
    if cancelled_now {
        rec.status = RunStatus::Cancelled;
        rec.finished_at = Some(w.now());
        rec.last_seq = 1;
    } else {
        rec.status = RunStatus::Cancelling;
    }
    w.revision += 1;
    let rev = w.revision;
    w.records.insert(id, (rec, rev));
    if !cancelled_now {
        run.cancel.cancel();
        // `Bus::publish_cancel`: a wake follows, for a run no orchestrator holds.
        let now = w.now_ms;
        w.outbox.push((now, id));
    }
}

/// Callers answering waiting runs, as the edge does it: an answer for every pending call (an
/// output per client tool call, an approval or a rejection per approval), published, then
/// claimed in the record. Sometimes the same answer twice (a retry), sometimes a second,
/// different answer racing it, now and then one that does not fit (a direct publisher's
/// mistake, never claimed). `all`: answer every waiting run. Returns the messages published,
/// each with the acceptance it got.
pub(super) fn answer_waiting(
    w: &mut World,
    rng: &mut Rng,
    runs: &[SimRun],
    msgs: &mut Vec<Msg>,
    all: bool,
) -> Vec<(usize, Option<Accepted>)> {
    let mut out = Vec::new();
    for (idx, run) in runs.iter().enumerate() {
        let id = run.req.run_id;
        let Some((rec, _)) = w.records.get(&id).cloned() else {
            continue;
        };
        let Some(wait) = rec.required_action.clone() else {
            continue;
        };
        if rec.status != RunStatus::RequiresAction || wait.answered_by.is_some() {
            continue;
        }
        if !all && !rng.chance(300) {
            continue;
        }
        let answers = 1 + usize::from(rng.chance(200));
        for k in 0..answers {
            let mut c = Continuation {
                run_id: id,
                tenant: run.req.tenant.clone(),
                tool_outputs: Vec::new(),
                approvals: Vec::new(),
            };
            for call in &wait.tool_calls {
                match call.kind {
                    ActionKind::ClientTool => c.tool_outputs.push(ToolOutput {
                        call_id: call.call_id.clone(),
                        output: json!(format!("answer {k} to {}", call.call_id)),
                    }),
                    ActionKind::Approval => c.approvals.push(Approval {
                        call_id: call.call_id.clone(),
                        approve: rng.chance(600),
                        arguments: None,
                        reason: Some(format!("answer {k}")),
                    }),
                }
            }
            let invalid = rng.chance(60);
            if invalid {
                c.tool_outputs.clear();
                c.approvals.clear();
            }
            let submission = c.msg_id();
            let copies = 1 + usize::from(rng.chance(200));
            for _ in 0..copies {
                msgs.push(Msg {
                    run: idx,
                    trigger: Trigger::Answer(c.clone()),
                    acked: false,
                    invalid,
                });
                w.seen.answers_sent += 1;
                out.push((msgs.len() - 1, None));
            }
            if invalid {
                continue;
            }
            // The edge's claim, right after publishing.
            let Some((mut current, _)) = w.records.get(&id).cloned() else {
                continue;
            };
            let same_wait = current.status == RunStatus::RequiresAction
                && current.required_action.as_ref().map(|a| a.seq) == Some(wait.seq);
            if !same_wait {
                continue;
            }
            let took = match current.claim_answer(&wait, &submission) {
                Claim::Ours => true,
                Claim::Moved => false,
                Claim::Taken => {
                    w.seen.answer_conflicts += 1;
                    false
                }
                Claim::Write => {
                    w.revision += 1;
                    let rev = w.revision;
                    w.records.insert(id, (current, rev));
                    true
                }
            };
            if took && let Some(last) = out.last_mut() {
                last.1 = Some(Accepted {
                    run: id,
                    seq: wait.seq,
                    submission,
                });
            }
        }
    }
    out
}
