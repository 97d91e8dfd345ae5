//! The invariants, checked on a schedule's final state, the tally of what the schedules
//! reached, and the report of a schedule that ran out of ticks.

use std::collections::BTreeSet;

use agentos_bus::envelope::{
    Answer, ErrorBody, Event, EventData, REASON_INTERRUPTED, RunStatus, ToolRequest, Usage,
};

use super::world::{ASK, World};
use super::{Accepted, Msg, SimRun, Task};
use crate::orchestrator::human::Trigger;

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Seen {
    pub(super) crashes: u64,
    pub(super) duplicate_drivers: u64,
    pub(super) append_conflicts: u64,
    pub(super) bus_errors: u64,
    pub(super) ambiguous_appends: u64,
    pub(super) model_timeouts: u64,
    pub(super) lost_tool_replies: u64,
    pub(super) duplicate_replies: u64,
    pub(super) tool_busy: u64,
    pub(super) tool_replays: u64,
    pub(super) tool_progress: u64,
    pub(super) cancels: u64,
    pub(super) agent_edits: u64,
    /// Tool calls refused before they started: arguments outside the tool's schema.
    pub(super) invalid_arguments: u64,
    /// Human in the loop: waits journaled, answers published (retries and racing ones
    /// included), answers dead-lettered, claims lost to another answer, answers journaled,
    /// expiry timers fired.
    pub(super) waits: u64,
    pub(super) answers_sent: u64,
    pub(super) answers_refused: u64,
    pub(super) answer_conflicts: u64,
    pub(super) answered: u64,
    pub(super) expiry_timers: u64,
    /// Runs whose budget hold was released by the end (schedules with quota settings).
    pub(super) budget_released: u64,
    pub(super) completed: u64,
    pub(super) failed: u64,
    pub(super) cancelled: u64,
    pub(super) expired: u64,
}

impl Seen {
    pub(super) fn add(&mut self, o: &Seen) {
        let fields = [
            (&mut self.crashes, o.crashes),
            (&mut self.duplicate_drivers, o.duplicate_drivers),
            (&mut self.append_conflicts, o.append_conflicts),
            (&mut self.bus_errors, o.bus_errors),
            (&mut self.ambiguous_appends, o.ambiguous_appends),
            (&mut self.model_timeouts, o.model_timeouts),
            (&mut self.lost_tool_replies, o.lost_tool_replies),
            (&mut self.duplicate_replies, o.duplicate_replies),
            (&mut self.tool_busy, o.tool_busy),
            (&mut self.tool_replays, o.tool_replays),
            (&mut self.tool_progress, o.tool_progress),
            (&mut self.cancels, o.cancels),
            (&mut self.agent_edits, o.agent_edits),
            (&mut self.invalid_arguments, o.invalid_arguments),
            (&mut self.waits, o.waits),
            (&mut self.answers_sent, o.answers_sent),
            (&mut self.answers_refused, o.answers_refused),
            (&mut self.answer_conflicts, o.answer_conflicts),
            (&mut self.answered, o.answered),
            (&mut self.expiry_timers, o.expiry_timers),
            (&mut self.budget_released, o.budget_released),
            (&mut self.completed, o.completed),
            (&mut self.failed, o.failed),
            (&mut self.cancelled, o.cancelled),
            (&mut self.expired, o.expired),
        ];
        for (sum, n) in fields {
            *sum += n;
        }
    }

