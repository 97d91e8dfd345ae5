//! What the handlers' annotations leave implicit, made explicit in `/openapi.json` from one
//! place, so the document states exactly what the server enforces: the error responses every
//! route can give (in the documented error model), the id patterns of path parameters (from
//! [`agentos_bus::id::pattern`], the same rules the server checks), and the metadata bounds.

use agentos_bus::id::pattern;
use serde_json::{Map, Value, json};

use crate::threads::{MAX_METADATA_KEY, MAX_METADATA_KEYS};

/// Routes anyone may call (no token, no tenant, no rate limit).
const PUBLIC: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// The pattern of a path, query or header parameter, by its name and route.
fn param_pattern(path: &str, name: &str) -> Option<&'static str> {
    Some(match name {
        "namespace" => pattern::NAMESPACE,
        "key" => pattern::MEMORY_KEY,
        "model" => pattern::DOTTED,
        "tenant" | "agent_id" => pattern::TOKEN,
        "Last-Event-ID" => "^[0-9]{1,19}$",
        "status" => {
            "^(queued|running|requires_action|cancelling|completed|failed|cancelled|expired)$"
        }
        "Idempotency-Key" => "^[!-~]{1,255}$",
        "id" | "after" if path.starts_with("/v1/runs") => pattern::RUN_ID,
        "id" => pattern::TOKEN,
        _ => return None,
    })
}

/// The pattern of a string property of a request or response, by its name.
fn property_pattern(name: &str) -> Option<&'static str> {
    Some(match name {
        "agent_id" | "thread_id" => pattern::TOKEN,
        "model" => pattern::DOTTED,
        "call_id" => pattern::CALL_ID,
        _ => return None,
    })
}

/// The pattern of the items of a string-list property, by its name.
fn items_pattern(name: &str) -> Option<&'static str> {
    Some(match name {
        "agents" => pattern::TOKEN,
        "models" | "tools" | "requires_approval" => pattern::DOTTED,
        _ => return None,
    })
}

/// Operations that call a model (chat, embeddings, a namespace's embedding model) and answer
/// with its failures.
const UPSTREAM: [(&str, &str); 4] = [
    ("/v1/chat/completions", "post"),
    ("/v1/embeddings", "post"),
    ("/v1/memory/{namespace}/search", "post"),
    ("/v1/memory/{namespace}/{key}", "put"),
];

/// Bodies that may be left out (the handler takes defaults).
const OPTIONAL_BODY: [&str; 2] = ["/v1/threads", "/v1/threads/{id}/copy"];

/// Adds the implicit parts to the generated document.
pub(super) fn complete(doc: &mut Value) {
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for schema in schemas.values_mut() {
            bound(schema);
        }
        super::bodies::complete(schemas);
        schemas.insert("Error".into(), error_schema());
        schemas.insert("Limits".into(), limits_schema());
        schemas.insert("Quotas".into(), quotas_schema());
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in ops.iter_mut() {
            if let Some(op) = op.as_object_mut() {
                complete_operation(path, method, op);
                streams(path, method, op);
            }
        }
    }
}

