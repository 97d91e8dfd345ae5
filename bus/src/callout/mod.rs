//! NATS auth callout (nats-server ≥ 2.10): a client that connects with a bearer token is
//! authorized by us, not by the server's static users. The server publishes a signed
//! authorization request on `$SYS.REQ.USER.AUTH` in the callout account; [`Bus::serve_auth_callout`]
//! decodes it, asks the caller's verifier, and answers with an authorization response signed by
//! the [`Issuer`] (the account nkey the server's `auth_callout { issuer }` names) carrying a
//! user JWT that places the connection in its tenant's account with that tenant's permissions,
//! or with an error, which the client sees as "authorization violation".
//!
//! The server trusts only responses signed by the configured issuer whose user JWT names the
//! user nkey it minted for this very connection, so a spoofed or replayed response is refused
//! by the server itself.

mod jwt;
mod wire;

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use nkeys::{KeyPair, KeyPairType};

use crate::id::Tenant;
use crate::subject::tenant_exports;
use crate::{Bus, Error, Result};

pub use jwt::Claims;
pub use wire::UserBody;

/// Where nats-server sends authorization requests (in the callout account).
const AUTH_SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// The queue group of every callout service instance.
const QUEUE: &str = "agentos-auth-callout";
/// The `aud` of a server's authorization request.
const REQUEST_AUDIENCE: &str = "nats-authorization-request";
/// Requests answered at once by one service instance.
const CONCURRENCY: usize = 64;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn jti() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The account nkey that signs callout responses and the user JWTs in them.
#[derive(Clone)]
pub struct Issuer(KeyPair);

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Issuer({})", self.0.public_key())
    }
}

impl Issuer {
    /// From an account seed (`SA…`); any other kind of key is refused.
    pub fn from_seed(seed: &str) -> Result<Self> {
        let kp = KeyPair::from_seed(seed.trim()).map_err(|e| Error::Nkey(e.to_string()))?;
        if kp.key_pair_type() != KeyPairType::Account {
            return Err(Error::Nkey(format!(
                "the callout issuer must be an account nkey (SA…), not {:?}",
                kp.key_pair_type()
            )));
        }
        Ok(Self(kp))
    }

    /// A fresh issuer and its seed (to be stored as a secret).
    pub fn generate() -> Result<(Self, String)> {
        let kp = KeyPair::new_account();
        let seed = kp.seed().map_err(|e| Error::Nkey(e.to_string()))?;
        Ok((Self(kp), seed))
    }

    /// The public key (`A…`) nats-server's `auth_callout { issuer }` names.
    pub fn public_key(&self) -> String {
        self.0.public_key()
    }
}

/// What a user may publish and subscribe to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

impl Permissions {
    /// A tenant's: the same reach as its static account (`agentos tenant credentials`). It may
    /// subscribe to its live events and its inboxes, and publish to the services its account
    /// imports (submit, direct gets of its run records and events), which are the only
    /// publishes that reach anything from a tenant account; any other is a permissions
    /// violation rather than silence.
    pub fn tenant(tenant: &Tenant) -> Self {
        let publish = tenant_exports::all(tenant.as_str(), ">")
            .into_iter()
            .filter(|e| e.kind == tenant_exports::Kind::Service)
            .map(|e| e.subject)
            .collect();
        Self {
            publish,
            subscribe: tenant_exports::subscribe_allow(tenant.as_str()).to_vec(),
        }
    }
}

/// Who may connect, where, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Places the connection in the account named after the tenant.
    pub tenant: Tenant,
    /// Shown as the connection's user (the token's subject).
    pub name: String,
    pub permissions: Permissions,
    /// Unix seconds; the server closes the connection then. Never later than the token's `exp`.
    pub expires_at: u64,
}

/// One connection asking to be let in.
#[derive(Clone)]
pub struct AuthRequest {
    /// The server's id (its public nkey, `N…`).
    pub server_id: String,
    /// The connection's id on that server.
    pub client_id: u64,
    pub client_host: String,
    pub client_name: String,
    /// The bearer token: CONNECT's `auth_token`, else its password.
    pub token: Option<String>,
    user_nkey: String,
}

