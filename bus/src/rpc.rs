//! Core request/reply: callers get a stream of replies on a private inbox (model calls stream
//! chunks, tool calls answer once), and cancels are broadcast; the serving side, where workers
//! register as NATS micro services in a queue group (so `nats micro ls` and `agentos status` see
//! every instance), is [`service`].

mod service;

pub use service::{
    EndpointSpec, Incoming, MODEL_SERVICE, Service, ServiceInstance, ServiceSpec, TOOL_SERVICE,
    TOOL_SPEC_KEY, model_backend_key,
};

use std::time::Duration;

use async_nats::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::id::{RunId, Tenant};
use crate::subject::{self, Subject};
use crate::{Bus, Error, Result, headers};

/// Context that travels with a call in headers.
#[derive(Clone, Debug)]
pub struct CallMeta {
    pub tenant: Tenant,
    pub request_id: Option<String>,
    /// The authenticated caller behind the call, when there is one.
    pub principal: Option<String>,
    /// The caller's roles (only names of `[A-Za-z0-9_.:-]` travel; others are dropped).
    pub roles: Vec<String>,
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
}

impl CallMeta {
    pub fn new(tenant: Tenant) -> Self {
        Self {
            tenant,
            request_id: None,
            principal: None,
            roles: Vec::new(),
            idempotency_key: None,
            traceparent: None,
        }
    }

    fn to_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            headers::SCHEMA,
            crate::envelope::SCHEMA_VERSION.to_string().as_str(),
        );
        h.insert(headers::TENANT, self.tenant.as_str());
        if let Some(v) = &self.request_id {
            h.insert(headers::REQUEST_ID, v.as_str());
        }
        if let Some(v) = &self.principal {
            h.insert(headers::PRINCIPAL, v.as_str());
        }
        let roles: Vec<&str> = self
            .roles
            .iter()
            .map(String::as_str)
            .filter(|r| {
                !r.is_empty()
                    && r.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
            })
            .collect();
        if !roles.is_empty() {
            h.insert(headers::ROLES, roles.join(",").as_str());
        }
        if let Some(v) = &self.idempotency_key {
            h.insert(headers::IDEMPOTENCY_KEY, v.as_str());
        }
        match &self.traceparent {
            Some(v) => h.insert(headers::TRACEPARENT, v.as_str()),
            None => crate::trace::inject(&mut h),
        }
        h
    }
}

/// A reply payload with its schema header.
#[derive(Clone, Debug)]
pub struct Reply {
    pub schema: Option<String>,
    pub payload: Bytes,
}

/// How long a call whose request found no subscriber is sent again before it fails
/// [`Error::NoResponders`]: when a NATS node of a cluster dies, the workers connected to it are
/// unsubscribed until they reconnect to another node (well under a second on loopback). A "no
/// responders" status means nobody received the request, so sending it again cannot run
/// anything twice.
pub const NO_RESPONDERS_GRACE: Duration = Duration::from_secs(2);
const RESEND_EVERY: Duration = Duration::from_millis(100);
/// How often a call waiting for its first reply checks whether its connection was re-made.
const RECONNECT_CHECK: Duration = Duration::from_millis(250);

/// The replies to one call, in order.
///
/// Three failovers are handled before the first reply: a request nobody was subscribed to is
/// sent again for up to [`NO_RESPONDERS_GRACE`]; when the caller's own connection was re-made
/// since the request went out (its NATS node died: the request, or the replies sent to the old
/// connection, may be lost), the request is sent again on a fresh inbox, so replies to the first
/// one, if any come, are never mixed in; and a call that hears nothing at all within its timeout
/// is sent again once, on a fresh inbox, and given the timeout again (the request or the reply
/// went through another process's node as it died: workers answer within their own, shorter
/// deadlines — a model route's upstream timeout, a tool's `timeout_ms` — so total silence means
/// a lost message, not a slow worker). Callers make their calls safe to repeat (tool calls carry
/// an idempotency key the tool worker claims; model calls are pure). After the first reply
/// nothing is resent.
pub struct Replies {
    subject: String,
    sub: async_nats::Subscriber,
    request: Request,
    /// Whether a reply came: from then on the call is never sent again.
    answered: bool,
    /// Whether the call was already sent again after a silent timeout (once only).
    resent_after_silence: bool,
}

struct Request {
    client: async_nats::Client,
    inbox: String,
    headers: HeaderMap,
    payload: Bytes,
    /// The end of the no-responders grace.
    until: tokio::time::Instant,
    /// The client's connection count when the request was last sent.
    connects: u64,
}

