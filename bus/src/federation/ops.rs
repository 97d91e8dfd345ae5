//! Federation on the bus: the three streams, publishing to a peer, the inbox consumer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::{INBOX_DURABLE, STREAM_ANNOUNCE, STREAM_IN, STREAM_OUT};
use crate::envelope::Envelope;
use crate::id::{NodeId, Tenant};
use crate::subject::{self, FedIn, FedKind};
use crate::{Bus, Error, Kv, Result, headers};

/// This node and the peers it sources from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub node: NodeId,
    pub peers: Vec<NodeId>,
}

const WEEK: Duration = Duration::from_secs(7 * 86_400);

impl Topology {
    fn out_stream(&self) -> stream::Config {
        stream::Config {
            name: STREAM_OUT.to_owned(),
            subjects: vec![subject::filter::FED_OUT.to_owned()],
            max_age: WEEK,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }

    fn announce_stream(&self) -> stream::Config {
        stream::Config {
            name: STREAM_ANNOUNCE.to_owned(),
            subjects: vec![subject::filter::FED_ANNOUNCE.to_owned()],
            max_messages_per_subject: 1,
            ..Default::default()
        }
    }

    /// The inbox: per peer, its forwards to us and its announcements, sourced across the link.
    fn in_stream(&self) -> stream::Config {
        let external = |peer: &NodeId| {
            Some(stream::External {
                api_prefix: format!("$JS.{peer}.API"),
                delivery_prefix: None,
            })
        };
        let mut sources = Vec::new();
        for peer in &self.peers {
            sources.push(stream::Source {
                name: STREAM_OUT.to_owned(),
                external: external(peer),
                subject_transforms: vec![stream::SubjectTransform {
                    source: subject::fed_out_to(&self.node).to_string(),
                    destination: subject::fed_in_from(peer).to_string(),
                }],
                ..Default::default()
            });
            sources.push(stream::Source {
                name: STREAM_ANNOUNCE.to_owned(),
                external: external(peer),
                subject_transforms: vec![stream::SubjectTransform {
                    source: subject::fed_announce(peer).to_string(),
                    destination: subject::fed_in_peer(peer).to_string(),
                }],
                ..Default::default()
            });
        }
        // Limits, not a work queue: after a restart the server resumes each source after the
        // last message it finds from it in this stream, so they must stay (measured: a work
        // queue whose sourced messages were consumed resumed past a forward published while
        // this server was down, and lost it).
        stream::Config {
            name: STREAM_IN.to_owned(),
            max_age: WEEK,
            duplicate_window: Duration::from_secs(120),
            sources: Some(sources),
            ..Default::default()
        }
    }
}

/// One message of `AGENTOS_FED_IN`.
pub struct FedDelivery {
    msg: jetstream::Message,
}

impl FedDelivery {
    pub fn subject(&self) -> &str {
        self.msg.subject.as_str()
    }

    /// What the subject says: whose announcement, or which peer sent what for which tenant.
    pub fn parsed(&self) -> Option<FedIn> {
        subject::parse_fed_in(self.subject())
    }

    pub fn decode<T: Envelope>(&self) -> Result<T> {
        let schema = self
            .msg
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::SCHEMA))
            .map(|v| v.as_str());
        T::decode(schema, &self.msg.payload)
    }

    /// The `AgentOS-Auth` header: the bearer token of the caller at the origin.
    pub fn auth(&self) -> Option<&str> {
        self.msg
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::AUTH))
            .map(|v| v.as_str())
    }

    /// The run a message is about, from its `Nats-Msg-Id` (`<run>`, `cancel-<run>`,
    /// `answer-<run>:cont:<digest>`, `ev-<run>-<seq>`); none for announcements.
    pub fn run_key(&self) -> Option<&str> {
        let id = self.msg.headers.as_ref()?.get(headers::MSG_ID)?.as_str();
        let id = id
            .strip_prefix("cancel-")
            .or_else(|| id.strip_prefix("answer-"))
            .or_else(|| id.strip_prefix("ev-"))
            .unwrap_or(id);
        id.get(..36)
    }

    pub fn payload(&self) -> &Bytes {
        &self.msg.payload
    }

    pub async fn ack(&self) -> Result<()> {
        self.msg
            .ack()
            .await
            .map_err(|e| Error::nats("ack federation message", e))
    }

    pub async fn nak(&self, delay: Duration) -> Result<()> {
        self.msg
            .ack_with(jetstream::AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| Error::nats("nak federation message", e))
    }
}

