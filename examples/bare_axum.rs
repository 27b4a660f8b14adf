//! The reference server of `benches/http_path.sh`: axum on the same runtime, allocator and
//! HTTP/1 stack as vitrina, with nothing else: a hello JSON and an in-memory product. What the
//! request path costs is vitrina's figure against these, measured in the same run.
//!
//! `cargo run --release --example bare_axum -- 127.0.0.1:18300`

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::routing::get;
use axum::Json;
use serde_json::json;

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18300".into());
    let product = json!({
        "shop": "bench", "sku": "P00001", "name": "Product P00001", "description": "A product of the bench shop",
        "category": "general", "price": {"amount": 1999, "currency": "USD"},
        "attributes": {}, "created_at": "2026-12-05T00:00:00Z", "updated_at": "2026-12-05T00:00:00Z"
    });
    let app = axum::Router::new()
        .route("/json", get(|| async { Json(json!({"message": "Hello, World!"})) }))
        .route("/product", get(move || std::future::ready(Json(product.clone()))));
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