    /// The faults and endings that never happened.
    pub(super) fn missing(&self) -> Vec<&'static str> {
        let all = [
            ("crash", self.crashes),
            ("duplicate driver", self.duplicate_drivers),
            ("append conflict", self.append_conflicts),
            ("bus error", self.bus_errors),
            ("ambiguous append", self.ambiguous_appends),
            ("model timeout", self.model_timeouts),
            ("lost tool reply", self.lost_tool_replies),
            ("duplicate reply", self.duplicate_replies),
            ("tool in_progress", self.tool_busy),
            ("tool result replayed", self.tool_replays),
            ("tool progress", self.tool_progress),
            ("cancel", self.cancels),
            ("agent edit", self.agent_edits),
            ("invalid arguments", self.invalid_arguments),
            ("wait for the caller", self.waits),
            ("answer sent", self.answers_sent),
            ("answer refused", self.answers_refused),
            ("answer lost its claim", self.answer_conflicts),
            ("answer journaled", self.answered),
            ("expiry timer", self.expiry_timers),
            ("budget hold released", self.budget_released),
            ("run completed", self.completed),
            ("run failed", self.failed),
            ("run cancelled", self.cancelled),
            ("run expired", self.expired),
        ];
        all.into_iter()
            .filter(|(_, n)| *n == 0)
            .map(|(what, _)| what)
            .collect()
    }
}

