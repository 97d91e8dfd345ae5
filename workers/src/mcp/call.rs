//! One bridged call: `tools/call` on the tool's server with a progress token, its
//! `notifications/progress` forwarded as `progress` replies (at most ten a second, the latest
//! winning in between: each becomes a journal event), and the result mapped onto a final
//! [`ToolReply`]. A cancel of the run, or the call's timeout, drops the request, which makes the
//! MCP client send `notifications/cancelled` for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentos_bus::envelope::{Envelope, ErrorBody, ToolReply};
use agentos_bus::{Bus, Incoming};
use futures::{FutureExt, StreamExt};
use rmcp::ServiceError;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, NumberOrString, ProgressNotificationParam,
    ProgressToken, RequestMetaObject,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::server::{BridgedTool, Connected};

/// Progress tokens, unique within the process.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// How a call ended, and whether its reply may be recorded under its idempotency key.
pub(super) struct Outcome {
    pub reply: ToolReply,
    /// False for a call that did not finish (cancelled) or that is safe to run again.
    pub finished: bool,
}

/// Calls `tool` on `conn` and streams its progress to the caller of `req`.
pub(super) async fn invoke(
    bus: &Bus,
    req: &Incoming,
    conn: &Connected,
    tool: &BridgedTool,
    arguments: &Value,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Outcome {
    let arguments = match arguments {
        Value::Object(map) => Some(map.clone()),
        Value::Null => None,
        _ => {
            return Outcome {
                reply: error(
                    "invalid_arguments",
                    "the arguments of an MCP tool must be a JSON object",
                ),
                finished: true,
            };
        }
    };
    let token = ProgressToken(NumberOrString::Number(
        NEXT_TOKEN.fetch_add(1, Ordering::Relaxed) as i64,
    ));
    let mut progress = conn.progress.subscribe(token.clone()).await;
    let mut params = CallToolRequestParams::new(tool.mcp_name.clone());
    if let Some(arguments) = arguments {
        params = params.with_arguments(arguments);
    }
    params.meta = Some(RequestMetaObject::with_progress_token(token));
    let call = conn.peer.call_tool(params);
    tokio::pin!(call);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    // Progress goes out at most every PROGRESS_INTERVAL; in between, the latest one waits.
    let mut pending: Option<ToolReply> = None;
    let mut next_progress = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            // Dropping `call` sends `notifications/cancelled`.
            _ = cancel.cancelled() => {
                tracing::info!(tool = %tool.name, "run cancelled; cancelling the MCP call");
                return Outcome {
                    reply: error("cancelled", "the run was cancelled"),
                    finished: false,
                };
            }
            result = &mut call => {
                // Progress that came before the result goes out before it (the latest only).
                while let Some(Some(p)) = progress.next().now_or_never() {
                    pending = Some(progress_reply(p));
                }
                forward(bus, req, &mut pending, &mut next_progress).await;
                return outcome(tool, result);
            }
            Some(p) = progress.next() => {
                pending = Some(progress_reply(p));
                if tokio::time::Instant::now() >= next_progress {
                    forward(bus, req, &mut pending, &mut next_progress).await;
                }
            }
            _ = tokio::time::sleep_until(next_progress), if pending.is_some() => {
                forward(bus, req, &mut pending, &mut next_progress).await;
            }
            _ = &mut deadline => {
                return Outcome {
                    reply: ToolReply::Error {
                        error: ErrorBody::new(
                            "tool_timeout",
                            format!("{} took longer than {timeout:?}", tool.name),
                        ),
                        retryable: tool.idempotent,
                    },
                    finished: !tool.idempotent,
                };
            }
        }
    }
}

/// The most progress replies one call sends a second (each becomes a journal event).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

fn progress_reply(p: ProgressNotificationParam) -> ToolReply {
    ToolReply::Progress {
        progress: p.progress,
        total: p.total,
        message: p.message,
    }
}

