//! Idempotent provisioning of every stream and KV bucket, with drift detection: an existing
//! resource whose configuration differs from the desired one is reported, never rewritten.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use serde::Serialize;

use crate::{Bus, Error, Result};

pub const STREAM_RUNS: &str = "AGENTOS_RUNS";
pub const STREAM_EVENTS: &str = "AGENTOS_EVENTS";
pub const STREAM_AUDIT: &str = "AGENTOS_AUDIT";
pub const STREAM_DLQ: &str = "AGENTOS_DLQ";
pub const STREAM_RUN_INDEX: &str = "AGENTOS_RUN_INDEX";
/// The consumers `AGENTOS_EVENTS` allows at once. Every SSE follower and every journal read
/// holds one for its life, so the server's default (1,000 per stream since nats-server 2.15)
/// would cap a whole cluster at 1,000 followers; the edges' per-tenant stream caps are the
/// bound that matters (SPEC 103).
pub const EVENTS_MAX_CONSUMERS: i32 = 1_000_000;

/// The KV buckets of the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Runs,
    Agents,
    Memory,
    Tenants,
    Usage,
    Fwd,
    Peers,
    ToolResults,
    Threads,
    /// Revoked token ids (`jti`), until the tokens expire.
    Revoked,
}

impl Bucket {
    pub const ALL: [Bucket; 10] = [
        Self::Runs,
        Self::Agents,
        Self::Memory,
        Self::Tenants,
        Self::Usage,
        Self::Fwd,
        Self::Peers,
        Self::ToolResults,
        Self::Threads,
        Self::Revoked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Runs => "agentos-runs",
            Self::Agents => "agentos-agents",
            Self::Memory => "agentos-memory",
            Self::Tenants => "agentos-tenants",
            Self::Usage => "agentos-usage",
            Self::Fwd => "agentos-fwd",
            Self::Peers => "agentos-peers",
            Self::ToolResults => "agentos-tool-results",
            Self::Threads => "agentos-threads",
            Self::Revoked => "agentos-revoked",
        }
    }

    fn history(self) -> i64 {
        match self {
            Self::Agents | Self::Tenants => 5,
            // One value per key: an item whose TTL runs out must leave nothing older behind it.
            _ => 1,
        }
    }

    /// Whether the bucket takes per-message TTLs (`allow_msg_ttl`, nats-server 2.11+); the
    /// server then leaves a delete marker, kept [`MARKER_TTL`], when an item expires.
    fn limit_markers(self) -> Option<Duration> {
        match self {
            Self::Memory | Self::Revoked => Some(MARKER_TTL),
            _ => None,
        }
    }
}

/// Storage for streams and buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    File,
    Memory,
}

/// Tunables of the provisioned resources.
#[derive(Clone, Debug)]
pub struct Settings {
    pub replicas: usize,
    pub storage: Storage,
    /// How long a run's journal is kept.
    pub events_max_age: Duration,
    pub audit_max_age: Duration,
    pub dlq_max_age: Duration,
    /// How long a tool result is kept for idempotent replays.
    pub tool_results_max_age: Duration,
    /// JetStream dedup window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
}

const DAY: Duration = Duration::from_secs(86_400);

/// How long the delete marker of an expired or deleted memory item stays (it tells watchers and
/// readers the item is gone, then it goes too).
pub const MARKER_TTL: Duration = Duration::from_secs(3_600);