/// The simulated world: bus, buckets, workers and clock.
pub(super) fn check(
    w: &World,
    runs: &[SimRun],
    msgs: &[Msg],
    accepted: &[Accepted],
) -> std::result::Result<Seen, String> {
    let mut ended = Seen::default();
    for (key, n) in &w.executions {
        if *n > 1 {
            return Err(format!("tool call {key} executed {n} times"));
        }
    }
    if !w.undeclared_defs.is_empty() {
        return Err(format!(
            "model requests showed tools without their declarations: {:?}",
            w.undeclared_defs
        ));
    }
    for run in runs {
        let id = run.req.run_id;
        let journal: Vec<&Event> = w
            .journals
            .get(&id)
            .map(|j| j.iter().map(|s| &s.event).collect())
            .unwrap_or_default();
        let fail = |what: String| {
            Err(format!(
                "run {id}: {what}; journal: {:#?}",
                journal
                    .iter()
                    .map(|e| (e.seq, e.type_name()))
                    .collect::<Vec<_>>()
            ))
        };
        for (i, e) in journal.iter().enumerate() {
            if e.seq != i as u64 + 1 {
                return fail(format!("event {} has seq {}", i + 1, e.seq));
            }
        }
        let terminals = journal.iter().filter(|e| e.data.is_terminal()).count();
        if terminals != 1 {
            let rec = w
                .records
                .get(&id)
                .map(|(r, rev)| (r.status, r.required_action.clone(), r.last_seq, *rev));
            let carried: Vec<String> = msgs
                .iter()
                .filter(|m| runs.get(m.run).is_some_and(|r| r.req.run_id == id))
                .map(|m| {
                    let kind = match &m.trigger {
                        Trigger::Submission => "submission".to_owned(),
                        Trigger::Wake => "wake".to_owned(),
                        Trigger::Answer(c) => format!("answer {}", c.msg_id()),
                    };
                    format!("{kind} acked={}", m.acked)
                })
                .collect();
            return fail(format!(
                "{terminals} terminal events (record: {rec:?}; messages: {carried:?})"
            ));
        }
        let Some(last) = journal.last() else {
            return fail("empty journal".into());
        };
        if !last.data.is_terminal() {
            return fail("events after the terminal one".into());
        }
        let mut seen = BTreeSet::new();
        let (mut usage, mut steps) = (Usage::default(), 0u32);
        for e in &journal {
            let mark = match &e.data {
                EventData::RunCreated { .. } => Some("created".to_owned()),
                EventData::RunStarted { .. } => Some("started".to_owned()),
                EventData::ThreadHistory { .. } => Some("history".to_owned()),
                EventData::StepStarted { step } => {
                    steps += 1;
                    Some(format!("step {step}"))
                }
                EventData::ModelCompleted { step, usage: u, .. } => {
                    usage.add(*u);
                    Some(format!("model {step}"))
                }
                EventData::ToolStarted { step, call_id, .. } => {
                    Some(format!("tool.started {step} {call_id}"))
                }
                EventData::ToolCompleted { step, call_id, .. }
                | EventData::ToolFailed { step, call_id, .. } => {
                    Some(format!("tool result {step} {call_id}"))
                }
                EventData::RunRequiresAction { step, .. } => Some(format!("wait {step}")),
                EventData::RunActionAnswered { step, .. } => Some(format!("answer {step}")),
                _ => None,
            };
            if let Some(mark) = mark
                && !seen.insert(mark.clone())
            {
                return fail(format!("{mark} journaled twice"));
            }
        }
        // A call refused for its arguments never started and never ran.
        for e in &journal {
            let EventData::ToolFailed {
                step,
                call_id,
                error,
                ..
            } = &e.data
            else {
                continue;
            };
            if error.code != "invalid_arguments" {
                continue;
            }
            ended.invalid_arguments += 1;
            let started = journal.iter().any(|s| {
                matches!(&s.data, EventData::ToolStarted { step: st, call_id: c, .. } if st == step && c == call_id)
            });
            let key = format!(
                "{}:{}",
                run.req.tenant,
                ToolRequest::key_for(&id, *step, call_id)
            );
            if started || w.executions.contains_key(&key) {
                return fail(format!(
                    "call {step}/{call_id} had invalid arguments yet started or ran"
                ));
            }
        }
        // Progress lies between its call's start and result.
        let mut open = BTreeSet::new();
        for e in &journal {
            match &e.data {
                EventData::ToolStarted { step, call_id, .. } => {
                    open.insert((*step, call_id.clone()));
                }
                EventData::ToolCompleted { step, call_id, .. }
                | EventData::ToolFailed { step, call_id, .. } => {
                    open.remove(&(*step, call_id.clone()));
                }
                EventData::ToolProgress { step, call_id, .. }
                    if !open.contains(&(*step, call_id.clone())) =>
                {
                    return fail(format!(
                        "tool.progress of {step} {call_id} outside its call"
                    ));
                }
                _ => {}
            }
        }
        if let Err(e) = check_waits(w, &journal, msgs, accepted, &mut ended) {
            return fail(e);
        }
        let Some((rec, _)) = w.records.get(&id) else {
            return fail("no run record".into());
        };
        if rec.required_action.is_some() {
            return fail("an ended run's record still shows a wait".into());
        }
        let (status, output, error) = match &last.data {
            EventData::RunCompleted { output, .. } => {
                (RunStatus::Completed, Some(output.clone()), None)
            }
            EventData::RunFailed { error } => (RunStatus::Failed, None, Some(error.clone())),
            EventData::RunExpired { .. } => (RunStatus::Expired, None, None),
            _ => (RunStatus::Cancelled, None, None::<ErrorBody>),
        };
        match status {
            RunStatus::Completed => ended.completed += 1,
            RunStatus::Failed => ended.failed += 1,
            RunStatus::Expired => ended.expired += 1,
            _ => ended.cancelled += 1,
        }
        let projected = (status, output, error, usage, steps, last.seq);
        let recorded = (
            rec.status,
            rec.output.clone(),
            rec.error.clone(),
            rec.usage,
            rec.steps,
            rec.last_seq,
        );
        if projected != recorded {
            return fail(format!(
                "record {recorded:?} is not the journal's projection {projected:?}"
            ));
        }
        if let EventData::RunCompleted { usage: u, .. } = &last.data
            && *u != usage
        {
            return fail(format!(
                "run.completed usage {u:?} is not the sum {usage:?}"
            ));
        }
        if let Some(configs) = w.configs.get(&id)
            && configs.len() > 1
        {
            return fail(format!(
                "the agent changed mid-run: model calls saw {configs:?}"
            ));
        }
        if run.req.agent.is_none() && !w.audits.iter().any(|a| a.target == id.to_string()) {
            return fail("a direct submission was not audited".into());
        }
        if !w.indexed.contains(&id) {
            return fail("the run is missing from the run index".into());
        }
        if w.history_missing.contains(&id) {
            return fail("a model request did not carry exactly the thread's history".into());
        }
        let turns = w
            .threads
            .values()
            .flatten()
            .filter(|t| t.run_id == id)
            .collect::<Vec<_>>();
        let interrupted = matches!(&last.data, EventData::RunCancelled { reason } if reason == REASON_INTERRUPTED);
        let wants_turn =
            run.req.thread_id.is_some() && (status == RunStatus::Completed || interrupted);
        match turns.as_slice() {
            [] if !wants_turn => {}
            [turn] if wants_turn => {
                if turn.messages.first().and_then(|m| m.content.as_deref())
                    != Some(run.req.input.as_str())
                {
                    return fail("the run's turn does not begin with its input".into());
                }
            }
            _ => return fail(format!("{} turns on the thread", turns.len())),
        }
    }
    budgets(w, runs, &mut ended)?;
    Ok(ended)
}