impl std::fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthRequest")
            .field("server_id", &self.server_id)
            .field("client_id", &self.client_id)
            .field("client_host", &self.client_host)
            .field("client_name", &self.client_name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl AuthRequest {
    /// Decodes a server's request, verifying its signature (by the server nkey it names) and
    /// its type, audience and expiry.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::Decode {
            what: "authorization request",
            reason,
        };
        let text = std::str::from_utf8(payload).map_err(|e| bad(e.to_string()))?;
        let claims: Claims<wire::RequestBody> = jwt::decode(text.trim())?;
        let server = KeyPair::from_public_key(&claims.iss).map_err(|e| bad(e.to_string()))?;
        if server.key_pair_type() != KeyPairType::Server {
            return Err(bad(format!("issued by {}, not a server", claims.iss)));
        }
        if claims.nats.kind != wire::REQUEST_TYPE || claims.aud != REQUEST_AUDIENCE {
            return Err(bad(format!(
                "type {:?} for {:?}",
                claims.nats.kind, claims.aud
            )));
        }
        if claims.exp.is_some_and(|exp| exp < now()) {
            return Err(bad("expired".into()));
        }
        let body = claims.nats;
        let opts = body.connect_opts;
        Ok(Self {
            server_id: body.server_id.id,
            client_id: body.client_info.id,
            client_host: body.client_info.host,
            client_name: body.client_info.name,
            token: opts.auth_token.or(opts.pass).filter(|t| !t.is_empty()),
            user_nkey: body.user_nkey,
        })
    }

    /// The signed authorization response: `grant` as a user JWT, or the refusal.
    pub fn respond(&self, issuer: &Issuer, decision: Result<Grant, String>) -> Result<String> {
        let iat = now();
        let body = match decision {
            Ok(grant) if grant.expires_at > iat => {
                let user = Claims {
                    jti: jti(),
                    iat,
                    iss: issuer.public_key(),
                    sub: self.user_nkey.clone(),
                    aud: grant.tenant.to_string(),
                    exp: Some(grant.expires_at),
                    name: Some(grant.name),
                    nats: UserBody::new(grant.permissions.publish, grant.permissions.subscribe),
                };
                wire::ResponseBody::allow(jwt::encode(&user, &issuer.0)?)
            }
            Ok(_) => wire::ResponseBody::deny("the token has expired".into()),
            Err(reason) => wire::ResponseBody::deny(reason),
        };
        let response = Claims {
            jti: jti(),
            iat,
            iss: issuer.public_key(),
            sub: self.user_nkey.clone(),
            aud: self.server_id.clone(),
            exp: None,
            name: None,
            nats: body,
        };
        jwt::encode(&response, &issuer.0)
    }
}

/// The callout's subscription, active once [`Bus::subscribe_auth_callout`] returns.
pub struct CalloutRequests {
    bus: Bus,
    sub: async_nats::Subscriber,
}

impl std::fmt::Debug for CalloutRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CalloutRequests")
    }
}

impl Bus {
    /// Subscribes to authorization requests in queue group `agentos-auth-callout` (several
    /// instances share the load). The connection must be an `auth_users` member of the callout
    /// account.
    pub async fn subscribe_auth_callout(&self) -> Result<CalloutRequests> {
        let sub = self
            .client
            .queue_subscribe(AUTH_SUBJECT, QUEUE.into())
            .await
            .map_err(|e| Error::nats(format!("subscribe {AUTH_SUBJECT}"), e))?;
        self.client
            .flush()
            .await
            .map_err(|e| Error::nats("flush", e))?;
        Ok(CalloutRequests {
            bus: self.clone(),
            sub,
        })
    }

    /// Asks server `server_id` to close connection `client_id` (`$SYS.REQ.SERVER.<id>.KICK`);
    /// this connection must be a system account user. True when the server confirmed.
    pub async fn kick_client(&self, server_id: &str, client_id: u64) -> Result<bool> {
        let server = KeyPair::from_public_key(server_id).map_err(|e| Error::Nkey(e.to_string()))?;
        if server.key_pair_type() != KeyPairType::Server {
            return Err(Error::Nkey(format!("{server_id} is not a server id")));
        }
        let subject = format!("$SYS.REQ.SERVER.{server_id}.KICK");
        let body = serde_json::json!({ "cid": client_id }).to_string();
        let reply = self
            .client
            .request(subject.clone(), body.into())
            .await
            .map_err(|e| Error::nats(format!("request {subject}"), e))?;
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
        Ok(answer.get("error").is_none())
    }
}

impl CalloutRequests {
    /// Answers each request with `decide`'s verdict until `shutdown` completes. A request that
    /// does not decode is logged and left unanswered: the server refuses that client at its
    /// auth timeout.
    pub async fn serve<F, Fut>(
        self,
        issuer: &Issuer,
        decide: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()>
    where
        F: Fn(AuthRequest) -> Fut,
        Fut: Future<Output = Result<Grant, String>>,
    {
        let client = &self.bus.client;
        let serve = self.sub.for_each_concurrent(CONCURRENCY, |msg| {
            let decide = &decide;
            async move {
                let Some(reply) = msg.reply else { return };
                let req = match AuthRequest::decode(&msg.payload) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, code = e.code(), "auth callout: request refused");
                        return;
                    }
                };
                match req.respond(issuer, decide(req.clone()).await) {
                    Ok(jwt) => {
                        if let Err(e) = client.publish(reply, jwt.into()).await {
                            tracing::warn!(error = %e, "auth callout: reply not sent");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "auth callout: response not signed"),
                }
            }
        });
        tokio::select! {
            () = serve => Ok(()),
            () = shutdown => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
