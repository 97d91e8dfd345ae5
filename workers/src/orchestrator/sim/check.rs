//! The invariants, checked on a schedule's final state, and the tally of what the schedules
//! reached.

use std::collections::BTreeSet;

use agentos_bus::envelope::{
    ErrorBody, Event, EventData, REASON_INTERRUPTED, RunStatus, ToolRequest, Usage,
};

use super::SimRun;
use super::world::World;

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
    /// Runs whose budget hold was released by the end (schedules with quota settings).
    pub(super) budget_released: u64,
    pub(super) completed: u64,
    pub(super) failed: u64,
    pub(super) cancelled: u64,
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
            (&mut self.budget_released, o.budget_released),
            (&mut self.completed, o.completed),
            (&mut self.failed, o.failed),
            (&mut self.cancelled, o.cancelled),
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
            ("budget hold released", self.budget_released),
            ("run completed", self.completed),
            ("run failed", self.failed),
            ("run cancelled", self.cancelled),
        ];
        all.into_iter()
            .filter(|(_, n)| *n == 0)
            .map(|(what, _)| what)
            .collect()
    }
}

/// The simulated world: bus, buckets, workers and clock.
pub(super) fn check(w: &World, runs: &[SimRun]) -> std::result::Result<Seen, String> {
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
            return fail(format!("{terminals} terminal events"));
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
        let Some((rec, _)) = w.records.get(&id) else {
            return fail("no run record".into());
        };
        let (status, output, error) = match &last.data {
            EventData::RunCompleted { output, .. } => {
                (RunStatus::Completed, Some(output.clone()), None)
            }
            EventData::RunFailed { error } => (RunStatus::Failed, None, Some(error.clone())),
            _ => (RunStatus::Cancelled, None, None::<ErrorBody>),
        };
        match status {
            RunStatus::Completed => ended.completed += 1,
            RunStatus::Failed => ended.failed += 1,
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
    for hold in ledger.holds.keys() {
        if !runs.iter().any(|r| r.req.run_id.to_string() == *hold) {
            return Err(format!("a budget hold {hold} of no run"));
        }
    }
    ended.budget_released += runs
        .iter()
        .filter(|r| !ledger.holds.contains_key(&r.req.run_id.to_string()))
        .count() as u64;
    Ok(())
}