/// A run's waits for its caller: while it waits nothing happens but its answer or its end; each
/// wait is answered at most once, with an answer that covers exactly its calls, that was
/// published, that fits, and that is the one a caller was told was taken; a rejected call never
/// starts, a client tool never runs on the server; a run expires only while waiting, and not
/// before its time.
fn check_waits(
    w: &World,
    journal: &[&Event],
    msgs: &[Msg],
    accepted: &[Accepted],
    seen: &mut Seen,
) -> Result<(), String> {
    for (i, e) in journal.iter().enumerate() {
        match &e.data {
            EventData::RunRequiresAction { tool_calls, .. } => {
                seen.waits += 1;
                let Some(next) = journal.get(i + 1) else {
                    return Err("the journal ends waiting".into());
                };
                match &next.data {
                    EventData::RunActionAnswered {
                        answers,
                        submission,
                        ..
                    } => {
                        seen.answered += 1;
                        let mut asked: Vec<_> = tool_calls.iter().map(|c| &c.call_id).collect();
                        let mut given: Vec<_> = answers.iter().map(Answer::call_id).collect();
                        asked.sort();
                        given.sort();
                        if asked != given {
                            return Err(format!("answer {given:?} for calls {asked:?}"));
                        }
                        let sent = msgs.iter().filter(|m| {
                            matches!(&m.trigger, Trigger::Answer(c) if c.msg_id() == *submission)
                        });
                        let mut any = false;
                        for m in sent {
                            any = true;
                            if m.invalid {
                                return Err("an invalid answer was applied".into());
                            }
                        }
                        if !any {
                            return Err(format!("answer {submission} was never sent"));
                        }
                        if let Some(a) = accepted.iter().find(|a| {
                            a.run == e.run_id && a.seq == e.seq && a.submission != *submission
                        }) {
                            return Err(format!(
                                "the caller of {} was told its answer was taken, yet {submission} was applied",
                                a.submission
                            ));
                        }
                    }
                    EventData::RunCancelled { .. } | EventData::RunFailed { .. } => {}
                    EventData::RunExpired { expires_at } => {
                        if next.ts < *expires_at {
                            return Err(format!("expired at {} before {expires_at}", next.ts));
                        }
                    }
                    other => {
                        return Err(format!("{} while waiting", other.type_name()));
                    }
                }
            }
            EventData::RunExpired { .. }
                if !matches!(
                    i.checked_sub(1)
                        .and_then(|p| journal.get(p))
                        .map(|p| &p.data),
                    Some(EventData::RunRequiresAction { .. })
                ) =>
            {
                return Err("expired while not waiting".into());
            }
            EventData::RunActionAnswered { step, answers, .. } => {
                for a in answers {
                    if let Answer::Rejected { call_id, .. } = a {
                        let key = format!(
                            "{}:{}",
                            e.tenant,
                            ToolRequest::key_for(&e.run_id, *step, call_id)
                        );
                        let started = journal.iter().any(|s| {
                            matches!(&s.data, EventData::ToolStarted { step: st, call_id: c, .. } if st == step && c == call_id)
                        });
                        if started || w.executions.contains_key(&key) {
                            return Err(format!("rejected call {step}/{call_id} started or ran"));
                        }
                    }
                }
            }
            EventData::ToolStarted { name, .. } if name.as_str() == ASK => {
                return Err("a client tool started on the server".into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// With quota settings (half the schedules): the tenant's budget ledger never counts more than
/// the runs' journals hold, however drivers crash, repeat and race (settles carry running
/// totals); a hold left behind belongs to a run of the schedule (its release met a fault, and
/// its lease reclaims it).
fn budgets(w: &World, runs: &[SimRun], ended: &mut Seen) -> std::result::Result<(), String> {
    if w.quotas.is_none() {
        return Ok(());
    }
    let Some(run) = runs.first() else {
        return Ok(());
    };
    let key = agentos_bus::key::ledger(&run.req.tenant, &agentos_bus::key::Scope::Tenant);
    let ledger = w.ledgers.get(&key).cloned().unwrap_or_default();
    let journaled: u64 = runs
        .iter()
        .flat_map(|r| w.journals.get(&r.req.run_id).into_iter().flatten())
        .filter_map(|s| match &s.event.data {
            EventData::ModelCompleted { usage, .. } => Some(usage.total_tokens),
            _ => None,
        })
        .sum();
    if ledger.total.tokens > journaled {
        return Err(format!(
            "the budget ledger counted {} tokens; the journals hold {journaled}",
            ledger.total.tokens
        ));
    }
    for (hold, _) in ledger.holds.iter().filter(|(_, h)| !h.dropped) {
        if !runs.iter().any(|r| r.req.run_id.to_string() == *hold) {
            return Err(format!("a budget hold {hold} of no run"));
        }
    }
    ended.budget_released += runs
        .iter()
        .filter(|r| {
            ledger
                .holds
                .get(&r.req.run_id.to_string())
                .is_none_or(|h| h.dropped)
        })
        .count() as u64;
    Ok(())
}

/// What a schedule out of ticks was doing: each run's record and last events, the thread
/// locks, and how many drivers each message still has.
pub(super) fn stuck(w: &World, runs: &[SimRun], msgs: &[Msg], tasks: &[Task]) -> String {
    let mut out = String::new();
    for (i, run) in runs.iter().enumerate() {
        let id = run.req.run_id;
        let journal = w.journals.get(&id).map_or(&[][..], Vec::as_slice);
        let last: Vec<&str> = journal
            .iter()
            .rev()
            .take(3)
            .map(|e| e.event.type_name())
            .collect();
        let record = w.records.get(&id).map(|(r, _)| r.status.as_str());
        let drivers: Vec<String> = (0..msgs.len())
            .filter(|m| msgs[*m].run == i)
            .map(|m| (m, tasks.iter().filter(|t| t.msg == m).count()))
            .filter(|(_, n)| *n > 0)
            .map(|(m, n)| {
                let what = match msgs[m].trigger {
                    Trigger::Submission => "submission",
                    Trigger::Answer(_) => "answer",
                    Trigger::Wake => "wake",
                };
                format!("msg {m} ({what}): {n}")
            })
            .collect();
        out += &format!(
            "run {i} {id}: thread {:?} {:?}, record {record:?}, {} events, last {last:?}, drivers [{}]\n",
            run.req.thread_id.as_ref().map(|t| t.as_str()),
            run.req.multitask_strategy,
            journal.len(),
            drivers.join(", ")
        );
    }
    for (thread, (l, rev)) in &w.locks {
        out += &format!(
            "lock {}: run {} until {} released {} (revision {rev})\n",
            thread.as_str(),
            l.run_id,
            l.expires_at,
            l.released
        );
    }
    out
}
