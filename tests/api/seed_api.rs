//! The pymongo-api contract, unchanged for its clients.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::spawn;

#[tokio::test]
async fn root_reports_single_topology_and_collections() {
    let app = spawn().await;
    let v: Value = app.get_json("/").await;
    assert_eq!(v["status"], "OK");
    assert_eq!(v["mongo_topology_type"], "Single");
    assert_eq!(v["mongo_db"], "somedb");
    assert!(v["shards"].is_null());
    assert_eq!(v["cache_enabled"], true);
    assert_eq!(v["mongo_is_primary"], true);
    assert_eq!(v["mongo_is_mongos"], false);
    assert!(v["read_preference"].is_string());
    assert!(v["mongo_nodes"].is_array());
    assert!(v["mongo_secondary_hosts"].is_array());
    assert_eq!(v["collections"]["helloDoc"]["documents_count"], 1000);
    let per_shard: i64 =
        v["collections"]["helloDoc"]["shards_count"].as_object().unwrap().values().map(|n| n.as_i64().unwrap()).sum();
    assert_eq!(per_shard, 1000);
    let kind = match crate::backend::backend() {
        crate::backend::Backend::Sqlite => "sqlite",
        crate::backend::Backend::Postgres => "postgres",
    };
    assert_eq!(v["topology"]["store"]["kind"], kind);
    assert_eq!(v["topology"]["store"]["shards"][0]["nodes"][0]["role"], "primary");
}

#[tokio::test]
async fn count_list_and_get_by_name() {
    let app = spawn().await;
    let c: Value = app.get_json("/helloDoc/count").await;
    assert_eq!(c, json!({"status": "OK", "mongo_db": "somedb", "items_count": 1000}));

    let list: Value = app.get_json("/helloDoc/users").await;
    let users = list["users"].as_array().unwrap();
    assert_eq!(users.len(), 1000);
    assert_eq!(users[7]["name"], "ly7");
    assert_eq!(users[7]["age"], 7);
    assert!(users[7]["id"].is_string());

    let one: Value = app.get_json("/helloDoc/users/ly42").await;
    assert_eq!(one["name"], "ly42");
    assert_eq!(one["age"], 42);

    let r = app.get("/helloDoc/users/nobody").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"detail": "User nobody not found"}));

    // An unknown collection is simply empty, as in MongoDB.
    let c: Value = app.get_json("/nothing/count").await;
    assert_eq!(c["items_count"], 0);
    let l: Value = app.get_json("/nothing/users").await;
    assert_eq!(l, json!({"users": []}));
}

#[tokio::test]
async fn list_is_capped_at_1000() {
    let app = spawn().await;
    // Counted (and cached) before the write: the write must invalidate it.
    assert_eq!(app.get_json("/helloDoc/count").await["items_count"], 1000);
    let r = app.post("/helloDoc/users").json(&json!({"name": "extra", "age": 1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let c: Value = app.get_json("/helloDoc/count").await;
    assert_eq!(c["items_count"], 1001);
    let list: Value = app.get_json("/helloDoc/users").await;
    assert_eq!(list["users"].as_array().unwrap().len(), 1000);
}

#[tokio::test]
async fn create_keeps_extra_fields_and_invalidates_the_cached_list() {
    let app = spawn().await;
    let first = app.get("/people/users").send().await.unwrap();
    assert_eq!(first.headers()["x-cache"], "MISS");
    let second = app.get("/people/users").send().await.unwrap();
    assert_eq!(second.headers()["x-cache"], "HIT-L1");
    assert_eq!(second.json::<Value>().await.unwrap(), json!({"users": []}));

    let r =
        app.post("/people/users").json(&json!({"name": "ann", "age": 30, "city": "Oslo", "tags": ["a"]})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["name"], "ann");
    assert_eq!(created["age"], 30);
    assert_eq!(created["city"], "Oslo");
    assert_eq!(created["tags"], json!(["a"]));
    assert_eq!(created["id"].as_str().unwrap().len(), 24);

    let after = app.get("/people/users").send().await.unwrap();
    assert_eq!(after.headers()["x-cache"], "MISS", "a write invalidates the cached list");
    let v: Value = after.json().await.unwrap();
    assert_eq!(v["users"][0], created);
    let fetched: Value = app.get_json("/people/users/ann").await;
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn invalid_users_get_fastapi_422_and_nothing_is_written() {
    let app = spawn().await;
    for body in [
        json!({"age": 3}),
        json!({"name": "x"}),
        json!({"name": 5, "age": 3}),
        json!({"name": "x", "age": "old"}),
        json!({"name": "x", "age": 1.5}),
        json!([1, 2]),
    ] {
        let r = app.post("/helloDoc/users").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(v["detail"].is_array(), "FastAPI shape: {v}");
        assert!(v["detail"][0]["loc"].is_array());
        assert!(v["detail"][0]["msg"].is_string());
    }
    let r = app.post("/helloDoc/users").header("content-type", "application/json").body("{oops").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = app.post("/helloDoc/users").json(&json!({"name": "x".repeat(2_000_000), "age": 1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let c: Value = app.get_json("/helloDoc/count").await;
    assert_eq!(c["items_count"], 1000, "nothing was written");
}

#[tokio::test]
async fn swagger_ui_and_spec_are_served() {
    let app = spawn().await;
    let r = app.get("/docs/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("swagger"), "Swagger UI page");
    let spec: Value = app.get_json("/openapi.json").await;
    let paths = spec["paths"].as_object().unwrap();
    for p in [
        "/",
        "/{collection_name}/count",
        "/{collection_name}/users",
        "/{collection_name}/users/{name}",
        "/shops",
        "/shops/{shop}/orders",
        "/shops/{shop}/feed",
        "/health/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "spec documents {p}");
    }
}
