//! Liveness and readiness for load balancers. Ready means: started, not draining, store answers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(live)).routes(routes!(ready))
}

#[derive(Serialize, ToSchema)]
pub struct HealthReport {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/health/live", tag = "operations", responses((status = 200, body = HealthReport)))]
async fn live() -> Json<HealthReport> {
    Json(HealthReport { status: "ok".into(), reason: None })
}

/// Ready to take traffic: 503 while shutting down or when the store does not answer.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, body = HealthReport), (status = 503, body = HealthReport)))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<HealthReport>) {
    if !state.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(HealthReport { status: "draining".into(), reason: Some("shutting down".into()) }),
        );
    }
    match state.store().ping().await {
        Ok(()) => (StatusCode::OK, Json(HealthReport { status: "ready".into(), reason: None })),
        Err(e) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(HealthReport { status: "unavailable".into(), reason: Some(e.to_string()) }))
        }
    }
}
