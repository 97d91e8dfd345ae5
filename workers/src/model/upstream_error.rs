//! Upstream failures mapped to the error model: a stable code, a sanitized message (never a
//! traceback, file path or the upstream's raw body: those are logged, once, by the caller), and
//! whether another attempt may help. A 4xx, and a 5xx whose body says the request itself is at
//! fault (llama-cpp-python answers a malformed request with a 500 and a traceback), are
//! deterministic: retrying them only repeats the failure.

use serde_json::Value;

/// Words in a 5xx body that mean the request itself is at fault.
const DETERMINISTIC: [&str; 16] = [
    "invalid",
    "validation",
    "valueerror",
    "typeerror",
    "keyerror",
    "not supported",
    "unsupported",
    "must be",
    "exceed",
    "context length",
    "context window",
    "too long",
    "too many tokens",
    "malformed",
    "bad request",
    "unrecognized",
];

/// An upstream's error answer, classified.
#[derive(Debug, PartialEq, Eq)]
pub struct Classified {
    pub code: &'static str,
    pub message: String,
    pub retryable: bool,
}

/// Classifies an HTTP error answer: `status` and the raw `body`.
pub fn classify(status: u16, body: &str) -> Classified {
    let said = said(body);
    let lower = body.to_ascii_lowercase();
    let at_fault = DETERMINISTIC.iter().any(|w| lower.contains(w));
    let (code, retryable) = match status {
        429 => ("upstream_rate_limited", true),
        408 => ("upstream_timeout", true),
        404 => ("model_not_found", false),
        401 | 403 => ("upstream_auth", false),
        501 => ("upstream_error", false),
        502..=504 => ("upstream_error", true),
        s if s >= 500 => ("upstream_error", !at_fault),
        _ => ("upstream_bad_request", false),
    };
    let message = match (code, said.as_deref().filter(|m| clean(m))) {
        ("upstream_bad_request" | "model_not_found", Some(m)) => {
            format!("the upstream refused the request (HTTP {status}): {m}")
        }
        ("upstream_error", _) if !retryable => {
            format!("the upstream failed on this request (HTTP {status}); it was not retried")
        }
        ("upstream_error", _) => format!("the upstream failed (HTTP {status})"),
        ("upstream_rate_limited", _) => format!("the upstream is rate limiting (HTTP {status})"),
        ("upstream_auth", _) => format!(
            "the upstream refused the route's credentials (HTTP {status}); check its api key"
        ),
        _ => format!("the upstream refused the request (HTTP {status})"),
    };
    Classified {
        code,
        message,
        retryable,
    }
}

/// The message of an error the upstream sent inside its stream, sanitized.
pub fn in_stream(error: &Value) -> String {
    match error["message"].as_str().filter(|m| clean(m)) {
        Some(m) => format!("the upstream reported an error: {m}"),
        None => "the upstream reported an error mid-stream".to_owned(),
    }
}

/// The upstream's own message: `error.message` of an OpenAI-shaped body, else the body.
fn said(body: &str) -> Option<String> {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => v["error"]["message"]
            .as_str()
            .or(v["message"].as_str())
            .or(v["detail"].as_str())
            .map(str::to_owned),
        Err(_) => Some(body.trim().to_owned()).filter(|b| !b.is_empty()),
    }
}

/// Short, one line, and free of what reveals the upstream's internals (tracebacks, paths).
fn clean(m: &str) -> bool {
    m.len() <= 300
        && !m.contains('\n')
        && !m.contains("Traceback")
        && !m.contains("File \"")
        && !m.contains(".py")
        && !m.contains("site-packages")
        && !m.contains(":\\")
        && !m.split_whitespace().any(|w| {
            let w = w.trim_start_matches(['"', '\'', '(']);
            w.starts_with('/') && w[1..].contains('/')
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TRACEBACK: &str = "Traceback (most recent call last):\n  File \"/opt/venv/lib/python3.11/site-packages/llama_cpp/llama_chat_format.py\", line 228, in format\nTypeError: can only concatenate str (not \"NoneType\") to str";

    #[test]
    fn tracebacks_are_deterministic_and_never_returned() {
        let body = json!({"error": {"message": TRACEBACK}}).to_string();
        let c = classify(500, &body);
        assert_eq!((c.code, c.retryable), ("upstream_error", false));
        assert!(!c.message.contains("Traceback") && !c.message.contains("/opt"));
        let c = classify(500, TRACEBACK);
        assert!(!c.retryable && !c.message.contains("site-packages"));
    }

    #[test]
    fn transient_failures_are_retryable() {
        for (status, body) in [(500, "boom"), (503, "invalid state, try later"), (429, "")] {
            assert!(classify(status, body).retryable, "{status} {body}");
        }
        for status in [400, 401, 403, 404, 422, 501] {
            assert!(!classify(status, "").retryable, "{status}");
        }
    }

    #[test]
    fn a_clean_refusal_keeps_the_upstreams_words() {
        let body = json!({"error": {"message": "'messages' must not be empty"}}).to_string();
        let c = classify(400, &body);
        assert_eq!(c.code, "upstream_bad_request");
        assert!(
            c.message.ends_with("'messages' must not be empty"),
            "{}",
            c.message
        );
        let c = classify(400, "cannot open /srv/models/x.gguf");
        assert!(!c.message.contains("/srv"), "{}", c.message);
        assert_eq!(
            in_stream(&json!({"message": TRACEBACK})),
            "the upstream reported an error mid-stream"
        );
    }
}
