//! Bounded property tests of every bus decoder (each [`Envelope`] type, federation's and the
//! revocation list's included): arbitrary bytes, arbitrary JSON and mutated valid messages never
//! panic, and either decode or give the typed error ([`Error::Decode`], or
//! [`Error::SchemaVersion`] for a foreign `AgentOS-Schema`); whatever decodes survives
//! encode → decode unchanged.

use std::fmt::Debug;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;
use crate::Revoked;
use crate::federation::{
    Announcement, ForwardCancel, ForwardRun, FwdEntry, InboundEntry, PeerRecord,
};

const RUN: &str = "01a24292-7728-738d-9b4e-da7ece57a6b3";
const TS: &str = "2026-01-02T03:04:05.123Z";

/// Decodes `bytes` as `T` under `schema`; when it decodes, checks that encode → decode gives the
/// same value back. `Err` carries the decoder's error, `Ok` a failed round trip's description.
fn decode_as<T: Envelope + PartialEq + Debug>(
    schema: Option<&str>,
    bytes: &[u8],
) -> std::result::Result<Option<String>, Error> {
    let value = T::decode(schema, bytes)?;
    let again = T::decode(None, &value.encode());
    Ok(match again {
        Ok(again) if again == value => None,
        Ok(again) => Some(format!("{value:?} came back as {again:?}")),
        Err(e) => Some(format!("{value:?} does not decode once encoded: {e}")),
    })
}

type Decoder = fn(Option<&str>, &[u8]) -> std::result::Result<Option<String>, Error>;

