//! Quotas of runs, held by the orchestrator so that runs published straight onto the bus are
//! held to them like runs from the edge. Before `run.started` the run reserves its maximum (its
//! token cap, and that many tokens at its model's dearer price) and a concurrency slot in every
//! scope its tenant's settings name (the tenant, an agent override, a principal override), each
//! an atomic compare-and-set on that scope's ledger ([`agentos_bus::quota`]). Every model call
//! settles what the run has used so far (the journal's total, so a repeat counts nothing twice),
//! in the background, off the run's path; the run's end settles the rest and releases the hold, refunding what it did not use (only the
//! driver that journaled the end counts; a driver that finds the run ended drops what is left).
//! A run whose orchestrator died is resumed by another, which adopts the hold (same run id); a
//! run lost for good is reclaimed when its hold's lease lapses.
//!
//! Over the concurrency limit a run waits, not started, handed back to the queue (`nak` with a
//! delay) so it holds no orchestrator slot and other tenants' runs pass it; with
//! `over_concurrency = reject` it fails `quota_exceeded`. Over a budget it fails
//! `budget_exceeded` naming the limit and when it resets. A run stopped by its caps fails
//! `budget_exceeded` and keeps its partial output.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentos_bus::Key;
use agentos_bus::Standing;
use agentos_bus::envelope::{AgentSpec, AuditRecord, ErrorBody, Role, TenantRecord};
use agentos_bus::key::{self, Scope};
use agentos_bus::quota::{Amount, Applied, LedgerOp, Meter, ScopeLimits, reservation};

use super::drive::{Driver, Stop};
use super::port::Port;

