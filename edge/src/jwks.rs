//! RS256/ES256 bearer tokens verified against a JWKS: from a file, a URL, or an OIDC issuer's
//! discovery document. Keys are cached by `kid`; a token with an unknown `kid` triggers one
//! refetch (at most once a second), so key rotation is picked up without a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use agentos_bus::id::Tenant;
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::auth::AuthContext;
use crate::error::{ApiError, Error};

const MIN_REFRESH: Duration = Duration::from_secs(1);

/// Where the keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
    /// An OIDC issuer: its `/.well-known/openid-configuration` names the `jwks_uri`.
    Oidc(String),
}

/// Which claims must hold and where tenant and roles are read from.
#[derive(Clone, Debug)]
pub struct JwtRules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub tenant_claim: String,
    pub roles_claim: String,
    pub leeway_secs: u64,
    /// Longest lifetime (`exp - iat`) a token may have; such tokens must carry `iat`.
    pub max_lifetime_secs: Option<u64>,
}

impl Default for JwtRules {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            tenant_claim: "tenant".into(),
            roles_claim: "roles".into(),
            leeway_secs: 30,
            max_lifetime_secs: None,
        }
    }
}

pub struct Jwks {
    source: JwksSource,
    rules: JwtRules,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    last_fetch: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .field("rules", &self.rules)
            .finish()
    }
}

fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::unauthorized(code, message)
}

impl Jwks {
    /// Loads the keys once; a source that cannot be read is an error at start-up.
    pub async fn load(source: JwksSource, rules: JwtRules) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::JwksFetch {
                url: "(HTTP client)".into(),
                reason: e.to_string(),
            })?;
        let jwks = Self {
            source,
            rules,
            http,
            keys: RwLock::default(),
            last_fetch: Mutex::default(),
        };
        jwks.refresh().await?;
        Ok(jwks)
    }

    async fn fetch(&self) -> Result<JwkSet, Error> {
        let parse = |what: &str, e: &dyn std::fmt::Display| Error::JwksParse {
            what: what.to_owned(),
            reason: e.to_string(),
        };
        let (what, text) = match &self.source {
            JwksSource::File(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|source| Error::JwksFile {
                    path: p.clone(),
                    source,
                })?,
            ),
            JwksSource::Url(url) => (url.clone(), self.get(url).await?),
            JwksSource::Oidc(issuer) => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc: Value = serde_json::from_str(&self.get(&discovery).await?)
                    .map_err(|e| parse(&discovery, &e))?;
                let uri = doc["jwks_uri"]
                    .as_str()
                    .ok_or_else(|| parse(&discovery, &"it has no jwks_uri"))?;
                (uri.to_owned(), self.get(uri).await?)
            }
        };
        serde_json::from_str(&text).map_err(|e| parse(&format!("JWKS {what}"), &e))
    }

    async fn get(&self, url: &str) -> Result<String, Error> {
        let fetch = |reason: String| Error::JwksFetch {
            url: url.to_owned(),
            reason,
        };
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| fetch(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fetch(format!("HTTP {}", resp.status())));
        }
        resp.text().await.map_err(|e| fetch(e.to_string()))
    }

    async fn refresh(&self) -> Result<(), Error> {
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        let set = self.fetch().await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (&jwk.common.key_id, jwk.common.key_algorithm) else {
                continue;
            };
            let alg = match alg {
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid.clone(), (key, alg));
            }
        }
        tracing::info!(keys = keys.len(), "JWKS loaded");
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        Ok(())
    }

    fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(kid)
            .cloned()
    }

    fn may_refresh(&self) -> bool {
        self.last_fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|t| t.elapsed() >= MIN_REFRESH)
    }

    pub async fn verify(&self, token: &str) -> Result<AuthContext, ApiError> {
        if header_alg(token).as_deref() == Some("none") {
            return Err(unauthorized(
                "invalid_algorithm",
                "unsigned tokens (alg: none) are refused",
            ));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthorized("invalid_token", format!("the token is malformed: {e}")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(unauthorized(
                "invalid_algorithm",
                format!("{:?} is not accepted; use RS256 or ES256", header.alg),
            ));
        }
        let kid = header
            .kid
            .ok_or_else(|| unauthorized("unknown_key", "the token names no key (kid)"))?;
        let (key, alg) = match self.key(&kid) {
            Some(k) => k,
            None if self.may_refresh() => {
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "JWKS refresh failed");
                }
                self.key(&kid).ok_or_else(|| {
                    unauthorized("unknown_key", format!("no key {kid:?} in the JWKS"))
                })?
            }
            None => {
                return Err(unauthorized(
                    "unknown_key",
                    format!("no key {kid:?} in the JWKS"),
                ));
            }
        };
        if alg != header.alg {
            return Err(unauthorized(
                "invalid_algorithm",
                format!(
                    "key {kid:?} is for {alg:?}, the token says {:?}",
                    header.alg
                ),
            ));
        }
        let mut v = Validation::new(alg);
        v.leeway = self.rules.leeway_secs;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        match &self.rules.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.rules.issuer {
            v.set_issuer(&[iss]);
        }
        let data =
            jsonwebtoken::decode::<Value>(token, &key, &v).map_err(crate::auth::token_error)?;
        let claims = data.claims;
        self.check_lifetime(&claims)?;
        let tenant = claims[&self.rules.tenant_claim].as_str().ok_or_else(|| {
            unauthorized(
                "invalid_token",
                format!("the token has no {:?} claim", self.rules.tenant_claim),
            )
        })?;
        let tenant = Tenant::parse(tenant)
            .map_err(|e| unauthorized("invalid_token", format!("tenant claim: {e}")))?;
        let roles = match &claims[&self.rules.roles_claim] {
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Ok(AuthContext {
            subject: claims["sub"].as_str().unwrap_or_default().to_owned(),
            tenant,
            roles,
            token: Some(token.to_owned()),
            token_id: claims["jti"].as_str().map(str::to_owned),
            expires_at: claims["exp"].as_u64(),
        })
    }
}

impl Jwks {
    /// A token valid for longer than the maximum lifetime is refused, whatever is left of it: a
    /// leaked long-lived token must not work at all.
    fn check_lifetime(&self, claims: &Value) -> Result<(), ApiError> {
        let Some(max) = self.rules.max_lifetime_secs else {
            return Ok(());
        };
        let Some(iat) = claims["iat"].as_u64() else {
            return Err(unauthorized(
                "missing_iat",
                "the token has no iat claim, so its lifetime cannot be checked",
            ));
        };
        let exp = claims["exp"].as_u64().unwrap_or(u64::MAX);
        if exp.saturating_sub(iat) > max {
            return Err(unauthorized(
                "token_lifetime_too_long",
                format!(
                    "the token is valid for {} s; at most {max} s is accepted",
                    exp.saturating_sub(iat)
                ),
            ));
        }
        Ok(())
    }
}

/// The `alg` of a token's header, read without trusting anything else in it.
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine as _;
    let head = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["alg"].as_str().map(str::to_lowercase)
}
