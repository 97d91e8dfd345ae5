use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::id::*;

fn sample_event() -> Event {
    Event {
        seq: 3,
        run_id: RunId::new(),
        tenant: Tenant::parse("acme").expect("tenant"),
        ts: now(),
        trace_id: None,
        data: EventData::ToolStarted {
            step: 1,
            call_id: CallId::parse("call_1").expect("call"),
            name: ToolName::parse("math.eval").expect("tool"),
            arguments: json!({"expr": "1+2"}),
        },
    }
}

#[test]
fn events_have_the_documented_shape() {
    let e = sample_event();
    let v: serde_json::Value = serde_json::from_slice(&e.encode()).expect("json");
    assert_eq!(v["type"], "tool.started");
    assert_eq!(v["seq"], 3);
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["data"]["name"], "math.eval");
    assert!(v["ts"].as_str().is_some());
    assert_eq!(Event::decode(Some("1"), &e.encode()).expect("decode"), e);
}

#[test]
fn unknown_schema_version_is_refused() {
    let e = sample_event();
    let err = Event::decode(Some("2"), &e.encode()).expect_err("v2");
    assert_eq!(err.code(), "unsupported_schema_version");
}

#[test]
fn invalid_ids_inside_envelopes_are_decode_errors() {
    let body = json!({"type":"run","run_id":"not-a-uuid","tenant":"acme","agent_id":"a",
        "input":"hi","submitted_at":"2026-01-01T00:00:00Z"});
    let err = SubmitMessage::decode(None, body.to_string().as_bytes()).expect_err("bad id");
    assert_eq!(err.code(), "malformed_message");
    let body = json!({"type":"run","run_id":RunId::new(),"tenant":"ac.me","agent_id":"a",
        "input":"hi","submitted_at":"2026-01-01T00:00:00Z"});
    assert!(SubmitMessage::decode(None, body.to_string().as_bytes()).is_err());
}

#[test]
fn tool_reply_round_trips() {
    let r = ToolReply::Error {
        error: ErrorBody::new("timeout", "too slow"),
        retryable: true,
    };
    let v: serde_json::Value = serde_json::from_slice(&r.encode()).expect("json");
    assert_eq!(v["status"], "error");
    assert_eq!(ToolReply::decode(None, &r.encode()).expect("decode"), r);
}

#[test]
fn entitlements_cover_agent_model_and_tools() {
    let agent = AgentSpec {
        id: AgentId::parse("helper").expect("agent"),
        tenant: Tenant::parse("acme").expect("tenant"),
        model: ModelName::parse("scripted").expect("model"),
        instructions: String::new(),
        tools: vec![
            ToolName::parse("echo").expect("tool"),
            ToolName::parse("http.get").expect("tool"),
        ],
        max_steps: 4,
        model_config: serde_json::Value::Null,
        metadata: Default::default(),
        memory: Default::default(),
        history: Default::default(),
        client_tools: Vec::new(),
        requires_approval: Vec::new(),
        created_at: now(),
        updated_at: now(),
    };
    // Empty lists allow everything.
    assert_eq!(Entitlements::default().check_agent(&agent), Ok(()));
    let only = |models: &[&str], tools: &[&str], agents: &[&str]| Entitlements {
        models: models.iter().map(|s| s.to_string()).collect(),
        tools: tools.iter().map(|s| s.to_string()).collect(),
        agents: agents.iter().map(|s| s.to_string()).collect(),
    };
    let e = only(&["scripted"], &["echo", "http.get"], &["helper"]);
    assert_eq!(e.check_agent(&agent), Ok(()));
    let denied = only(&["scripted"], &["echo"], &[]).check_agent(&agent);
    assert_eq!(
        denied.expect_err("http.get is not listed").to_string(),
        "tenant is not entitled to use tool http.get"
    );
    let denied = only(&["gpt-4o"], &[], &[]).check_agent(&agent);
    assert_eq!(denied.expect_err("model").kind, "model");
    let denied = only(&[], &[], &["other"]).check_agent(&agent);
    assert_eq!(denied.expect_err("agent").kind, "agent");
}

proptest! {
    // Truncations and arbitrary bytes decode to a typed error, never a panic.
    #[test]
    fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = SubmitMessage::decode(None, &bytes);
        let _ = Event::decode(None, &bytes);
        let _ = ModelRequest::decode(None, &bytes);
        let _ = ModelReply::decode(None, &bytes);
        let _ = ToolRequest::decode(None, &bytes);
        let _ = ToolReply::decode(None, &bytes);
        let _ = RunRecord::decode(None, &bytes);
    }

    #[test]
    fn truncated_envelopes_are_errors(cut in 0usize..200) {
        let full = sample_event().encode();
        let cut = cut.min(full.len().saturating_sub(1));
        prop_assert!(Event::decode(None, &full[..cut]).is_err());
    }
}
