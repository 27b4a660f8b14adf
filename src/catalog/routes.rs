use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Product, ProductBody, ProductPage, ProductQuery};
use crate::app::AppState;
use crate::auth;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiQuery};
use crate::pagination;
use crate::store::Upserted;
use crate::validate;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(put_product, get_product, delete_product)).routes(routes!(list_products))
}

/// Create or replace a product. Re-sending the same content changes nothing (same version).
#[utoipa::path(put, path = "/shops/{shop}/products/{sku}", tag = "catalog", request_body = ProductBody,
    params(("shop" = String, Path), ("sku" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Product),
        (status = 200, description = "Updated or unchanged", body = Product),
        (status = 401, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn put_product(
    State(state): State<AppState>,
    Path((shop, sku)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ProductBody>,
) -> ApiResult<Response> {
    let shop = auth::shop_id(&shop)?;
    let record = auth::require_shop_key(&state, &headers, &shop).await?;
    let input = body.validate(&sku, record.shop.currency)?;
    let (product, upserted) = state.store().upsert_product(&shop, input, state.clock.now()).await?;
    let status = if upserted == Upserted::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(with_etag(status, &product))
}

/// A product, with an `ETag`; `If-None-Match` with the same tag answers 304.
#[utoipa::path(get, path = "/shops/{shop}/products/{sku}", tag = "catalog",
    params(("shop" = String, Path), ("sku" = String, Path)),
    responses((status = 200, body = Product), (status = 304, description = "Not modified"), (status = 404, body = Problem)))]
async fn get_product(
    State(state): State<AppState>,
    Path((shop, sku)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let shop = auth::shop_id(&shop)?;
    let product = find(&state, &shop, &sku).await?;
    let etag = product.etag();
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        return Ok(resp);
    }
    Ok(with_etag(StatusCode::OK, &product))
}

async fn find(state: &AppState, shop: &crate::shops::ShopId, sku: &str) -> ApiResult<Product> {
    if validate::sku(sku).is_err() {
        return Err(ApiError::NotFound(format!("product {sku}")));
    }
    match state.store().get_product(shop, sku).await? {
        Some(p) => Ok(p),
        None => {
            auth::load_shop(state, shop).await?;
            Err(ApiError::NotFound(format!("product {sku}")))
        }
    }
}

fn with_etag(status: StatusCode, product: &Product) -> Response {
    let mut resp = (status, Json(product)).into_response();
    if let Ok(v) = HeaderValue::from_str(&product.etag()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// Delete a product and its stock row. Refused while open orders hold a reservation on it.
#[utoipa::path(delete, path = "/shops/{shop}/products/{sku}", tag = "catalog",
    params(("shop" = String, Path), ("sku" = String, Path)),
    security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_product(
    State(state): State<AppState>,
    Path((shop, sku)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let shop = auth::shop_id(&shop)?;
    auth::require_shop_key(&state, &headers, &shop).await?;
    if validate::sku(&sku).is_err() {
        return Err(ApiError::NotFound(format!("product {sku}")));
    }
    state.store().delete_product(&shop, &sku).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only products of this category.
    category: Option<String>,
    /// Page size, 1 to the configured maximum (100 by default).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of a shop's products ordered by SKU (keyset pagination, stable under inserts).
#[utoipa::path(get, path = "/shops/{shop}/products", tag = "catalog",
    params(("shop" = String, Path), ListParams),
    responses((status = 200, body = ProductPage), (status = 400, body = Problem), (status = 404, body = Problem)))]
async fn list_products(
    State(state): State<AppState>,
    Path(shop): Path<String>,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<ProductPage>> {
    let shop = auth::shop_id(&shop)?;
    let (limit, after) = pagination::from_query::<String>(q.limit, q.cursor.as_deref(), &state.config.limits)?;
    if q.category.as_ref().is_some_and(|c| c.chars().count() > 100) {
        return Err(ApiError::bad_request("invalid_category", "category must be at most 100 characters"));
    }
    auth::load_shop(&state, &shop).await?;
    let rows = state.store().list_products(&shop, ProductQuery { category: q.category, after, limit }).await?;
    let (items, next_cursor) = pagination::split(rows, limit, |p| p.sku.clone());
    Ok(Json(ProductPage { items, next_cursor }))
}