/// Every decoder, with a valid message of its type (a mutation's starting point).
fn cases() -> Vec<(&'static str, Decoder, Value)> {
    let agent = json!({"id": "helper", "tenant": "acme", "model": "gpt-4o", "max_steps": 5,
        "instructions": "be brief", "tools": ["math.eval"], "model_config": {"temperature": 0.5},
        "metadata": {"k": "v"}, "history": {"max_messages": 10, "max_tokens": 500},
        "client_tools": [{"name": "ask.user", "parameters": {"type": "object"}}],
        "requires_approval": ["http.get"], "created_at": TS, "updated_at": TS});
    let message = json!({"role": "assistant", "content": null,
        "tool_calls": [{"id": "call_1", "name": "math.eval", "arguments": {"expr": "1+2"}}]});
    let usage = json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7});
    let request = json!({"run_id": RUN, "tenant": "acme", "agent_id": "helper", "input": "hi",
        "thread_id": "t1", "multitask_strategy": "enqueue", "metadata": {"a": 1},
        "submitted_at": TS, "expires_at": TS, "agent": agent});
    let announcement = json!({"node": "n1", "version": "0.1.0", "protocol": {"min": 1, "max": 2},
        "agents": ["helper"], "models": ["gpt-4o"], "tools": ["math.eval"], "interval_ms": 1000,
        "announced_at": TS});
    let event = |ty: &str, data: Value| {
        json!({"seq": 4, "run_id": RUN, "tenant": "acme", "ts": TS, "trace_id": "abc",
            "type": ty, "data": data})
    };
    vec![
        ("submit run", decode_as::<SubmitMessage>, {
            let mut r = request.clone();
            r["type"] = json!("run");
            r
        }),
        (
            "submit continuation",
            decode_as::<SubmitMessage>,
            json!({"type": "continuation",
            "run_id": RUN, "tenant": "acme",
            "tool_outputs": [{"call_id": "call_1", "output": {"ok": true}}],
            "approvals": [{"call_id": "call_2", "approve": false, "reason": "no"}]}),
        ),
        (
            "submit wake",
            decode_as::<SubmitMessage>,
            json!({"type": "wake", "run_id": RUN, "tenant": "acme", "nonce": "n-1"}),
        ),
        (
            "event tool.started",
            decode_as::<Event>,
            event(
                "tool.started",
                json!({"step": 1, "call_id": "call_1", "name": "math.eval",
                "arguments": {"expr": "1+2"}}),
            ),
        ),
        (
            "event tool.progress",
            decode_as::<Event>,
            event(
                "tool.progress",
                json!({"step": 1, "call_id": "call_1", "name": "math.eval", "progress": 0.5,
                "total": 1.0, "message": "half"}),
            ),
        ),
        (
            "event model.completed",
            decode_as::<Event>,
            event(
                "model.completed",
                json!({"step": 2, "message": message, "usage": usage}),
            ),
        ),
        (
            "event thread.history_truncated",
            decode_as::<Event>,
            event(
                "thread.history_truncated",
                json!({"omitted": 3, "kept": 2, "limit": {"max_messages": 2}}),
            ),
        ),
        (
            "event run.requires_action",
            decode_as::<Event>,
            event(
                "run.requires_action",
                json!({"step": 1, "expires_at": TS, "tool_calls": [{"call_id": "call_1",
                "name": "ask.user", "arguments": {}, "kind": "client_tool"}]}),
            ),
        ),
        (
            "event run.action_answered",
            decode_as::<Event>,
            event(
                "run.action_answered",
                json!({"step": 1, "submission": "s1", "answers": [
                {"answer": "output", "call_id": "call_1", "output": 1},
                {"answer": "approved", "call_id": "call_2", "arguments": {"x": 1}},
                {"answer": "rejected", "call_id": "call_3", "reason": "no"}]}),
            ),
        ),
        (
            "event run.started",
            decode_as::<Event>,
            event("run.started", json!({"agent": agent})),
        ),
        (
            "event run.failed",
            decode_as::<Event>,
            event(
                "run.failed",
                json!({"error": {"code": "x", "message": "y"}}),
            ),
        ),
        (
            "model request",
            decode_as::<ModelRequest>,
            json!({"run_id": RUN, "step": 1,
            "messages": [{"role": "user", "content": "hi"}, message,
                {"role": "tool", "content": "3", "tool_call_id": "call_1"}],
            "tools": [{"name": "math.eval", "description": "d", "parameters": {}}],
            "config": {"model": "m"}, "params": {"temperature": 0.25}, "stream": true}),
        ),
        (
            "model reply final",
            decode_as::<ModelReply>,
            json!({"type": "final",
            "message": message, "usage": usage, "finish_reason": "tool_calls",
            "usage_estimated": true, "logprobs": {"content": []}}),
        ),
        (
            "model reply delta",
            decode_as::<ModelReply>,
            json!({"type": "tool_call_delta",
            "index": 0, "id": "call_1", "name": "math.eval", "arguments": "{\"ex"}),
        ),
        (
            "tool spec",
            decode_as::<ToolSpec>,
            json!({"name": "math.eval", "description": "d",
            "parameters": {"type": "object"}, "idempotent": true, "timeout_ms": 1000}),
        ),
        (
            "tool request",
            decode_as::<ToolRequest>,
            json!({"tool": "math.eval",
            "arguments": {"expr": "1"}, "run_id": RUN, "step": 2, "call_id": "call_1",
            "idempotency_key": "k", "timeout_ms": 500, "first_attempt": true,
            "memory_namespaces": ["notes.a"]}),
        ),
        (
            "tool reply progress",
            decode_as::<ToolReply>,
            json!({"status": "progress", "progress": 2.0, "total": 4.0, "message": "m"}),
        ),
        (
            "tool reply error",
            decode_as::<ToolReply>,
            json!({"status": "error",
            "error": {"code": "timeout", "message": "slow"}, "retryable": true}),
        ),
        (
            "tool record claim",
            decode_as::<ToolRecord>,
            json!({"claimed_at": TS, "lease_ms": 3000}),
        ),
        (
            "tool record reply",
            decode_as::<ToolRecord>,
            json!({"status": "in_progress", "retry_after_ms": 10}),
        ),
        (
            "run record",
            decode_as::<RunRecord>,
            json!({"id": RUN, "tenant": "acme",
            "agent_id": "helper", "status": "requires_action", "input": "hi", "output": null,
            "error": {"code": "c", "message": "m"}, "usage": usage, "steps": 2,
            "thread_id": "t1", "metadata": {"m": [1]}, "created_by": "key-1",
            "created_by_roles": ["admin"], "request_hash": "h", "cancel_reason": "r",
            "required_action": {"step": 1, "seq": 9, "answered_by": "s", "tool_calls": [
                {"call_id": "call_1", "name": "n", "arguments": null, "kind": "approval"}]},
            "expires_at": TS, "trace_id": "t", "node": "n1", "status_reason": "why",
            "last_seq": 9, "created_at": TS, "updated_at": TS, "started_at": TS,
            "finished_at": null}),
        ),
        ("agent", decode_as::<AgentSpec>, agent.clone()),
        (
            "tenant",
            decode_as::<TenantRecord>,
            json!({"id": "acme", "name": "Acme",
            "enabled": true, "entitlements": {"models": ["gpt-4o"], "tools": [], "agents": []},
            "quotas": {"concurrent_runs": 2, "rate": {"requests_per_second": 1.5},
                "agents": {"helper": {"run": {"max_steps": 3}}}},
            "created_at": TS, "updated_at": TS}),
        ),
        (
            "audit record",
            decode_as::<AuditRecord>,
            json!({"ts": TS, "tenant": "acme",
            "actor": "op", "actor_tenant": "root", "action": "tenant.update",
            "target": "acme", "request_id": "r", "details": {"x": 1}}),
        ),
        (
            "memory item",
            decode_as::<MemoryItem>,
            json!({"value": {"x": "y"},
            "embedding": {"model": "embed", "vector": [0.5, -1.0, 0.0]},
            "expires_at": TS, "updated_at": TS}),
        ),
        (
            "embedding request",
            decode_as::<EmbeddingRequest>,
            json!({"input": ["a", "b"], "dimensions": 8, "user": "u"}),
        ),
        (
            "embedding reply",
            decode_as::<EmbeddingReply>,
            json!({"type": "vectors",
            "vectors": [[0.25, 1.0]], "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
        ),
        (
            "thread record",
            decode_as::<ThreadRecord>,
            json!({"id": "t1", "tenant": "acme",
            "metadata": {"a": "b"}, "created_at": TS, "updated_at": TS}),
        ),
        (
            "thread turn",
            decode_as::<ThreadTurn>,
            json!({"run_id": RUN, "messages": [message], "created_at": TS}),
        ),
        (
            "thread run",
            decode_as::<ThreadRun>,
            json!({"run_id": RUN, "agent_id": "helper", "submitted_at": TS}),
        ),
        (
            "thread lock",
            decode_as::<ThreadLock>,
            json!({"run_id": RUN, "expires_at": TS, "released": true}),
        ),
        (
            "federation announcement",
            decode_as::<Announcement>,
            announcement.clone(),
        ),
        (
            "peer record",
            decode_as::<PeerRecord>,
            json!({"announcement": announcement, "last_seen": TS}),
        ),
        (
            "forwarded run",
            decode_as::<ForwardRun>,
            json!({"origin": "n1", "protocol": 1, "request": request}),
        ),
        (
            "forwarded cancel",
            decode_as::<ForwardCancel>,
            json!({"origin": "n1", "run_id": RUN, "tenant": "acme"}),
        ),
        (
            "forward index entry",
            decode_as::<FwdEntry>,
            json!({"node": "n2",
            "tenant": "acme", "run_id": RUN, "state": "accepted", "created_at": TS}),
        ),
        (
            "inbound forward entry",
            decode_as::<InboundEntry>,
            json!({"origin": "n1",
            "tenant": "acme", "origin_run": RUN, "local_run": RUN, "done": true}),
        ),
        ("revocation", decode_as::<Revoked>, json!({"until": TS})),
    ]
}

/// The outcome is a decode (that round-trips) or the typed error.
fn assert_typed(what: &str, outcome: std::result::Result<Option<String>, Error>) {
    match outcome {
        Ok(None) => {}
        Ok(Some(drift)) => panic!("{what}: round trip: {drift}"),
        Err(Error::Decode { .. }) => {}
        Err(e) => panic!("{what}: not a decode error: {e:?}"),
    }
}

#[test]
fn every_sample_decodes_and_round_trips() {
    for (what, decode, sample) in cases() {
        let bytes = serde_json::to_vec(&sample).expect("json");
        assert_eq!(
            decode(Some("1"), &bytes).map_err(|e| e.to_string()),
            Ok(None),
            "{what}"
        );
        let Err(e) = decode(Some("2"), &bytes) else {
            panic!("{what}: schema 2 accepted");
        };
        assert_eq!(e.code(), "unsupported_schema_version", "{what}");
    }
}

/// The field names of every sample: mutations and generated objects use them, so that they
/// reach past the first missing field.
fn field_names() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| {
                out.push(k.clone());
                walk(v, out);
            }),
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    cases().iter().for_each(|(_, _, v)| walk(v, &mut out));
    out.sort();
    out.dedup();
    out
}