fn complete_operation(path: &str, method: &str, op: &mut Map<String, Value>) {
    let public = PUBLIC.contains(&path);
    let has_body = op.contains_key("requestBody");
    if let Some(body) = op.get_mut("requestBody") {
        if let (true, Some(b)) = (OPTIONAL_BODY.contains(&path), body.as_object_mut()) {
            b.insert("required".into(), json!(false));
        }
        if let Some(schema) = body.pointer_mut("/content/application~1json/schema") {
            bound(schema);
        }
    }
    let mut has_params = has_body;
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        has_params |= !params.is_empty();
        for p in params.iter_mut().filter_map(Value::as_object_mut) {
            // A parameter is absent or a string on the wire, never `null`.
            if let Some(types) = p
                .get_mut("schema")
                .and_then(|s| s.get_mut("type"))
                .and_then(Value::as_array_mut)
            {
                types.retain(|t| t != "null");
                if let [one] = types.as_slice() {
                    let one = one.clone();
                    if let Some(s) = p.get_mut("schema").and_then(Value::as_object_mut) {
                        s.insert("type".into(), one);
                    }
                }
            }
            let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
            let Some(re) = param_pattern(path, name) else {
                continue;
            };
            let schema = p
                .entry("schema")
                .or_insert_with(|| json!({"type": "string"}));
            if let Some(s) = schema.as_object_mut().filter(|s| is_string(s)) {
                s.insert("pattern".into(), json!(re));
            }
        }
    }
    if let Some(params) = op.get_mut("parameters") {
        unsigned(params);
    }
    let mut errors: Vec<(&str, &str)> = Vec::new();
    if has_params {
        errors.push(("400", "invalid request: the error names the parameter"));
    }
    if !public {
        errors.extend([
            ("401", "missing, invalid, expired or revoked token"),
            (
                "403",
                "the tenant is disabled, or the caller lacks the role or entitlement",
            ),
            ("429", "rate limited or over a quota; see Retry-After"),
        ]);
    }
    if !public {
        errors.push((
            "404",
            "no such resource for this tenant, or one the request names (agent, model, thread)",
        ));
    }
    if has_body && !public {
        errors.push((
            "409",
            "conflicts with the current state: exists already, busy, already answered",
        ));
    }
    if has_body {
        errors.extend([
            ("413", "the body is larger than the edge accepts"),
            ("415", "the body is not application/json"),
        ]);
    }
    if !public {
        errors.push((
            "500",
            "an internal error; details are logged under the request id, never returned",
        ));
    }
    if UPSTREAM.contains(&(path, method)) {
        errors.extend([
            (
                "502",
                "the model's upstream failed or answered what cannot be read",
            ),
            ("504", "the model did not answer in time"),
        ]);
    }
    errors.push(("503", "overloaded or not ready; see Retry-After"));
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    if let Some(responses) = responses {
        for (status, why) in errors {
            responses
                .entry(status)
                .or_insert_with(|| error_response(why));
        }
        for (status, response) in responses.iter_mut() {
            if status.starts_with('4') || status.starts_with('5') {
                use_error_schema(response);
            }
        }
    }
}

/// Operations that answer with Server-Sent Events when asked (`"stream": true`) besides JSON.
const STREAMING: [(&str, &str); 1] = [("/v1/runs", "post")];

/// Server-Sent Events responses: each event, as Schemathesis and the HTML spec parse it, carries
/// the event's sequence as `id`, its type as `event`, and the event as JSON in `data`.
fn streams(path: &str, method: &str, op: &mut Map<String, Value>) {
    let event = json!({"schema": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]{1,19}$"},
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json"},
            "retry": {"type": "integer"}
        }
    }});
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    let streaming = STREAMING.contains(&(path, method));
    for (status, response) in responses.iter_mut() {
        let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) else {
            continue;
        };
        if content.contains_key("text/event-stream") || (streaming && status.starts_with('2')) {
            content.insert("text/event-stream".into(), event.clone());
        }
    }
}

/// An error response as the error model gives it.
fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// Error responses the annotations declared without a body get the error model's.
fn use_error_schema(response: &mut Value) {
    let Some(r) = response.as_object_mut() else {
        return;
    };
    if !r.contains_key("content") && !r.contains_key("$ref") {
        r.insert(
            "content".into(),
            json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}),
        );
    }
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["type", "code", "message"],
            "properties": {
                "type": {"type": "string"},
                "code": {"type": "string"},
                "message": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "request_id": {"type": ["string", "null"]}
            }
        }}
    })
}

