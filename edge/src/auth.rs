//! Authentication: `Authorization: Bearer <JWT>` verified with HS256 (development) or against a
//! JWKS (`jwks.rs`); the tenant and roles come from claims. Without a bearer token, a verified
//! client certificate mapped to a principal (`tls.rs`, `[edge] tls-principals`) authenticates
//! the request as that principal.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentos_bus::id::Tenant;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;

/// The platform administrator: every tenant, every admin route.
pub const ROLE_ADMIN: &str = "admin";
/// A tenant's administrator: reads its own tenant's record and audit log.
pub const ROLE_TENANT_ADMIN: &str = "tenant-admin";
/// A tenant's user: agents, runs and the chat API of its own tenant (every authenticated caller).
pub const ROLE_MEMBER: &str = "member";

/// Who is calling, for which tenant.
#[derive(Clone, Debug)]
pub struct AuthContext {
    pub subject: String,
    pub tenant: Tenant,
    pub roles: Vec<String>,
    /// The bearer token, forwarded on the bus for federation re-verification.
    pub token: Option<String>,
    /// The token's id (`jti`), checked against the revocation list.
    pub token_id: Option<String>,
    /// The token's `exp` (Unix seconds): the NATS auth callout grants no longer than this.
    pub expires_at: Option<u64>,
}

impl AuthContext {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn is_admin(&self) -> bool {
        self.has_role(ROLE_ADMIN)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// How the edge authenticates callers.
#[derive(Clone)]
pub enum Auth {
    /// HS256 with a shared secret.
    Hs256 {
        key: Arc<DecodingKey>,
        validation: Arc<Validation>,
    },
    /// RS256/ES256 against a JWKS (file, URL or OIDC discovery).
    Jwks(Arc<crate::jwks::Jwks>),
    /// No authentication: every caller is this tenant. Only for loopback development.
    Disabled { tenant: Tenant },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hs256 { .. } => f.write_str("Auth::Hs256"),
            Self::Disabled { tenant } => write!(f, "Auth::Disabled({tenant})"),
            Self::Jwks(j) => write!(f, "Auth::Jwks({j:?})"),
        }
    }
}

impl Auth {
    pub fn hs256(secret: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 30;
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self::Hs256 {
            key: Arc::new(DecodingKey::from_secret(secret)?),
            validation: Arc::new(validation),
        })
    }

    /// Who is calling, from the `Authorization: Bearer` token (`None` when absent).
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<AuthContext, ApiError> {
        let (key, validation) = match self {
            Self::Disabled { tenant } => {
                return Ok(AuthContext {
                    subject: "dev".into(),
                    tenant: tenant.clone(),
                    roles: vec![ROLE_ADMIN.into()],
                    token: None,
                    token_id: None,
                    expires_at: None,
                });
            }
            Self::Hs256 { key, validation } => (key, validation),
            Self::Jwks(jwks) => return jwks.verify(bearer.ok_or_else(missing_token)?).await,
        };
        let token = bearer.ok_or_else(missing_token)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(token_error)?;
        let tenant = Tenant::parse(data.claims.tenant)
            .map_err(|e| ApiError::unauthorized("invalid_token", format!("tenant claim: {e}")))?;
        Ok(AuthContext {
            subject: data.claims.sub,
            tenant,
            roles: data.claims.roles,
            token: Some(token.to_owned()),
            token_id: data.claims.jti,
            expires_at: Some(data.claims.exp),
        })
    }
}

fn missing_token() -> ApiError {
    ApiError::unauthorized(
        "missing_token",
        "an Authorization: Bearer token is required",
    )
}

/// One error code per way a token fails verification.
pub(crate) fn token_error(e: jsonwebtoken::errors::Error) -> ApiError {
    use jsonwebtoken::errors::ErrorKind as K;
    let (code, message) = match e.kind() {
        K::ExpiredSignature => ("token_expired", "the token has expired".to_owned()),
        K::ImmatureSignature => (
            "token_not_yet_valid",
            "the token is not valid yet".to_owned(),
        ),
        K::InvalidSignature => (
            "invalid_signature",
            "the token signature does not verify".to_owned(),
        ),
        K::InvalidAlgorithm => (
            "invalid_algorithm",
            "the token algorithm is not accepted".to_owned(),
        ),
        K::InvalidAudience => (
            "invalid_audience",
            "the token is for another audience".to_owned(),
        ),
        K::InvalidIssuer => (
            "invalid_issuer",
            "the token is from another issuer".to_owned(),
        ),
        _ => ("invalid_token", format!("the token is invalid: {e}")),
    };
    ApiError::unauthorized(code, message)
}

/// Mints a development HS256 token.
pub fn mint(
    secret: &[u8],
    subject: &str,
    tenant: &Tenant,
    roles: &[String],
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + ttl;
    let claims = Claims {
        sub: subject.to_owned(),
        tenant: tenant.to_string(),
        roles: roles.to_vec(),
        exp: exp.as_secs(),
        iss: None,
        aud: None,
        jti: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret)?,
    )
}

impl FromRequestParts<AppState> for AuthContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let bearer = match parts.headers.get(AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v.to_str().map_err(|_| {
                    ApiError::unauthorized("invalid_token", "malformed Authorization header")
                })?;
                Some(v.strip_prefix("Bearer ").ok_or_else(|| {
                    ApiError::unauthorized(
                        "invalid_token",
                        "expected Authorization: Bearer <token>",
                    )
                })?)
            }
        };
        // A bearer token wins; without one, a client certificate mapped to a principal.
        let cert = parts.extensions.get::<crate::tls::CertIdentity>();
        let ctx = match (bearer, cert) {
            (None, Some(crate::tls::CertIdentity(p))) => AuthContext {
                subject: p.subject.clone(),
                tenant: p.tenant.clone(),
                roles: p.roles.clone(),
                token: None,
                token_id: None,
                expires_at: None,
            },
            _ => state.auth.authenticate(bearer).await?,
        };
        if ctx
            .token_id
            .as_deref()
            .is_some_and(|jti| state.revoked.is_revoked(jti))
        {
            return Err(ApiError::unauthorized(
                "token_revoked",
                "the token has been revoked",
            ));
        }
        tracing::Span::current().record("tenant", ctx.tenant.as_str());
        // Platform admins keep access to a disabled tenant (to enable it again).
        if !ctx.is_admin() {
            let rec = state.admit(&ctx.tenant).await?;
            crate::quota::rate::check(state, &ctx, rec.as_deref()).await?;
        }
        Ok(ctx)
    }
}
