//! Every metric the workers record (orchestrator, model worker, tool worker, MCP bridge): name,
//! unit and help in one place, and one function per recording so call sites stay one line.
//! Names follow `docs/instrumentation.md`. Labels are bounded: `tenant` only for the
//! allow-listed tenants (else `other`), models and tools only those this process serves, and
//! never a run id, request id or principal (those go on spans and log lines).

use std::time::Duration;

use agentos_bus::envelope::{EventData, ModelReply, ToolReply};
use agentos_bus::id::{ModelName, RunId, Tenant, ToolName};
use agentos_bus::metric_definitions::tenant_label;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use time::OffsetDateTime;

pub const RUNS_TOTAL: &str = "agentos_runs_total";
pub const RUN_DURATION_SECONDS: &str = "agentos_run_duration_seconds";
pub const RUN_STEPS: &str = "agentos_run_steps";
pub const RUNS_ACTIVE: &str = "agentos_runs_active";
pub const RUN_REDELIVERIES_TOTAL: &str = "agentos_run_redeliveries_total";
pub const JOURNAL_APPENDS_TOTAL: &str = "agentos_journal_appends_total";
pub const JOURNAL_CONFLICTS_TOTAL: &str = "agentos_journal_conflicts_total";
pub const MODEL_CALLS_TOTAL: &str = "agentos_model_calls_total";
pub const MODEL_CALL_DURATION_SECONDS: &str = "agentos_model_call_duration_seconds";
pub const MODEL_TIME_TO_FIRST_TOKEN_SECONDS: &str = "agentos_model_time_to_first_token_seconds";
pub const MODEL_INPUT_TOKENS_TOTAL: &str = "agentos_model_input_tokens_total";
pub const MODEL_OUTPUT_TOKENS_TOTAL: &str = "agentos_model_output_tokens_total";
pub const TOOL_CALLS_TOTAL: &str = "agentos_tool_calls_total";
pub const TOOL_CALL_DURATION_SECONDS: &str = "agentos_tool_call_duration_seconds";

/// Registers the help text and unit of every metric above.
pub fn describe() {
    describe_counter!(
        RUNS_TOTAL,
        Unit::Count,
        "Runs ended by this orchestrator, by tenant and outcome (completed, failed, cancelled, expired)"
    );
    describe_histogram!(
        RUN_DURATION_SECONDS,
        Unit::Seconds,
        "Time from a run's id being minted (submission) to its terminal event, by outcome"
    );
    describe_histogram!(
        RUN_STEPS,
        Unit::Count,
        "Steps (model calls) a run took, observed when it ends, by outcome"
    );
    describe_gauge!(
        RUNS_ACTIVE,
        Unit::Count,
        "Run deliveries this orchestrator is driving right now"
    );
    describe_counter!(
        RUN_REDELIVERIES_TOTAL,
        Unit::Count,
        "Run deliveries received that were not the first delivery of their run"
    );
    describe_counter!(
        JOURNAL_APPENDS_TOTAL,
        Unit::Count,
        "Events appended to run journals under the expected-sequence guard"
    );
    describe_counter!(
        JOURNAL_CONFLICTS_TOTAL,
        Unit::Count,
        "Journal appends refused because another writer appended first (wrong last sequence)"
    );
    describe_counter!(
        MODEL_CALLS_TOTAL,
        Unit::Count,
        "Model calls answered by this model worker, by model, tenant and outcome (ok, error)"
    );
    describe_histogram!(
        MODEL_CALL_DURATION_SECONDS,
        Unit::Seconds,
        "Model call latency, request to final reply, by model and outcome"
    );
    describe_histogram!(
        MODEL_TIME_TO_FIRST_TOKEN_SECONDS,
        Unit::Seconds,
        "Time from a model request to its first streamed chunk, by model"
    );
    describe_counter!(
        MODEL_INPUT_TOKENS_TOTAL,
        Unit::Count,
        "Prompt tokens of completed model calls, by model and tenant"
    );
    describe_counter!(
        MODEL_OUTPUT_TOKENS_TOTAL,
        Unit::Count,
        "Completion tokens of completed model calls, by model and tenant"
    );
    describe_counter!(
        TOOL_CALLS_TOTAL,
        Unit::Count,
        "Tool calls answered by this worker, by tool and outcome (ok, error, timeout, in_progress)"
    );
    describe_histogram!(
        TOOL_CALL_DURATION_SECONDS,
        Unit::Seconds,
        "Tool call latency as the serving worker sees it, by tool and outcome"
    );
}

