//! `agentos auth-callout`: one identity on both front doors. A NATS client connects with the same
//! bearer token the edge accepts (as its NATS token, or its password); nats-server asks this
//! service (its `auth_callout`), which verifies the token with the edge's own verifier (`[edge]`
//! settings: JWKS or HS256, `iss`, `aud`, expiry, maximum lifetime) and the edge's revocation
//! list, checks the tenant's standing as the edge does, and lets the client into its tenant's
//! account with that tenant's permissions until the token expires. With a system-account user it also closes connections whose token is revoked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentos_bus::callout::{AuthRequest, Grant, Issuer, Permissions};
use agentos_bus::{Bus, ServiceSpec, Standing, Tenants};
use agentos_edge::{Auth, Revocations};
use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use crate::args::AuthCalloutArgs;

/// The service name `agentos status` and `up`'s readiness check see.
pub const SERVICE: &str = "agentos-auth-callout";
/// How often connections of revoked tokens are looked for.
const KICK_INTERVAL: Duration = Duration::from_millis(200);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One connection let in: its server, its id there, and when its grant ends.
struct Conn {
    server: String,
    cid: u64,
    expires_at: u64,
}

/// Connections let in, by token id.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<String, Vec<Conn>>>>);

impl Sessions {
    fn note(&self, jti: &str, req: &AuthRequest, expires_at: u64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(jti.to_owned()).or_default().push(Conn {
            server: req.server_id.clone(),
            cid: req.client_id,
            expires_at,
        });
    }

    /// Takes the connections of revoked tokens; forgets the expired ones.
    fn take_revoked(&self, revoked: &Revocations) -> Vec<(String, u64)> {
        let now = now();
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, conns| {
            conns.retain(|c| c.expires_at > now);
            !conns.is_empty()
        });
        let gone: Vec<String> = map
            .keys()
            .filter(|jti| revoked.is_revoked(jti))
            .cloned()
            .collect();
        gone.iter()
            .filter_map(|jti| map.remove(jti))
            .flatten()
            .map(|c| (c.server, c.cid))
            .collect()
    }
}

/// What a verdict is drawn from: the edge's verifier, its revocation list, tenants' standing.
struct Judge {
    auth: Auth,
    revoked: Revocations,
    tenants: Tenants,
    sessions: Sessions,
}

/// The verdict on one connection: the edge's verification, the revocation list, then the
/// tenant's standing (disabled or, under `registered` admission, unknown tenants stay out).
async fn decide(judge: &Judge, req: AuthRequest) -> Result<Grant, String> {
    let Judge {
        auth,
        revoked,
        tenants,
        sessions,
    } = judge;
    let refuse = |code: &str, message: &str| {
        tracing::warn!(code, host = %req.client_host, cid = req.client_id, "NATS connection refused");
        Err(format!("{code}: {message}"))
    };
    let Some(token) = req.token.as_deref() else {
        return refuse(
            "missing_token",
            "connect with a bearer token as the NATS token",
        );
    };
    let ctx = match auth.authenticate(Some(token)).await {
        Ok(ctx) => ctx,
        Err(e) => return refuse(e.code, &e.message),
    };
    if ctx
        .token_id
        .as_deref()
        .is_some_and(|jti| revoked.is_revoked(jti))
    {
        return refuse("token_revoked", "the token has been revoked");
    }
    let Some(expires_at) = ctx.expires_at else {
        return refuse("invalid_token", "the token has no exp");
    };
    // The verifier allows some clock leeway; a NATS user cannot be granted a past expiry.
    if expires_at <= now() {
        return refuse("token_expired", "the token has expired");
    }
    match tenants.standing(&ctx.tenant).await {
        Ok(Standing::Active(_)) => {}
        Ok(Standing::Disabled) => return refuse("tenant_disabled", "the tenant is disabled"),
        Ok(Standing::Unregistered) => {
            return refuse("tenant_not_registered", "the tenant is not registered");
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the tenant's standing");
            return refuse("unavailable", "the tenant's standing could not be read");
        }
    }
    if let Some(jti) = &ctx.token_id {
        sessions.note(jti, &req, expires_at);
    }
    tracing::info!(tenant = %ctx.tenant, subject = %ctx.subject, host = %req.client_host, cid = req.client_id, "NATS connection let in");
    Ok(Grant {
        permissions: Permissions::tenant(&ctx.tenant),
        tenant: ctx.tenant,
        name: ctx.subject,
        expires_at,
    })
}

