//! The finishing pass over the OpenAPI document, run once the routes are merged: what every
//! operation shares is written here once instead of in 33 `responses(...)` lists. The answers
//! the edge gives any route (credentials refused, admission's 429 and 503, a request out of
//! time, a body refused before its handler) are added where the operation can give them; every
//! error is typed `application/problem+json` (the seed's own routes keep their FastAPI-shaped
//! errors); every response is described; a summary is one short sentence and the rest of the
//! doc comment goes to the description.

use serde_json::{json, Map, Value};
use utoipa::openapi::OpenApi;

use crate::admission::{classify, Kind};

const PROBLEM_JSON: &str = "application/problem+json";
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// What the finishing pass needs to know of the server.
pub struct Served<'a> {
    /// Bounds a page's `limit` that has no bound of its own (`limits.page_max`).
    pub page_max: usize,
    /// A value of a path parameter, by name, that names something a fresh server holds (its
    /// demo data), so the document's examples can be tried as they are.
    pub examples: &'a [(&'a str, &'a str)],
}

/// The document as served: `spec` with the shared answers, content types and texts.
pub fn finish(spec: OpenApi, served: &Served) -> OpenApi {
    let mut doc = serde_json::to_value(&spec).expect("an OpenAPI document serializes");
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            for method in METHODS {
                if let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) {
                    finish_operation(path, method, op, served);
                }
            }
        }
    }
    serde_json::from_value(doc).unwrap_or(spec)
}

/// The rule of each path parameter the API validates, by name.
fn pattern(parameter: &str) -> Option<&'static str> {
    match parameter {
        "shop" => Some(crate::shops::SHOP_ID_PATTERN),
        "sku" => Some(crate::validate::SKU_PATTERN),
        "collection_name" => Some(crate::collections::COLLECTION_PATTERN),
        _ => None,
    }
}

fn finish_operation(path: &str, method: &str, op: &mut Map<String, Value>, served: &Served) {
    split_summary(op);
    for parameter in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
        if parameter["in"] == "query" && parameter["name"] == "limit" && parameter["schema"].get("maximum").is_none() {
            parameter["schema"]["maximum"] = json!(served.page_max);
        }
        if parameter["in"] != "path" {
            continue;
        }
        let name = parameter["name"].as_str().unwrap_or_default().to_owned();
        if let Some(rule) = pattern(&name) {
            parameter["schema"]["pattern"] = json!(rule);
        }
        if let Some((_, value)) = served.examples.iter().find(|(p, _)| *p == name) {
            parameter["example"] = json!(value);
        }
    }
    let seed = op["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "seed"));
    let exempt = matches!(classify(&method.to_uppercase().parse().unwrap_or_default(), path), Kind::Exempt);
    let has_query = op.get("parameters").and_then(Value::as_array).is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
    let has_body = op.contains_key("requestBody");
    let guarded = op.get("security").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
    let responses = op.entry("responses").or_insert_with(|| json!({})).as_object_mut().expect("responses is an object");

    let mut shared: Vec<&str> = Vec::new();
    if guarded {
        shared.push("401");
    }
    if path.contains("{shop}") {
        shared.push("404");
    }
    if !seed && has_query {
        shared.push("400");
    }
    if !seed && has_body {
        shared.extend(["400", "408", "413", "415", "422"]);
    }
    if !exempt {
        shared.extend(["429", "503"]);
    }
    for code in shared {
        responses.entry(code).or_insert_with(|| json!({ "content": problem() }));
    }
    // The seed's routes refuse a bad path or body as FastAPI did: 422 `{"detail": [...]}`.
    if seed && (has_body || path.contains('{')) {
        responses.entry("422").or_insert_with(|| {
            json!({
                "description": "A path or body the seed's model refuses, as FastAPI words it.",
                "content": { "application/json": { "schema": {
                    "type": "object", "required": ["detail"],
                    "properties": { "detail": { "type": "array", "items": { "type": "object" } } }
                } } }
            })
        });
    }
    for (code, response) in responses.iter_mut() {
        let response = response.as_object_mut().expect("a response is an object");
        if response.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
            response.insert("description".into(), json!(describe(code)));
        }
        let error = code.starts_with('4') || code.starts_with('5');
        // The seed's routes answer their own errors as FastAPI does; admission's and the edge's
        // answers are problems on every route.
        let edge_answer = matches!(code.as_str(), "429" | "503" | "408" | "413" | "415");
        if error && (!seed || edge_answer) && code != "304" {
            response.insert("content".into(), problem());
        }
        if matches!(code.as_str(), "429" | "503") {
            let headers = response.entry("headers").or_insert_with(|| json!({}));
            headers["Retry-After"] = json!({
                "description": "Seconds to wait before trying again.",
                "schema": { "type": "integer", "minimum": 0 }
            });
        }
    }
}

fn problem() -> Value {
    json!({ PROBLEM_JSON: { "schema": { "$ref": "#/components/schemas/Problem" } } })
}

/// What an answer with `code` means, where the operation does not say more.
fn describe(code: &str) -> &'static str {
    match code {
        "200" => "OK.",
        "201" => "Created.",
        "202" => "Accepted: done in the background.",
        "204" => "Done; no content.",
        "304" => "Not modified since the `ETag` sent in `If-None-Match`.",
        "400" => "A malformed request: an unknown or invalid query parameter, or a body that is not JSON.",
        "401" => "No credentials, or not the ones this operation needs.",
        "404" => "No such shop, or no such item in it.",
        "408" => "The request body did not arrive in time.",
        "409" => "Refused by a rule of the domain; nothing was changed.",
        "413" => "The request body is larger than allowed.",
        "415" => "The request body is not of the content type this operation reads.",
        "422" => "The body is well-formed but invalid; `errors` names the fields.",
        "429" => "Over the shop's or the client's quota; retry after `Retry-After`.",
        "503" => "Overloaded, out of time, or the store cannot answer now; retry after `Retry-After`.",
        _ => "See the operation's description.",
    }
}

/// utoipa makes a doc comment's first paragraph the summary, however long: keep its first
/// sentence there and move the rest to the front of the description.
fn split_summary(op: &mut Map<String, Value>) {
    let Some(summary) = op.get("summary").and_then(Value::as_str).map(|s| s.replace('\n', " ")) else { return };
    // A break this early is a label (`Add a user: ...`), not the end of the first sentence.
    const SHORTEST: usize = 12;
    // Nor is one inside code (`{"detail": ...}`).
    let in_code = |i: usize| summary[..i].matches('`').count() % 2 == 1;
    let after =
        |sep: &str| summary.match_indices(sep).map(|(i, _)| i).find(|&i| i >= SHORTEST && !in_code(i)).map(|i| (i, sep.len()));
    let (first, rest) = match [". ", "; ", ": "].into_iter().filter_map(after).min() {
        Some((i, len)) => (summary[..i].to_owned(), summary[i + len..].trim().to_owned()),
        None => (summary.trim_end_matches('.').to_owned(), String::new()),
    };
    let description = op.get("description").and_then(Value::as_str).unwrap_or_default().to_owned();
    let joined = match (rest.is_empty(), description.is_empty()) {
        (true, _) => description,
        (false, true) => capitalized(&rest),
        (false, false) => format!("{}\n\n{description}", capitalized(&rest)),
    };
    op.insert("summary".into(), json!(first));
    if !joined.is_empty() {
        op.insert("description".into(), json!(joined));
    }
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
