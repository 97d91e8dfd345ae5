//! `GET /v1/tools` from service discovery, with the tenant's entitlements applied; and the
//! `warnings` an agent gets for naming a tool nobody serves right now.

mod common;

use std::time::Duration;

use agentos_bus::envelope::ToolSpec;
use agentos_bus::id::ToolName;
use agentos_bus::{Service, ServiceSpec};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{Edge, SECRET, json_of};
use serde_json::{Value, json};
use tower::ServiceExt as _;

fn spec(name: &str, description: &str) -> ToolSpec {
    ToolSpec {
        name: ToolName::parse(name).expect("name"),
        description: description.into(),
        parameters: json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
        idempotent: true,
        timeout_ms: 2_000,
    }
}

/// A worker (any language would do) serving `tools` and declaring them in endpoint metadata.
async fn serve(edge: &Edge, tools: Vec<ToolSpec>) -> Service {
    edge.bus
        .serve(&ServiceSpec {
            name: "test-tools".into(),
            version: "0.0.1".into(),
            description: "tools for the edge tests".into(),
            endpoints: Vec::new(),
            metadata: Default::default(),
            tools,
        })
        .await
        .expect("serve")
}

async fn tool_names(edge: &Edge, tenant: &str) -> Vec<String> {
    let (status, body) = edge.call(Method::GET, "/v1/tools", tenant, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect()
}

async fn admin(edge: &Edge, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let tenant = "ops".parse().expect("tenant");
    let token = agentos_edge::mint(
        SECRET,
        "root",
        &tenant,
        &[agentos_edge::ROLE_ADMIN.to_owned()],
        Duration::from_secs(60),
    )
    .expect("mint");
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    json_of(edge.router.clone().oneshot(req).await.expect("infallible")).await
}

#[tokio::test]
async fn tools_are_listed_with_their_schemas_as_far_as_the_tenant_is_entitled() {
    let edge = Edge::start().await;
    assert_eq!(tool_names(&edge, "acme").await, Vec::<String>::new());
    let _worker = serve(
        &edge,
        vec![
            spec("probe.upper", "upper-cases text"),
            spec("probe.secret", "keeps a secret"),
        ],
    )
    .await;

    let (status, body) = edge.call(Method::GET, "/v1/tools", "acme", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "list");
    let upper = &body["data"][1];
    assert_eq!(
        upper,
        &json!({
            "name": "probe.upper", "object": "tool", "description": "upper-cases text",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            "idempotent": true, "timeout_ms": 2000
        })
    );
    assert_eq!(
        tool_names(&edge, "acme").await,
        ["probe.secret", "probe.upper"]
    );

    // A tenant entitled to one tool sees only that one.
    let (status, body) = admin(
        &edge,
        Method::POST,
        "/v1/admin/tenants",
        json!({"id": "limited", "entitlements": {"tools": ["probe.upper"]}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(tool_names(&edge, "limited").await, ["probe.upper"]);

    // The route is in the API spec.
    let (status, spec) = edge.call(Method::GET, "/openapi.json", "acme", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        spec["paths"]["/v1/tools"]["get"].is_object(),
        "{}",
        spec["paths"]
    );
}

#[tokio::test]
async fn an_agent_naming_a_tool_nobody_serves_is_accepted_with_a_warning() {
    let edge = Edge::start().await;
    let _worker = serve(&edge, vec![spec("probe.upper", "upper-cases text")]).await;

    let (status, body) = edge
        .call(
            Method::POST,
            "/v1/agents",
            "acme",
            Some(
                json!({"id": "early", "model": "scripted", "tools": ["probe.upper", "later.tool"]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["tools"], json!(["probe.upper", "later.tool"]));
    let warnings = body["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{body}");
    assert_eq!(warnings[0]["code"], "tool_unavailable");
    assert_eq!(warnings[0]["tool"], "later.tool");
    assert!(
        warnings[0]["message"]
            .as_str()
            .expect("message")
            .contains("later.tool")
    );

    // Stored all the same; a read carries no warnings.
    let (status, body) = edge
        .call(Method::GET, "/v1/agents/early", "acme", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tools"], json!(["probe.upper", "later.tool"]));
    assert!(body.get("warnings").is_none(), "{body}");

    // An update naming an unserved tool warns too.
    let (status, body) = edge
        .call(
            Method::PATCH,
            "/v1/agents/early",
            "acme",
            Some(json!({"tools": ["other.missing"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["warnings"][0]["tool"], "other.missing", "{body}");

    // Once a worker serves it, the same definition gets no warning.
    let _later = serve(&edge, vec![spec("other.missing", "arrived")]).await;
    let (status, body) = edge
        .call(
            Method::PATCH,
            "/v1/agents/early",
            "acme",
            Some(json!({"tools": ["other.missing", "probe.upper"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("warnings").is_none(), "{body}");

    // An agent with only served tools, or none, has no warnings field.
    let (status, body) = edge
        .call(
            Method::POST,
            "/v1/agents",
            "acme",
            Some(json!({"id": "ready", "model": "scripted", "tools": ["probe.upper"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body.get("warnings").is_none(), "{body}");
}
