//! The serving side of request/reply: workers register as NATS micro services (one endpoint per
//! subject or tool, in the queue group `q`), read their requests, reply in chunks or once, and
//! dead-letter what they cannot read; and every running instance is found through `$SRV.INFO`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::service::ServiceExt;
use async_nats::{HeaderMap, service};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use crate::envelope::{Envelope, ToolSpec};
use crate::id::{Tenant, ToolName};
use crate::subject::{self, Subject};
use crate::{Bus, Error, Result, headers};

impl Bus {
    /// Registers a micro service with one endpoint on `subject` (wildcards allowed) in the
    /// service's queue group.
    pub async fn serve(&self, spec: &ServiceSpec) -> Result<Service> {
        let op = || format!("start service {}", spec.name);
        let svc = self
            .client
            .service_builder()
            .description(spec.description.clone())
            .metadata(spec.metadata.clone())
            .start(spec.name.clone(), spec.version.clone())
            .await
            .map_err(|e| Error::nats(op(), e))?;
        let mut endpoints = Vec::with_capacity(spec.endpoints.len() + spec.tools.len());
        let mut names = std::collections::HashSet::new();
        let tools = spec.tools.iter().map(|t| {
            let metadata = HashMap::from([(
                TOOL_SPEC_KEY.to_owned(),
                String::from_utf8_lossy(&t.encode()).into_owned(),
            )]);
            (subject::tool_filter(&t.name), metadata)
        });
        let plain = spec
            .endpoints
            .iter()
            .map(|e| (e.subject.clone(), e.metadata.clone()));
        for (i, (subject, metadata)) in plain.chain(tools).enumerate() {
            // Endpoint names allow only [A-Za-z0-9_-], and must be unique (`a.b`, `a_b`).
            let mut name: String = subject
                .as_str()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if !names.insert(name.clone()) {
                name = format!("{name}-{i}");
            }
            endpoints.push(
                svc.endpoint_builder()
                    .name(name)
                    .metadata(metadata)
                    .add(subject.as_str().to_owned())
                    .await
                    .map_err(|e| Error::nats(op(), e))?,
            );
        }
        Ok(Service {
            svc,
            requests: futures::stream::select_all(endpoints),
        })
    }

    /// Every running AgentOS service instance, found with `$SRV.INFO` (waits `wait` for replies).
    pub async fn discover(&self, wait: Duration) -> Result<Vec<ServiceInstance>> {
        self.discover_at(subject::service_info(None), wait, wait)
            .await
    }

    /// The running instances of one service: waits up to `first` for a first answer, then
    /// until `idle` passes without another (instances answer within a round trip of each
    /// other, so a short `idle` finds them all without a long fixed wait).
    pub async fn discover_service(
        &self,
        name: &str,
        first: Duration,
        idle: Duration,
    ) -> Result<Vec<ServiceInstance>> {
        self.discover_at(subject::service_info(Some(name)), first, idle)
            .await
    }

    /// Every tool some running service declares (a [`ToolSpec`] in its endpoint's
    /// [`TOOL_SPEC_KEY`] metadata), whatever the service's name or language, by name. Waits like
    /// [`Bus::discover_service`]. An endpoint whose declaration does not decode, or does not
    /// describe the endpoint's own subject, is skipped with a warning; when two services declare
    /// one tool differently, the first by service name and id wins.
    pub async fn discover_tools(
        &self,
        first: Duration,
        idle: Duration,
    ) -> Result<std::collections::BTreeMap<ToolName, ToolSpec>> {
        let infos = self
            .discover_infos(subject::service_info(None), first, idle)
            .await?;
        let mut tools = std::collections::BTreeMap::new();
        for info in infos {
            for endpoint in info.endpoints {
                let Some(declared) = endpoint.metadata.get(TOOL_SPEC_KEY) else {
                    continue;
                };
                match ToolSpec::decode(None, declared.as_bytes()) {
                    Ok(spec) if subject::tool_filter(&spec.name).as_str() == endpoint.subject => {
                        tools.entry(spec.name.clone()).or_insert(spec);
                    }
                    Ok(spec) => tracing::warn!(
                        service = %info.name, endpoint = %endpoint.subject, tool = %spec.name,
                        "ignoring a tool declaration for another endpoint's subject"
                    ),
                    Err(e) => tracing::warn!(
                        service = %info.name, endpoint = %endpoint.subject, error = %e,
                        "ignoring an undecodable tool declaration"
                    ),
                }
            }
        }
        Ok(tools)
    }

