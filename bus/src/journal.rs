//! A run's journal: its events on `agentos.events.<tenant>.<run_id>` in stream `AGENTOS_EVENTS`.
//!
//! Appends carry `Nats-Expected-Last-Subject-Sequence`, so of two orchestrators racing to write
//! the next step exactly one succeeds; the loser gets [`Error::WrongLastSequence`] and must
//! re-read the journal. Readers follow a run through a short-lived ordered consumer.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, context::PublishErrorKind};
use futures::{Stream, StreamExt};

use crate::envelope::{Envelope, Event};
use crate::headers;
use crate::id::{RunId, Tenant};
use crate::provision::STREAM_EVENTS;
use crate::{Bus, Error, Result, subject};

/// An event and the stream sequence it was stored at (the token for the next append).
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub stream_seq: u64,
    pub event: Event,
}

/// A guarded append whose ack has not been awaited yet; see [`Bus::send_append`].
pub struct PendingAppend {
    subject: String,
    expected_last: u64,
    ack: jetstream::context::PublishAckFuture,
}

impl PendingAppend {
    /// Waits for the server to store the event; returns its stream sequence.
    pub async fn stored(self) -> Result<u64> {
        let (subject, expected) = (self.subject, self.expected_last);
        self.ack
            .await
            .map(|ack| ack.sequence)
            .map_err(|e| publish_error(&subject, Some(expected), e))
    }
}

fn publish_error(
    subject: &str,
    expected: Option<u64>,
    e: jetstream::context::PublishError,
) -> Error {
    match e.kind() {
        PublishErrorKind::WrongLastSequence => Error::WrongLastSequence {
            subject: subject.to_owned(),
            expected: expected.unwrap_or_default(),
        },
        PublishErrorKind::TimedOut => Error::TimedOut {
            op: format!("publish to {subject}"),
            after: Duration::ZERO,
        },
        PublishErrorKind::StreamNotFound => Error::Missing {
            kind: "stream",
            name: format!("for subject {subject}"),
        },
        _ => Error::nats(format!("publish to {subject}"), e),
    }
}

/// Appends carry no `Nats-Msg-Id`: a dedup hit would answer "stored" for a different event at
/// the same position. The expected sequence already makes a retried append safe (it fails, and
/// the caller re-reads the journal and finds its own event).
fn event_headers(event: &Event) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        headers::SCHEMA,
        crate::envelope::SCHEMA_VERSION.to_string().as_str(),
    );
    h.insert(headers::TENANT, event.tenant.as_str());
    h
}

impl Bus {
    /// Appends `event` only if the run's last stored event is at `expected_last` (0: the journal
    /// is empty). Returns the new stream sequence.
    pub async fn append(&self, event: &Event, expected_last: u64) -> Result<u64> {
        self.send_append(event, expected_last).await?.stored().await
    }