impl Default for Settings {
    fn default() -> Self {
        Self {
            replicas: 1,
            storage: Storage::File,
            events_max_age: 7 * DAY,
            audit_max_age: 365 * DAY,
            dlq_max_age: 30 * DAY,
            tool_results_max_age: DAY,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl Settings {
    fn storage(&self) -> stream::StorageType {
        match self.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        }
    }

    fn streams(&self) -> Vec<stream::Config> {
        let base = |name: &str, subject: &str, max_age: Duration| stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            storage: self.storage(),
            num_replicas: self.replicas,
            max_age,
            duplicate_window: self.duplicate_window,
            allow_direct: true,
            ..Default::default()
        };
        vec![
            // Submissions, and the expiry timers of waiting runs (message schedules, which the
            // orchestrators' consumer does not see: it filters on submissions).
            stream::Config {
                retention: stream::RetentionPolicy::WorkQueue,
                subjects: vec![
                    crate::subject::filter::RUNS_SUBMIT.to_owned(),
                    crate::subject::filter::SCHEDULES.to_owned(),
                ],
                allow_message_schedules: true,
                ..base(STREAM_RUNS, crate::subject::filter::RUNS_SUBMIT, 7 * DAY)
            },
            stream::Config {
                max_consumers: EVENTS_MAX_CONSUMERS,
                ..base(
                    STREAM_EVENTS,
                    crate::subject::filter::EVENTS,
                    self.events_max_age,
                )
            },
            base(
                STREAM_AUDIT,
                crate::subject::filter::AUDIT,
                self.audit_max_age,
            ),
            base(STREAM_DLQ, crate::subject::filter::DLQ, self.dlq_max_age),
            // Kept as long as the run records (no age limit); one entry per run.
            base(
                STREAM_RUN_INDEX,
                crate::subject::filter::RUN_INDEX,
                Duration::ZERO,
            ),
        ]
    }

    fn bucket(&self, bucket: Bucket) -> kv::Config {
        kv::Config {
            bucket: bucket.name().to_owned(),
            history: bucket.history(),
            max_age: match bucket {
                Bucket::ToolResults => self.tool_results_max_age,
                _ => Duration::ZERO,
            },
            storage: self.storage(),
            num_replicas: self.replicas,
            limit_markers: bucket.limit_markers(),
            ..Default::default()
        }
    }
}

/// What provisioning found for one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Unchanged,
    /// The stream existed without something this version adds (subjects, message schedules),
    /// and was updated in place: one line per change.
    Upgraded {
        changes: Vec<String>,
    },
    /// The resource exists with settings that differ: one line per differing field.
    Drift {
        differences: Vec<String>,
    },
    /// Only from [`Bus::check`]: the resource does not exist.
    Missing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Item {
    pub kind: &'static str,
    pub name: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub items: Vec<Item>,
}

impl Report {
    pub fn drifted(&self) -> impl Iterator<Item = &Item> {
        self.items
            .iter()
            .filter(|i| matches!(i.outcome, Outcome::Drift { .. } | Outcome::Missing))
    }