/// Quota settings (`agentos_bus::quota::Quotas`, parsed strictly: unknown fields are `400
/// invalid_quotas`): the tenant's limits, and overrides by agent and by principal.
fn quotas_schema() -> Value {
    let mut q = limits_schema();
    if let Some(props) = q.get_mut("properties").and_then(Value::as_object_mut) {
        let overrides = |names: Value| {
            json!({"type": "object", "propertyNames": names,
                "additionalProperties": {"$ref": "#/components/schemas/Limits"}})
        };
        props.insert(
            "agents".into(),
            overrides(json!({"pattern": pattern::TOKEN})),
        );
        props.insert("principals".into(), overrides(json!({"minLength": 1})));
    }
    q
}

/// One scope's limits (`agentos_bus::quota::Limits`); every field optional, every number at
/// least 1 (rates and costs above 0).
fn limits_schema() -> Value {
    // `null` is the same as absent: no limit.
    let count = json!({"type": ["integer", "null"], "minimum": 1, "maximum": u32::MAX});
    let big = json!({"type": ["integer", "null"], "minimum": 1, "maximum": u64::MAX});
    let money = json!({"type": ["number", "null"], "exclusiveMinimum": 0});
    let periods = |v: &Value| {
        json!({"type": "object", "additionalProperties": false, "properties": {
            "per_minute": v, "per_day": v, "per_month": v}})
    };
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "rate": {"type": ["object", "null"], "additionalProperties": false,
                "required": ["requests_per_second"],
                "properties": {"requests_per_second":
                    {"type": "number", "exclusiveMinimum": 0}, "burst": count}},
            "concurrent_runs": count,
            "over_concurrency": {"enum": ["queue", "reject", null]},
            "tokens": periods(&big),
            "cost_usd": periods(&money),
            "run": {"type": "object", "additionalProperties": false,
                "properties": {"max_tokens": big, "max_steps": count}}
        }
    })
}

/// States the server's bounds on a schema's properties, at any depth: id patterns by property
/// name, and `metadata` at most [`MAX_METADATA_KEYS`] keys of at most [`MAX_METADATA_KEY`]
/// characters.
fn bound(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        if let Some(list) = schema.as_array_mut() {
            list.iter_mut().for_each(bound);
        }
        return;
    };
    if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, prop) in props.iter_mut() {
            let Some(p) = prop.as_object_mut() else {
                continue;
            };
            if name == "quotas" {
                *prop =
                    json!({"anyOf": [{"$ref": "#/components/schemas/Quotas"}, {"type": "null"}]});
                continue;
            }
            if name == "metadata" {
                p.insert("maxProperties".into(), json!(MAX_METADATA_KEYS));
                p.insert(
                    "propertyNames".into(),
                    json!({"maxLength": MAX_METADATA_KEY}),
                );
            }
            if let (true, Some(re)) = (is_string(p), property_pattern(name)) {
                p.insert("pattern".into(), json!(re));
            }
            if let (Some(items), Some(re)) = (
                p.get_mut("items").and_then(Value::as_object_mut),
                items_pattern(name),
            ) && is_string(items)
            {
                items.insert("pattern".into(), json!(re));
            }
        }
    }
    for v in obj.values_mut() {
        if v.is_object() || v.is_array() {
            bound(v);
        }
    }
    unsigned(schema);
}

