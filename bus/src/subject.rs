//! Subject builders. The tenant is always the third token (`agentos.<kind>.<tenant>.…`), so one
//! wildcard permission fences a tenant. Every builder takes validated ids only.

use crate::id::{AgentId, ModelName, RunId, Tenant, ToolName};

pub const PREFIX: &str = "agentos";

/// `agentos.runs.<tenant>.submit`: run requests and continuations (stream `AGENTOS_RUNS`).
pub fn runs_submit(tenant: &Tenant) -> String {
    format!("{PREFIX}.runs.{tenant}.submit")
}

/// `agentos.events.<tenant>.<run_id>`: a run's journal (stream `AGENTOS_EVENTS`).
pub fn events(tenant: &Tenant, run: &RunId) -> String {
    format!("{PREFIX}.events.{tenant}.{run}")
}

/// `agentos.model.<tenant>.<model>`: model calls (core request/reply, queue group).
pub fn model(tenant: &Tenant, model: &ModelName) -> String {
    format!("{PREFIX}.model.{tenant}.{model}")
}

/// `agentos.model.*.<model>`: what a model worker serving `model` subscribes to.
pub fn model_filter(model: &ModelName) -> String {
    format!("{PREFIX}.model.*.{model}")
}

/// The model a model worker's endpoint subject (`agentos.model.*.<model>`) serves.
pub fn model_of_filter(subject: &str) -> Option<ModelName> {
    ModelName::parse(subject.strip_prefix("agentos.model.*.")?).ok()
}

/// `agentos.tool.<tenant>.<tool…>`: tool invocations (core request/reply, queue group).
pub fn tool(tenant: &Tenant, tool: &ToolName) -> String {
    format!("{PREFIX}.tool.{tenant}.{tool}")
}

/// `agentos.ctl.<tenant>.<run_id>.cancel`: cancel reaches in-flight work at once.
pub fn cancel(tenant: &Tenant, run: &RunId) -> String {
    format!("{PREFIX}.ctl.{tenant}.{run}.cancel")
}

/// `agentos.audit.<tenant>` (stream `AGENTOS_AUDIT`).
pub fn audit(tenant: &Tenant) -> String {
    format!("{PREFIX}.audit.{tenant}")
}

/// `agentos.runidx.<tenant>.<agent>`: the run index (stream `AGENTOS_RUN_INDEX`): one entry per
/// run, holding its id, in creation order.
pub fn run_index(tenant: &Tenant, agent: &AgentId) -> String {
    format!("{PREFIX}.runidx.{tenant}.{agent}")
}

/// `agentos.runidx.<tenant>.*`: a tenant's index entries, of every agent.
pub fn run_index_all(tenant: &Tenant) -> String {
    format!("{PREFIX}.runidx.{tenant}.*")
}

/// The tenant token used in a dead letter whose own subject named no valid tenant.
pub const UNKNOWN_TENANT: &str = "_invalid";

/// `agentos.dlq.<tenant>.<kind>` (stream `AGENTOS_DLQ`). `tenant` is `None` when the message
/// could not be attributed to a valid tenant.
pub fn dlq(tenant: Option<&Tenant>, kind: DlqKind) -> String {
    let tenant = tenant.map_or(UNKNOWN_TENANT, Tenant::as_str);
    format!("{PREFIX}.dlq.{tenant}.{}", kind.as_str())
}

/// Which traffic a dead letter came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlqKind {
    Runs,
    Model,
    Tool,
    Events,
}

impl DlqKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runs => "runs",
            Self::Model => "model",
            Self::Tool => "tool",
            Self::Events => "events",
        }
    }
}

/// Wildcards the pools subscribe to.
pub mod filter {
    pub const RUNS_SUBMIT: &str = "agentos.runs.*.submit";
    pub const EVENTS: &str = "agentos.events.*.*";
    pub const MODEL: &str = "agentos.model.*.>";
    pub const TOOL: &str = "agentos.tool.*.>";
    pub const CANCEL: &str = "agentos.ctl.*.*.cancel";
    pub const AUDIT: &str = "agentos.audit.*";
    pub const RUN_INDEX: &str = "agentos.runidx.*.*";
    pub const DLQ: &str = "agentos.dlq.*.*";
}

/// The tenant token of any `agentos.<kind>.<tenant>.…` subject, validated.
pub fn tenant_of(subject: &str) -> Option<Tenant> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(PREFIX), Some(_), Some(tenant)) => Tenant::parse(tenant).ok(),
        _ => None,
    }
}

/// Splits `agentos.ctl.<tenant>.<run>.cancel`.
pub fn parse_cancel(subject: &str) -> Option<(Tenant, RunId)> {
    let parts: Vec<&str> = subject.split('.').collect();
    match parts.as_slice() {
        [PREFIX, "ctl", tenant, run, "cancel"] => {
            Some((Tenant::parse(*tenant).ok()?, RunId::parse(run).ok()?))
        }
        _ => None,
    }
}

/// Splits `agentos.tool.<tenant>.<tool…>`.
pub fn parse_tool(subject: &str) -> Option<(Tenant, ToolName)> {
    let rest = subject.strip_prefix("agentos.tool.")?;
    let (tenant, tool) = rest.split_once('.')?;
    Some((Tenant::parse(tenant).ok()?, ToolName::parse(tool).ok()?))
}

/// Splits `agentos.model.<tenant>.<model>`.
pub fn parse_model(subject: &str) -> Option<(Tenant, ModelName)> {
    let rest = subject.strip_prefix("agentos.model.")?;
    let (tenant, model) = rest.split_once('.')?;
    Some((Tenant::parse(tenant).ok()?, ModelName::parse(model).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_put_the_tenant_third_and_parse_back() {
        let t = Tenant::parse("acme").expect("tenant");
        let r = RunId::new();
        assert_eq!(runs_submit(&t), "agentos.runs.acme.submit");
        assert_eq!(events(&t, &r), format!("agentos.events.acme.{r}"));
        assert_eq!(parse_cancel(&cancel(&t, &r)), Some((t.clone(), r)));
        let tool_name = ToolName::parse("math.eval").expect("tool");
        assert_eq!(tool(&t, &tool_name), "agentos.tool.acme.math.eval");
        assert_eq!(
            parse_tool("agentos.tool.acme.math.eval"),
            Some((t.clone(), tool_name))
        );
        let m = ModelName::parse("scripted").expect("model");
        assert_eq!(parse_model(&model(&t, &m)), Some((t.clone(), m.clone())));
        assert_eq!(model_filter(&m), "agentos.model.*.scripted");
        assert_eq!(model_of_filter(&model_filter(&m)), Some(m));
        assert_eq!(tenant_of("agentos.runs.acme.submit"), Some(t.clone()));
        assert_eq!(tenant_of("agentos.runs.ACME.submit"), None);
        assert_eq!(dlq(None, DlqKind::Runs), "agentos.dlq._invalid.runs");
        assert_eq!(dlq(Some(&t), DlqKind::Tool), "agentos.dlq.acme.tool");
        let a = AgentId::parse("a1").expect("agent");
        assert_eq!(run_index(&t, &a), "agentos.runidx.acme.a1");
        assert_eq!(run_index_all(&t), "agentos.runidx.acme.*");
    }
}
