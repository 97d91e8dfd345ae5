//! The run queue: submissions published with `Nats-Msg-Id`, consumed by one durable pull consumer
//! shared by the orchestrator pool; and the dead-letter stream for what cannot be processed.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::envelope::{Envelope, SubmitMessage, Wake};
use crate::id::Tenant;
use crate::provision::STREAM_RUNS;
use crate::subject::{self, DlqKind, Subject};
use crate::{Bus, Error, Result, headers};

/// The pool's durable consumer name.
pub const ORCHESTRATOR_DURABLE: &str = "orchestrators";

#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// Redelivery after this long without an ack or in-progress signal.
    pub ack_wait: Duration,
    /// Upper bound of unacknowledged runs across the pool.
    pub max_ack_pending: i64,
}

/// How long a run whose orchestrator went silent waits before another takes it over, by
/// default: a live orchestrator acks progress four times per ack wait.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(2);

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            ack_wait: DEFAULT_ACK_WAIT,
            max_ack_pending: 10_000,
        }
    }
}

impl QueueOptions {
    /// How often a driver acks progress: a quarter of the ack wait (at least 100 ms), so that
    /// three missed beats in a row still do not hand a live run to another orchestrator.
    pub fn progress_interval(&self) -> Duration {
        (self.ack_wait / 4).max(Duration::from_millis(100))
    }
}

/// Context carried in a submission's headers. Who created the run is not among them: a direct
/// publisher could claim anyone, so it lives in the run record, which only the platform writes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SubmitMeta<'a> {
    pub request_id: Option<&'a str>,
}

/// One delivery from the run queue. Ack only after the work is done.
pub struct Delivery {
    msg: jetstream::Message,
}

impl Delivery {
    pub fn subject(&self) -> &str {
        self.msg.subject.as_str()
    }

    pub fn payload(&self) -> &Bytes {
        &self.msg.payload
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.msg
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }

    /// The submitter's trace context (W3C `traceparent`), the parent of this delivery's span.
    pub fn trace_context(&self) -> opentelemetry::Context {
        crate::trace::from_headers(self.msg.headers.as_ref())
    }

    pub fn request_id(&self) -> Option<&str> {
        self.header(headers::REQUEST_ID)
    }

    /// How many times this message has been delivered (1 on first delivery).
    pub fn delivered(&self) -> i64 {
        self.msg.info().map(|i| i.delivered).unwrap_or(1)
    }

    /// Decodes the submission and checks that the tenant it claims, in its body and in its
    /// `AgentOS-Tenant` header, is the subject's: NATS permissions fence subjects, not bodies.
    pub fn decode(&self) -> Result<SubmitMessage> {
        let msg = SubmitMessage::decode(self.header(headers::SCHEMA), &self.msg.payload)?;
        let subject_tenant = subject::tenant_of(self.subject());
        let claimed = [Some(msg.tenant().as_str()), self.header(headers::TENANT)]
            .into_iter()
            .flatten()
            .find(|c| subject_tenant.as_ref().is_none_or(|t| t.as_str() != *c))
            .map(str::to_owned);
        match claimed {
            None => Ok(msg),
            Some(claimed) => Err(Error::TenantMismatch {
                what: "submit message",
                claimed,
                subject: self.subject().to_owned(),
            }),
        }
    }

    /// Acks without waiting for the server's confirmation: a lost ack only means a
    /// redelivery, which finds the run's journal already terminal and acks again.
    pub async fn ack(&self) -> Result<()> {
        self.msg.ack().await.map_err(|e| Error::nats("ack run", e))
    }

    /// Resets the redelivery timer while work goes on.
    pub async fn in_progress(&self) -> Result<()> {
        self.msg
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| Error::nats("in-progress ack", e))
    }

    /// Gives the message back for redelivery after `delay`.
    pub async fn nak(&self, delay: Duration) -> Result<()> {
        self.msg
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| Error::nats("nak run", e))
    }
}

/// The headers of an envelope on the bus: its schema version, tenant, `Nats-Msg-Id` and the
/// caller's trace.
pub(crate) fn envelope_headers(tenant: &Tenant, msg_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        headers::SCHEMA,
        crate::envelope::SCHEMA_VERSION.to_string().as_str(),
    );
    h.insert(headers::TENANT, tenant.as_str());
    h.insert(headers::MSG_ID, msg_id);
    crate::trace::inject(&mut h);
    h
}

impl Bus {
    /// Publishes a submission with `Nats-Msg-Id` [`SubmitMessage::msg_id`], retrying a timed-out publish with the
    /// same id (a publish can time out and still be stored). Returns true if it was a duplicate.
    pub async fn submit(&self, msg: &SubmitMessage, meta: &SubmitMeta<'_>) -> Result<bool> {
        let subject = String::from(subject::runs_submit(msg.tenant()));
        let msg_id = msg.msg_id();
        let mut h = envelope_headers(msg.tenant(), &msg_id);
        if let Some(rid) = meta.request_id {
            h.insert(headers::REQUEST_ID, rid);
        }
        self.publish_once(subject, h, msg.encode(), "submit").await
    }