    /// Sends a guarded append without waiting for its ack, so the caller can go on (streamed
    /// `model.delta` events: receive the next token while this one is stored). The guard is the
    /// same as [`Bus::append`]'s, so a writer that lost the run can never slip an event in.
    pub async fn send_append(&self, event: &Event, expected_last: u64) -> Result<PendingAppend> {
        let subject = String::from(subject::events(&event.tenant, &event.run_id));
        let publish = jetstream::message::PublishMessage::build()
            .headers(event_headers(event))
            .payload(event.encode())
            .expected_last_subject_sequence(expected_last);
        let ack = self
            .js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| publish_error(&subject, Some(expected_last), e))?;
        Ok(PendingAppend {
            subject,
            expected_last,
            ack,
        })
    }

    /// The whole journal of a run as stored now (empty if none).
    pub async fn read_journal(&self, tenant: &Tenant, run: &RunId) -> Result<Vec<Stored>> {
        let mut out = Vec::new();
        let Some(mut messages) = self.journal_consumer(tenant, run).await? else {
            return Ok(out);
        };
        while let Some(item) = messages.next().await {
            let (stored, pending) = item?;
            out.push(stored);
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Follows a run's journal from the start: stored events, then live ones, forever. Undecodable
    /// entries are reported as errors in the stream and do not end it.
    pub async fn follow_journal(
        &self,
        tenant: &Tenant,
        run: &RunId,
    ) -> Result<impl Stream<Item = Result<Stored>> + Send + Unpin + 'static> {
        self.follow_journal_after(tenant, run, 0).await
    }

    /// Like [`Bus::follow_journal`], from the event after `after` (event `seq`, from 1): the read
    /// starts at [`Bus::journal_start`], so earlier events are never fetched.
    pub async fn follow_journal_after(
        &self,
        tenant: &Tenant,
        run: &RunId,
        after: u64,
    ) -> Result<impl Stream<Item = Result<Stored>> + Send + Unpin + 'static> {
        let start = self.journal_start(tenant, run, after).await?;
        let consumer = self.events_consumer(tenant, run, start).await?;
        let op = format!("follow {}", subject::events(tenant, run));
        let messages = consumer
            .messages()
            .await
            .map_err(|e| Error::nats(op.clone(), e))?;
        Ok(messages.map(move |m| decode_stored(&op, m).map(|(s, _)| s)))
    }

    /// The last event of a run, if any: one direct get.
    pub async fn last_event(&self, tenant: &Tenant, run: &RunId) -> Result<Option<Stored>> {
        let subject = String::from(subject::events(tenant, run));
        let stream = self.events_stream().await?;
        match stream.direct_get_last_for_subject(subject.clone()).await {
            Ok(msg) => {
                let schema = msg.headers.get(headers::SCHEMA).map(|v| v.as_str());
                Ok(Some(Stored {
                    stream_seq: msg.sequence,
                    event: Event::decode(schema, &msg.payload)?,
                }))
            }
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::nats(format!("last event on {subject}"), e)),
        }
    }

    /// The stream sequence at which a run's events after event `after` begin: the stored event
    /// `after + 1`, or one past the last event if it is not stored yet; 0 means "from the first"
    /// (`after` is 0, or nothing is stored). Found with direct gets: the last event, then a
    /// search over the stream sequences between the first and the last event (interpolated,
    /// halving at worst), so it costs a few round trips whatever the journal's length.
    pub async fn journal_start(&self, tenant: &Tenant, run: &RunId, after: u64) -> Result<u64> {
        if after == 0 {
            return Ok(0);
        }
        let target = after.saturating_add(1);
        let Some(last) = self.last_event(tenant, run).await? else {
            return Ok(0);
        };
        if last.event.seq < target {
            return Ok(last.stream_seq + 1);
        }
        let subject = subject::events(tenant, run);
        let stream = self.events_stream().await?;
        let next = |from: u64| {
            let (stream, subject) = (&stream, &subject);
            async move {
                let msg = stream
                    .direct_get_next_for_subject(subject.clone(), Some(from))
                    .await
                    .map_err(|e| Error::nats(format!("next event on {subject}"), e))?;
                let schema = msg.headers.get(headers::SCHEMA).map(|v| v.as_str());
                Ok::<_, Error>((msg.sequence, Event::decode(schema, &msg.payload)?.seq))
            }
        };
        let first = next(1).await?;
        if first.1 >= target {
            return Ok(first.0);
        }
        // Subject events at stream seqs <= lo are before the target; the one at hi is the target
        // or later; stream seqs in (ub, hi) hold none of this run's events. Event seqs grow with
        // stream seqs, so guess by interpolation, alternating with halving for the worst case.
        let (mut lo, mut lo_e) = first;
        let (mut hi, mut hi_e) = (last.stream_seq, last.event.seq);
        let mut ub = hi - 1;
        let mut halve = false;
        while ub > lo {
            let guess = if halve || hi_e <= lo_e {
                lo + (ub - lo).div_ceil(2)
            } else {
                let span =
                    u128::from(hi - lo) * u128::from(target - lo_e) / u128::from(hi_e - lo_e);
                lo.saturating_add(u64::try_from(span).unwrap_or(u64::MAX))
            };
            halve = !halve;
            let probe = guess.clamp(lo + 1, ub);
            let (seq, event_seq) = next(probe).await?;
            if event_seq >= target {
                (hi, hi_e, ub) = (seq, event_seq, probe - 1);
                if event_seq == target {
                    break;
                }
            } else {
                (lo, lo_e) = (seq, event_seq);
            }
        }
        Ok(hi)
    }

    async fn events_stream(&self) -> Result<jetstream::stream::Stream<()>> {
        self.js
            .get_stream_no_info(STREAM_EVENTS)
            .await
            .map_err(|e| Error::nats("open events stream", e))
    }

    async fn events_consumer(
        &self,
        tenant: &Tenant,
        run: &RunId,
        start: u64,
    ) -> Result<consumer::Consumer<consumer::pull::OrderedConfig>> {
        let subject = String::from(subject::events(tenant, run));
        self.events_stream()
            .await?
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: match start {
                    0 => consumer::DeliverPolicy::All,
                    start_sequence => consumer::DeliverPolicy::ByStartSequence { start_sequence },
                },
                ..Default::default()
            })
            .await
            .map_err(|e| Error::nats(format!("consume {subject}"), e))
    }

    /// A stream of `(event, pending)` for a bounded read, or `None` when the journal is empty.
    async fn journal_consumer(
        &self,
        tenant: &Tenant,
        run: &RunId,
    ) -> Result<Option<impl Stream<Item = Result<(Stored, u64)>> + Send + Unpin + 'static>> {
        let consumer = self.events_consumer(tenant, run, 0).await?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(None);
        }
        let op = format!("read {}", subject::events(tenant, run));
        let messages = consumer
            .messages()
            .await
            .map_err(|e| Error::nats(op.clone(), e))?;
        Ok(Some(messages.map(move |m| decode_stored(&op, m))))
    }
}

fn decode_stored<E>(
    op: &str,
    msg: std::result::Result<jetstream::Message, E>,
) -> Result<(Stored, u64)>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let msg = msg.map_err(|e| Error::nats(op.to_owned(), e))?;
    let info = msg.info().map_err(|e| Error::nats(op.to_owned(), e))?;
    let (stream_seq, pending) = (info.stream_sequence, info.pending);
    let schema = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::SCHEMA))
        .map(|v| v.as_str());
    let event = Event::decode(schema, &msg.payload)?;
    Ok((Stored { stream_seq, event }, pending))
}
