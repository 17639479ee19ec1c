//! `/openapi.json`: generated from the routes themselves, valid OpenAPI, and every
//! operation it lists is served with its method.

mod common;

use serde_json::Value;

use common::hubspot::API_TOKEN;
use common::TestEngine;

const VALIDATE: &str = "import sys, json\nfrom openapi_spec_validator import validate\nvalidate(json.load(sys.stdin))\nprint('valid')";

#[tokio::test]
async fn the_openapi_document_is_valid_and_lists_every_route_served() {
    let engine = TestEngine::start(&[("CRM_API_TOKEN", API_TOKEN)]).await;
    let response = engine
        .http
        .get(engine.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    common::python(VALIDATE, &doc.to_string()).unwrap_or_else(|e| panic!("{e}"));
    // The validator does refuse a broken document.
    let mut broken = doc.clone();
    broken["paths"]["/crm/dlq"]["get"]["responses"] = Value::String("none".into());
    assert!(common::python(VALIDATE, &broken.to_string()).is_err());

    let paths = doc["paths"].as_object().unwrap();
    let mut open = vec![];
    assert!(paths.len() >= 35, "{} paths", paths.len());
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for (path, item) in paths {
        assert!(
            readme.contains(path.as_str()),
            "README.md does not document {path}"
        );
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path}"
            );
            // Each operation is served with its method: anything but the router's
            // own 404 (no body) or 405.
            let url = engine.url(&path.replace("{", "x").replace("}", ""));
            let request = |token: Option<&str>| {
                let request = match method.as_str() {
                    "get" => engine.http.get(&url),
                    "post" => engine.http.post(&url),
                    "put" => engine.http.put(&url),
                    "delete" => engine.http.delete(&url),
                    other => panic!("unexpected method {other}"),
                };
                match token {
                    Some(t) => request.bearer_auth(t),
                    None => request,
                }
            };
            let answer = request(None).send().await.unwrap();
            let status = answer.status().as_u16();
            let body = answer.bytes().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path} is not served");
            assert!(
                !(status == 404 && body.is_empty()),
                "{method} {path} is not routed"
            );
            // What the document says needs the token refuses a call without it, or
            // with a wrong one, before reading anything else of the request.
            if op.get("security").is_some() {
                assert_eq!(status, 401, "{method} {path} answered without the token");
                let wrong = request(Some("control-token-for-testz"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(wrong.status(), 401, "{method} {path} took a wrong token");
            } else {
                open.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    // Every route anyone may call, known by name: a new one is a decision.
    open.sort();
    assert_eq!(
        open,
        [
            "GET /crm/health",
            "GET /crm/hubspot/callback",
            "GET /crm/zoho/callback",
            "GET /dashboard",
            "GET /healthz",
            "GET /metrics",
            "GET /openapi.json",
            "GET /readyz",
            "POST /crm/webhooks/hubspot",
            "POST /crm/webhooks/zoho",
            "POST /crm/webhooks/{provider}",
        ]
    );
    engine.stop().await;
}

/// Routes are registered only through `Documented`, so none goes undescribed.
#[test]
fn no_route_bypasses_the_description() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for dir in ["ingest/src", "engine/src"] {
        let mut stack = vec![std::path::PathBuf::from(root).join(dir)];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("openapi.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                !text.contains(".route("),
                "{} registers a route outside crmsync_ingest::openapi::Documented",
                path.display()
            );
        }
    }
}
