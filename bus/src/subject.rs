//! Subject builders. The tenant is always the third token (`agentos.<kind>.<tenant>.…`), so one
//! wildcard permission fences a tenant. Every builder takes validated ids only.

use std::fmt;

use crate::id::{AgentId, ModelName, NodeId, RunId, Tenant, ToolName};
use crate::{Error, Result};

pub const PREFIX: &str = "agentos";

/// A NATS subject built from validated ids (or checked by [`Subject::parse`]): what
/// [`crate::Bus::call`] and the publishing methods take, so no caller formats one by hand.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subject(String);

impl Subject {
    /// A subject from text (operator tools, tests): non-empty dot-separated tokens without
    /// whitespace; `*` and `>` wildcards are allowed.
    pub fn parse(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let valid = !s.is_empty()
            && s.split('.').all(|t| !t.is_empty())
            && !s.chars().any(char::is_whitespace);
        if valid {
            Ok(Self(s))
        } else {
            Err(Error::InvalidId {
                kind: "subject",
                value: s,
                reason: "must be non-empty dot-separated tokens without whitespace",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read-only: a subject is text once built.
impl std::ops::Deref for Subject {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for Subject {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Subject {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl From<Subject> for String {
    fn from(s: Subject) -> Self {
        s.0
    }
}

/// `agentos.runs.<tenant>.submit`: run requests and continuations (stream `AGENTOS_RUNS`).
pub fn runs_submit(tenant: &Tenant) -> Subject {
    Subject(format!("{PREFIX}.runs.{tenant}.submit"))
}

/// `agentos.sched.<tenant>.<run_id>`: the expiry timer of a run waiting in `requires_action`, a
/// JetStream message schedule in stream `AGENTOS_RUNS` that fires a wake onto the tenant's runs
/// subject (one per run: a new schedule replaces the last).
pub fn schedule(tenant: &Tenant, run: &RunId) -> Subject {
    Subject(format!("{PREFIX}.sched.{tenant}.{run}"))
}

/// `agentos.events.<tenant>.<run_id>`: a run's journal (stream `AGENTOS_EVENTS`).
pub fn events(tenant: &Tenant, run: &RunId) -> Subject {
    Subject(format!("{PREFIX}.events.{tenant}.{run}"))
}

/// `agentos.model.<tenant>.<model>`: model calls (core request/reply, queue group).
pub fn model(tenant: &Tenant, model: &ModelName) -> Subject {
    Subject(format!("{PREFIX}.model.{tenant}.{model}"))
}

/// `agentos.model.*.<model>`: what a model worker serving `model` subscribes to.
pub fn model_filter(model: &ModelName) -> Subject {
    Subject(format!("{PREFIX}.model.*.{model}"))
}

/// The model a model worker's endpoint subject (`agentos.model.*.<model>`, or
/// `agentos.embed.*.<model>` for embeddings) serves.
pub fn model_of_filter(subject: &str) -> Option<ModelName> {
    let name = subject
        .strip_prefix("agentos.model.*.")
        .or_else(|| subject.strip_prefix("agentos.embed.*."))?;
    ModelName::parse(name).ok()
}

/// `agentos.embed.<tenant>.<model>`: embedding calls (core request/reply, queue group).
pub fn embed(tenant: &Tenant, model: &ModelName) -> Subject {
    Subject(format!("{PREFIX}.embed.{tenant}.{model}"))
}

/// `agentos.embed.*.<model>`: what a model worker serving embeddings with `model` subscribes to.
pub fn embed_filter(model: &ModelName) -> Subject {
    Subject(format!("{PREFIX}.embed.*.{model}"))
}

/// Splits `agentos.embed.<tenant>.<model>`.
pub fn parse_embed(subject: &str) -> Option<(Tenant, ModelName)> {
    let rest = subject.strip_prefix("agentos.embed.")?;
    let (tenant, model) = rest.split_once('.')?;
    Some((Tenant::parse(tenant).ok()?, ModelName::parse(model).ok()?))
}

/// `agentos.tool.<tenant>.<tool…>`: tool invocations (core request/reply, queue group).
pub fn tool(tenant: &Tenant, tool: &ToolName) -> Subject {
    Subject(format!("{PREFIX}.tool.{tenant}.{tool}"))
}

/// `agentos.tool.*.<tool…>`: what a worker serving `tool` subscribes to.
pub fn tool_filter(tool: &ToolName) -> Subject {
    Subject(format!("{PREFIX}.tool.*.{tool}"))
}

/// `$SRV.INFO[.<service>]`: NATS micro service discovery, of every service or of one.
pub fn service_info(service: Option<&str>) -> Subject {
    Subject(service.map_or_else(|| "$SRV.INFO".to_owned(), |s| format!("$SRV.INFO.{s}")))
}

/// `agentos.ctl.<tenant>.<run_id>.cancel`: cancel reaches in-flight work at once.
pub fn cancel(tenant: &Tenant, run: &RunId) -> Subject {
    Subject(format!("{PREFIX}.ctl.{tenant}.{run}.cancel"))
}

/// `agentos.audit.<tenant>` (stream `AGENTOS_AUDIT`).
pub fn audit(tenant: &Tenant) -> Subject {
    Subject(format!("{PREFIX}.audit.{tenant}"))
}

/// `agentos.runidx.<tenant>.<agent>`: the run index (stream `AGENTOS_RUN_INDEX`): one entry per
/// run, holding its id, in creation order.
pub fn run_index(tenant: &Tenant, agent: &AgentId) -> Subject {
    Subject(format!("{PREFIX}.runidx.{tenant}.{agent}"))
}

/// `agentos.runidx.<tenant>.*`: a tenant's index entries, of every agent.
pub fn run_index_all(tenant: &Tenant) -> Subject {
    Subject(format!("{PREFIX}.runidx.{tenant}.*"))
}

/// What travels between federated clusters (the `<kind>` token of a federation subject).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FedKind {
    /// A run forwarded to a peer.
    Run,
    /// A cancel of a forwarded run.
    Cancel,
    /// A journal event of a forwarded run, on its way back to the origin.
    Event,
    /// The answer to a forwarded run waiting in `requires_action`.
    Answer,
}

impl FedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Cancel => "cancel",
            Self::Event => "event",
            Self::Answer => "answer",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Run, Self::Cancel, Self::Event, Self::Answer]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// `agentos.fed.out.<to>.<kind>.<tenant>` (stream `AGENTOS_FED_OUT` on the sending cluster):
/// what the peer `to` sources across the leaf link.
pub fn fed_out(to: &NodeId, kind: FedKind, tenant: &Tenant) -> Subject {
    Subject(format!("{PREFIX}.fed.out.{to}.{}.{tenant}", kind.as_str()))
}

/// `agentos.fed.out.<to>.>`: what peer `to` sources from this cluster's `AGENTOS_FED_OUT`.
pub fn fed_out_to(to: &NodeId) -> Subject {
    Subject(format!("{PREFIX}.fed.out.{to}.>"))
}

/// `agentos.fed.in.<from>.>`: where a source from peer `from` lands in `AGENTOS_FED_IN` (the
/// subject transform of that source).
pub fn fed_in_from(from: &NodeId) -> Subject {
    Subject(format!("{PREFIX}.fed.in.{from}.>"))
}

/// `agentos.fed.announce.<node>` (stream `AGENTOS_FED_ANNOUNCE`, one message per subject): a
/// node's latest announcement.
pub fn fed_announce(node: &NodeId) -> Subject {
    Subject(format!("{PREFIX}.fed.announce.{node}"))
}

/// `agentos.fed.in.<from>.peer`: where a peer's announcement lands in `AGENTOS_FED_IN`.
pub fn fed_in_peer(from: &NodeId) -> Subject {
    Subject(format!("{PREFIX}.fed.in.{from}.peer"))
}

/// What a subject of `AGENTOS_FED_IN` carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FedIn {
    /// A peer's announcement.
    Peer { from: NodeId },
    /// A forwarded run, cancel, answer or event of `tenant`.
    Tenant {
        from: NodeId,
        kind: FedKind,
        tenant: Tenant,
    },
}

/// Parses `agentos.fed.in.<from>.peer` and `agentos.fed.in.<from>.<kind>.<tenant>`.
pub fn parse_fed_in(subject: &str) -> Option<FedIn> {
    let rest = subject.strip_prefix("agentos.fed.in.")?;
    let mut t = rest.split('.');
    let from = NodeId::parse(t.next()?).ok()?;
    let kind = t.next()?;
    let tenant = t.next();
    if t.next().is_some() {
        return None;
    }
    match (kind, tenant) {
        ("peer", None) => Some(FedIn::Peer { from }),
        (k, Some(tenant)) => Some(FedIn::Tenant {
            from,
            kind: FedKind::parse(k)?,
            tenant: Tenant::parse(tenant).ok()?,
        }),
        _ => None,
    }
}

/// The tenant token used in a dead letter whose own subject named no valid tenant.
pub const UNKNOWN_TENANT: &str = "_invalid";

/// `agentos.dlq.<tenant>.<kind>` (stream `AGENTOS_DLQ`). `tenant` is `None` when the message
/// could not be attributed to a valid tenant.
pub fn dlq(tenant: Option<&Tenant>, kind: DlqKind) -> Subject {
    let tenant = tenant.map_or(UNKNOWN_TENANT, Tenant::as_str);
    Subject(format!("{PREFIX}.dlq.{tenant}.{}", kind.as_str()))
}

/// Which traffic a dead letter came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlqKind {
    Runs,
    Model,
    Tool,
    Events,
    /// A federation message (from a peer's stream) that did not decode.
    Federation,
}

impl DlqKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runs => "runs",
            Self::Model => "model",
            Self::Tool => "tool",
            Self::Events => "events",
            Self::Federation => "federation",
        }
    }
}

/// Wildcards the pools subscribe to.
pub mod filter {
    pub const RUNS_SUBMIT: &str = "agentos.runs.*.submit";
    pub const SCHEDULES: &str = "agentos.sched.*.*";
    pub const EVENTS: &str = "agentos.events.*.*";
    pub const MODEL: &str = "agentos.model.*.>";
    pub const TOOL: &str = "agentos.tool.*.>";
    pub const CANCEL: &str = "agentos.ctl.*.*.cancel";
    pub const AUDIT: &str = "agentos.audit.*";
    pub const RUN_INDEX: &str = "agentos.runidx.*.*";
    pub const DLQ: &str = "agentos.dlq.*.*";
    pub const FED_OUT: &str = "agentos.fed.out.>";
    pub const FED_ANNOUNCE: &str = "agentos.fed.announce.*";
}

/// What a tenant's own NATS account may use of the platform account, one entry per export:
/// the subject with `tenant` in place of the tenant token (`"*"` for the platform's export,
/// a tenant's name for its import) and the export's `account_token_position`.
pub mod tenant_exports {
    use super::PREFIX;
    use crate::provision::{Bucket, STREAM_EVENTS};