    pub fn is_clean(&self) -> bool {
        self.drifted().next().is_none()
    }
}

/// The fields we own, compared between desired and actual stream configs.
fn differences(want: &stream::Config, have: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |field: &str, w: String, h: String| {
        if w != h {
            out.push(format!("{field}: want {w}, have {h}"));
        }
    };
    let mut ws = want.subjects.clone();
    let mut hs = have.subjects.clone();
    ws.sort();
    hs.sort();
    cmp("subjects", format!("{ws:?}"), format!("{hs:?}"));
    cmp(
        "retention",
        format!("{:?}", want.retention),
        format!("{:?}", have.retention),
    );
    cmp(
        "storage",
        format!("{:?}", want.storage),
        format!("{:?}", have.storage),
    );
    cmp(
        "replicas",
        want.num_replicas.to_string(),
        have.num_replicas.to_string(),
    );
    cmp(
        "max_age",
        format!("{:?}", want.max_age),
        format!("{:?}", have.max_age),
    );
    // 0 and -1 both mean "unlimited" (the server stores -1).
    let limit = |n: i64| {
        if n <= 0 {
            "unlimited".to_owned()
        } else {
            n.to_string()
        }
    };
    cmp(
        "max_messages_per_subject",
        limit(want.max_messages_per_subject),
        limit(have.max_messages_per_subject),
    );
    if want.max_consumers > 0 && have.max_consumers < want.max_consumers {
        cmp(
            "max_consumers",
            want.max_consumers.to_string(),
            have.max_consumers.to_string(),
        );
    }
    if want.duplicate_window != Duration::ZERO {
        cmp(
            "duplicate_window",
            format!("{:?}", want.duplicate_window),
            format!("{:?}", have.duplicate_window),
        );
    }
    if want.allow_direct {
        cmp("allow_direct", "true".into(), have.allow_direct.to_string());
    }
    if want.allow_message_ttl {
        cmp(
            "allow_msg_ttl",
            "true".into(),
            have.allow_message_ttl.to_string(),
        );
    }
    if want.allow_message_schedules {
        cmp(
            "allow_msg_schedules",
            "true".into(),
            have.allow_message_schedules.to_string(),
        );
    }
    out
}

/// The stream config a KV bucket config stands for, restricted to the fields we compare.
fn kv_stream(cfg: &kv::Config) -> stream::Config {
    stream::Config {
        name: format!("KV_{}", cfg.bucket),
        subjects: vec![format!("$KV.{}.>", cfg.bucket)],
        max_messages_per_subject: cfg.history,
        max_age: cfg.max_age,
        storage: cfg.storage,
        num_replicas: cfg.num_replicas.max(1),
        allow_direct: true,
        allow_message_ttl: cfg.limit_markers.is_some(),
        subject_delete_marker_ttl: cfg.limit_markers,
        ..Default::default()
    }
}

impl Bus {
    /// Creates every missing stream and bucket; reports drift on existing ones without
    /// touching them. Safe to run concurrently from many processes.
    pub async fn provision(&self, settings: &Settings) -> Result<Report> {
        self.reconcile(settings, true).await
    }

    /// Like [`Bus::provision`] but creates nothing: missing resources are reported.
    pub async fn check(&self, settings: &Settings) -> Result<Report> {
        self.reconcile(settings, false).await
    }

    /// Deletes every AgentOS stream and bucket that exists; returns what it deleted. For
    /// `agentos nuke` only.
    pub async fn delete_all(&self, settings: &Settings) -> Result<Vec<String>> {
        let mut deleted = Vec::new();
        let names = settings
            .streams()
            .into_iter()
            .map(|s| s.name)
            .chain(Bucket::ALL.iter().map(|b| format!("KV_{}", b.name())));
        for name in names {
            if self.delete_stream(&name).await? {
                deleted.push(name);
            }
        }
        Ok(deleted)
    }

    /// Deletes one stream if it exists; whether it did. For `agentos nuke` and tests that need
    /// a stream gone (e.g. to make the audit write fail).
    pub async fn delete_stream(&self, name: &str) -> Result<bool> {
        if self.stream_config(name).await?.is_none() {
            return Ok(false);
        }
        self.js
            .delete_stream(name)
            .await
            .map_err(|e| Error::nats(format!("delete stream {name}"), e))?;
        Ok(true)
    }

    async fn reconcile(&self, settings: &Settings, create: bool) -> Result<Report> {
        let mut report = Report::default();
        for want in settings.streams() {
            let outcome = self.reconcile_stream(&want, create).await?;
            report.items.push(Item {
                kind: "stream",
                name: want.name.clone(),
                outcome,
            });
        }
        for bucket in Bucket::ALL {
            let cfg = settings.bucket(bucket);
            let want = kv_stream(&cfg);
            let outcome = match self.stream_config(&want.name).await? {
                Some(have) if create => self.upgrade_or_compare(&want, have).await?,
                Some(have) => drift_outcome(&want, &have),
                None if create => {
                    match self.js.create_key_value(cfg).await {
                        Ok(_) => Outcome::Created,
                        // Lost a race with another process: compare what it created.
                        Err(e) => match self.stream_config(&want.name).await? {
                            Some(have) => drift_outcome(&want, &have),
                            None => {
                                return Err(Error::nats(
                                    format!("create bucket {}", bucket.name()),
                                    e,
                                ));
                            }
                        },
                    }
                }
                None => Outcome::Missing,
            };
            report.items.push(Item {
                kind: "kv",
                name: bucket.name().to_owned(),
                outcome,
            });
        }
        for item in report.drifted() {
            tracing::warn!(kind = item.kind, name = %item.name, outcome = ?item.outcome, "provisioning drift");
        }
        Ok(report)
    }