impl Bus {
    /// Creates or updates the three federation streams for `topology` (a changed peer list
    /// changes the inbox's sources). Federation owns them, so they are reconciled, not drift.
    pub async fn provision_federation(&self, topology: &Topology) -> Result<()> {
        for cfg in [
            topology.out_stream(),
            topology.announce_stream(),
            topology.in_stream(),
        ] {
            let name = cfg.name.clone();
            self.js
                .create_or_update_stream(cfg)
                .await
                .map_err(|e| Error::nats(format!("provision stream {name}"), e))?;
        }
        Ok(())
    }

    /// Publishes `msg` for peer `to` into `AGENTOS_FED_OUT` with `Nats-Msg-Id = msg_id` and the
    /// caller's token, retrying a timed-out publish with the same id.
    pub async fn fed_publish<T: Envelope>(
        &self,
        to: &NodeId,
        kind: FedKind,
        tenant: &Tenant,
        msg: &T,
        msg_id: &str,
        auth: Option<&str>,
    ) -> Result<()> {
        let subject = String::from(subject::fed_out(to, kind, tenant));
        let mut h = crate::work::envelope_headers(tenant, msg_id);
        if let Some(token) = auth {
            h.insert(headers::AUTH, token);
        }
        self.publish_once(subject, h, msg.encode(), "forward")
            .await
            .map(|_| ())
    }

    /// Replaces this node's announcement in `AGENTOS_FED_ANNOUNCE`.
    pub async fn fed_announce(&self, a: &super::Announcement) -> Result<()> {
        let subject = String::from(subject::fed_announce(&a.node));
        self.js
            .publish(subject.clone(), a.encode())
            .await
            .map_err(|e| Error::nats(format!("publish to {subject}"), e))?
            .await
            .map_err(|e| Error::nats(format!("publish to {subject}"), e))?;
        Ok(())
    }

    /// Binds the inbox's durable consumer and streams its messages.
    pub async fn fed_inbox(
        &self,
    ) -> Result<impl Stream<Item = Result<FedDelivery>> + Send + Unpin + 'static> {
        let stream = self
            .js
            .get_stream_no_info(STREAM_IN)
            .await
            .map_err(|e| Error::nats("open federation inbox", e))?;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(INBOX_DURABLE.to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(10),
                max_ack_pending: 1_000,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::nats("bind federation consumer", e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(64)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| Error::nats("pull federation inbox", e))?;
        Ok(messages.map(|m| {
            m.map(|msg| FedDelivery { msg })
                .map_err(|e| Error::nats("pull federation inbox", e))
        }))
    }

    /// How long ago each inbox source last delivered (`active`), by the subject it lands on
    /// (`agentos.fed.in.<peer>.…`): the link's health as the server sees it (a source's `lag`
    /// stays stale while the link is down, `active` grows).
    pub async fn fed_source_activity(&self) -> Result<Vec<(String, Option<Duration>)>> {
        let mut stream = self
            .js
            .get_stream(STREAM_IN)
            .await
            .map_err(|e| Error::nats("open federation inbox", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| Error::nats("federation inbox info", e))?;
        Ok(info
            .sources
            .iter()
            .map(|s| {
                let dest = s
                    .subject_transforms
                    .first()
                    .map(|t| t.destination.clone())
                    .unwrap_or_else(|| s.name.clone());
                (dest, s.active)
            })
            .collect())
    }
}

impl Bus {
    /// Every peer this cluster heard from (`agentos-peers`), in node order; `None` when the
    /// cluster does not federate (no federation inbox).
    pub async fn fed_peers(&self) -> Result<Option<Vec<super::PeerRecord>>> {
        if let Err(e) = self.js.get_stream(STREAM_IN).await {
            return match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(Error::nats("open federation inbox", e)),
            };
        }
        let peers = self.kv(crate::provision::Bucket::Peers).await?;
        let mut out = Vec::new();
        for key in peers.all_keys().await? {
            if let Some(v) = peers.get_as::<super::PeerRecord>(&key).await? {
                out.push(v.value);
            }
        }
        out.sort_by(|a, b| a.announcement.node.cmp(&b.announcement.node));
        Ok(Some(out))
    }
}

impl Kv {
    /// Every live entry under `prefix.` (`out`, `in` of `agentos-fwd`), decoded; entries that do
    /// not decode are skipped with a warning.
    pub async fn entries_under<T: Envelope>(&self, prefix: &str) -> Result<Vec<T>> {
        let entries = self.entries_matching(&format!("{prefix}.>")).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, value)| match T::decode(None, &value) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "skipping undecodable entry");
                    None
                }
            })
            .collect())
    }
}
