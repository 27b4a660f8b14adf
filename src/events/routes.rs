use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::app::AppState;
use crate::auth;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiQuery;
use crate::store::EventPage;

pub const MAX_EVENTS: i64 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// A `next` this feed returned; omit to start from the beginning.
    after: Option<String>,
    /// 1-1000, default 100.
    limit: Option<i64>,
}

/// A shop's events in commit order (CloudEvents 1.0), for consumers that poll: keep calling with
/// `after` = the previous `next`. An event committed late is never skipped.
#[utoipa::path(get, path = "/shops/{shop}/events", tag = "events",
    params(("shop" = String, Path), EventParams),
    security(("bearer" = [])),
    responses((status = 200, body = EventPage), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn list_events(
    State(state): State<AppState>,
    Path(shop): Path<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventParams>,
) -> ApiResult<Json<EventPage>> {
    let shop = auth::shop_id(&shop)?;
    auth::require_shop_key(&state, &headers, &shop).await?;
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=MAX_EVENTS).contains(&n) => n as usize,
        Some(_) => return Err(ApiError::bad_request("invalid_limit", format!("limit must be 1-{MAX_EVENTS}"))),
    };
    if q.after.as_ref().is_some_and(|a| a.len() > 64) {
        return Err(ApiError::bad_request("invalid_position", "after is not a position of this feed"));
    }
    let page = state.store().events_after(&shop, q.after.as_deref(), limit).await.map_err(|e| match e {
        crate::store::StoreError::Invalid { code, detail } => ApiError::BadRequest { code, detail },
        other => other.into(),
    })?;
    Ok(Json(page))
}