impl Request {
    fn connects_now(&self) -> u64 {
        self.client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn send(&mut self, subject: &str) -> Result<()> {
        self.connects = self.connects_now();
        self.client
            .publish_with_reply_and_headers(
                subject.to_owned(),
                self.inbox.clone(),
                self.headers.clone(),
                self.payload.clone(),
            )
            .await
            .map_err(|e| Error::nats(format!("request {subject}"), e))
    }
}

impl Replies {
    /// The next reply, waiting at most `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Reply> {
        let mut deadline = tokio::time::Instant::now() + timeout;
        let msg = loop {
            let wait = match self.answered {
                true => deadline,
                false => deadline.min(tokio::time::Instant::now() + RECONNECT_CHECK),
            };
            let next = tokio::time::timeout_at(wait, self.sub.next()).await;
            let msg = match next {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    return Err(Error::nats(
                        format!("reply from {}", self.subject),
                        "subscription closed",
                    ));
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    if !self.answered && !self.resent_after_silence {
                        self.resent_after_silence = true;
                        tracing::warn!(
                            subject = %self.subject, after = ?timeout,
                            "no reply at all; the call may have been lost with a NATS node: sent again once"
                        );
                        self.resend_fresh().await?;
                        deadline = tokio::time::Instant::now() + timeout;
                        continue;
                    }
                    return Err(Error::TimedOut {
                        op: format!("reply from {}", self.subject),
                        after: timeout,
                    });
                }
                Err(_) => {
                    if self.request.connects_now() != self.request.connects {
                        self.resend_fresh().await?;
                    }
                    continue;
                }
            };
            if msg.status != Some(StatusCode::NO_RESPONDERS) {
                self.answered = true;
                break msg;
            }
            if self.answered || tokio::time::Instant::now() + RESEND_EVERY >= self.request.until {
                return Err(Error::NoResponders {
                    subject: self.subject.clone(),
                });
            }
            tokio::time::sleep(RESEND_EVERY).await;
            self.request.send(&self.subject).await?;
            tracing::debug!(subject = %self.subject, "no responders yet; request sent again");
        };
        Ok(Reply {
            schema: msg
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::SCHEMA))
                .map(|v| v.as_str().to_owned()),
            payload: msg.payload,
        })
    }
}

impl Replies {
    /// Sends the request again on a fresh inbox (the old subscription is dropped).
    async fn resend_fresh(&mut self) -> Result<()> {
        let inbox = self.request.client.new_inbox();
        self.sub = self
            .request
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::nats(format!("subscribe {inbox}"), e))?;
        self.request.inbox = inbox;
        self.request.send(&self.subject).await?;
        tracing::info!(subject = %self.subject, "connection re-made before the first reply; request sent again");
        Ok(())
    }
}

impl Bus {
    /// Sends a request and returns its reply stream. Dropping [`Replies`] unsubscribes.
    pub async fn call(&self, subject: Subject, meta: &CallMeta, payload: Bytes) -> Result<Replies> {
        let subject = String::from(subject);
        let inbox = self.client.new_inbox();
        let sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::nats(format!("subscribe {inbox}"), e))?;
        let mut request = Request {
            client: self.client.clone(),
            inbox,
            headers: meta.to_headers(),
            payload,
            until: tokio::time::Instant::now() + NO_RESPONDERS_GRACE,
            connects: 0,
        };
        request.send(&subject).await?;
        Ok(Replies {
            subject,
            sub,
            request,
            answered: false,
            resent_after_silence: false,
        })
    }

    /// Broadcasts a cancel for a run to every orchestrator and tool worker.
    pub async fn publish_cancel(&self, tenant: &Tenant, run: &RunId) -> Result<()> {
        let subject = String::from(subject::cancel(tenant, run));
        self.client
            .publish(subject.clone(), Bytes::new())
            .await
            .map_err(|e| Error::nats(format!("publish {subject}"), e))?;
        self.client
            .flush()
            .await
            .map_err(|e| Error::nats("flush cancel", e))?;
        // A run waiting in `requires_action` has no orchestrator to hear the signal: wake one.
        self.wake(tenant, run).await
    }

    /// Every cancel on the bus, parsed; malformed subjects are skipped with a warning.
    pub async fn cancels(
        &self,
    ) -> Result<impl Stream<Item = (Tenant, RunId)> + Send + Unpin + 'static> {
        let sub = self
            .client
            .subscribe(subject::filter::CANCEL)
            .await
            .map_err(|e| Error::nats("subscribe cancels", e))?;
        Ok(sub.filter_map(|m| {
            let parsed = subject::parse_cancel(m.subject.as_str());
            if parsed.is_none() {
                tracing::warn!(subject = %m.subject, "ignoring malformed cancel subject");
            }
            futures::future::ready(parsed)
        }))
    }
}