    async fn discover_at(
        &self,
        subject: Subject,
        first: Duration,
        idle: Duration,
    ) -> Result<Vec<ServiceInstance>> {
        Ok(self
            .discover_infos(subject, first, idle)
            .await?
            .into_iter()
            .map(|info| ServiceInstance {
                endpoint_metadata: info
                    .endpoints
                    .iter()
                    .filter(|e| !e.metadata.is_empty())
                    .map(|e| (e.subject.clone(), e.metadata.clone()))
                    .collect(),
                name: info.name,
                id: info.id,
                version: info.version,
                endpoints: info.endpoints.into_iter().map(|e| e.subject).collect(),
                metadata: info.metadata,
            })
            .collect())
    }

    async fn discover_infos(
        &self,
        subject: Subject,
        first: Duration,
        idle: Duration,
    ) -> Result<Vec<service::Info>> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::nats("subscribe discovery", e))?;
        self.client
            .publish_with_reply(String::from(subject), inbox, Bytes::new())
            .await
            .map_err(|e| Error::nats("discover services", e))?;
        let mut out = Vec::new();
        let start = tokio::time::Instant::now();
        loop {
            // Never past `first` overall when it is the longer wait (plain `discover`).
            let deadline = if out.is_empty() || idle >= first {
                start + first
            } else {
                tokio::time::Instant::now() + idle
            };
            let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await else {
                break;
            };
            if let Ok(info) = serde_json::from_slice::<service::Info>(&msg.payload) {
                out.push(info);
            }
        }
        out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(out)
    }
}

/// The micro service name every model worker registers under, in any language.
pub const MODEL_SERVICE: &str = "agentos-model";

/// The micro service name the Rust tool worker registers under. Tools are found by their
/// endpoints' [`TOOL_SPEC_KEY`] metadata, so other workers may use any service name.
pub const TOOL_SERVICE: &str = "agentos-tool";

/// The endpoint metadata key holding a tool's declaration: its [`ToolSpec`] as JSON text.
pub const TOOL_SPEC_KEY: &str = "agentos.tool";

/// The model worker's service metadata key naming `model`'s backend (`model.<name>`).
pub fn model_backend_key(model: &crate::id::ModelName) -> String {
    format!("model.{model}")
}

#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Subjects to serve (wildcards allowed); empty for a discoverable process with no API.
    pub endpoints: Vec<EndpointSpec>,
    /// Tools to serve besides: one endpoint each, `agentos.tool.*.<tool>`, declaring the tool in
    /// its [`TOOL_SPEC_KEY`] metadata.
    pub tools: Vec<ToolSpec>,
    pub metadata: std::collections::HashMap<String, String>,
}

/// One endpoint of a service: its subject and its own metadata (a tool's definition, say).
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSpec {
    pub subject: Subject,
    pub metadata: std::collections::HashMap<String, String>,
}

