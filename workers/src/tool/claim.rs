//! At most one execution per idempotency key. Before a keyed call runs, the worker claims its
//! key in `agentos-tool-results` (KV create, or a takeover of an expired claim by
//! compare-and-set), and replaces the claim with the reply when done. A request whose key holds
//! a reply gets that reply; one whose key holds a live claim gets `in_progress` and asks again.

use std::time::Duration;

use agentos_bus::envelope::{ToolClaim, ToolRecord, ToolReply, now};
use agentos_bus::{Error as BusError, Key, Kv, Versioned};

/// Added to a call's timeout for its claim's lease: covers the trip and clock skew.
pub const LEASE_GRACE: Duration = Duration::from_secs(5);

/// What a request may do with its key.
#[derive(Debug)]
enum Claim {
    /// The call ran before: this is its reply.
    Recorded(ToolReply),
    /// Another request is running the call: ask again after this long.
    Busy(Duration),
    /// Ours to run, at this revision (`None`: the record could not be used; run unclaimed).
    Mine(Option<u64>),
}

/// Claims `key` for a call with `timeout`. `first_attempt` (the caller journaled the call just
/// now, so nothing can be recorded yet) skips the lookup.
async fn claim(results: &Kv, key: &Key, timeout: Duration, first_attempt: bool) -> Claim {
    let lease = timeout + LEASE_GRACE;
    if !first_attempt {
        match lookup(results, key, lease).await {
            Ok(Some(claim)) => return claim,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, %key, "could not read the tool result record; running the call unclaimed");
                return Claim::Mine(None);
            }
        }
    }
    let record = ToolRecord::Claimed(ToolClaim {
        claimed_at: now(),
        lease_ms: lease.as_millis() as u64,
    });
    match results.create_as(key, &record).await {
        Ok(revision) => Claim::Mine(Some(revision)),
        // Someone claimed or answered it between our lookup and now.
        Err(BusError::AlreadyExists { .. }) => match lookup(results, key, lease).await {
            Ok(Some(claim)) => claim,
            Ok(None) => Claim::Busy(Duration::from_millis(100)),
            Err(e) => {
                tracing::warn!(error = %e, %key, "could not read the tool result record");
                Claim::Busy(Duration::from_secs(1))
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, %key, "could not claim the tool call; running it unclaimed");
            Claim::Mine(None)
        }
    }
}

/// The record under `key`: a reply, a live claim (busy), or an expired claim taken over.
async fn lookup(results: &Kv, key: &Key, lease: Duration) -> agentos_bus::Result<Option<Claim>> {
    let Some(Versioned { value, revision }) = results.get_as::<ToolRecord>(key).await? else {
        return Ok(None);
    };
    match value {
        ToolRecord::Replied(reply) => Ok(Some(Claim::Recorded(reply))),
        ToolRecord::Claimed(claim) => {
            let age = Duration::try_from(now() - claim.claimed_at).unwrap_or_default();
            let held_for = Duration::from_millis(claim.lease_ms);
            if age < held_for {
                return Ok(Some(Claim::Busy(
                    (held_for - age).min(Duration::from_secs(5)),
                )));
            }
            let record = ToolRecord::Claimed(ToolClaim {
                claimed_at: now(),
                lease_ms: lease.as_millis() as u64,
            });
            Ok(Some(
                match results.update_as(key, &record, revision).await {
                    Ok(revision) => {
                        tracing::warn!(%key, "took over an expired claim: its worker died mid-call");
                        Claim::Mine(Some(revision))
                    }
                    Err(BusError::WrongRevision { .. }) => Claim::Busy(Duration::from_millis(100)),
                    Err(e) => return Err(e),
                },
            ))
        }
    }
}

/// Replaces our claim with the reply (`None`: releases it, for a call that did not finish and
/// may be tried again).
async fn settle(results: &Kv, key: &Key, revision: Option<u64>, reply: Option<&ToolReply>) {
    let outcome = match (reply, revision) {
        (Some(reply), Some(rev)) => {
            let record = ToolRecord::Replied(reply.clone());
            match results.update_as(key, &record, rev).await {
                // Our claim was taken over (we outlived the lease): the reply is still real.
                Err(BusError::WrongRevision { .. }) => {
                    results.put_as(key, &record).await.map(|_| ())
                }
                other => other.map(|_| ()),
            }
        }
        (Some(reply), None) => results
            .put_as(key, &ToolRecord::Replied(reply.clone()))
            .await
            .map(|_| ()),
        (None, _) => results.delete(key).await,
    };
    if let Err(e) = outcome {
        tracing::warn!(error = %e, %key, "could not record the tool result");
    }
}

/// A keyed call run at most once: the recorded reply or `in_progress` when the key is taken,
/// else `run`'s reply, recorded under the key when `run` says the call finished (a call that
/// did not finish, or failed in a way that is safe to retry, releases its claim). A request
/// without a key just runs. The tool worker and the MCP bridge run every call through it.
pub(crate) async fn at_most_once<F>(
    results: &Kv,
    tenant: &agentos_bus::id::Tenant,
    call: &agentos_bus::envelope::ToolRequest,
    timeout: Duration,
    run: F,
) -> ToolReply
where
    F: Future<Output = (ToolReply, bool)>,
{
    let key = match &call.idempotency_key {
        None => return run.await.0,
        Some(key) => match super::record_key(tenant, key) {
            Some(k) => k,
            None => {
                return ToolReply::Error {
                    error: agentos_bus::envelope::ErrorBody::new(
                        "invalid_request",
                        "idempotency_key must be <run_id>:<step>:<call_id>",
                    ),
                    retryable: false,
                };
            }
        },
    };
    let revision = match claim(results, &key, timeout, call.first_attempt).await {
        Claim::Recorded(reply) => {
            tracing::debug!(%key, "returning recorded tool result");
            return reply;
        }
        Claim::Busy(wait) => {
            tracing::info!(%key, "the call is running elsewhere; answering in_progress");
            return ToolReply::InProgress {
                retry_after_ms: wait.as_millis() as u64,
            };
        }
        Claim::Mine(revision) => revision,
    };
    let (reply, finished) = run.await;
    settle(results, &key, revision, finished.then_some(&reply)).await;
    reply
}