    /// Whether an export is a service (request/reply) or a stream (messages flow to the tenant).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        Service,
        Stream,
    }

    /// One export: what it is for, its kind, its subject for `tenant`, and the position of the
    /// tenant token (for `account_token_position`).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Export {
        pub name: &'static str,
        pub kind: Kind,
        pub subject: String,
        pub token_position: u8,
    }

    /// The four exports, in a fixed order: submit, live events, the run record (direct get),
    /// the last event (direct get). `run` stands for the run-id token (`>` in permissions).
    pub fn all(tenant: &str, run: &str) -> [Export; 4] {
        let runs_kv = Bucket::Runs.name();
        [
            Export {
                name: "submit",
                kind: Kind::Service,
                subject: format!("{PREFIX}.runs.{tenant}.submit"),
                token_position: 3,
            },
            Export {
                name: "events",
                kind: Kind::Stream,
                subject: format!("{PREFIX}.events.{tenant}.{run}"),
                token_position: 3,
            },
            Export {
                name: "run_record",
                kind: Kind::Service,
                subject: format!("$JS.API.DIRECT.GET.KV_{runs_kv}.$KV.{runs_kv}.{tenant}.{run}"),
                token_position: 8,
            },
            Export {
                name: "last_event",
                kind: Kind::Service,
                subject: format!(
                    "$JS.API.DIRECT.GET.{STREAM_EVENTS}.{PREFIX}.events.{tenant}.{run}"
                ),
                token_position: 8,
            },
        ]
    }

    /// Subjects a tenant's user may subscribe to: its live events and its inboxes.
    pub fn subscribe_allow(tenant: &str) -> [String; 2] {
        [format!("{PREFIX}.events.{tenant}.>"), "_INBOX.>".to_owned()]
    }
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
    #[test]
    fn federation_subjects_round_trip() {
        use crate::id::NodeId;
        let (a, b) = (
            NodeId::parse("a").expect("a"),
            NodeId::parse("b").expect("b"),
        );
        let t = Tenant::parse("acme").expect("tenant");
        let out = fed_out(&b, FedKind::Event, &t);
        assert_eq!(out.as_str(), "agentos.fed.out.b.event.acme");
        assert_eq!(fed_out_to(&b).as_str(), "agentos.fed.out.b.>");
        assert_eq!(fed_in_from(&a).as_str(), "agentos.fed.in.a.>");
        assert_eq!(
            parse_fed_in("agentos.fed.in.a.run.acme"),
            Some(FedIn::Tenant {
                from: a.clone(),
                kind: FedKind::Run,
                tenant: t
            })
        );
        assert_eq!(
            parse_fed_in(fed_in_peer(&a).as_str()),
            Some(FedIn::Peer { from: a })
        );
        for bad in [
            "agentos.fed.in.a.nope.acme",
            "agentos.fed.in.a.run",
            "agentos.fed.in.A!.run.acme",
            "agentos.fed.in.a.run.acme.extra",
            "agentos.fed.out.a.run.acme",
        ] {
            assert_eq!(parse_fed_in(bad), None, "{bad}");
        }
    }

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
        assert_eq!(model_of_filter(&model_filter(&m)), Some(m.clone()));
        assert_eq!(parse_embed(&embed(&t, &m)), Some((t.clone(), m.clone())));
        assert_eq!(embed_filter(&m), "agentos.embed.*.scripted");
        assert_eq!(model_of_filter(&embed_filter(&m)), Some(m.clone()));
        assert_eq!(tenant_of("agentos.runs.acme.submit"), Some(t.clone()));
        assert_eq!(tenant_of("agentos.runs.ACME.submit"), None);
        assert_eq!(dlq(None, DlqKind::Runs), "agentos.dlq._invalid.runs");
        assert_eq!(dlq(Some(&t), DlqKind::Tool), "agentos.dlq.acme.tool");
        let a = AgentId::parse("a1").expect("agent");
        assert_eq!(run_index(&t, &a), "agentos.runidx.acme.a1");
        assert_eq!(run_index_all(&t), "agentos.runidx.acme.*");
    }
}