/// Integers as the server reads them: utoipa writes Rust's `u64` and `u32` as `int64` /
/// `int32` with `minimum: 0`, whose upper bound would be the signed one; the server takes (and
/// refuses beyond) the unsigned one. Signed ones get their type's bounds.
fn unsigned(schema: &mut Value) {
    match schema {
        Value::Array(list) => list.iter_mut().for_each(unsigned),
        Value::Object(obj) => {
            let non_negative = obj.get("minimum").and_then(Value::as_f64) == Some(0.0);
            let max = match obj.get("format").and_then(Value::as_str) {
                Some("int64") if non_negative => Some(("uint64", json!(u64::MAX))),
                Some("int32") if non_negative => Some(("uint32", json!(u32::MAX))),
                Some("int64") if !obj.contains_key("minimum") => {
                    obj.insert("minimum".into(), json!(i64::MIN));
                    Some(("int64", json!(i64::MAX)))
                }
                Some("int32") if !obj.contains_key("minimum") => {
                    obj.insert("minimum".into(), json!(i32::MIN));
                    Some(("int32", json!(i32::MAX)))
                }
                _ => None,
            };
            if let Some((format, max)) = max {
                obj.insert("format".into(), json!(format));
                obj.entry("maximum").or_insert(max);
            }
            obj.values_mut()
                .filter(|v| v.is_object() || v.is_array())
                .for_each(unsigned);
        }
        _ => {}
    }
}

/// A schema of strings (maybe nullable).
fn is_string(schema: &Map<String, Value>) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use agentos_bus::id::{CallId, MemoryKey, ModelName, Namespace, RunId, Tenant};

    use super::*;

    /// The documented patterns accept exactly what the server's checks accept.
    #[test]
    fn the_patterns_agree_with_the_id_checks() {
        let long = |n: usize| "a".repeat(n);
        let samples: Vec<String> = [
            "a",
            "0",
            "a_b-c",
            "A",
            "-a",
            "_a",
            "a.b",
            "a..b",
            ".a",
            "a.",
            "a.b.c.d",
            "a.b.c.d.e",
            "a.b.c.d.e.f.g.h",
            "a.b.c.d.e.f.g.h.i",
            "a b",
            "é",
            "",
            "Key=_-9",
            "a/b",
            "01a24292-7728-738d-9b4e-da7ece57a6b3",
            "01A24292-7728-738D-9B4E-DA7ECE57A6B3",
            "01a24292-7728-738d-9b4e-da7ece57a6b",
            "01a242927728738d9b4eda7ece57a6b3",
            "users.{principal}",
            "{thread}",
            "{agent}.notes.{principal}",
            "{other}",
            "a{thread}",
            "{thread}x.b",
            "{principal}.a.b.c.d.e.f.g",
            "{principal}.a.b.c.d.e.f.g.h",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([
            long(63),
            long(64),
            long(128),
            long(129),
            format!("{}.b", long(63)),
        ])
        .collect();
        type Check = fn(&str) -> bool;
        let cases: [(&str, Check); 7] = [
            (super::super::bodies::NAMESPACE_TEMPLATE, |s| {
                agentos_bus::grant::NamespaceTemplate::parse(s).is_ok()
            }),
            (pattern::TOKEN, |s| Tenant::parse(s).is_ok()),
            (pattern::DOTTED, |s| ModelName::parse(s).is_ok()),
            (pattern::NAMESPACE, |s| Namespace::parse(s).is_ok()),
            (pattern::MEMORY_KEY, |s| MemoryKey::parse(s).is_ok()),
            (pattern::RUN_ID, |s| RunId::parse(s).is_ok()),
            (pattern::CALL_ID, |s| CallId::parse(s).is_ok()),
        ];
        for (re, check) in cases {
            let schema = json!({"type": "string", "pattern": re});
            let v = jsonschema::validator_for(&schema).expect("pattern compiles");
            for s in &samples {
                assert_eq!(v.is_valid(&json!(s)), check(s), "{re} on {s:?}");
            }
        }
    }

    #[test]
    fn every_operation_documents_its_errors_in_the_error_model() {
        let doc = super::super::document();
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("ops") {
                let r = &op["responses"];
                assert!(r.get("503").is_some(), "{method} {path}");
                if !PUBLIC.contains(&path.as_str()) {
                    assert_eq!(
                        r["401"]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path}"
                    );
                }
            }
        }
        assert_eq!(
            doc["paths"]["/v1/runs/{id}"]["get"]["parameters"][0]["schema"]["pattern"],
            pattern::RUN_ID
        );
    }
}
