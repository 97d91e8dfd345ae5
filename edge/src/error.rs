//! The error model: every failure answers
//! `{"error": {"type", "code", "message", "param", "request_id"}}` (OpenAI's shape, so SDKs raise
//! typed exceptions). Codes are stable and listed in `docs/api.md`; internal details are logged
//! once and never leaked.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The edge crate's failures outside a request (start-up, serving, key loading): one variant per
/// failure a caller acts on. Requests answer with [`ApiError`] instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound (in use, not permitted, not local).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A JWKS (or OIDC discovery document) could not be fetched: unreachable, or not a 2xx.
    #[error("fetching {url}: {reason}")]
    JwksFetch { url: String, reason: String },
    /// A JWKS file could not be read.
    #[error("reading JWKS file {}: {source}", path.display())]
    JwksFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JWKS or discovery document was fetched but is not what it should be.
    #[error("{what} is not valid: {reason}")]
    JwksParse { what: String, reason: String },
    /// The TLS certificate, key or client CA could not be loaded.
    #[error("TLS: {reason}")]
    Tls { reason: String },
    /// The bus failed (connecting, provisioning, opening buckets, the waiter subscription).
    #[error(transparent)]
    Bus(#[from] agentos_bus::Error),
}

tokio::task_local! {
    /// The request id of the request being served, for error bodies.
    pub static REQUEST_ID: String;
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub retry_after: Option<u64>,
    /// More response headers (`x-ratelimit-*`).
    pub headers: Vec<(axum::http::HeaderName, HeaderValue)>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    message: &'a str,
    param: Option<&'a str>,
    request_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            headers: Vec::new(),
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Tells the client, in `Retry-After`, how many seconds to wait before retrying.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// A failure of ours: logged with its cause, answered without it.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, context, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the server log for this request id",
        )
    }

    /// The bus is unreachable or failed.
    pub fn unavailable(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %err, context, "bus unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bus_unavailable",
            "the message bus is unavailable; retry later",
        )
    }

    /// OpenAI's error `type` for a status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::CONFLICT => "conflict_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                "invalid_request_error"
            }
            s if s.is_client_error() => "invalid_request_error",
            _ => "api_error",
        }
    }
}

impl From<agentos_bus::Error> for ApiError {
    fn from(e: agentos_bus::Error) -> Self {
        use agentos_bus::Error as E;
        match e {
            E::InvalidId {
                kind,
                ref value,
                reason,
            } => Self::bad_request("invalid_id", format!("invalid {kind} {value:?}: {reason}")),
            E::Connect { .. }
            | E::TimedOut { .. }
            | E::NoResponders { .. }
            | E::Nats { .. }
            | E::Missing { .. } => Self::unavailable("bus", &e),
            e => Self::internal("bus", e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = REQUEST_ID.try_with(Clone::clone).ok();
        let body = Body {
            error: Inner {
                kind: self.kind(),
                code: self.code,
                message: &self.message,
                param: self.param.as_deref(),
                request_id,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