/// Closes the connections of tokens revoked after they connected.
async fn kick_revoked(
    sys: Bus,
    sessions: Sessions,
    revoked: Revocations,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(KICK_INTERVAL) => {}
        }
        for (server, cid) in sessions.take_revoked(&revoked) {
            match sys.kick_client(&server, cid).await {
                Ok(true) => tracing::info!(cid, "connection of a revoked token closed"),
                Ok(false) => tracing::debug!(cid, "connection of a revoked token already gone"),
                Err(e) => tracing::warn!(error = %e, cid, "closing a revoked token's connection"),
            }
        }
    }
}

pub async fn serve(a: AuthCalloutArgs, profile: crate::profile::Profile) -> Result<()> {
    crate::profile::check_edge(profile, &a.edge, &a.nats)?;
    let auth = crate::run::edge_auth(&a.edge).await?;
    if let Auth::Disabled { .. } = &auth {
        bail!(
            "the auth callout verifies tokens: give it the edge's --jwt-secret or JWKS, not --dev-no-auth-tenant"
        );
    }
    let c = &a.callout;
    let seed_file = c
        .issuer_seed_file()
        .context("--callout-issuer-seed-file (AGENTOS_CALLOUT_ISSUER_SEED_FILE) is required")?;
    let issuer = Issuer::from_seed(
        &crate::secret::read(&seed_file).context("[auth-callout] issuer-seed-file")?,
    )?;
    let (Some(user), Some(password)) = (c.user(), c.password()) else {
        bail!("--callout-user and --callout-password (the callout account's user) are required");
    };
    let platform = crate::run::connect(&a.nats, SERVICE).await?;
    let callout = Bus::connect(&agentos_bus::ConnectOptions {
        user: Some(user),
        password: Some(password),
        ..a.nats.connect_options(SERVICE)?
    })
    .await
    .context("connecting as the callout user")?;
    let shutdown = crate::run::shutdown_on_signal();
    let revoked = Revocations::default();
    let following = revoked
        .clone()
        .follow(platform.clone(), shutdown.clone())
        .await?;
    let judge = Judge {
        auth,
        revoked: revoked.clone(),
        tenants: platform.tenants(a.tenants.admission()).await?,
        sessions: Sessions::default(),
    };
    if let (Some(user), Some(password)) = (c.sys_user(), c.sys_password()) {
        let sys = Bus::connect(&agentos_bus::ConnectOptions {
            user: Some(user),
            password: Some(password),
            ..a.nats.connect_options(SERVICE)?
        })
        .await
        .context("connecting as the system user")?;
        tokio::spawn(kick_revoked(
            sys,
            judge.sessions.clone(),
            revoked.clone(),
            shutdown.clone(),
        ));
    } else {
        tracing::warn!(
            "no --callout-sys-user: connections whose token is revoked stay open until it expires"
        );
    }
    let requests = callout.subscribe_auth_callout().await?;
    // Discoverable once requests are heard, so `up` and `status` see it ready.
    let _service = platform
        .serve(&ServiceSpec {
            name: SERVICE.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "NATS auth callout: bearer tokens to tenant users".into(),
            endpoints: Vec::new(),
            tools: Vec::new(),
            metadata: HashMap::from([("issuer".to_owned(), issuer.public_key())]),
        })
        .await?;
    let serving = requests.serve(&issuer, |req| decide(&judge, req), shutdown.cancelled());
    // A revocation list that stopped updating would let revoked tokens in: stop instead (the
    // supervisor restarts the service).
    tokio::select! {
        r = serving => r?,
        r = following => {
            r?;
            if !shutdown.is_cancelled() {
                bail!("the revocation list stopped updating");
            }
        }
    }
    Ok(())
}