/// Any JSON value. Numbers include the edges of the integer types, and floats of every size
/// (read back exactly: the bus enables serde_json's `float_roundtrip`).
fn arb_json() -> impl Strategy<Value = Value> {
    let names = field_names();
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            any::<i64>(),
            Just(i64::MIN),
            Just(-1),
            Just(0),
            Just(1),
            Just(i64::from(u32::MAX) + 1)
        ]
        .prop_map(Value::from),
        prop_oneof![any::<u64>(), Just(u64::MAX)].prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop_oneof![Just(1e300), Just(-1e300), Just(3.5e38), Just(1e-300)].prop_map(|f| json!(f)),
        prop_oneof![
            Just(RUN.to_owned()),
            Just(TS.to_owned()),
            "[a-z0-9._-]{0,12}",
            any::<String>(),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        let key = prop_oneof![prop::sample::select(names.clone()), any::<String>()];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One change to a valid message: a path of choices down to a node, and what to do there.
#[derive(Clone, Debug)]
enum Edit {
    Replace(Value),
    Remove,
    Add(String, Value),
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => arb_json().prop_map(Edit::Replace),
        1 => Just(Edit::Remove),
        1 => (any::<String>(), arb_json()).prop_map(|(k, v)| Edit::Add(k, v)),
    ]
}