/// The outcome label of a terminal event (`None` for any other event).
pub(crate) fn run_outcome(data: &EventData) -> Option<&'static str> {
    match data {
        EventData::RunCompleted { .. } => Some("completed"),
        EventData::RunFailed { .. } => Some("failed"),
        EventData::RunCancelled { .. } => Some("cancelled"),
        EventData::RunExpired { .. } => Some("expired"),
        _ => None,
    }
}

/// A run's terminal event with `outcome` was stored after `steps` steps, at `now`.
pub(crate) fn run_ended(
    tenant: &Tenant,
    run: &RunId,
    outcome: Option<&'static str>,
    steps: u32,
    now: OffsetDateTime,
) {
    let Some(outcome) = outcome else { return };
    // A run id is a UUIDv7: its first 48 bits are the Unix time in milliseconds it was minted.
    let minted_ms = (run.as_u128() >> 80) as i128;
    let now_ms = now.unix_timestamp_nanos() / 1_000_000;
    let age = Duration::from_millis(u64::try_from(now_ms - minted_ms).unwrap_or(0));
    counter!(RUNS_TOTAL, "tenant" => tenant_label(tenant), "outcome" => outcome).increment(1);
    histogram!(RUN_DURATION_SECONDS, "outcome" => outcome).record(age.as_secs_f64());
    histogram!(RUN_STEPS, "outcome" => outcome).record(f64::from(steps));
}

/// Counts a run delivery being driven while the guard lives; counts redeliveries.
pub(crate) struct ActiveRun;

impl ActiveRun {
    pub(crate) fn start(delivered: i64) -> Self {
        if delivered > 1 {
            counter!(RUN_REDELIVERIES_TOTAL).increment(1);
        }
        gauge!(RUNS_ACTIVE).increment(1.0);
        Self
    }
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        gauge!(RUNS_ACTIVE).decrement(1.0);
    }
}

/// One guarded journal append: stored, or refused because another writer came first.
pub(crate) fn journal_append<T>(result: &agentos_bus::Result<T>) {
    match result {
        Ok(_) => counter!(JOURNAL_APPENDS_TOTAL).increment(1),
        Err(agentos_bus::Error::WrongLastSequence { .. }) => {
            counter!(JOURNAL_CONFLICTS_TOTAL).increment(1)
        }
        Err(_) => {}
    }
}

/// A model call answered with `reply` after `elapsed`.
pub(crate) fn model_call(
    tenant: &Tenant,
    model: &ModelName,
    reply: &ModelReply,
    elapsed: Duration,
) {
    let model = model.to_string();
    let outcome = match reply {
        ModelReply::Final { usage, .. } => {
            let labels = [
                ("model", model.clone()),
                ("tenant", tenant_label(tenant).into_owned()),
            ];
            counter!(MODEL_INPUT_TOKENS_TOTAL, &labels).increment(usage.prompt_tokens);
            counter!(MODEL_OUTPUT_TOKENS_TOTAL, &labels).increment(usage.completion_tokens);
            "ok"
        }
        _ => "error",
    };
    counter!(MODEL_CALLS_TOTAL, "model" => model.clone(), "tenant" => tenant_label(tenant), "outcome" => outcome)
        .increment(1);
    histogram!(MODEL_CALL_DURATION_SECONDS, "model" => model, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// The first chunk of a streamed model reply went out `elapsed` after the request.
pub(crate) fn model_first_token(model: &ModelName, elapsed: Duration) {
    histogram!(MODEL_TIME_TO_FIRST_TOKEN_SECONDS, "model" => model.to_string())
        .record(elapsed.as_secs_f64());
}

/// A tool call answered with `reply` after `elapsed`.
pub(crate) fn tool_call(tool: &ToolName, reply: &ToolReply, elapsed: Duration) {
    let outcome = match reply {
        ToolReply::Ok { .. } => "ok",
        ToolReply::Error { error, .. } if error.code == "tool_timeout" => "timeout",
        ToolReply::Error { .. } => "error",
        ToolReply::InProgress { .. } => "in_progress",
        ToolReply::Progress { .. } => return,
    };
    let tool = tool.to_string();
    counter!(TOOL_CALLS_TOTAL, "tool" => tool.clone(), "outcome" => outcome).increment(1);
    histogram!(TOOL_CALL_DURATION_SECONDS, "tool" => tool, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}
