//! The built-in tools: `echo`, `sleep`, `clock.now`, `math.eval`, `http.get`.

use std::time::Duration;

use agentos_bus::envelope::{ErrorBody, ToolSpec};
use agentos_bus::id::ToolName;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Largest `http.get` body returned to the model.
const MAX_BODY: usize = 64 * 1024;
/// Longest `sleep`.
const MAX_SLEEP_MS: u64 = 600_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Echo,
    Sleep,
    ClockNow,
    MathEval,
    HttpGet,
}

/// A failed tool call: a code the model and the client can act on.
pub type ToolError = ErrorBody;

fn bad_args(e: impl std::fmt::Display) -> ToolError {
    ErrorBody::new("invalid_arguments", e.to_string())
}

fn args<T: for<'de> Deserialize<'de>>(v: &Value) -> Result<T, ToolError> {
    serde_json::from_value(v.clone()).map_err(bad_args)
}

impl Builtin {
    pub const ALL: [Builtin; 5] = [
        Self::Echo,
        Self::Sleep,
        Self::ClockNow,
        Self::MathEval,
        Self::HttpGet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Sleep => "sleep",
            Self::ClockNow => "clock.now",
            Self::MathEval => "math.eval",
            Self::HttpGet => "http.get",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Echo => "Returns its arguments unchanged.",
            Self::Sleep => "Waits {\"ms\": n} milliseconds; cancellable.",
            Self::ClockNow => "The current UTC time (RFC 3339) and Unix milliseconds.",
            Self::MathEval => "Evaluates an arithmetic expression {\"expr\": \"6*7\"}.",
            Self::HttpGet => "GETs {\"url\": ...} from an allow-listed host.",
        }
    }

    /// The JSON Schema of the tool's arguments, as models are shown it.
    pub fn parameters(self) -> Value {
        let one = |name: &str, kind: &str, what: &str| {
            json!({"type": "object", "properties": {name: {"type": kind, "description": what}},
                "required": [name], "additionalProperties": false})
        };
        match self {
            Self::Echo => json!({"type": "object"}),
            Self::Sleep => one("ms", "integer", "milliseconds to wait"),
            Self::ClockNow => {
                json!({"type": "object", "properties": {}, "additionalProperties": false})
            }
            Self::MathEval => one("expr", "string", "the expression, e.g. 6*7 or (2+3)^2"),
            Self::HttpGet => one("url", "string", "the URL to fetch"),
        }
    }

    /// The longest one call may take.
    pub fn timeout(self) -> Duration {
        match self {
            Self::Echo | Self::ClockNow | Self::MathEval => Duration::from_secs(10),
            // The HTTP client gives up after 30 s.
            Self::HttpGet => Duration::from_secs(35),
            Self::Sleep => Duration::from_millis(MAX_SLEEP_MS) + Duration::from_secs(5),
        }
    }

    /// What the tool declares about itself (see [`ToolSpec`]).
    pub fn spec(self) -> Option<ToolSpec> {
        Some(ToolSpec {
            name: ToolName::parse(self.name()).ok()?,
            description: self.description().to_owned(),
            parameters: self.parameters(),
            idempotent: self.idempotent(),
            timeout_ms: self.timeout().as_millis() as u64,
        })
    }

    /// The built-in called `name`.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Whether running the tool twice with the same arguments is harmless. All built-ins are;
    /// the worker still returns a recorded result for a repeated idempotency key.
    pub fn idempotent(self) -> bool {
        true
    }

    /// Runs the tool. `idempotency_key` is the call's key, if it has one: `http.get` sends it as
    /// `Idempotency-Key`, so a service that honours it sees one effect when a call in flight in
    /// a killed worker is run again.
    pub async fn call(
        self,
        env: &ToolEnv,
        arguments: &Value,
        idempotency_key: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<Value, ToolError> {
        match self {
            Self::Echo => Ok(arguments.clone()),
            Self::Sleep => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct A {
                    ms: u64,
                }
                let a: A = args(arguments)?;
                if a.ms > MAX_SLEEP_MS {
                    return Err(bad_args(format!("ms must be at most {MAX_SLEEP_MS}")));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(a.ms)) => Ok(json!({"slept_ms": a.ms})),
                    _ = cancel.cancelled() => Err(ErrorBody::new("cancelled", "the run was cancelled")),
                }
            }
            Self::ClockNow => {
                let now = time::OffsetDateTime::now_utc();
                let rfc3339 = now
                    .format(&time::format_description::well_known::Rfc3339)
                    .map_err(|e| ErrorBody::new("internal", e.to_string()))?;
                Ok(json!({"utc": rfc3339, "unix_ms": now.unix_timestamp_nanos() / 1_000_000}))
            }
            Self::MathEval => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct A {
                    expr: String,
                }
                let a: A = args(arguments)?;
                super::math::eval(&a.expr)
                    .map(|v| json!({"value": v}))
                    .map_err(|e| ErrorBody::new("math_error", e.to_string()))
            }
            Self::HttpGet => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct A {
                    url: String,
                }
                let a: A = args(arguments)?;
                env.http_get(&a.url, idempotency_key, cancel).await
            }
        }
    }
}

/// What tools may reach: the HTTP client and its allow-list.
#[derive(Clone, Debug)]
pub struct ToolEnv {
    http: reqwest::Client,
    /// Hosts (`host` or `host:port`) `http.get` may fetch from; empty refuses all.
    allow_hosts: Vec<String>,
}

impl ToolEnv {
    pub fn new(allow_hosts: Vec<String>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, allow_hosts })
    }

    fn allowed(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let with_port = url.port_or_known_default().map(|p| format!("{host}:{p}"));
        self.allow_hosts
            .iter()
            .any(|a| a == host || Some(a) == with_port.as_ref())
    }

    async fn http_get(
        &self,
        url: &str,
        idempotency_key: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<Value, ToolError> {
        let url = reqwest::Url::parse(url).map_err(bad_args)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_args("only http and https URLs"));
        }
        if !self.allowed(&url) {
            return Err(ErrorBody::new(
                "host_not_allowed",
                format!(
                    "{} is not on the http.get allow-list",
                    url.host_str().unwrap_or("")
                ),
            ));
        }
        let fetch = async {
            let mut request = self.http.get(url);
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            let resp = request
                .send()
                .await
                .map_err(|e| ErrorBody::new("http_error", e.to_string()))?;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| ErrorBody::new("http_error", e.to_string()))?;
            let truncated = bytes.len() > MAX_BODY;
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_BODY)]).into_owned();
            Ok(
                json!({"status": status, "content_type": content_type, "body": body, "truncated": truncated}),
            )
        };
        tokio::select! {
            r = fetch => r,
            _ = cancel.cancelled() => Err(ErrorBody::new("cancelled", "the run was cancelled")),
        }
    }
}
