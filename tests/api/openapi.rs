//! The OpenAPI document a client generator reads: every answer described, errors typed as the
//! problems they are, the edge's answers declared where they can come, the credentials named
//! apart; and a snapshot, so a change to the document is a diff someone reviews.

use serde_json::Value;

use crate::helpers::spawn;

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

fn document() -> Value {
    serde_json::to_value(vitrina::api::openapi()).unwrap()
}

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push((method.to_uppercase(), path.clone(), op.clone()));
        }
    }
    ops
}

#[test]
fn every_answer_is_described_and_every_error_is_a_problem() {
    let doc = document();
    let mut faults = Vec::new();
    for (method, path, op) in operations(&doc) {
        let seed = op["tags"].as_array().unwrap().iter().any(|t| t == "seed");
        let exempt = path.starts_with("/health/") || path == "/metrics";
        let summary = op["summary"].as_str().unwrap_or_default();
        if summary.is_empty() || summary.len() > 100 || summary.contains('\n') {
            faults.push(format!("{method} {path}: summary {summary:?}"));
        }
        let responses = op["responses"].as_object().unwrap();
        for (code, r) in responses {
            if r["description"].as_str().is_none_or(str::is_empty) {
                faults.push(format!("{method} {path} {code}: no description"));
            }
            let types: Vec<&String> = r["content"].as_object().map(|c| c.keys().collect()).unwrap_or_default();
            let edge = ["408", "413", "415", "429", "503"].contains(&code.as_str());
            if (code.starts_with('4') || code.starts_with('5'))
                && (!seed || edge)
                && code != "304"
                && types != ["application/problem+json"]
            {
                faults.push(format!("{method} {path} {code}: typed {types:?}, not application/problem+json"));
            }
        }
        if !exempt {
            for code in ["429", "503"] {
                match responses.get(code) {
                    Some(r) if r["headers"]["Retry-After"].is_object() => {}
                    _ => faults.push(format!("{method} {path}: no {code} with Retry-After")),
                }
            }
        }
        if op["security"].as_array().is_some_and(|s| !s.is_empty()) && !responses.contains_key("401") {
            faults.push(format!("{method} {path}: guarded, but no 401"));
        }
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for name in ["admin_token", "shop_key"] {
        if schemes.get(name).and_then(|s| s["description"].as_str()).is_none_or(str::is_empty) {
            faults.push(format!("security scheme {name}: missing or undescribed"));
        }
    }
    assert!(faults.is_empty(), "{} faults:\n{}", faults.len(), faults.join("\n"));
}

/// utoipa takes a field's pattern only as a literal, so the body fields repeat their validator's
/// rule: each must stay the rule its validator states.
#[test]
fn body_field_patterns_are_their_validators_rules() {
    let doc = document();
    let pattern = |schema: &str, field: &str| doc["components"]["schemas"][schema]["properties"][field]["pattern"].clone();
    for (schema, field, rule) in [
        ("CreateShop", "id", vitrina::shops::SHOP_ID_PATTERN),
        ("CreateShop", "name", vitrina::validate::TEXT_PATTERN),
        ("ProductBody", "name", vitrina::validate::TEXT_PATTERN),
        ("ProductBody", "category", vitrina::validate::TEXT_PATTERN),
        ("LineBody", "sku", vitrina::validate::SKU_PATTERN),
    ] {
        assert_eq!(pattern(schema, field), rule, "{schema}.{field}");
    }
}

/// `UPDATE_OPENAPI_SNAPSHOT=1 cargo test --test api openapi` rewrites the snapshot; review its diff.
#[test]
fn the_document_is_its_reviewed_snapshot() {
    let now = serde_json::to_string_pretty(&document()).unwrap() + "\n";
    if std::env::var("UPDATE_OPENAPI_SNAPSHOT").as_deref() == Ok("1") {
        std::fs::write(SNAPSHOT, &now).unwrap();
    }
    let before = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
    assert!(
        before == now,
        "the OpenAPI document changed: run UPDATE_OPENAPI_SNAPSHOT=1 cargo test --test api openapi and review the diff of docs/openapi.json"
    );
}

#[tokio::test]
async fn the_server_serves_that_document() {
    let app = spawn().await;
    assert_eq!(app.get_json("/openapi.json").await, document());
}