    /// Publishes to a JetStream stream that dedups on the headers' `Nats-Msg-Id`, retrying a
    /// timed-out publish (three attempts) with the same headers: a publish can time out and
    /// still be stored, and the retry is then a duplicate. Returns true if it was one.
    pub(crate) async fn publish_once(
        &self,
        subject: String,
        h: HeaderMap,
        payload: Bytes,
        what: &str,
    ) -> Result<bool> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = async {
                self.js
                    .publish_with_headers(subject.clone(), h.clone(), payload.clone())
                    .await?
                    .await
            }
            .await;
            match res {
                Ok(ack) => return Ok(ack.duplicate),
                Err(e)
                    if attempt < 3
                        && e.kind() == jetstream::context::PublishErrorKind::TimedOut =>
                {
                    tracing::warn!(%subject, attempt, "{what} timed out, retrying with the same Nats-Msg-Id");
                }
                Err(e) => {
                    return Err(match e.kind() {
                        jetstream::context::PublishErrorKind::TimedOut => Error::TimedOut {
                            op: format!("{what} to {subject}"),
                            after: Duration::ZERO,
                        },
                        _ => Error::nats(format!("{what} to {subject}"), e),
                    });
                }
            }
        }
    }

    /// Asks the orchestrators to look at a run again (a cancel for a run no orchestrator holds
    /// because it waits in `requires_action`); harmless for any other run.
    pub async fn wake(&self, tenant: &Tenant, run: &crate::id::RunId) -> Result<()> {
        let wake = SubmitMessage::Wake(Wake {
            run_id: *run,
            tenant: tenant.clone(),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        });
        self.submit(&wake, &SubmitMeta::default()).await.map(|_| ())
    }

    /// Schedules a wake of `run` at `at` (a JetStream message schedule; it replaces the run's
    /// previous one). The run's orchestrator then ends it `expired` if it still waits.
    pub async fn schedule_wake(
        &self,
        tenant: &Tenant,
        run: &crate::id::RunId,
        at: time::OffsetDateTime,
    ) -> Result<()> {
        let subject = String::from(subject::schedule(tenant, run));
        let at = at
            .to_offset(time::UtcOffset::UTC)
            .replace_nanosecond(0)
            .unwrap_or(at)
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| Error::Decode {
                what: "schedule time",
                reason: e.to_string(),
            })?;
        let wake = SubmitMessage::Wake(Wake {
            run_id: *run,
            tenant: tenant.clone(),
            nonce: format!("expiry-{}", at),
        });
        let mut h = HeaderMap::new();
        h.insert(
            headers::SCHEMA,
            crate::envelope::SCHEMA_VERSION.to_string().as_str(),
        );
        h.insert(headers::TENANT, tenant.as_str());
        h.insert(
            async_nats::header::NATS_SCHEDULE,
            format!("@at {at}").as_str(),
        );
        h.insert(
            async_nats::header::NATS_SCHEDULE_TARGET,
            String::from(subject::runs_submit(tenant)).as_str(),
        );
        self.js
            .publish_with_headers(subject.clone(), h, wake.encode())
            .await
            .map_err(|e| Error::nats(format!("schedule {subject}"), e))?
            .await
            .map_err(|e| Error::nats(format!("schedule {subject}"), e))?;
        Ok(())
    }

    /// Binds (creating if needed) the pool's durable consumer and streams its deliveries.
    /// `batch` bounds how many messages are pulled ahead of processing.
    pub async fn run_queue(
        &self,
        opts: &QueueOptions,
        batch: usize,
    ) -> Result<impl Stream<Item = Result<Delivery>> + Send + Unpin + 'static> {
        let stream = self
            .js
            .get_stream_no_info(STREAM_RUNS)
            .await
            .map_err(|e| Error::nats("open runs stream", e))?;
        // Created, or updated in place (a changed ack wait applies to the whole pool: every
        // orchestrator of a pool should run with the same one).
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(ORCHESTRATOR_DURABLE.to_owned()),
                filter_subject: subject::filter::RUNS_SUBMIT.to_owned(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: opts.ack_wait,
                max_ack_pending: opts.max_ack_pending,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::nats("bind orchestrator consumer", e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch.max(1))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| Error::nats("pull runs", e))?;
        Ok(messages.map(|m| {
            m.map(|msg| Delivery { msg })
                .map_err(|e| Error::nats("pull runs", e))
        }))
    }

    /// Publishes raw bytes to a JetStream subject and waits for the ack (operator tools and
    /// tests: e.g. proving that garbage on a runs subject is dead-lettered).
    pub async fn publish_raw(&self, subject: &Subject, payload: Bytes) -> Result<u64> {
        self.js
            .publish(String::from(subject.clone()), payload)
            .await
            .map_err(|e| Error::nats(format!("publish to {subject}"), e))?
            .await
            .map(|ack| ack.sequence)
            .map_err(|e| Error::nats(format!("publish to {subject}"), e))
    }

    /// Stores a message that could not be processed in `AGENTOS_DLQ`, untouched, with the reason
    /// in headers. Never drops: a failure to dead-letter is returned so the caller can nak.
    pub async fn dead_letter(
        &self,
        tenant: Option<&Tenant>,
        kind: DlqKind,
        original_subject: &str,
        error: &Error,
        payload: Bytes,
    ) -> Result<()> {
        let subject = String::from(subject::dlq(tenant, kind));
        let mut h = HeaderMap::new();
        h.insert(headers::DLQ_SUBJECT, original_subject);
        h.insert(headers::DLQ_CODE, error.code());
        // Header values must be one line.
        let reason: String = error.to_string().replace(['\r', '\n'], " ");
        h.insert(headers::DLQ_REASON, reason.as_str());
        self.js
            .publish_with_headers(subject.clone(), h, payload)
            .await
            .map_err(|e| Error::nats(format!("dead-letter to {subject}"), e))?
            .await
            .map_err(|e| Error::nats(format!("dead-letter to {subject}"), e))?;
        crate::metric_definitions::dead_lettered(kind.as_str(), error.code());
        tracing::warn!(%subject, original = original_subject, code = error.code(), %reason, "dead-lettered");
        Ok(())
    }
}