/// Sends the waiting progress reply and starts the next interval.
async fn forward(
    bus: &Bus,
    req: &Incoming,
    pending: &mut Option<ToolReply>,
    next: &mut tokio::time::Instant,
) {
    if let Some(reply) = pending.take()
        && let Err(e) = req.chunk(bus, reply.encode()).await
    {
        tracing::debug!(error = %e, "could not forward MCP progress");
    }
    *next = tokio::time::Instant::now() + PROGRESS_INTERVAL;
}

fn outcome(tool: &BridgedTool, result: Result<CallToolResult, ServiceError>) -> Outcome {
    let reply = match result {
        Ok(r) if r.is_error == Some(true) => error("mcp_tool_error", &text_of(&r)),
        Ok(r) => ToolReply::Ok { output: output(r) },
        // The server went away with the call in flight: it may have done part of the work.
        Err(ServiceError::TransportClosed | ServiceError::TransportSend(_)) => error(
            "mcp_server_died",
            &format!(
                "the MCP server of {} went away during the call; it is being restarted",
                tool.name
            ),
        ),
        Err(ServiceError::McpError(e)) => error("mcp_error", &e.message),
        Err(e) => error("mcp_error", &e.to_string()),
    };
    Outcome {
        reply,
        finished: true,
    }
}

fn error(code: &str, message: &str) -> ToolReply {
    ToolReply::Error {
        error: ErrorBody::new(code, message),
        retryable: false,
    }
}

/// The output a model sees: the structured result when the tool gave one, else its text
/// (one text block as a string), else the content blocks as JSON.
fn output(r: CallToolResult) -> Value {
    if let Some(structured) = r.structured_content {
        return structured;
    }
    let texts: Option<Vec<&str>> = r
        .content
        .iter()
        .map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    match texts {
        Some(texts) if texts.len() == 1 => Value::String(texts[0].to_owned()),
        Some(texts) if !texts.is_empty() => Value::String(texts.join("\n")),
        _ => serde_json::to_value(&r.content).unwrap_or(Value::Null),
    }
}

fn text_of(r: &CallToolResult) -> String {
    let text: Vec<&str> = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    if text.is_empty() {
        "the MCP tool reported an error".to_owned()
    } else {
        text.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::ContentBlock;
    use serde_json::json;

    use super::*;

    fn result(content: Vec<ContentBlock>, structured: Option<Value>) -> CallToolResult {
        let mut r = CallToolResult::success(content);
        r.structured_content = structured;
        r
    }

    #[test]
    fn the_model_sees_structured_output_else_text_else_the_blocks() {
        let structured = result(vec![ContentBlock::text("5")], Some(json!({"result": 5})));
        assert_eq!(output(structured), json!({"result": 5}));
        let one = result(vec![ContentBlock::text("hi")], None);
        assert_eq!(output(one), json!("hi"));
        let two = result(vec![ContentBlock::text("a"), ContentBlock::text("b")], None);
        assert_eq!(output(two), json!("a\nb"));
        let image = result(vec![ContentBlock::image("aGk=", "image/png")], None);
        assert_eq!(output(image)[0]["type"], "image");
    }

    #[test]
    fn tool_errors_and_dead_servers_fail_clearly() {
        let tool = BridgedTool {
            name: "mcp.s.t".parse().expect("name"),
            mcp_name: "t".into(),
            description: String::new(),
            parameters: json!({}),
            idempotent: false,
        };
        let failed = CallToolResult::error(vec![ContentBlock::text("no such file")]);
        let code = |o: Outcome| match o.reply {
            ToolReply::Error { error, retryable } => (error.code, error.message, retryable),
            other => panic!("{other:?}"),
        };
        let (c, m, retryable) = code(outcome(&tool, Ok(failed)));
        assert_eq!(
            (c.as_str(), m.as_str(), retryable),
            ("mcp_tool_error", "no such file", false)
        );
        let (c, m, _) = code(outcome(&tool, Err(ServiceError::TransportClosed)));
        assert_eq!(c, "mcp_server_died");
        assert!(m.contains("mcp.s.t"), "{m}");
    }
}