impl From<Subject> for EndpointSpec {
    fn from(subject: Subject) -> Self {
        Self {
            subject,
            metadata: std::collections::HashMap::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceInstance {
    pub name: String,
    pub id: String,
    pub version: String,
    pub endpoints: Vec<String>,
    pub metadata: std::collections::HashMap<String, String>,
    /// Each endpoint's own metadata, by subject (endpoints without any are left out).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub endpoint_metadata:
        std::collections::BTreeMap<String, std::collections::HashMap<String, String>>,
}

/// A running service; `next` yields its requests.
pub struct Service {
    svc: service::Service,
    requests: futures::stream::SelectAll<service::endpoint::Endpoint>,
}

impl Service {
    /// The next request, or `None` once the service stopped. A service without endpoints never
    /// yields.
    pub async fn next(&mut self) -> Option<Incoming> {
        if self.requests.is_empty() {
            return std::future::pending().await;
        }
        self.requests.next().await.map(|req| Incoming { req })
    }

    pub async fn stop(self) -> Result<()> {
        self.svc
            .stop()
            .await
            .map_err(|e| Error::nats("stop service", e))
    }

    /// Stops the service and hands back the requests that had already reached it: read them
    /// until the stream ends (once the endpoints are unsubscribed), so a service replaced by
    /// another loses none.
    pub async fn retire(self) -> futures::stream::BoxStream<'static, Incoming> {
        let _ = self.svc.stop().await;
        self.requests.map(|req| Incoming { req }).boxed()
    }
}

/// One request to a service.
pub struct Incoming {
    req: service::Request,
}

impl Incoming {
    pub fn subject(&self) -> &str {
        self.req.message.subject.as_str()
    }

    pub fn payload(&self) -> &Bytes {
        &self.req.message.payload
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.req
            .message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }

    pub fn schema(&self) -> Option<&str> {
        self.header(headers::SCHEMA)
    }

    /// The tenant the call is for: the subject's third token, which NATS permissions vouch
    /// for. A call whose `AgentOS-Tenant` header names another tenant is refused.
    pub fn tenant(&self) -> Result<Tenant> {
        let tenant = subject::tenant_of(self.subject()).ok_or_else(|| {
            Error::decode(
                "request subject",
                format!("{} names no tenant", self.subject()),
            )
        })?;
        match self.header(headers::TENANT) {
            Some(claimed) if claimed != tenant.as_str() => Err(Error::TenantMismatch {
                what: "request",
                claimed: claimed.to_owned(),
                subject: self.subject().to_owned(),
            }),
            _ => Ok(tenant),
        }
    }

    /// The authenticated caller named by the edge, if any.
    /// The caller's trace context (W3C `traceparent`), the parent of this request's span.
    pub fn trace_context(&self) -> opentelemetry::Context {
        crate::trace::from_headers(self.req.message.headers.as_ref())
    }

    pub fn principal(&self) -> Option<&str> {
        self.header(headers::PRINCIPAL)
    }

    /// The caller's roles, as the edge or the orchestrator vouched for them.
    pub fn roles(&self) -> Vec<&str> {
        self.header(headers::ROLES)
            .map(|r| r.split(',').filter(|r| !r.is_empty()).collect())
            .unwrap_or_default()
    }

    /// Dead-letters this request (payload untouched, reason in headers) under the subject's
    /// tenant, or `_invalid`. A failure to dead-letter is logged: the caller still answers.
    pub async fn dead_letter(&self, bus: &Bus, kind: subject::DlqKind, err: &Error) {
        let tenant = subject::tenant_of(self.subject());
        if let Err(e) = bus
            .dead_letter(
                tenant.as_ref(),
                kind,
                self.subject(),
                err,
                self.payload().clone(),
            )
            .await
        {
            tracing::error!(error = %e, subject = self.subject(), "could not dead-letter a malformed request");
        }
    }

    /// Sends one reply message without ending the exchange (a streamed chunk).
    pub async fn chunk(&self, client: &Bus, payload: Bytes) -> Result<()> {
        let Some(reply) = self.req.message.reply.clone() else {
            return Ok(());
        };
        let mut h = HeaderMap::new();
        h.insert(
            headers::SCHEMA,
            crate::envelope::SCHEMA_VERSION.to_string().as_str(),
        );
        client
            .client
            .publish_with_headers(reply, h, payload)
            .await
            .map_err(|e| Error::nats("reply chunk", e))
    }

    /// Sends the final reply.
    pub async fn respond(&self, payload: Bytes) -> Result<()> {
        let mut h = HeaderMap::new();
        h.insert(
            headers::SCHEMA,
            crate::envelope::SCHEMA_VERSION.to_string().as_str(),
        );
        self.req
            .respond_with_headers(Ok(payload), h)
            .await
            .map_err(|e| Error::nats("respond", e))
    }
}
