//! Before a run starts: which agent it runs, whether its tenant may start it, and the audit
//! record of runs published straight onto the bus. Checked here, not only at the edge, because
//! direct NATS publishers never pass the edge; checked once, before `run.started`.

use agentos_bus::Standing;
use agentos_bus::envelope::{AgentSpec, AuditRecord, ErrorBody, RunRecord};

use super::drive::{Driver, Stop};
use super::port::Port;

impl<P: Port> Driver<'_, P> {
    /// The agent: the request's snapshot, else the definition `run.started` pinned, else the
    /// current one (a run not started yet). Resolved once per delivery.
    pub(super) async fn agent(&mut self) -> Result<Result<AgentSpec, ErrorBody>, Stop> {
        if let Some(agent) = &self.req.agent {
            return Ok(Ok(agent.clone()));
        }
        if let Some(agent) = self.state.pinned_agent() {
            return Ok(Ok(agent.clone()));
        }
        if let Some(resolved) = &self.agent {
            return Ok(resolved.clone());
        }
        let resolved = match self
            .port
            .agent(&self.req.tenant, &self.req.agent_id)
            .await?
        {
            Some(a) => Ok(a),
            None => Err(ErrorBody::new(
                "agent_not_found",
                format!("no agent {}", self.req.agent_id),
            )),
        };
        self.agent = Some(resolved.clone());
        Ok(resolved)
    }

    /// Before the run starts: the tenant first (an unregistered or disabled tenant learns
    /// nothing about agents), then the agent, then its entitlements. `None` once started.
    pub(super) async fn refusal_before_start(
        &self,
        agent: &Result<AgentSpec, ErrorBody>,
    ) -> Result<Option<ErrorBody>, Stop> {
        if self.state.has_started() || self.state.ended().is_some() {
            return Ok(None);
        }
        Ok(match agent {
            Ok(agent) => match self.admit(Some(agent)).await?.err() {
                None => self.reserve_budget(agent).await?,
                refused => refused,
            },
            Err(error) => Some(
                self.admit(None)
                    .await?
                    .err()
                    .unwrap_or_else(|| error.clone()),
            ),
        })
    }

    /// Whether the tenant may start the run now: it is admitted (registered, if that is
    /// required) and enabled, and entitled to the agent (when known), its model and its tools.
    async fn admit(&self, agent: Option<&AgentSpec>) -> Result<Result<(), ErrorBody>, Stop> {
        if self.refusal(agent).await?.is_none() {
            return Ok(Ok(()));
        }
        // Failing a run cannot be undone, so a refusal is confirmed against a fresh read (the
        // tenant may have just been enabled or entitled).
        self.port.forget_tenant(&self.req.tenant);
        Ok(self.refusal(agent).await?.map_or(Ok(()), Err))
    }

    async fn refusal(&self, agent: Option<&AgentSpec>) -> Result<Option<ErrorBody>, Stop> {
        let tenant = match self.port.standing(&self.req.tenant).await? {
            Standing::Active(None) => return Ok(None),
            Standing::Active(Some(rec)) => rec,
            Standing::Disabled => {
                return Ok(Some(ErrorBody::new(
                    "tenant_disabled",
                    format!("tenant {} is disabled", self.req.tenant),
                )));
            }
            Standing::Unregistered => {
                return Ok(Some(ErrorBody::new(
                    "tenant_not_registered",
                    format!(
                        "tenant {} is not registered on this platform",
                        self.req.tenant
                    ),
                )));
            }
        };
        Ok(agent
            .and_then(|a| tenant.entitlements.check_agent(a).err())
            .map(|e| ErrorBody::new("not_entitled", e.to_string())))
    }

    /// Who created the run, as the record says; a run without a record was published straight
    /// onto the bus by the tenant's own NATS user.
    pub(super) fn creator(&self, record: Option<&RunRecord>) -> String {
        record
            .and_then(|r| r.created_by.clone())
            .unwrap_or_else(|| format!("nats:{}", self.req.tenant))
    }

    /// A run without a record was published straight onto the bus (the edge writes the record
    /// first): the edge did not audit it, so the orchestrator does. The record read here is
    /// kept for the `run.started` projection, so this costs no extra round trip.
    pub(super) async fn audit_direct_submission(&mut self) -> Result<(), Stop> {
        if self.record.is_none() {
            self.record = self
                .port
                .read_record(&self.req.tenant, &self.req.run_id)
                .await?;
        }
        let record = self.record.as_ref().map(|r| &r.value);
        self.meta.principal = Some(self.creator(record));
        self.meta.roles = record
            .map(|r| r.created_by_roles.clone())
            .unwrap_or_default();
        if record.is_some() {
            return Ok(());
        }
        // A run published straight onto the bus: the edge did not index it, so it is done here.
        self.port
            .index_run(&self.req.tenant, &self.req.agent_id, &self.req.run_id)
            .await?;
        let record = AuditRecord {
            ts: self.port.now(),
            tenant: self.req.tenant.clone(),
            actor: self.creator(None),
            actor_tenant: Some(self.req.tenant.clone()),
            action: "run.create".into(),
            target: self.req.run_id.to_string(),
            request_id: self.meta.request_id.clone(),
            details: serde_json::json!({"agent_id": self.req.agent_id, "via": "nats"}),
        };
        self.port.audit(&record).await?;
        Ok(())
    }
}
