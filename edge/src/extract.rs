//! Extractors that answer in the error model: JSON bodies, path ids, and the request-id scope.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, REQUEST_ID};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A JSON object body (`axum::Json`, which would also take a struct from an array), with
/// rejections mapped to the error model.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(json_rejection(JsonRejection::MissingJsonContentType(
                Default::default(),
            )));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| json_rejection(JsonRejection::BytesRejection(e)))?;
        json_object(&bytes).map(Self)
    }
}

/// A JSON object from a body's bytes, read as the document describes it
/// ([`agentos_bus::strict`]): an array or a scalar is refused where serde would read a struct
/// from it, at any depth, and an integer may be written as an integral number (`5.0`). A wrong
/// field's path is the error's `param`.
pub(crate) fn json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(agentos_bus::strict::Strict(&mut de))
        .map_err(|e| body_error(&e.path().to_string(), e.into_inner()))?;
    de.end().map_err(|e| body_error(".", e))?;
    Ok(value)
}

fn body_error(path: &str, e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data if path == "." => ApiError::bad_request(
            "invalid_body",
            format!("Failed to deserialize the JSON body into the target type: {e}"),
        ),
        Category::Data => ApiError::bad_request(
            "invalid_body",
            format!("Failed to deserialize the JSON body into the target type: {path}: {e}"),
        )
        .with_param(path),
        Category::Io | Category::Syntax | Category::Eof => ApiError::bad_request(
            "invalid_json",
            format!("Failed to parse the request body as JSON: {e}"),
        ),
    }
}

/// `application/json` or a `+json` type, as `axum::Json` accepts.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_body", e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("invalid_json", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.body_text(),
            )
        }
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// Echoes `X-Request-Id` (or mints one) and scopes it for error bodies and logs.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    req.headers_mut().insert(REQUEST_ID_HEADER, value.clone());
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path(), tenant = tracing::field::Empty, trace_id = tracing::field::Empty);
    let h = req.headers();
    agentos_bus::trace::adopt(
        &span,
        agentos_bus::trace::from_lookup(|k| h.get(k)?.to_str().ok()),
    );
    if let Some(trace) = span.in_scope(agentos_bus::trace::current_trace_id) {
        span.record("trace_id", trace);
    }
    let mut resp = {
        use tracing::Instrument;
        REQUEST_ID.scope(id, next.run(req)).instrument(span).await
    };
    resp.headers_mut().insert(REQUEST_ID_HEADER, value);
    resp
}