/// Applies `edit` at the node `path` leads to (each choice picks a child, modulo their count).
fn apply(v: &mut Value, path: &[usize], edit: Edit) {
    let Some((&first, rest)) = path.split_first() else {
        match edit {
            Edit::Replace(new) => *v = new,
            Edit::Remove => *v = Value::Null,
            Edit::Add(k, new) => {
                if let Value::Object(m) = v {
                    m.insert(k, new);
                } else {
                    *v = new;
                }
            }
        }
        return;
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            let key = m.keys().nth(first % m.len()).cloned().expect("in range");
            if rest.is_empty() && matches!(edit, Edit::Remove) {
                m.remove(&key);
            } else {
                apply(m.get_mut(&key).expect("present"), rest, edit);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = first % a.len();
            if rest.is_empty() && matches!(edit, Edit::Remove) {
                a.remove(i);
            } else {
                apply(&mut a[i], rest, edit);
            }
        }
        _ => apply(v, &[], edit),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_decode_or_give_the_typed_error(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        for (what, decode, _) in cases() {
            assert_typed(what, decode(None, &bytes));
        }
    }

    #[test]
    fn arbitrary_json_decodes_or_gives_the_typed_error(value in arb_json()) {
        let bytes = serde_json::to_vec(&value).expect("json");
        for (what, decode, _) in cases() {
            assert_typed(what, decode(Some("1"), &bytes));
        }
    }

    #[test]
    fn mutated_messages_decode_and_round_trip_or_give_the_typed_error(
        edits in prop::collection::vec(
            (prop::collection::vec(any::<usize>(), 0..6), arb_edit()), 1..4),
    ) {
        // The same edits on every decoder's sample (a path's choices are taken modulo each
        // node's children, so they land somewhere in each).
        for (what, decode, mut message) in cases() {
            for (path, edit) in edits.clone() {
                apply(&mut message, &path, edit);
            }
            let bytes = serde_json::to_vec(&message).expect("json");
            assert_typed(what, decode(None, &bytes));
            // Cut short, the same message is an error, never a panic.
            let cut = bytes.len() / 2;
            assert_typed(what, decode(None, &bytes[..cut]));
        }
    }

    #[test]
    fn a_foreign_schema_version_is_refused_by_name(version in "\\PC{0,8}") {
        prop_assume!(version != "1");
        let (_, decode, sample) = &cases()[0];
        let bytes = serde_json::to_vec(sample).expect("json");
        let e = decode(Some(&version), &bytes).expect_err("foreign version");
        prop_assert_eq!(e.code(), "unsupported_schema_version");
    }
}

#[test]
fn numbers_beyond_f32_in_vectors_are_refused() {
    // Read as infinity, they would be written back as `null` and never decode again.
    for (what, decode, mut sample) in cases() {
        let vector = match what {
            "memory item" => &mut sample["embedding"]["vector"][0],
            "embedding reply" => &mut sample["vectors"][0][0],
            _ => continue,
        };
        *vector = json!(1e300);
        let bytes = serde_json::to_vec(&sample).expect("json");
        let e = decode(None, &bytes).expect_err(what);
        assert_eq!(e.code(), "malformed_message", "{what}");
    }
}