/// This orchestrator's runs waiting in place for a concurrency slot, counted while one waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize, most: usize) -> Option<Self> {
        if count.fetch_add(1, Ordering::SeqCst) >= most {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a run's usage is counted under: its agent and model.
fn meter(agent: &AgentSpec) -> Meter {
    Meter {
        model: agent.model.to_string(),
        agent: Some(agent.id.to_string()),
    }
}

/// The error code of a run stopped by a budget or a cap.
pub(crate) const BUDGET_EXCEEDED: &str = "budget_exceeded";

impl<P: Port> Driver<'_, P> {
    /// The tenant's record when it has quota settings.
    async fn quota_record(&self) -> Result<Option<Arc<TenantRecord>>, Stop> {
        Ok(match self.port.standing(&self.req.tenant).await? {
            Standing::Active(Some(rec)) if !rec.quotas.is_empty() => Some(rec),
            _ => None,
        })
    }

    fn lease(&self) -> time::Duration {
        time::Duration::try_from(self.opts.hold_lease).unwrap_or(time::Duration::minutes(10))
    }

    /// The scopes the run is held to (tenant first); empty without quota settings.
    fn scopes(
        rec: &TenantRecord,
        agent: &AgentSpec,
        principal: Option<&str>,
    ) -> Vec<(Scope, ScopeLimits, bool)> {
        rec.quotas
            .scopes(Some(&agent.id), principal)
            .into_iter()
            .map(|(s, l)| (s, ScopeLimits::from(l), l.has_budget()))
            .collect()
    }

    /// The scopes the run is held to, and what it reserves in each.
    fn holding(
        &self,
        rec: &TenantRecord,
        agent: &AgentSpec,
    ) -> (Vec<(Scope, ScopeLimits, bool)>, Amount) {
        let principal = self.meta.principal.as_deref();
        let scopes = Self::scopes(rec, agent, principal);
        let caps = rec.quotas.run_caps(Some(&agent.id), principal);
        let budgeted = scopes.iter().any(|(_, _, b)| *b);
        let (amount, _) = reservation(&self.opts.prices, agent.model.as_str(), &caps, budgeted);
        (scopes, amount)
    }

    /// On the run's start step (after `run.created`, before `run.started`): takes the run's
    /// hold in every scope. `Ok(Some(_))` fails the run. Over the concurrency limit the run
    /// waits here, polling, while fewer than a quarter of this orchestrator's slots wait so;
    /// beyond that [`Stop::Queued`] hands it back to the queue for a while, so one tenant's
    /// backlog never takes the slots other tenants' runs need. A hold already taken (a resumed
    /// run) is renewed, not doubled.
    pub(super) async fn reserve_budget(
        &self,
        agent: &AgentSpec,
    ) -> Result<Option<ErrorBody>, Stop> {
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            match self.try_reserve(agent).await {
                Err(Stop::Queued(_)) => {}
                other => return other,
            }
            if waiting.is_none() {
                let most = (self.opts.concurrency / 4).max(1);
                waiting = Some(
                    Waiting::enter(&self.opts.quota_waiters, most)
                        .ok_or(Stop::Queued(self.opts.quota_requeue))?,
                );
            }
            if self.cancel.is_cancelled() {
                // The next action cancels the run.
                return Ok(None);
            }
            self.port.sleep(self.opts.quota_poll).await;
        }
    }

    async fn try_reserve(&self, agent: &AgentSpec) -> Result<Option<ErrorBody>, Stop> {
        if self.state.is_empty() || self.state.has_started() {
            return Ok(None);
        }
        let Some(rec) = self.quota_record().await? else {
            return Ok(None);
        };
        let (scopes, amount) = self.holding(&rec, agent);
        if scopes.is_empty() {
            return Ok(None);
        }
        let hold = self.req.run_id.to_string();
        let tenant = &self.req.tenant;
        let allowances = &self.opts.allowances;
        let keys: Vec<Key> = scopes
            .iter()
            .map(|(s, _, _)| key::ledger(tenant, s))
            .collect();
        // Admitted from this orchestrator's allowances: no round trip; the holds are taken in
        // the background.
        if allowances.take(&keys, amount, self.port.now()) {
            for (scope, _, _) in &scopes {
                let op = LedgerOp::Draw {
                    hold: hold.clone(),
                    holder: allowances.holder().to_owned(),
                    amount,
                    lease: self.lease(),
                };
                self.port.ledger_soon(tenant, scope, op);
            }
            return Ok(None);
        }
        for (i, (scope, limits, _)) in scopes.iter().enumerate() {
            // One run at a time asks for a new allowance; what is left of the old one goes
            // back first (in order: the ledger operations of one process keep theirs).
            let asking = allowances.ask(&keys[i]);
            if asking.as_ref().is_some_and(|a| a.give_back) {
                let op = LedgerOp::Return {
                    holder: allowances.holder().to_owned(),
                };
                self.port.ledger_soon(tenant, scope, op);
            }
            let op = LedgerOp::Reserve {
                hold: hold.clone(),
                run: true,
                amount,
                limits: limits.clone(),
                lease: self.lease(),
                allot: asking.as_ref().map(|a| a.allot()),
            };
            let refusal = match self.port.ledger(tenant, scope, &op).await? {
                Applied::Allotted(granted) => {
                    if let Some(asking) = asking {
                        asking.granted(granted, self.port.now());
                    }
                    continue;
                }
                Applied::Refused(refusal) => refusal,
                Applied::Changed | Applied::Unchanged => continue,
            };
            // Let go of what the earlier scopes granted.
            for (earlier, _, _) in &scopes[..i] {
                let release = LedgerOp::Undo { hold: hold.clone() };
                self.port.ledger(tenant, earlier, &release).await?;
            }
            if refusal.wait {
                tracing::debug!(run = %self.req.run_id, limit = %refusal.limit, "over a limit while capacity may come back; queued");
                return Err(Stop::Queued(self.opts.quota_poll));
            }
            agentos_bus::metric_definitions::quota_rejected(tenant, refusal.code());
            return Ok(Some(ErrorBody::new(refusal.code(), refusal.message())));
        }
        Ok(None)
    }

    /// On a delivery that goes on with a started run (an answer after a wait, a takeover):
    /// renews the run's holds, taking again, with what its settles counted, one that lapsed
    /// meanwhile (a wait longer than the lease), so a run is held to its budgets however long
    /// it waits. Not refused: the run was admitted. Best effort, like the release.
    pub(super) async fn renew_budget(&mut self) {
        if !self.state.has_started() || self.state.ended().is_some() {
            return;
        }
        let agent = match self.agent().await {
            Ok(Ok(agent)) => agent,
            _ => return,
        };
        if let Err(Stop::Bus(e)) = self.renew_holds(&agent).await {
            tracing::warn!(run = %self.req.run_id, error = %e, "budget hold not renewed");
        }
    }

    async fn renew_holds(&self, agent: &AgentSpec) -> Result<(), Stop> {
        let Some(rec) = self.quota_record().await? else {
            return Ok(());
        };
        let (scopes, amount) = self.holding(&rec, agent);
        let counted = self
            .opts
            .prices
            .amount(agent.model.as_str(), &self.state.usage());
        for (scope, _, _) in scopes {
            let op = LedgerOp::Resume {
                hold: self.req.run_id.to_string(),
                amount,
                counted,
                lease: self.lease(),
            };
            self.port.ledger(&self.req.tenant, &scope, &op).await?;
        }
        Ok(())
    }

    /// Before the model call of `step`: the run's caps (`run.max_tokens`, `run.max_steps`).
    pub(super) async fn cap_refusal(
        &self,
        agent: &AgentSpec,
        step: u32,
    ) -> Result<Option<ErrorBody>, Stop> {
        let Some(rec) = self.quota_record().await? else {
            return Ok(None);
        };
        let principal = self.meta.principal.as_deref();
        let caps = rec.quotas.run_caps(Some(&agent.id), principal);
        let budgeted = !Self::scopes(&rec, agent, principal)
            .iter()
            .all(|(_, _, b)| !b);
        let (_, max_tokens) = reservation(&self.opts.prices, agent.model.as_str(), &caps, budgeted);
        let used = self.state.usage().total_tokens;
        if max_tokens > 0 && used >= max_tokens {
            return Ok(Some(ErrorBody::new(
                BUDGET_EXCEEDED,
                format!("quota run.max_tokens ({max_tokens}) reached: the run used {used} tokens"),
            )));
        }
        if let Some(max) = caps.max_steps
            && step > max
        {
            return Ok(Some(ErrorBody::new(
                BUDGET_EXCEEDED,
                format!("quota run.max_steps ({max}) reached before step {step}"),
            )));
        }
        Ok(None)
    }

    /// After a model call: counts what the run has used so far in every scope, without
    /// waiting (the settle carries the running total; the run's end settles whatever a lost
    /// one missed).
    pub(super) async fn settle_budget(&self, agent: &AgentSpec) -> Result<(), Stop> {
        let Some(rec) = self.quota_record().await? else {
            return Ok(());
        };
        let total = self
            .opts
            .prices
            .amount(agent.model.as_str(), &self.state.usage());
        for (scope, _, _) in Self::scopes(&rec, agent, self.meta.principal.as_deref()) {
            let op = LedgerOp::Settle {
                hold: self.req.run_id.to_string(),
                total,
                lease: self.lease(),
                meter: meter(agent),
            };
            self.port.ledger_soon(&self.req.tenant, &scope, op);
        }
        Ok(())
    }

    /// Once the run has ended (any end). The driver that journaled the end (`counted`)
    /// settles the rest and releases the run's holds, refunding what it did not use, and
    /// records its usage on the audit stream (once: a repeat finds no hold); any other driver
    /// that finds the run ended only drops what holds are left, counting nothing (it may be
    /// stale, its hold taken after the release). Best effort: a failure leaves the hold to its
    /// lease.
    pub(super) async fn release_budget(&mut self, counted: bool) {
        let agent = match self.agent().await {
            Ok(Ok(agent)) => agent,
            _ => return,
        };
        if let Err(e) = self.release_holds(&agent, counted).await {
            let error = match e {
                Stop::Bus(e) => e.to_string(),
                _ => "stopped".into(),
            };
            tracing::warn!(run = %self.req.run_id, %error, "budget hold not released; its lease reclaims it");
        }
    }

    async fn release_holds(&self, agent: &AgentSpec, counted: bool) -> Result<(), Stop> {
        let Some(rec) = self.quota_record().await? else {
            return Ok(());
        };
        let usage = self.state.usage();
        let total = self.opts.prices.amount(agent.model.as_str(), &usage);
        let mut released = false;
        for (i, (scope, _, _)) in Self::scopes(&rec, agent, self.meta.principal.as_deref())
            .into_iter()
            .enumerate()
        {
            let hold = self.req.run_id.to_string();
            let op = if counted {
                LedgerOp::Release {
                    hold,
                    total,
                    meter: meter(agent),
                }
            } else {
                LedgerOp::Drop { hold }
            };
            let applied = self.port.ledger(&self.req.tenant, &scope, &op).await?;
            released |= counted && i == 0 && applied == Applied::Changed;
        }
        if released {
            let record = AuditRecord {
                ts: self.port.now(),
                tenant: self.req.tenant.clone(),
                actor: self.creator(self.record.as_ref().map(|r| &r.value)),
                actor_tenant: Some(self.req.tenant.clone()),
                action: "usage.run".into(),
                target: self.req.run_id.to_string(),
                request_id: self.meta.request_id.clone(),
                details: serde_json::json!({
                    "agent_id": agent.id, "model": agent.model,
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                    "cost_micros": total.cost_micros,
                }),
            };
            self.port.audit(&record).await?;
        }
        Ok(())
    }

    /// What a run stopped by its budget keeps as output: the model's last text, else the last
    /// tool result.
    pub(super) fn partial_output(&self, error: &ErrorBody) -> Option<String> {
        if error.code != BUDGET_EXCEEDED {
            return None;
        }
        let messages = self.state.own_messages("");
        let last = |role: Role| {
            messages
                .iter()
                .rev()
                .filter(|m| m.role == role)
                .find_map(|m| m.content.clone().filter(|c| !c.is_empty()))
        };
        last(Role::Assistant).or_else(|| last(Role::Tool))
    }
}