    async fn reconcile_stream(&self, want: &stream::Config, create: bool) -> Result<Outcome> {
        if let Some(have) = self.stream_config(&want.name).await? {
            if create {
                return self.upgrade_or_compare(want, have).await;
            }
            return Ok(drift_outcome(want, &have));
        }
        if !create {
            return Ok(Outcome::Missing);
        }
        match self.js.create_stream(want.clone()).await {
            Ok(_) => Ok(Outcome::Created),
            Err(e) => match self.stream_config(&want.name).await? {
                Some(have) => Ok(drift_outcome(want, &have)),
                None => Err(Error::nats(format!("create stream {}", want.name), e)),
            },
        }
    }

    /// Updates an existing stream (or a bucket's stream) in place when only safe additions
    /// separate it from `want`; otherwise compares.
    async fn upgrade_or_compare(
        &self,
        want: &stream::Config,
        have: stream::Config,
    ) -> Result<Outcome> {
        let Some((upgraded, changes)) = additions(want, &have) else {
            return Ok(drift_outcome(want, &have));
        };
        self.js
            .update_stream(upgraded)
            .await
            .map_err(|e| Error::nats(format!("upgrade stream {}", want.name), e))?;
        tracing::info!(stream = %want.name, ?changes, "stream upgraded in place");
        Ok(Outcome::Upgraded { changes })
    }

    /// The current config of a stream, or `None` when it does not exist.
    async fn stream_config(&self, name: &str) -> Result<Option<stream::Config>> {
        match self.js.get_stream(name).await {
            Ok(s) => Ok(Some(s.cached_info().config.clone())),
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(Error::nats(format!("get stream {name}"), e)),
            },
        }
    }
}

/// `have` with what `want` adds and an update can safely add (subjects, message schedules,
/// more replicas: JetStream scales a stream up in place, copying it to the new peers), when
/// nothing else differs: the config to update it to, and the changes. Fewer replicas than a
/// stream has is drift, never applied: a component configured with fewer must not shrink what
/// the operator scaled up.
fn additions(
    want: &stream::Config,
    have: &stream::Config,
) -> Option<(stream::Config, Vec<String>)> {
    let mut upgraded = have.clone();
    let mut changes = Vec::new();
    for subject in &want.subjects {
        if !upgraded.subjects.contains(subject) {
            upgraded.subjects.push(subject.clone());
            changes.push(format!("subject {subject} added"));
        }
    }
    if want.num_replicas > have.num_replicas {
        upgraded.num_replicas = want.num_replicas;
        changes.push(format!(
            "replicas {} → {}",
            have.num_replicas, want.num_replicas
        ));
    }
    // A lower limit is raised, and so is "none" (≤ 0): since nats-server 2.15 it means the
    // server's default of 1,000.
    if want.max_consumers > 0 && have.max_consumers < want.max_consumers {
        upgraded.max_consumers = want.max_consumers;
        changes.push(format!(
            "max consumers {} → {}",
            have.max_consumers, want.max_consumers
        ));
    }
    if want.allow_message_schedules && !have.allow_message_schedules {
        upgraded.allow_message_schedules = true;
        changes.push("message schedules allowed".into());
    }
    (!changes.is_empty() && differences(want, &upgraded).is_empty()).then_some((upgraded, changes))
}

fn drift_outcome(want: &stream::Config, have: &stream::Config) -> Outcome {
    let differences = differences(want, have);
    if differences.is_empty() {
        Outcome::Unchanged
    } else {
        Outcome::Drift { differences }
    }
}
