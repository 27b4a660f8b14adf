use axum::extract::{Path, State};
use axum::Json;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{valid_delta, valid_on_hand, AdjustStock, SetStock, Stock, MAX_QUANTITY};
use crate::http::auth::{self, ShopKey};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::ApiJson;
use crate::state::AppState;
use crate::validate;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(set_stock, get_stock)).routes(routes!(adjust_stock))
}

fn sku_or_404(sku: &str) -> ApiResult<()> {
    validate::sku(sku).map_err(|_| ApiError::NotFound(format!("product {sku}")))
}

/// Set the quantity on hand. Refused (409) below what open orders have reserved.
#[utoipa::path(put, path = "/shops/{shop}/stock/{sku}", tag = "inventory", request_body = SetStock,
    params(("shop" = String, Path), ("sku" = String, Path)),
    security(("shop_key" = [])),
    responses((status = 200, body = Stock), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn set_stock(
    State(state): State<AppState>,
    Path((_shop, sku)): Path<(String, String)>,
    key: ShopKey,
    ApiJson(body): ApiJson<SetStock>,
) -> ApiResult<Json<Stock>> {
    let shop = key.id().clone();
    sku_or_404(&sku)?;
    if !valid_on_hand(body.on_hand) {
        return Err(ApiError::field("on_hand", &format!("must be an integer from 0 to {MAX_QUANTITY}")));
    }
    let stock =
        state.store().on_shop(&shop, "set_stock", |shard| shard.set_stock(&shop, &sku, body.on_hand, state.clock.now())).await?;
    state.sold_out.note(&shop, &stock);
    Ok(Json(stock))
}

/// Receive (positive) or write off (negative) stock. Never below what is reserved (409).
#[utoipa::path(post, path = "/shops/{shop}/stock/{sku}/adjust", tag = "inventory", request_body = AdjustStock,
    params(("shop" = String, Path), ("sku" = String, Path)),
    security(("shop_key" = [])),
    responses((status = 200, body = Stock), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn adjust_stock(
    State(state): State<AppState>,
    Path((_shop, sku)): Path<(String, String)>,
    key: ShopKey,
    ApiJson(body): ApiJson<AdjustStock>,
) -> ApiResult<Json<Stock>> {
    let shop = key.id().clone();
    sku_or_404(&sku)?;
    if !valid_delta(body.delta) {
        return Err(ApiError::field("delta", &format!("must be a non-zero integer within ±{MAX_QUANTITY}")));
    }
    let stock = state
        .store()
        .on_shop(&shop, "adjust_stock", |shard| shard.adjust_stock(&shop, &sku, body.delta, state.clock.now()))
        .await?;
    state.sold_out.note(&shop, &stock);
    Ok(Json(stock))
}

/// Stock of a product: on hand, reserved by open orders, and available.
#[utoipa::path(get, path = "/shops/{shop}/stock/{sku}", tag = "inventory",
    params(("shop" = String, Path), ("sku" = String, Path)),
    responses((status = 200, body = Stock), (status = 404, body = Problem)))]
async fn get_stock(State(state): State<AppState>, Path((shop, sku)): Path<(String, String)>) -> ApiResult<Json<Stock>> {
    let shop = auth::shop_id(&shop)?;
    sku_or_404(&sku)?;
    match state.store().read_shop(&shop, "get_stock", |shard| shard.get_stock(&shop, &sku)).await? {
        Some(s) => Ok(Json(s)),
        None => {
            auth::load_shop(&state, &shop).await?;
            Err(ApiError::NotFound(format!("product {sku}")))
        }
    }
}
