use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{generate_api_key, hash_secret, CreateShop, Shop};
use crate::http::auth::{self, Admin};
use crate::http::error::{ApiResult, Problem};
use crate::http::extract::ApiJson;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_shop))
        .routes(routes!(get_shop))
        .routes(routes!(move_shop))
        .routes(routes!(rebalance))
}

#[derive(Serialize, ToSchema)]
pub struct CreatedShop {
    #[serde(flatten)]
    pub shop: Shop,
    /// The shop's API key. Shown once: only its hash is stored.
    pub api_key: String,
}

/// Create a shop (admin token required). The answer carries the shop's API key, shown once.
#[utoipa::path(post, path = "/shops", tag = "shops", request_body = CreateShop,
    security(("admin_token" = [])),
    responses(
        (status = 201, body = CreatedShop),
        (status = 401, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_shop(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateShop>,
) -> ApiResult<(StatusCode, Json<CreatedShop>)> {
    let api_key = generate_api_key();
    let new = body.validate(hash_secret(&api_key), state.clock.now())?;
    let shop = state.store().create_shop(new).await?;
    state.cache.invalidate(&crate::cache::shop_scope(shop.id.as_str())).await;
    tracing::info!(shop = %shop.id, "shop created");
    Ok((StatusCode::CREATED, Json(CreatedShop { shop, api_key })))
}

/// A shop's public profile.
#[utoipa::path(get, path = "/shops/{shop}", tag = "shops",
    params(("shop" = String, Path, description = "Shop id")),
    responses((status = 200, body = Shop), (status = 404, body = Problem)))]
async fn get_shop(State(state): State<AppState>, Path(shop): Path<String>) -> ApiResult<Json<Shop>> {
    let id = auth::shop_id(&shop)?;
    Ok(Json(auth::load_shop(&state, &id).await?.shop))
}

#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveShop {
    /// Name of the shard to move the shop to.
    #[schema(example = "shard2")]
    pub to: String,
}

/// Move a shop's data to another shard (admin token required): its writes are held briefly
/// (503 + Retry-After), its rows are copied and verified, the directory is flipped.
#[utoipa::path(post, path = "/shops/{shop}/move", tag = "shops", request_body = MoveShop,
    params(("shop" = String, Path, description = "Shop id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = crate::store::moving::MoveReport),
        (status = 401, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn move_shop(
    State(state): State<AppState>,
    _admin: Admin,
    Path(shop): Path<String>,
    ApiJson(body): ApiJson<MoveShop>,
) -> ApiResult<Json<crate::store::moving::MoveReport>> {
    let id = auth::shop_id(&shop)?;
    auth::load_shop(&state, &id).await?;
    Ok(Json(state.store().move_shop(&id, &body.to, state.clock.now()).await?))
}

/// Move every shop that lives off its ring owner to it, one at a time (admin token required):
/// after a shard is added, this moves exactly the shops whose owner changed.
#[utoipa::path(post, path = "/shards/rebalance", tag = "shops",
    security(("admin_token" = [])),
    responses((status = 200, body = crate::store::moving::RebalanceReport), (status = 401, body = Problem)))]
async fn rebalance(State(state): State<AppState>, _admin: Admin) -> ApiResult<Json<crate::store::moving::RebalanceReport>> {
    Ok(Json(state.store().rebalance(state.clock.now()).await?))
}
